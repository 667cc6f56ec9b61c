"""Server tests: a real Jupyter server (pytest-jupyter) with the launch extension on a store under tmp_path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def launch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "launch-home"
    monkeypatch.setenv("JUPYTER_LAUNCH_HOME", str(home))
    monkeypatch.delenv("JUPYTER_LAUNCH_STORE_URL", raising=False)
    monkeypatch.delenv("JUPYTER_LAUNCH_SERVER_URL", raising=False)  # LaunchApp.service_url's default
    return home


@pytest.fixture
def store_url(launch_home: Path) -> str:
    return f"sqlite:///{launch_home / 'launch.db'}"


@pytest.fixture
def launch_config() -> dict[str, Any]:
    """Extra ``LaunchApp`` traits for one test (override the fixture)."""
    return {}


@pytest.fixture
def server_config() -> dict[str, Any]:
    """Extra ``ServerApp`` traits for one test (override the fixture)."""
    return {}


@pytest.fixture
def jp_server_config(launch_home: Path, store_url: str, launch_config: dict[str, Any],
                     server_config: dict[str, Any]) -> Config:
    return Config({
        "ServerApp": {
            "jpserver_extensions": {"jupyter_launch": True, "jupyter_server_terminals": False},
            "allow_unauthenticated_access": False,
            "allow_root": True,
            **server_config,
        },
        "LaunchApp": {"store_url": store_url, "blob_dir": str(launch_home / "blobs"), "reap_interval": 0.5,
                      **launch_config},
        "Agent": {"wake_socket": False, "poll_interval": 0.5},
    })


@pytest.fixture
def launch_app(jp_serverapp: Any) -> Any:
    """The extension app, not yet started (pytest-jupyter does not run the servers' async start hooks)."""
    return jp_serverapp.web_app.settings["launch"]


@pytest.fixture
def start_launch(jp_serverapp: Any, launch_app: Any):
    """``app = await start_launch()``: run the extensions' async start hook once, as `jupyter server` does."""
    started = []

    async def start() -> Any:
        if not started:
            await jp_serverapp.extension_manager.start_all_extensions()
            started.append(True)
        return launch_app

    return start


@pytest.fixture
def api(jp_fetch: Any):
    """``await api("GET", "jobs", ...)`` → (status, parsed JSON or None), errors included."""
    from tornado.httpclient import HTTPClientError

    async def call(method: str, *parts: str, body: Any = None, raw: bytes | None = None, params: dict | None = None,
                   headers: dict | None = None) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"method": method, "params": params or {}, "headers": headers or {}}
        if body is not None:
            kwargs["body"] = json.dumps(body)
        elif raw is not None:
            kwargs["body"] = raw
        elif method in ("POST", "PUT", "PATCH"):
            kwargs["body"] = b""
        try:
            r = await jp_fetch("launch", "api", *parts, **kwargs)
        except HTTPClientError as exc:
            r = exc.response
            assert r is not None, exc
        ctype = r.headers.get("Content-Type", "")
        data = json.loads(r.body) if r.body and ctype.startswith("application/json") else r.body
        return r.code, data

    return call


@pytest.fixture
def server_url(jp_serverapp: Any, jp_http_port: int, jp_base_url: str) -> str:
    return f"http://localhost:{jp_http_port}{jp_base_url}"


async def wait_done(api: Any, job_id: str, timeout: float = 60) -> dict[str, Any]:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        code, job = await api("GET", "jobs", job_id)
        assert code == 200, job
        if job["done"]:
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.05)


def command_spec(code: str, **kw: Any) -> dict[str, Any]:
    return {"kind": "command", "command": [sys.executable, "-c", code], **kw}


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A real PostgreSQL started by ci/postgres.sh. Fails (never skips) when it cannot start."""
    proc = subprocess.run(["bash", str(ROOT / "ci" / "postgres.sh")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"PostgreSQL could not be started by ci/postgres.sh (exit {proc.returncode}); the team-store "
                    f"tests need it. Output:\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    return proc.stdout.strip().splitlines()[-1]
