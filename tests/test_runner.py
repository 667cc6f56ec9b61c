"""The job runner, run for real: `python -m jupyter_launch.runner` on the notebooks in tests/notebooks, with kernels."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from fidelity import cells_compared, run_nbclient, widget_models
from processes import child_pids, running

from jupyter_launch import control
from jupyter_launch.runner import INJECTED_TAG, JobError, inject_parameters, parameters_source, python_literal

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
PUBLIC = NOTEBOOKS / "public"
MALICIOUS = "'; import os; os.system('x')#"
KERNEL_WAIT = 60


@dataclass
class Run:
    returncode: int
    stdout: str  # the log as the agent keeps it: control records taken out
    stderr: str
    records: list[dict[str, Any]]
    out_dir: Path

    @property
    def result(self) -> dict[str, Any]:
        results = [r for r in self.records if r["type"] == "result"]
        assert len(results) == 1, f"expected one result record, got {results}\nstderr:\n{self.stderr}"
        assert self.records[-1] is results[0], "the result is the last record"
        return results[0]

    def stored(self, stem: str) -> nbformat.NotebookNode:
        return nbformat.read(self.out_dir / f"{stem}.ipynb", as_version=4)


def split(stdout: bytes) -> tuple[str, list[dict[str, Any]]]:
    splitter = control.RecordSplitter()
    plain, records = splitter.feed(stdout)
    return (plain + splitter.flush()).decode(), records


def runner_env(out_dir: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop(control.OUTPUT_DIR_ENV, None)
    if out_dir is not None:
        env[control.OUTPUT_DIR_ENV] = str(out_dir)
    return env


def job_folder(tmp_path: Path, source: str | nbformat.NotebookNode | None = None, **job: Any) -> Path:
    """A job's unpacked folder: the notebook (a file from tests/notebooks, or one built here) and its job.json."""
    work = tmp_path / "job"
    work.mkdir()
    if isinstance(source, str):
        (work / source).write_bytes((NOTEBOOKS / source).read_bytes())
        job = {"kind": "notebook", "notebook": source, **job}
    elif source is not None:
        nbformat.write(source, work / "built.ipynb")
        job = {"kind": "notebook", "notebook": "built.ipynb", **job}
    (work / "job.json").write_text(json.dumps(job))
    return work


def run_runner(work: Path, timeout: float = 120) -> Run:
    out_dir = work.parent / "outputs"
    proc = subprocess.run([sys.executable, "-m", "jupyter_launch.runner", "job.json"], cwd=work,
                          env=runner_env(out_dir), capture_output=True, timeout=timeout)
    plain, records = split(proc.stdout)
    return Run(proc.returncode, plain, proc.stderr.decode(), records, out_dir)


