"""Comparing notebooks as executed: by nbclient directly (what ``jupyter nbconvert --execute`` and papermill return)
and by jupyter-launch, cell by cell, after normalising what differs on every run (ids, addresses, times, paths)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

# What differs between two runs of the same notebook, whoever runs it: replaced by a placeholder before comparing.
_VARYING = [
    (re.compile(r"0x[0-9a-fA-F]{4,}"), "0xADDR"),  # object addresses in reprs
    (re.compile(r"\b[0-9a-f]{32}\b|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "ID"),  # uuids
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?"), "TIME"),
    (re.compile(r"\b\d+(\.\d+)?\s*(ms|µs|us|ns|s|sec|seconds)\b"), "DURATION"),
    # An interpreter's place: a job's `python` is its environment's (backends/job_venv.py), not the server's.
    (re.compile(r"(/[\w.+-]+)+/bin/python[\d.]*"), "PYTHON"),
    (re.compile(r"(/[\w.+-]+)+/(site|dist)-packages/"), "PACKAGES/"),  # where the job's environment installs
    (re.compile(r"/(tmp|var/folders|private)/[^\s'\"\\)]+"), "PATH"),
    (re.compile(r"(ipykernel_|Temp/ipykernel_)\d+/\d+\.py"), "ipykernel/CELL.py"),  # a traceback's cell file
    (re.compile(r"\bpid\s*[=:]?\s*\d+", re.I), "pid N"),
]
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def normalise_text(text: str, roots: tuple[str, ...] = ()) -> str:
    for root in roots:
        text = text.replace(root, "ROOT")
    text = _ANSI.sub("", text)
    for pattern, placeholder in _VARYING:
        text = pattern.sub(placeholder, text)
    return text


def normalise_outputs(cell: Any, roots: tuple[str, ...] = ()) -> list[Any]:
    """A code cell's outputs as plain JSON with what varies between runs replaced; output order kept.

    Adjacent stream outputs of the same stream are joined (their text unchanged, ``\r`` included): where one ends
    and the next begins is the kernel's flush timing, different on every run (nbclient's own runs included). Streams
    apart (a display between them) or of different names stay apart, so merging and reordering still show."""
    outputs: list[dict[str, Any]] = []
    for output in json.loads(json.dumps(cell.get("outputs", []))):
        if isinstance(output.get("text"), list):
            output["text"] = "".join(output["text"])
        last = outputs[-1] if outputs else None
        if (last is not None and output.get("output_type") == "stream" == last.get("output_type")
                and output.get("name") == last.get("name")):
            last["text"] += output.get("text", "")
        else:
            outputs.append(output)
    return json.loads(normalise_text(json.dumps(outputs, sort_keys=True), roots))


def cells_compared(a: Any, b: Any, roots: tuple[str, ...] = ()) -> list[int]:
    """Indexes of the code cells whose outputs or execution counts differ between notebooks ``a`` and ``b``."""
    code_a = [c for c in a.cells if c.cell_type == "code"]
    code_b = [c for c in b.cells if c.cell_type == "code"]
    if len(code_a) != len(code_b):
        return [-1]
    return [i for i, (x, y) in enumerate(zip(code_a, code_b))
            if (normalise_outputs(x, roots), x.get("execution_count")) != (normalise_outputs(y, roots),
                                                                           y.get("execution_count"))]


def widget_models(nb: Any) -> tuple[set[str], set[str]]:
    """The widget model ids the outputs show, and those the notebook's saved widget state has."""
    shown = {o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
             for c in nb.cells for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})}
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    return shown, set(state)


def run_nbclient(path: Path, cwd: Path, timeout: float | None = None) -> tuple[Any, str]:
    """The notebook as nbclient executes it (as ``jupyter nbconvert --execute`` does, stopping at the first error),
    and how it ended: ``ok``, or the exception's name."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name=nb.metadata.get("kernelspec", {}).get("name") or "python3",
                            timeout=timeout, resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
        ended = "ok"
    except CellExecutionError as exc:
        ended = f"CellExecutionError:{exc.ename}"
        client.set_widgets_metadata()
    except (CellTimeoutError, DeadKernelError) as exc:
        ended = type(exc).__name__
    return nb, ended
