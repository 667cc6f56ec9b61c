"""UI fixtures: a real `jupyter lab` with the jupyter-launch extension and its in-process agent, and Debian's Chromium
driven by Python playwright. Missing pieces (Chromium, playwright, the built extension) fail the tests with the fix,
never skip them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from launch_server import CHROMIUM, launch_chromium

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "launch-ui-test"
EXTENSION = "jupyter-launch"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _installed_extension() -> Path | None:
    """The extension where `pip install` puts it (the venv's share/jupyter/labextensions), if there."""
    for prefix in {sys.prefix, sys.base_prefix}:
        path = Path(prefix) / "share" / "jupyter" / "labextensions" / EXTENSION
        if (path / "package.json").exists():
            return path
    return None


def _server_extension_name() -> str:
    """`jupyter_launch` once the package exposes the extension points at the top, else the server subpackage."""
    import jupyter_launch

    return "jupyter_launch" if hasattr(jupyter_launch, "_jupyter_server_extension_points") else "jupyter_launch.server"


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    home: Path
    log: Path
    process: subprocess.Popen

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call /launch/api/PATH with the token; returns (status, parsed JSON)."""
        data = json.dumps(body).encode() if body is not None else (b"" if method in ("POST", "PUT") else None)
        req = urllib.request.Request(f"{self.url}/launch/api/{path}", data=data, method=method,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, (json.loads(raw) if raw else None)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _notebook(cells: list[tuple[str, str, list[str]]]) -> dict[str, Any]:
    return {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                     "language_info": {"name": "python"}},
        "cells": [{"cell_type": kind, "id": f"c{i}", "metadata": {"tags": tags}, "source": source,
                   **({"outputs": [], "execution_count": None} if kind == "code" else {})}
                  for i, (kind, source, tags) in enumerate(cells)],
    }


PARAMS_NOTEBOOK = _notebook([
    ("markdown", "# A parameterised job", []),
    ("code", 'greeting = "hello"\ncount = 3', ["parameters"]),
    ("code", "import time\nfor i in range(count):\n    print(f'{greeting} {i}', flush=True)\n    time.sleep(0.3)", []),
])


@contextlib.contextmanager
def start_lab(base: Path) -> Iterator[Lab]:
    """A `jupyter lab --allow-root` on a free port, with a temporary launch home, root folder and settings under
    ``base``; stopped on exit. Raises RuntimeError with the server's log when it cannot start."""
    root, home, data, settings = base / "root", base / "launch-home", base / "data", base / "settings"
    for p in (root, home, data / "labextensions", settings / "@jupyterlab" / "apputils-extension"):
        p.mkdir(parents=True, exist_ok=True)
    # No "get notified about Jupyter news?" toast over the panel in screenshots.
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false"}))
    (root / "params.ipynb").write_text(json.dumps(PARAMS_NOTEBOOK, indent=1))

    env = dict(os.environ, JUPYTER_LAUNCH_HOME=str(home), PYTHONUNBUFFERED="1")
    env.pop("JUPYTER_LAUNCH_STORE_URL", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    built = ROOT / "jupyter_launch" / "labextension"
    if (built / "package.json").exists():
        # Serve the checkout's own build, like its Python code: an editable install copied the extension into the
        # venv when it ran, so after a `jlpm build` that copy is stale. JUPYTER_PATH comes first, so this one wins.
        link = data / "labextensions" / EXTENSION
        if not link.exists():
            link.symlink_to(built)
        env["JUPYTER_PATH"] = str(data) + os.pathsep + env.get("JUPYTER_PATH", "")
    elif _installed_extension() is None:
        raise RuntimeError("the jupyter-launch labextension is not built: run `pip install -e .` (or "
                           "`jlpm --cwd labextension install && jlpm --cwd labextension build`) first")

    config = base / "jupyter_server_test_config.py"
    config.write_text(
        f"c.ServerApp.jpserver_extensions = {{{_server_extension_name()!r}: True}}\n"
        "c.ServerApp.allow_root = True\n"
        "c.LabApp.expose_app_in_browser = True\n"
        "c.Agent.poll_interval = 0.5\n"
    )
    port = _free_port()
    log = base / "lab.log"
    cmd = [sys.executable, "-m", "jupyterlab", f"--config={config}", "--no-browser", "--allow-root",
           f"--port={port}", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}",
           f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={settings}",
           f"--LabApp.workspaces_dir={base / 'workspaces'}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    server = Lab(url=f"http://127.0.0.1:{port}", token=TOKEN, root=root, home=home, log=log, process=proc)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                status, _ = server.api("GET", "queues")
                if status == 200:
                    break
                if status == 404:
                    raise RuntimeError(f"jupyter lab runs but /launch/api/queues is 404: the jupyter_launch server "
                                       f"extension did not load.\n{server.log_tail()}")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter lab did not answer within 90 s:\n{server.log_tail()}")
            time.sleep(0.25)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# pytest-jupyter's autouse fixtures take the thread's current event loop, close it after each test and run the
# in-process ServerApp's cleanup on it. Here that loop is the one playwright's sync API keeps running for the whole
# session, so both would fail; UI tests start no in-process server, so they get a loop of their own and no cleanup.
@pytest.fixture(autouse=True)
def jp_asyncio_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(autouse=True)
def jp_server_cleanup() -> Iterator[None]:
    yield


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    try:
        with start_lab(tmp_path_factory.mktemp("lab")) as server:
            yield server
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `bash ci/chromium.sh` (Debian's chromium), or set "
                    "JUPYTER_LAUNCH_CHROMIUM to a Chromium binary", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Python playwright is not installed: `pip install playwright` (the browser is Debian's "
                    "Chromium; never `playwright install`)", pytrace=False)
    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, lab: Lab) -> Iterator[Any]:
    """A fresh browser context on JupyterLab, loaded and idle."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.goto(f"{lab.url}/lab?token={lab.token}")
    pg.wait_for_selector(".jp-SideBar [data-id='jupyter-launch-panel']")
    pg.wait_for_function("() => window.jupyterapp !== undefined && !document.querySelector('#jupyterlab-splash')")
    yield pg
    context.close()


def open_launch_panel(page: Any) -> Any:
    tab = page.locator(".jp-SideBar [data-id='jupyter-launch-panel']")
    if tab.get_attribute("aria-selected") != "true":
        tab.click()
    panel = page.locator("#jupyter-launch-panel")
    panel.wait_for(state="visible")
    return panel


def command_job(code: str, **kw: Any) -> dict[str, Any]:
    return {"kind": "command", "command": [sys.executable, "-u", "-c", code], **kw}


def screenshot_dir() -> Path:
    path = ROOT / "docs"
    path.mkdir(exist_ok=True)
    return path


def wait_for_job(lab: Lab, job_id: str, states: tuple[str, ...], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        _, job = lab.api("GET", f"jobs/{job_id}")
        if job["state"] in states:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {job['state']} ({job.get('message')}), not {states}\n"
                                 f"{lab.log_tail()}")
        time.sleep(0.1)

