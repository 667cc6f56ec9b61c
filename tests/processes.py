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


class PeakGrowth:
    """``with PeakGrowth() as g:`` samples this process's RSS every 5 ms; ``g.mib`` is then the most it grew by."""

    def __enter__(self) -> PeakGrowth:
        import threading

        import psutil

        self._me = psutil.Process()
        self._before = self._peak = self._me.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        import time

        while not self._done.is_set():
            self._peak = max(self._peak, self._me.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def mib(self) -> float:
        return (self._peak - self._before) / 2**20