def code_notebook(*sources: str) -> nbformat.NotebookNode:
    return new_notebook(cells=[new_code_cell(s) for s in sources],
                        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


def stored_text(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


# ------------------------------------------------------------------ parameters, without a kernel


@pytest.mark.parametrize("value", [
    "plain", MALICIOUS, "quotes ' \" and \\ backslash\nnewline", "ünï ✓ 🚀 שלום", "", 0, -7, 2**80, 0.1, -0.0,
    1e300, True, False, None, [1, "a", [None]], {"k": {"nested": [1.5, False]}, "2": []}, (1, "t"), (),
])
def test_literal_round_trips(value: Any) -> None:
    assert eval(python_literal(value), {"__builtins__": {}}) == value


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_floats(value: float) -> None:
    back = eval(python_literal(value), {"__builtins__": {"float": float}})
    assert (math.isnan(back) and math.isnan(value)) or back == value


@pytest.mark.parametrize("value", [{1, 2}, b"bytes", object(), 1j, [1, {"k": {2}}]])
def test_other_types_are_refused(value: Any) -> None:
    with pytest.raises(JobError, match="parameter 'p': a .* cannot be passed") as info:
        parameters_source({"p": value})
    assert info.value.reason == "invalid_parameters"


@pytest.mark.parametrize("name", ["x y", "1x", "class", "a;b", "", "os.system"])
def test_names_must_be_identifiers(name: str) -> None:
    with pytest.raises(JobError, match="not a valid Python identifier"):
        parameters_source({name: 1})


def test_injected_after_the_parameters_cell_replacing_an_earlier_injection() -> None:
    nb = nbformat.read(NOTEBOOKS / "params.ipynb", as_version=4)
    inject_parameters(nb, {"count": 2})
    inject_parameters(nb, {"count": 3})
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert tags.index(["parameters"]) + 1 == tags.index([INJECTED_TAG]) and tags.count([INJECTED_TAG]) == 1
    assert nb.cells[tags.index([INJECTED_TAG])].source == "# Parameters\ncount = 3\n"


def test_injected_at_the_top_without_a_parameters_cell_and_not_at_all_without_values() -> None:
    nb = nbformat.read(NOTEBOOKS / "trivial.ipynb", as_version=4)
    inject_parameters(nb, {})
    assert len(nb.cells) == 3
    inject_parameters(nb, {"a": 5})
    assert nb.cells[0].metadata["tags"] == [INJECTED_TAG] and nb.cells[0].source.endswith("a = 5\n")


# ------------------------------------------------------------------ notebooks, for real


def check_failing(run: Run) -> None:
    assert "before" in run.stdout and "never" not in run.stdout
    assert "ZeroDivisionError" in run.stderr and "----> 2 1/0" in run.stderr and "\x1b[" not in run.stderr


def check_sysexit(run: Run) -> None:
    # As papermill keeps it: the SystemExit output and IPython's warning stay in the cell, and the job succeeds.
    assert run.stdout.startswith("before exit") and "never" not in run.stdout and "To exit" in run.stderr
    outputs = run.stored("sysexit").cells[1].outputs
    assert [(o.output_type, o.get("ename"), o.get("evalue"), o.get("name")) for o in outputs] == [
        ("error", "SystemExit", "0", None), ("stream", None, None, "stderr")]
    assert "To exit: use 'exit'" in outputs[1].text


def check_rich(run: Run) -> None:
    assert run.stdout.splitlines() == ["<IPython.core.display.HTML object>", "<IPython.core.display.Markdown object>",
                                       "<IPython.core.display.Image object>", "{'a': 1, 'b': [1, 2, 3]}"]
    data = [o.data for c in run.stored("rich").cells for o in c.outputs]
    assert "text/html" in data[0] and "text/markdown" in data[1] and "image/png" in data[2]


def check_unicode(run: Run) -> None:
    text = "héllo wörld ✓ 🚀 日本語 שלום עולם مرحبا"
    assert run.stdout == f"{text}\nemoji: 🎉🐍\n'{text}'\n" and run.stderr == "stderr: ½ ⅓ 🙂\n"
    assert text in stored_text(run.stored("unicode")) and text in (run.out_dir / "unicode.html").read_text("utf-8")


def check_bigoutput(run: Run) -> None:
    assert run.stdout == "".join(f"line {i}\n" for i in range(100_000))
    assert stored_text(run.stored("bigoutput")) == run.stdout


def check_metrics(run: Run) -> None:
    metrics = [r for r in run.records if r["type"] == "metrics"]
    assert [(m["step"], m["data"]) for m in metrics] == [(i, {"loss": 1 / (i + 1)}) for i in range(5)]
    assert run.stdout == "".join(f"epoch {i}\n" for i in range(5)) + "done\n"
    stored = run.stored("metrics")
    assert stored_text(stored) == run.stdout and control.MARK_STR not in json.dumps(stored)


def check_trivial(run: Run) -> None:
    assert run.stdout == "hello 3\n"


def check_kernel_dies(run: Run) -> None:
    assert run.stdout == "about to die\n"


@pytest.mark.parametrize(("name", "state", "reason", "message", "check"), [
    pytest.param("trivial", "succeeded", "completed", None, check_trivial, id="trivial"),
    pytest.param("failing", "failed", "cell_error", "In [2] (code cell 2, id c008): ZeroDivisionError: division by zero",
                 check_failing, id="failing"),
    pytest.param("sysexit", "succeeded", "completed", "stopped early at In [2] (code cell 2, id c011): SystemExit(0)",
                 check_sysexit, id="sysexit"),
    pytest.param("rich", "succeeded", "completed", None, check_rich, id="rich"),
    pytest.param("unicode", "succeeded", "completed", None, check_unicode, id="unicode"),
    pytest.param("bigoutput", "succeeded", "completed", None, check_bigoutput, id="bigoutput"),
    pytest.param("metrics", "succeeded", "completed", None, check_metrics, id="metrics"),
    pytest.param("kernel_dies", "failed", "kernel_died",
                 "the kernel died while running In [2] (code cell 2, id c021) (exit code 1)", check_kernel_dies,
                 id="kernel_dies"),
])
def test_notebook(tmp_path: Path, name: str, state: str, reason: str, message: str | None,
                  check: Callable[[Run], None]) -> None:
    run = run_runner(job_folder(tmp_path, f"{name}.ipynb"))
    assert run.result == {"type": "result", "state": state, "reason": reason, "message": message}, run.stderr
    assert run.returncode == (0 if state == "succeeded" else 1)
    cells = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4).cells
    code = [c for c in cells if c.cell_type == "code"]
    progress = [r for r in run.records if r["type"] == "progress"]
    first = {"execution_count": 1, "index": 1, "id": code[0].id}
    assert progress[0] == {"type": "progress", "value": 0, "total": len(code), "cell": first,
                           "description": f"In [1] (code cell 1, id {code[0].id})"}
    assert len(run.stored(name).cells) == len(cells)
    assert (run.out_dir / f"{name}.html").read_text("utf-8").startswith("<!DOCTYPE html>")
    check(run)


def test_parameters_of_several_types_arrive_exactly(tmp_path: Path) -> None:
    values = {"text": MALICIOUS, "count": 3, "ratio": math.inf, "flag": True, "nothing": None,
              "items": [1, "two", [3.5]], "config": {"k": [1, {"n": None}], "q": "a'b\"c"}}
    run = run_runner(job_folder(tmp_path, "params.ipynb", parameters=values))
    assert run.result["state"] == "succeeded", run.stderr
    seen = json.loads((run.out_dir / "params.json").read_text())
    assert seen == {**values, "ratio": "inf"}
    injected = [c for c in run.stored("params").cells if INJECTED_TAG in c.metadata.get("tags", [])]
    assert len(injected) == 1 and f"text = {MALICIOUS!r}" in injected[0].source


@pytest.mark.parametrize("content", [b"", b'{"cells": [', b"not json at all", b'{"nbformat": 9, "cells": []}',
                                     b'{"nbformat": 4, "nbformat_minor": 5, "cells": [{"cell_type": "x"}]}', b"[]"],
                         ids=["empty", "truncated", "not-json", "unknown-nbformat", "bad-cell", "a-list"])
def test_invalid_notebook(tmp_path: Path, content: bytes) -> None:
    work = job_folder(tmp_path, kind="notebook", notebook="broken.ipynb")
    (work / "broken.ipynb").write_bytes(content)
    run = run_runner(work)
    assert run.returncode == 1 and run.result["reason"] == "invalid_notebook"
    assert "broken.ipynb" in run.result["message"] and "\n" not in run.result["message"]


def test_invalid_notebooks_that_nbconvert_runs_are_run(tmp_path: Path) -> None:
    """nbformat's own test files: a markdown cell without source, a cell type from a later nbformat, no
    nbformat_minor. nbclient passes over cells that are not code, and so does the runner."""
    work = job_folder(tmp_path, kind="notebook", notebook="odd.ipynb")
    (work / "odd.ipynb").write_text(json.dumps({"nbformat": 4, "metadata": {}, "cells": [
        {"cell_type": "markdown", "metadata": {}}, {"cell_type": "future cell", "metadata": {}, "key": "value"},
        {"cell_type": "code", "metadata": {}, "source": "print('ran')", "outputs": [], "execution_count": None}]}))
    run = run_runner(work)
    assert run.result["state"] == "succeeded", run.result
    assert run.stdout == "ran\n" and run.stored("odd").cells[2].outputs[0].text == "ran\n"


def test_a_code_cell_without_source_is_refused_naming_it(tmp_path: Path) -> None:
    work = job_folder(tmp_path, kind="notebook", notebook="odd.ipynb")
    (work / "odd.ipynb").write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "# title"}, {"cell_type": "code", "metadata": {}}]}))
    run = run_runner(work)
    assert run.result["reason"] == "invalid_notebook"
    assert run.result["message"].endswith("is not a valid notebook: its cell 2 of 2 is a code cell without source")


