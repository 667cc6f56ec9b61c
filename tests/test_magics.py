"""%launch / %%launch in real kernels: notebooks in tests/notebooks/magics_*.ipynb run through nbclient against this
test's embedded store, with an agent in a subprocess (or in the kernel). Widget state is read from the widget models
nbclient records (the state a frontend would render), not from text."""

from __future__ import annotations

import html
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from jupyter_launch.magics import _names, pickle_variables
from jupyter_launch.widgets import LogTail, MetricSeries, metrics_svg

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture
def kernel_env(launch_home: Path) -> dict[str, str]:
    """The kernel's environment: the test's launch home, so the magic's LaunchClient() finds the same store."""
    env = dict(os.environ)
    env["JUPYTER_LAUNCH_HOME"] = str(launch_home)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("JPY_SESSION_NAME", None)
    return env


@pytest.fixture
def agent(client, kernel_env: dict[str, str], tmp_path: Path):
    """`jupyter launch agent --queue default` in a subprocess, registered before the test starts."""
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jupyter_launch.cli", "agent", "--queue", "default"],
                                env=kernel_env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not client.live_agents("default"):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the agent did not register"
        time.sleep(0.05)
    yield proc
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_notebook(name: str, workdir: Path, env: dict[str, str], *, session: bool = False,
                 edit: dict[int, str] | None = None) -> nbformat.NotebookNode:
    """Copy a test notebook into ``workdir`` and execute it there. ``session`` tells the kernel its notebook as
    jupyter_server does (JPY_SESSION_NAME); ``edit`` changes cells in memory only, as unsaved edits would."""
    path = workdir / f"{name}.ipynb"
    shutil.copy(NOTEBOOKS / f"{name}.ipynb", path)
    nb = nbformat.read(path, as_version=4)
    for index, source in (edit or {}).items():
        nb.cells[index].source = source
    kernel_env = dict(env, **({"JPY_SESSION_NAME": str(path)} if session else {}))
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute(
        env=kernel_env)
    return nb


def widget_parts(nb: nbformat.NotebookNode, cell: int) -> dict[str, dict[str, Any]]:
    """The state of each part of the job view shown in ``cell``, by its CSS class (``jl-state``, ``jl-log``, ...)."""
    models = nb.metadata.widgets[WIDGET_STATE]["state"]
    root = next(o.data[WIDGET_VIEW]["model_id"] for o in nb.cells[cell].outputs
                if o.output_type == "display_data" and WIDGET_VIEW in o.data)
    parts: dict[str, dict[str, Any]] = {}

    def walk(model_id: str) -> None:
        state = models[model_id]["state"]
        for css in state.get("_dom_classes", []):
            parts[css] = state
        for child in state.get("children", []):
            walk(child.removeprefix("IPY_MODEL_"))

    walk(root)
    return parts


def log_text(part: dict[str, Any]) -> str:
    return "".join(o["text"] for o in part["outputs"] if o["output_type"] == "stream")


def stream_text(cell: nbformat.NotebookNode, name: str = "stdout") -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == name)


# ------------------------------------------------------------------ cell jobs


def test_cell_job_runs_setup_pushes_and_pulls(client, agent, kernel_env, tmp_path):
    nb = run_notebook("magics_cell", tmp_path, kernel_env, session=True)
    result = json.loads(stream_text(nb.cells[4]))
    assert result == {"id": result["id"], "state": "succeeded", "c": 42, "d": [0, 2, 4, 6, 8], "pulled": ["c", "d"]}

    view = widget_parts(nb, 3)
    assert "succeeded" in view["jl-state"]["value"]
    assert view["jl-reason"]["value"] == "finished with exit code 0"
    assert view["jl-elapsed"]["value"].startswith("took ")
    assert log_text(view["jl-log"]) == "".join(f"line {i}\n" for i in range(30))  # every line, in order
    assert view["jl-metrics"]["value"] == "step 29: loss 0.03333 · phase train"
    assert view["jl-plot"]["value"].count("<polyline") == 1  # "phase" is not numeric: only loss is plotted
    assert view["jl-progress"]["bar_style"] == "success"
    assert view["jl-progress"]["value"] == view["jl-progress"]["max"]
    assert view["jl-cancel"]["disabled"] is True
    assert f"/launch/api/jobs/{result['id']}/outputs/result.txt" in view["jl-outputs"]["value"]
    assert "pulled c, d into this kernel" in view["jl-note"]["value"]
    assert client.read_output(result["id"], "result.txt") == b"42"
    # Where widgets are not rendered, the display's plain text tells how it ended.
    plain = next(o.data["text/plain"] for o in nb.cells[3].outputs if o.output_type == "display_data")
    assert plain.startswith(f"job {result['id']} on queue default: succeeded")
    assert plain.endswith("line 29")

    # --wait with a --pull of a name the cell never defines: the job fails, the cell raises one line.
    error = next(o for o in nb.cells[5].outputs if o.output_type == "error")
    assert error.ename == "JobFailed"
    assert len(error.traceback) == 1 and "never_defined" in error.traceback[0] and "failed" in error.traceback[0]


