"""Processes as Linux's /proc shows them, for tests that check what a job leaves running (``from processes import
...``, like ``launch_server``). Without /proc the test fails and says so, rather than reading every process as gone."""

from __future__ import annotations

from pathlib import Path

import pytest


def _stat_fields(stat: Path) -> list[str]:
    """The fields after the command name (which may hold spaces and parentheses)."""
    return stat.read_text().rsplit(")", 1)[1].split()


def _need_proc() -> None:
    if not Path("/proc/self/stat").exists():
        pytest.fail("this test reads processes from /proc, which this system lacks (Linux has it)", pytrace=False)


def child_pids(pid: int) -> list[int]:
    _need_proc()
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = _stat_fields(stat)
        except OSError:
            continue
        if int(fields[1]) == pid:
            pids.append(int(stat.parent.name))
    return pids


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    _need_proc()
    try:
        state = _stat_fields(Path(f"/proc/{pid}/stat"))[0]
    except OSError:
        return False
    return state != "Z"