@pytest.mark.parametrize(("job", "reason", "message"), [
    ({"kind": "command", "command": ["true"]}, "invalid_job", "the runner runs notebook and cell jobs, not 'command'"),
    ({"kind": "cell"}, "invalid_job", "a cell job needs its 'code'"),
    ({"kind": "cell", "code": "1", "timeout_per_cell": "soon"}, "invalid_job", "'timeout_per_cell' must be a number"),
    ({"kind": "cell", "code": "1", "parameters": [1]}, "invalid_parameters", "'parameters' must be an object"),
    ({"kind": "cell", "code": "1", "parameters": {"not valid": 1}}, "invalid_parameters", "parameter name 'not valid'"),
    ({"kind": "cell", "code": "1", "kernel": "no-such"}, "kernel_start_failed", "no kernel named 'no-such'"),
], ids=["command", "no-code", "timeout", "parameters-list", "parameter-name", "no-such-kernel"])
def test_jobs_the_runner_refuses(tmp_path: Path, job: dict[str, Any], reason: str, message: str) -> None:
    run = run_runner(job_folder(tmp_path, **job))
    assert (run.returncode, run.result["state"], run.result["reason"]) == (1, "failed", reason)
    assert run.result["message"].startswith(message), run.result["message"]


def test_cell_timeout(tmp_path: Path) -> None:
    nb = code_notebook("print('started')", "import time\ntime.sleep(60)")
    run = run_runner(job_folder(tmp_path, nb, timeout_per_cell=1))
    assert run.result["reason"] == "timeout"
    assert run.result["message"] == f"In [2] (code cell 2, id {nb.cells[1].id}) ran past its timeout of 1 s"
    assert run.stdout == "started\n"