ERRORS = [  # the cells of magics_errors.ipynb, in order, and what their one line says
    "UsageError: argument --gpus: invalid int value: 'lots'",
    "UsageError: %%launch --memory: expected a memory size like '8Gi' or '512Mi', got 'lots'",
    "UsageError: %%launch --timeout: expected a duration like 3600, '90s', '45m' or '1h', got 'soon'",
    "UsageError: unrecognized arguments: --no-such-option",
    "UsageError: %%launch: unknown queue 'no-such-queue' (queues: default); create it with "
    "`jupyter launch queue create FILE`",
    "UsageError: --push: 'undefined_variable' not defined in this kernel",
    "UsageError: --push: 'lock' (a _thread.lock) cannot be pickled (cannot pickle '_thread.lock' object); "
    "create it in a cell tagged 'launch-setup' or in the launched cell instead",
    "UsageError: --env takes KEY=VALUE, got 'NOEQUALS'",
    "UsageError: --pull: '2x' is not a variable name",
    "UsageError: %%launch is a cell magic, but the cell body is empty. Did you mean the line magic %launch (single %)?",
    "UsageError: --push and --pull work with %%launch cells; a whole notebook makes its own variables",
    "UsageError: %launch: cannot tell which notebook this kernel runs (no JPY_SESSION_NAME or __session__): "
    "or name it: %launch path/to/notebook.ipynb --queue Q",
    "UsageError: %launch: no notebook at no_such_notebook.ipynb",
]


def test_bad_arguments_give_one_line_usage_errors(client, kernel_env, tmp_path):
    nb = run_notebook("magics_errors", tmp_path, kernel_env)
    got = [stream_text(cell, "stderr") for cell in nb.cells[1:]]
    assert len(got) == len(ERRORS)
    for text, expected in zip(got, ERRORS):
        assert text.count("\n") == 1, text
        assert text.rstrip("\n") == expected
    assert client.jobs() == []  # nothing was submitted


def test_cancel_button_cancels_the_job(client, agent, kernel_env, tmp_path):
    nb = run_notebook("magics_cancel", tmp_path, kernel_env)
    assert stream_text(nb.cells[2]) == "cancelled\n"
    view = widget_parts(nb, 1)
    assert "cancelled" in view["jl-state"]["value"]
    assert view["jl-cancel"]["disabled"] is True
    assert log_text(view["jl-log"]).startswith("started\n")
    assert "not reached" not in log_text(view["jl-log"])
    job, = client.jobs()
    assert job.state == "cancelled"


def test_no_agent_for_the_queue_runs_one_in_the_kernel(client, kernel_env, tmp_path):
    assert client.live_agents("default") == []
    nb = run_notebook("magics_cancel", tmp_path, kernel_env)  # submit, then cancel: the in-kernel agent does both
    assert stream_text(nb.cells[2]) == "cancelled\n"
    view = widget_parts(nb, 1)
    assert "no agent served queue 'default': one now runs in this kernel" in html.unescape(view["jl-note"]["value"])
    assert client.live_agents("default") == []  # it stopped with the kernel


# ------------------------------------------------------------------ whole notebooks


def test_launch_submits_this_notebook_as_saved(client, agent, kernel_env, tmp_path):
    nb = run_notebook("magics_notebook", tmp_path, kernel_env, session=True)
    assert stream_text(nb.cells[1]) == "greeting: default in kernel\n"
    state, job_id = stream_text(nb.cells[4]).split()
    assert state == "succeeded"
    log = client.job(job_id).logs()
    assert "greeting: hello in job\n" in log  # the parameter reached the job
    assert f"%launch: inside job {job_id}; not submitting this notebook again\n" in log
    assert [o.path for o in client.outputs(job_id)] == ["magics_notebook.html", "magics_notebook.ipynb"]
    assert "succeeded" in widget_parts(nb, 3)["jl-state"]["value"]
    # A %%launch cell in a launched notebook runs right there, in the job; from the kernel it is a job of its own.
    assert f"cell body in {job_id}\n" in log
    cell_job = next(j for j in client.jobs() if j.id != job_id)
    assert len(client.jobs()) == 2 and cell_job.kind == "cell"
    assert client.job(cell_job.id).logs() == f"cell body in {cell_job.id}\n"


