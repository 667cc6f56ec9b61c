"""Control records: how a running job reports metrics, progress and its result through its own stdout.

A record is one line, ``\\x1ejupyter-launch {json}\\n``. Every backend already streams stdout, so records reach the
agent from a local process, a container or a pod alike; the agent's log pump takes them out of the log. Inside a
job, :func:`log`, :func:`progress` and :func:`output_dir` are the public API (re-exported by ``jupyter_launch``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

MARK = b"\x1ejupyter-launch "
MARK_STR = MARK.decode()
OUTPUT_DIR_ENV = "JUPYTER_LAUNCH_OUTPUT_DIR"


def encode(record: dict[str, Any]) -> str:
    return MARK_STR + json.dumps(record, separators=(",", ":"), default=str, allow_nan=False) + "\n"


def _emit(record: dict[str, Any]) -> None:
    out = sys.stdout
    out.write(encode(record))
    out.flush()


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        try:
            return _clean(value.item())
        except (TypeError, ValueError):
            return str(value)
    return value


def log(metrics: dict[str, Any], step: int | None = None) -> None:
    """Record metrics (``{"loss": 0.3, "acc": 0.9}``) for the running job; a live chart where it is watched."""
    if not isinstance(metrics, dict):
        raise TypeError(f"jupyter_launch.log takes a dict of metrics, got {type(metrics).__name__}")
    data = {str(k): _clean(v) for k, v in metrics.items()}
    _emit({"type": "metrics", "step": step, "time": time.time(), "data": data})


def progress(value: float, total: float | None = None, description: str | None = None) -> None:
    """Report progress (``progress(3, 10, "epochs")``); shown as a bar in the job's views."""
    _emit({"type": "progress", "value": _clean(value), "total": _clean(total), "description": description})


def cell_name(cell: dict[str, Any] | None) -> str:
    """How every message and view names a notebook's code cell: as Jupyter shows it, ``In [n]`` where ``n`` is the
    execution count it ran with, then its place among the notebook's code cells (from 1) and its id:
    ``In [2] (code cell 3, id 5f1c9a2e)``. ``cell`` is the ``cell`` of a runner's progress record
    (``execution_count``, ``index``, ``id``); a missing part is left out."""
    if not isinstance(cell, dict):
        return "a cell"
    count, index, cell_id = cell.get("execution_count"), cell.get("index"), cell.get("id")
    where = ([f"code cell {index}"] if isinstance(index, int) else []) + ([f"id {cell_id}"] if cell_id else [])
    prompt = f"In [{count if isinstance(count, int) else ' '}]"
    return f"{prompt} ({', '.join(where)})" if where else prompt


def output_dir() -> Path:
    """The folder whose files come back as the job's outputs (the working folder outside a job)."""
    path = Path(os.environ.get(OUTPUT_DIR_ENV) or ".")
    path.mkdir(parents=True, exist_ok=True)
    return path


class RecordSplitter:
    """Splits a stream's bytes into plain log data and control records, keeping partial lines across chunks."""

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, data: bytes) -> tuple[bytes, list[dict[str, Any]]]:
        if self._carry:
            data, self._carry = self._carry + data, b""
        if b"\x1e" not in data:  # the fast path: no record anywhere in this chunk
            return data, []
        plain: list[bytes] = []
        records: list[dict[str, Any]] = []
        pos = 0
        start = data.find(MARK)
        while start >= 0:
            end = data.find(b"\n", start)
            if end < 0:
                self._carry = data[start:]  # a record still arriving
                plain.append(data[pos:start])
                return b"".join(plain), records
            plain.append(data[pos:start])
            raw = data[start + len(MARK):end]
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict):
                    raise ValueError
                records.append(rec)
            except ValueError:
                plain.append(data[start:end + 1])  # not ours after all: keep it as log text
            pos = end + 1
            start = data.find(MARK, pos)
        rest = data[pos:]
        # A record may begin at the very end of this chunk with only part of its mark.
        tail = rest.rfind(b"\x1e")
        if tail >= 0 and len(rest) - tail < len(MARK) and MARK.startswith(rest[tail:]):
            self._carry = rest[tail:]
            rest = rest[:tail]
        plain.append(rest)
        return b"".join(plain), records

    def flush(self) -> bytes:
        data, self._carry = self._carry, b""
        return data