def test_kernel_killed_by_a_signal(tmp_path: Path) -> None:
    nb = code_notebook("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    run = run_runner(job_folder(tmp_path, nb))
    assert run.result == {"type": "result", "state": "failed", "reason": "kernel_died", "message":
                          f"the kernel died while running In [1] (code cell 1, id {nb.cells[0].id}) (killed by SIGKILL)"}


def test_fd_level_output_is_logged_once(tmp_path: Path) -> None:
    # ipykernel's fd capture would echo this to the kernel's stdout and also send it, sometimes late, as a message.
    run = run_runner(job_folder(tmp_path, code_notebook(
        "import os, subprocess, sys\nos.write(1, b'from fd\\n')\n"
        "subprocess.run([sys.executable, '-c', 'print(\"from child\")'])")))
    assert run.result["state"] == "succeeded", run.stderr
    assert run.stdout.count("from fd\n") == 1 and run.stdout.count("from child\n") == 1


# ------------------------------------------------------------------ fidelity: the notebook nbclient would return


def test_outputs_are_the_ones_nbclient_writes(tmp_path: Path) -> None:
    """No merged streams, stdout and stderr in the order written, a \\r progress line kept whole, a clear_output
    honoured: output for output what nbclient (nbconvert, papermill) stores."""
    nb = code_notebook(
        "print('a')\ndisplay('shown')\nprint('b')",
        "import sys\nfor i in range(3):\n    print('out', i, flush=True)\n    print('err', i, file=sys.stderr, flush=True)",
        "for i in range(3):\n    print(f'\\r{i}/3', end='', flush=True)\nprint()",
        "from IPython.display import clear_output\nprint('gone', flush=True)\nclear_output(wait=True)\nprint('kept')")
    run = run_runner(job_folder(tmp_path, nb))
    assert run.result["state"] == "succeeded", run.stderr
    nbformat.write(nb, tmp_path / "direct.ipynb")
    direct, ended = run_nbclient(tmp_path / "direct.ipynb", tmp_path)
    assert ended == "ok"
    stored = run.stored("built")
    assert cells_compared(stored, direct) == []
    first = stored.cells[0].outputs
    assert [(o.output_type, o.get("text")) for o in first] == [("stream", "a\n"), ("display_data", None),
                                                                ("stream", "b\n")]
    assert "".join(o.text for o in stored.cells[2].outputs) == "\r0/3\r1/3\r2/3\n"
    assert [o.text for o in stored.cells[3].outputs] == ["kept\n"]


def test_widget_state_is_saved_as_nbclient_saves_it(tmp_path: Path) -> None:
    nb = code_notebook("import ipywidgets as w\nslider = w.IntSlider(value=3, description='n')\nslider",
                       "out = w.Output()\nwith out:\n    print('inside')\nout", "slider.value = 7")
    run = run_runner(job_folder(tmp_path, nb))
    assert run.result["state"] == "succeeded", run.stderr
    stored = run.stored("built")
    shown, saved = widget_models(stored)
    assert len(shown) == 2 and shown <= saved  # every widget the outputs show can be rendered from the notebook
    state = stored.metadata.widgets["application/vnd.jupyter.widget-state+json"]
    assert (state["version_major"], state["version_minor"]) == (2, 0)
    models = {m["model_name"]: m["state"] for m in state["state"].values()}
    assert models["IntSliderModel"]["value"] == 7 and models["IntSliderModel"]["description"] == "n"
    assert models["OutputModel"]["outputs"] == [{"name": "stdout", "output_type": "stream", "text": "inside\n"}]
    nbformat.write(nb, tmp_path / "direct.ipynb")
    direct, _ = run_nbclient(tmp_path / "direct.ipynb", tmp_path)
    direct_state = direct.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    assert sorted(m["model_name"] for m in direct_state.values()) == sorted(
        m["model_name"] for m in state["state"].values())


def test_sys_exit_1_fails_and_keeps_ipythons_warning(tmp_path: Path) -> None:
    nb = code_notebook("print('before')", "import sys\nsys.exit(1)", "print('never')")
    run = run_runner(job_folder(tmp_path, nb))
    assert (run.returncode, run.result["reason"]) == (1, "cell_error")
    assert run.result["message"] == f"In [2] (code cell 2, id {nb.cells[1].id}): SystemExit: 1"
    outputs = run.stored("built").cells[1].outputs
    assert [(o.output_type, o.get("ename"), o.get("name")) for o in outputs] == [
        ("error", "SystemExit", None), ("stream", None, "stderr")]
    assert "UserWarning: To exit: use 'exit', 'quit', or Ctrl-D." in outputs[1].text
    assert "To exit: use 'exit'" in run.stderr


def test_a_cell_is_named_as_jupyter_shows_it(tmp_path: Path) -> None:
    """Markdown cells do not count; an empty code cell, or one tagged skip-execution, counts as a code cell but does
    not run (no In [n])."""
    nb = code_notebook("x = 1", "", "print('skipped')", "1/0")
    nb.cells[2].metadata["tags"] = ["skip-execution"]
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("# title"))
    nb.cells.insert(4, nbformat.v4.new_markdown_cell("divides by zero"))
    run = run_runner(job_folder(tmp_path, nb))
    failing = nb.cells[5]
    assert run.result["message"] == f"In [2] (code cell 4, id {failing.id}): ZeroDivisionError: division by zero"
    progress = [r for r in run.records if r["type"] == "progress"]
    assert [(p["value"], p["total"], p["description"]) for p in progress] == [
        (0, 2, f"In [1] (code cell 1, id {nb.cells[1].id})"), (1, 2, f"In [2] (code cell 4, id {failing.id})")]
    assert run.stored("built").cells[5].execution_count == 2  # what Jupyter shows as In [2]
    assert "skipped" not in run.stdout


