"""A real `jupyter server` process with the jupyter-launch extension, for tests that talk to it as a CLI, a kernel or
another machine's agent would: on a free port, with its own launch home and its own Jupyter runtime and data
folders (so no server of the person running the tests is discovered and nothing lands in their home); stopped, or
killed with -9 and started again on the same store.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("JUPYTER_LAUNCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_env(base: Path) -> dict[str, str]:
    """This environment with no jupyter-launch variables, Jupyter's runtime and data folders under ``base``, and this
    checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_LAUNCH_")}
    env.update(JUPYTER_RUNTIME_DIR=str(base / "runtime"), JUPYTER_DATA_DIR=str(base / "data"), PYTHONUNBUFFERED="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


class LaunchServer:
    """One `jupyter server` with jupyter_launch on ``base/launch-home`` (or ``home``); ``start``, ``kill`` and ``stop``
    may repeat."""

    def __init__(self, base: Path, *, agent_queues: list[str], token: str = "launch-test", extra_config: str = "",
                 env: dict[str, str] | None = None, home: Path | None = None):
        self.base = base
        self.home = home or base / "launch-home"  # another server's home: two servers on one store
        self.root = base / "root"
        for p in (self.home, self.root):
            p.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.agent_queues = list(agent_queues)
        self.log = base / "server.log"
        self.config = base / "jupyter_server_config.py"
        self.config.write_text(
            "c.ServerApp.jpserver_extensions = {'jupyter_launch': True}\n"
            "c.ServerApp.allow_root = True\n"
            "c.ServerApp.allow_unauthenticated_access = False\n"
            f"c.LaunchApp.agent_queues = {agent_queues!r}\n"
            "c.LaunchApp.reap_interval = 0.5\n"
            "c.Agent.poll_interval = 0.5\n"
            + extra_config)
        self.env = dict(isolated_env(base), JUPYTER_LAUNCH_HOME=str(self.home), **(env or {}))
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> LaunchServer:
        """Start it and wait until the API answers and the in-process agent, if any, serves its queues."""
        self.start_process()
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None:
                raise AssertionError(f"jupyter server exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"jupyter server not ready within {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def start_process(self) -> subprocess.Popen:
        """Start the `jupyter server` process and return at once (``start`` waits until it is ready)."""
        cmd = [sys.executable, "-m", "jupyter_server", f"--config={self.config}", "--no-browser",
               f"--port={self.port}", "--port-retries=0", "--ServerApp.ip=127.0.0.1",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}"]
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.root)
        return self.process

    def _ready(self) -> bool:
        try:
            status, body = self.api("GET", "agents")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        served = {q for agent in (body or {}).get("agents", []) for q in agent.get("queues", [])}
        return status == 200 and set(self.agent_queues) <= served

    def kill(self) -> None:
        """kill -9: no shutdown hook runs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def api(self, method: str, path: str, body: Any = None, *, token: str | None = None,
            timeout: float = 60) -> tuple[int, Any]:
        """``(status, parsed JSON)`` of a call to ``/launch/api/PATH``; ``token=""`` sends none."""
        data = json.dumps(body).encode() if body is not None else (b"" if method in ("POST", "PUT") else None)
        headers = {"Content-Type": "application/json"}
        if token != "":
            headers["Authorization"] = f"token {token or self.token}"
        req = urllib.request.Request(f"{self.url}/launch/api/{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw) if raw else None
            except ValueError:
                return exc.code, raw

    def log_tail(self, n: int = 80) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium through playwright; RuntimeError naming the fix when it is not installed."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"Chromium is not installed at {CHROMIUM}: run `bash ci/chromium.sh` (Debian's chromium), "
                           "or set JUPYTER_LAUNCH_CHROMIUM to a Chromium binary")
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
