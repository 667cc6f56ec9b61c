"""Reliability fixtures: a real `jupyter server` process with the launch extension that a test can kill -9 and
start again on the same store, and a ledger that jobs write their attempt and fencing token to.

Figures the tests measure are printed (``pytest -s``) and, when ``$JUPYTER_LAUNCH_FIGURES`` names a file, appended to
it, so `docs/reliability.md` can be checked against a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from launch_server import LaunchServer

ROOT = Path(__file__).resolve().parents[2]


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


def list_job_ids(server: LaunchServer, queue: str) -> list[tuple[str, str]]:
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
    """``make_server(agent_queues=[...])`` → a started :class:`LaunchServer`; every one is stopped at the end."""
    servers: list[LaunchServer] = []

    def make(*, agent_queues: list[str], start: bool = True, name: str = "server", **kw: Any) -> LaunchServer:
        server = LaunchServer(tmp_path / name, agent_queues=agent_queues, **kw)
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


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"6m"``) mounted at ``mount`` for the block, for disk-full tests (root only, as CI
    runs); unmounted at the end."""
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for a disk-full test (needs root, as CI runs): {proc.stderr}",
                    pytrace=False)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