def test_cell_name_leaves_out_what_it_does_not_know() -> None:
    assert control.cell_name({"execution_count": 4, "index": 5, "id": "ab"}) == "In [4] (code cell 5, id ab)"
    assert control.cell_name({"execution_count": None, "index": 2}) == "In [ ] (code cell 2)"
    assert control.cell_name({}) == "In [ ]" and control.cell_name(None) == "a cell"


@pytest.mark.parametrize("attempt", range(3))
def test_the_output_widget_notebook_does_not_hang(tmp_path: Path, attempt: int) -> None:
    """nbclient's own Output widget notebook (its tests/files/Output.ipynb): the runner used to hang on it (1 run in
    4 here), the execute_reply unread while nbclient's Output mimic sent its comm_msg updates; see SlicedChannel."""
    work = tmp_path / "job"
    work.mkdir()
    (work / "Output.ipynb").write_bytes((PUBLIC / "nbclient" / "Output.ipynb").read_bytes())
    (work / "job.json").write_text(json.dumps({"kind": "notebook", "notebook": "Output.ipynb",
                                               "timeout_per_cell": 30}))
    run = run_runner(work)
    assert run.result["state"] == "succeeded", run.result
    shown, saved = widget_models(run.stored("Output"))
    assert shown and shown <= saved


