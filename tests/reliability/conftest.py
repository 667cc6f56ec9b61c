"""Reliability fixtures: a real `jupyter server` process with the launch extension that a test can kill -9 and
start again on the same store, and a ledger that jobs write their attempt and fencing token to.

Figures the tests measure are written to ``$JUPYTER_LAUNCH_FIGURES`` (default: the pytest tmp folder's
``figures.jsonl``) and printed, so `docs/reliability.md` can be checked against a run.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "launch-reliability"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    """Resident set size of a live process, in KiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def record_figure(name: str, **values: Any) -> None:
    """Print a figure and append it to the figures file, for docs/reliability.md."""
    line = json.dumps({"figure": name, **values})
    print(f"\nFIGURE {line}")
    path = os.environ.get("JUPYTER_LAUNCH_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


class Server:
    """One `jupyter server` subprocess with jupyter_launch on ``home``; ``start``/``kill``/``stop`` may repeat."""

    def __init__(self, base: Path, *, agent_queues: list[str], extra_config: str = "",
                 env: dict[str, str] | None = None):
        self.base = base
        self.home = base / "launch-home"
        self.root = base / "root"
        for p in (self.home, self.root):
            p.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = TOKEN
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
        self.env = dict(os.environ, JUPYTER_LAUNCH_HOME=str(self.home), PYTHONUNBUFFERED="1")
        self.env.pop("JUPYTER_LAUNCH_STORE_URL", None)
        self.env.update(env or {})
        self.env["PYTHONPATH"] = str(ROOT) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> Server:
        cmd = [sys.executable, "-m", "jupyter_server", f"--config={self.config}", "--no-browser",
               f"--port={self.port}", "--port-retries=0", "--ServerApp.ip=127.0.0.1",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}"]
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.root)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"jupyter server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if self.api("GET", "queues")[0] == 200:
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"jupyter server did not answer within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)

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


def list_job_ids(server: Server, queue: str) -> list[tuple[str, str]]:
    """(id, state) of every job in ``queue``, newest first, paging with ``before``."""
    jobs: list[tuple[str, str]] = []
    before = None
    while True:
        path = f"jobs?queue={queue}&limit=500" + (f"&before={before}" if before else "")
        code, page = server.api("GET", path)
        assert code == 200, page
        jobs += [(j["id"], j["state"]) for j in page["jobs"]]
        before = page["next_before"]
        if before is None:
            return jobs


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    """``make_server(agent_queues=[...])`` → a started :class:`Server`; every one is stopped at the end."""
    servers: list[Server] = []

    def make(*, agent_queues: list[str], start: bool = True, name: str = "server", **kw: Any) -> Server:
        server = Server(tmp_path / name, agent_queues=agent_queues, **kw)
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.stop()


def ledger_code(ledger: Path, work_seconds: float) -> str:
    """A job body that proves it never ran twice at once: it takes an exclusive, non-blocking lock on a file of its
    own job id (a second copy running at the same time cannot get it and says so), writes its attempt and fencing
    token to the ledger, works, and writes `end`."""
    return (
        "import fcntl, os, time\n"
        "job = os.environ['JUPYTER_LAUNCH_JOB_ID']\n"
        "attempt, fence = os.environ['JUPYTER_LAUNCH_ATTEMPT'], os.environ['JUPYTER_LAUNCH_FENCE']\n"
        f"ledger = {str(ledger)!r}\n"
        "def note(text):\n"
        "    with open(ledger, 'a') as f:\n"
        "        f.write(f'{job} {text}\\n')\n"
        "        f.flush()\n"
        "        os.fsync(f.fileno())\n"
        "lock = open(f'{ledger}.{job}.lock', 'w')\n"
        "try:\n"
        "    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except OSError:\n"
        "    note(f'overlap {attempt} {fence}')\n"
        "    raise SystemExit(7)\n"
        "note(f'start {attempt} {fence}')\n"
        "print('working', flush=True)\n"
        f"time.sleep({work_seconds})\n"
        "note(f'end {attempt} {fence}')\n"
    )


def read_ledger(ledger: Path) -> dict[str, list[tuple[str, int, int]]]:
    """job id → [(event, attempt, fence), ...] in the order written."""
    out: dict[str, list[tuple[str, int, int]]] = {}
    if ledger.exists():
        for line in ledger.read_text().splitlines():
            job, event, attempt, fence = line.split()
            out.setdefault(job, []).append((event, int(attempt), int(fence)))
    return out