def test_launch_refuses_a_notebook_with_unsaved_changes(client, kernel_env, tmp_path):
    edited = "%launch --wait --param greeting=edited"
    with pytest.raises(Exception) as info:
        run_notebook("magics_notebook", tmp_path, kernel_env, session=True, edit={3: edited})
    assert "magics_notebook.ipynb on disk does not have this cell yet (unsaved changes): save the notebook" \
        in str(info.value)
    assert client.jobs() == []


# ------------------------------------------------------------------ --wait and interrupts


def _execute(kc: Any, code: str, *, allow_stdin: bool, answer: str | None, interrupt: Any) -> dict[str, Any]:
    """Run ``code``; call ``interrupt()`` when it returns true, answer the prompt that follows; the execute reply."""
    msg_id = kc.execute(code, allow_stdin=allow_stdin)
    interrupted = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not interrupted and interrupt():
            interrupted = True
        if allow_stdin:
            try:
                request = kc.get_stdin_msg(timeout=0.05)
            except queue.Empty:
                pass
            else:
                assert request["content"]["prompt"].startswith("Interrupted. Cancel job ")
                kc.input(answer)
        try:
            reply = kc.get_shell_msg(timeout=0.05)
        except queue.Empty:
            continue
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]
    raise AssertionError("no reply")


@pytest.mark.parametrize("allow_stdin, answer, state", [
    (True, "y", "cancelled"),
    (True, "n", "running"),
    (False, None, "cancelled"),  # nobody to ask (nbclient, a job): interrupting means cancel
])
def test_interrupting_wait_asks_then_cancels(client, agent, kernel_env, tmp_path, allow_stdin, answer, state):
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path), env=kernel_env)
    try:
        assert kc.execute_interactive("%load_ext jupyter_launch", timeout=60)["content"]["status"] == "ok"

        def started() -> bool:
            jobs = client.jobs()
            if jobs and "started" in client.job(jobs[0].id).logs():
                km.interrupt_kernel()
                return True
            return False

        reply = _execute(kc, "%%launch --wait\nimport time\nprint('started', flush=True)\ntime.sleep(120)",
                         allow_stdin=allow_stdin, answer=answer, interrupt=started)
        assert (reply["status"], reply["ename"]) == ("error", "KeyboardInterrupt")
        job, = client.jobs()
        if state == "running":
            assert client.job(job.id).status == "running"
            client.cancel(job.id)
        assert client.job(job.id).wait(timeout=60).state == "cancelled"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# ------------------------------------------------------------------ a terminal IPython


def test_terminal_ipython_gets_plain_text(client, agent, kernel_env, tmp_path):
    script = tmp_path / "launch.ipy"
    script.write_text("%load_ext jupyter_launch\n"
                      "get_ipython().run_cell_magic('launch', '--wait --pull answer', "
                      "'print(\"hello from the job\")\\nanswer = 6 * 7\\n')\n"
                      "print('answer is', answer)\n")
    proc = subprocess.run([sys.executable, "-m", "IPython", "--quick", "--no-banner", "--colors=nocolor",
                           str(script)], env=kernel_env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    job, = client.jobs()
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"job {job.id} submitted to queue default: queued")
    assert "hello from the job" in lines
    assert f"job {job.id} succeeded: finished with exit code 0" in "\n".join(lines)
    assert lines[-1] == "answer is 42"
    assert "widget" not in proc.stdout.lower()


# ------------------------------------------------------------------ pieces


def test_log_tail_keeps_the_last_lines_in_order_across_streams():
    tail = LogTail(max_lines=3)
    tail.add("stdout", "a\nb")
    tail.add("stdout", "c\n")
    tail.add("stderr", "oops\n")
    tail.add("stdout", "progress 10%\rprogress 50%\rprogress 100%\n")
    tail.add("stdout", "d\n")
    assert tail.dropped == 2
    assert tail.outputs() == (
        {"output_type": "stream", "name": "stdout",
         "text": "… 2 earlier line(s) not shown; job.logs() has the whole log\n"},
        {"output_type": "stream", "name": "stderr", "text": "oops\n"},
        {"output_type": "stream", "name": "stdout", "text": "progress 100%\nd\n"},
    )


def test_metrics_plot_one_chart_per_numeric_metric():
    series = MetricSeries()
    series.add([{"id": i, "step": None, "data": {"loss": 1 / (i + 1), "acc": i / 10, "note": "x"}} for i in range(10)])
    assert series.summary() == "loss 0.1 · acc 0.9 · note x"
    svg = metrics_svg(series.series)
    assert svg.count("<svg") == 2 and svg.count("<polyline") == 2


def test_push_names_and_pickling():
    assert _names(["a, b", "a", "c"], "--push") == ["a", "b", "c"]
    data = pickle_variables({"f": lambda x: x + 1, "n": 3}, ["f", "n"])
    import cloudpickle

    values = cloudpickle.loads(data)
    assert values["f"](1) == 2 and values["n"] == 3