# ------------------------------------------------------------------ cell jobs


def cell_job(tmp_path: Path, pull: list[str], code: str) -> Run:
    import cloudpickle  # a dependency of jupyter-launch: missing means a broken install, not a skip
    work = job_folder(tmp_path, kind="cell", code=code, setup=["offset = 2"], push="push.pkl", pull=pull,
                      parameters={"scale": 10})
    with open(work / "push.pkl", "wb") as f:
        cloudpickle.dump({"base": 4, "double": lambda x: 2 * x}, f)
    return run_runner(work)


def test_cell_push_and_pull_round_trip(tmp_path: Path) -> None:
    import cloudpickle

    code = "total = double(base) * scale + offset\nlabel = 'ok ✓'\nprint(total)"
    run = cell_job(tmp_path, ["total", "label"], code)
    assert run.result["state"] == "succeeded" and run.stdout == "82\n", run.stderr
    with open(run.out_dir / "pulled.pkl", "rb") as f:
        assert cloudpickle.load(f) == {"total": 82, "label": "ok ✓"}
    stored = run.stored("cell")
    assert [c.source for c in stored.cells] == ["# Parameters\nscale = 10\n", "offset = 2", code]
    assert stored.metadata.kernelspec.name == "python3"


@pytest.mark.parametrize(("pull", "message"), [
    (["total", "missing"], "cannot pull variables: 'missing' not defined in the kernel"),
    (["lock"], "cannot pull variables: 'lock' (a _thread.lock) cannot be pickled"),
])
def test_cell_pull_failures_name_the_variable(tmp_path: Path, pull: list[str], message: str) -> None:
    run = cell_job(tmp_path, pull, "import threading\ntotal = base\nlock = threading.Lock()")
    assert run.result["state"] == "failed" and run.result["reason"] == "pull_failed"
    assert run.result["message"].startswith(message)
    assert not (run.out_dir / "pulled.pkl").exists()


# ------------------------------------------------------------------ warm mode, signals


def test_warm_runner_runs_the_job_it_is_sent(tmp_path: Path) -> None:
    work = job_folder(tmp_path, code_notebook(
        "import os, localmod\nprint(os.getcwd(), localmod.VALUE)\nprint(repr(os.environ['JOB_VALUE']))"))
    (work / "localmod.py").write_text("VALUE = 'local module'\n")
    out_dir = tmp_path / "outputs"
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_launch.runner", "--warm"], cwd=tmp_path,
                            env=runner_env(None),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    value = "it's \"quoted\"\n'); os.system('x')#"
    request = {"job_file": str(work / "job.json"), "cwd": str(work),
               "env": {"JOB_VALUE": value, control.OUTPUT_DIR_ENV: str(out_dir)}}
    stdout, stderr = proc.communicate(json.dumps(request).encode() + b"\n", timeout=KERNEL_WAIT)
    plain, records = split(stdout)
    assert proc.returncode == 0 and records[-1]["state"] == "succeeded", stderr.decode()
    assert plain == f"{work} local module\n{value!r}\n"
    assert (out_dir / "built.ipynb").exists() and (out_dir / "built.html").exists()


def test_warm_runner_exits_quietly_when_stdin_closes(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "jupyter_launch.runner", "--warm"], cwd=tmp_path,
                          env=runner_env(tmp_path / "outputs"), stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=KERNEL_WAIT)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"ready\n", b"")


def start_sleeper(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A runner inside a 60 s cell, and its kernel's pid."""
    work = job_folder(tmp_path, code_notebook("print('sleeping', flush=True)", "import time\ntime.sleep(60)"))
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_launch.runner", "job.json"], cwd=work,
                            env=runner_env(tmp_path / "outputs"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line == b"sleeping\n":
            break
    (kernel,) = child_pids(proc.pid)
    return proc, kernel


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_kill_9_of_the_runner_leaves_no_kernel(tmp_path: Path) -> None:
    proc, kernel = start_sleeper(tmp_path)
    assert running(kernel)
    proc.kill()
    proc.communicate(timeout=10)  # the kernel shares the runner's pipes: they close when it is gone too
    deadline = time.monotonic() + 5
    while running(kernel) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(kernel)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_cancels_and_keeps_the_partial_notebook(tmp_path: Path) -> None:
    proc, kernel = start_sleeper(tmp_path)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1, stderr.decode()
    assert split(stdout)[1][-1] == {"type": "result", "state": "failed", "reason": "cancelled",
                                    "message": "stopped by a signal"}
    assert stored_text(nbformat.read(tmp_path / "outputs" / "built.ipynb", as_version=4)) == "sleeping\n"
    assert not running(kernel)


def test_the_result_record_comes_after_the_outputs_are_written(tmp_path: Path) -> None:
    """The agent ends a job at its result record, so the executed notebook and report must be in place by then; the
    kernel's shutdown comes after (here an exit handler in the kernel that takes 3 s)."""
    work = job_folder(tmp_path, code_notebook("import atexit, time\natexit.register(time.sleep, 3)", "print('done')"))
    out_dir = tmp_path / "outputs"
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_launch.runner", "job.json"], cwd=work,
                            env=runner_env(out_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        splitter, records = control.RecordSplitter(), []
        while not any(r["type"] == "result" for r in records):
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line, f"no result record; stderr:\n{proc.stderr.read().decode()}"  # type: ignore[union-attr]
            records += splitter.feed(line)[1]
            seen_at = time.monotonic()
        present = sorted(p.name for p in out_dir.iterdir())
        assert proc.poll() is None, "the runner is still shutting its kernel down"
        assert present == ["built.html", "built.ipynb"]
        assert stored_text(nbformat.read(out_dir / "built.ipynb", as_version=4)) == "done\n"
        proc.wait(timeout=30)
        assert time.monotonic() - seen_at > 2, "the kernel's exit handler ran after the result"
        assert proc.returncode == 0
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize("warm", [False, True])
def test_with_no_report_the_runner_writes_the_notebook_and_never_loads_nbconvert(tmp_path: Path, warm: bool) -> None:
    """The local backend renders reports in one process of its own (:mod:`jupyter_launch.report`): its runners,
    cold or warm, write the executed notebook only, and never pay for loading nbconvert."""
    work = job_folder(tmp_path, code_notebook("print('done')"))
    out_dir = tmp_path / "outputs"
    argv = [sys.executable, "-X", "importtime", "-m", "jupyter_launch.runner", "--no-report"]
    proc = subprocess.Popen(argv + (["--warm"] if warm else ["job.json"]), cwd=work, env=runner_env(out_dir),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    request = {"job_file": str(work / "job.json"), "cwd": str(work), "env": {control.OUTPUT_DIR_ENV: str(out_dir)}}
    stdout, stderr = proc.communicate(json.dumps(request).encode() + b"\n" if warm else b"", timeout=KERNEL_WAIT)
    plain, records = split(stdout.removeprefix(b"ready\n"))
    assert proc.returncode == 0 and records[-1]["state"] == "succeeded", stderr.decode()
    assert plain == "done\n"
    assert sorted(p.name for p in out_dir.iterdir()) == ["built.ipynb"]
    imported = [line.rsplit("|", 1)[-1].strip() for line in stderr.decode().splitlines() if "import time:" in line]
    assert "nbformat" in imported and not [m for m in imported if m.startswith("nbconvert")]


# Two shutdown races of ipykernel, made certain. After the shutdown request, the control thread checks that the iopub
# thread is alive and then sends on its event pipe: half a second apart here, so the main thread closes the pipe in
# between, as it sometimes does on a loaded machine (see runner._QUIET_SHUTDOWN_CODE). And an execute request's reply
# goes out before its handler ends and puts back the kernel's SIGINT handler: that gap made wider, so the interrupt
# jupyter_client sends before a shutdown would fall in it (see runner.Kernel.run_until_idle). Names are bound as
# defaults: IPython clears the namespace at exit.
RACES_AT_SHUTDOWN = """\
import atexit, sys, threading, time
from ipykernel.iostream import IOPubThread

kernel = get_ipython().kernel
shutting = threading.Event()
shutdown_request = kernel.control_handlers["shutdown_request"]

async def shutdown_then_race(*args, shutdown_request=shutdown_request, shutting=shutting):
    await shutdown_request(*args)
    shutting.set()

kernel.control_handlers["shutdown_request"] = shutdown_then_race
schedule = IOPubThread.schedule

def late_schedule(self, f, threading=threading, time=time, schedule=schedule, shutting=shutting):
    here = threading.current_thread()
    if shutting.is_set() and here not in (threading.main_thread(), self.thread) and self.thread.is_alive():
        time.sleep(0.5)
        self._events.append(f)
        self._event_pipe.send(b"")
        return None
    return schedule(self, f)

IOPubThread.schedule = late_schedule
execute_request = kernel.shell_handlers["execute_request"]

async def execute_then_linger(*args, execute_request=execute_request, time=time):
    await execute_request(*args)
    time.sleep(0.3)

kernel.shell_handlers["execute_request"] = execute_then_linger
atexit.register(lambda sys=sys: print("exit handler ran", file=sys.__stderr__, flush=True))
print("done")
"""


def test_the_kernels_shutdown_races_stay_out_of_the_log_and_exit_handlers_output_does_not(tmp_path: Path) -> None:
    run = run_runner(job_folder(tmp_path, code_notebook(RACES_AT_SHUTDOWN)))
    assert run.result["state"] == "succeeded", run.stderr
    assert run.stdout == "done\n"
    assert run.stderr == "exit handler ran\n"  # no ZMQError traceback, no "KeyboardInterrupt caught in kernel"
