"""%launch / %%launch in real kernels: notebooks in tests/notebooks/magics_*.ipynb run through nbclient, with jobs
going to this test's embedded store (an agent in a subprocess, or in the kernel) or through a real `jupyter server`
with jupyter-launch and its in-process agent (named in the kernel's environment, or discovered the way a kernel that
server started finds it). Widget state is read from the widget models nbclient records (the state a frontend would
render), not from text."""

from __future__ import annotations

import html
import json
import os
import re
import queue
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest
from launch_server import LaunchServer, isolated_env as base_env
from nbclient import NotebookClient

from jupyter_launch.magics import _names, pickle_variables
from jupyter_launch.widgets import LogTail, MetricSeries, metrics_svg

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
SERVER_TOKEN = "launch-magics-test"


@pytest.fixture(scope="module")
def launch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LaunchServer]:
    server = LaunchServer(tmp_path_factory.mktemp("server"), agent_queues=["default"], token=SERVER_TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def kernel_env(launch_home: Path) -> dict[str, str]:
    """The kernel's environment: the test's launch home, so the magic's client finds the same embedded store."""
    env = dict(os.environ)
    env["JUPYTER_LAUNCH_HOME"] = str(launch_home)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("JPY_SESSION_NAME", None)
    return env


@dataclass
class Target:
    """Where a test's magics send jobs, and how the test sees them: ``client`` works on the same jobs, ``env`` is the
    kernel's environment, ``workdir`` the kernel's folder (what a %%launch cell packages)."""

    kind: str
    client: Any
    env: dict[str, str]
    workdir: Path
    server: LaunchServer | None = None
    before: frozenset[str] = field(default_factory=frozenset)

    def jobs(self) -> list[Any]:
        """The jobs this test made, newest first (a server outlives one test)."""
        return [j for j in self.client.jobs(limit=500) if j.id not in self.before]

    def check_ran_on_server(self, job_id: str, state: str) -> None:
        """Through a server the job is the server's, seen through its REST API, and the kernel made no store."""
        if self.server is not None:
            listed = {j["id"]: j["state"] for j in self.server.api("GET", "jobs?limit=500")[1]["jobs"]}
            assert listed.get(job_id) == state
            assert not list(self.workdir.parent.rglob("launch.db"))


@pytest.fixture(params=["embedded", "server"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """The embedded store of the test's launch home; or a running server, named in the kernel's environment
    (``server``) or found in Jupyter's runtime dir as a kernel of that server finds it (``discovered``)."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    if request.param == "embedded":
        env = request.getfixturevalue("kernel_env")
        yield Target("embedded", request.getfixturevalue("client"), env, workdir)
        return
    from jupyter_launch.remote.client import connect

    server: LaunchServer = request.getfixturevalue("launch_server")
    env = base_env(tmp_path)
    if request.param == "server":
        # The kernel's own launch home only caches blobs; its jobs go to the server all the same.
        env.update(JUPYTER_LAUNCH_SERVER_URL=server.url, JUPYTER_LAUNCH_TOKEN=SERVER_TOKEN,
                   JUPYTER_LAUNCH_HOME=str(tmp_path / "kernel-home"))
    else:
        env["JUPYTER_RUNTIME_DIR"] = server.env["JUPYTER_RUNTIME_DIR"]
    client = connect(server.url, SERVER_TOKEN, home=tmp_path / "test-home")
    yield Target(request.param, client, env, workdir, server, frozenset(j.id for j in client.jobs(limit=500)))
    client.close()


@pytest.fixture
def served(target: Target, tmp_path: Path) -> Iterator[Target]:
    """``target`` with an agent on queue default: the server's own, or `jupyter launch agent` in a subprocess."""
    if target.server is not None:
        yield target
        return
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jupyter_launch.cli", "agent", "--queue", "default"],
                                env=target.env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not target.client.live_agents("default"):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the agent did not register"
        time.sleep(0.05)
    yield target
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


def layout_of(nb: nbformat.NotebookNode, part: dict[str, Any]) -> dict[str, Any]:
    """The state of a widget part's layout."""
    return nb.metadata.widgets[WIDGET_STATE]["state"][part["layout"].removeprefix("IPY_MODEL_")]["state"]


def log_text(part: dict[str, Any]) -> str:
    return "".join(o["text"] for o in part["outputs"] if o["output_type"] == "stream")


def stream_text(cell: nbformat.NotebookNode, name: str = "stdout") -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == name)


# ------------------------------------------------------------------ cell jobs


@pytest.mark.parametrize("target", ["embedded", "server", "discovered"], indirect=True)
def test_cell_job_runs_setup_pushes_and_pulls(served):
    nb = run_notebook("magics_cell", served.workdir, served.env, session=True)
    result = json.loads(stream_text(nb.cells[4]))
    assert result == {"id": result["id"], "state": "succeeded", "c": 42, "d": [0, 2, 4, 6, 8], "pulled": ["c", "d"]}
    served.check_ran_on_server(result["id"], "succeeded")
    # Named as the notebook shows the cell that launched it.
    assert served.client.get_job(result["id"]).name == f"magics_cell.ipynb · In [{nb.cells[3].execution_count}]"

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
    # The ended job's Cancel button is gone, not turned into a red "Succeeded" button.
    assert layout_of(nb, view["jl-cancel"])["display"] == "none" and view["jl-cancel"]["description"] == "Cancel"
    # The log box follows its last line (a reversed column is anchored at its end); the plot follows the theme.
    log_layout = layout_of(nb, view["jl-log"])
    assert (log_layout["display"], log_layout["flex_flow"]) == ("flex", "column-reverse")
    assert "#fff" not in view["jl-plot"]["value"].replace("var(--jp-layout-color1, #fff)", "")
    link = f"/launch/api/jobs/{result['id']}/outputs/result.txt"
    assert (f'href="{served.server.url}{link}"' if served.kind == "server" else link) in view["jl-outputs"]["value"]
    assert "pulled c, d into this kernel" in view["jl-note"]["value"]
    # The widget's notice that the job ended, and how to fetch what it left.
    assert re.search(rf"\d\d:\d\d:\d\d: job {result['id']} succeeded \(took [^)]+\); its \d+ outputs?: "
                     rf"jupyter launch outputs {result['id']} --to DIR", html.unescape(view["jl-note"]["value"])), view
    assert served.client.read_output(result["id"], "result.txt") == b"42"
    # Where widgets are not rendered, the display's plain text tells how it ended.
    plain = next(o.data["text/plain"] for o in nb.cells[3].outputs if o.output_type == "display_data")
    assert plain.startswith(f"job {result['id']} on queue default: succeeded")
    assert plain.endswith("line 29")

    # --wait with a --pull of a name the cell never defines: the job fails, the cell raises one line.
    error = next(o for o in nb.cells[5].outputs if o.output_type == "error")
    assert error.ename == "JobFailed"
    assert len(error.traceback) == 1 and "never_defined" in error.traceback[0] and "failed" in error.traceback[0]
    assert [j.state for j in served.jobs()] == ["failed", "succeeded"]


ERRORS = [  # the cells of magics_errors.ipynb, in order, and what their one line says
    "UsageError: argument --gpus: invalid int value: 'lots'",
    "UsageError: %%launch --memory: expected a memory size like '8Gi' or '512Mi', got 'lots'",
    "UsageError: %%launch --timeout: expected a duration like 3600, '90s', '45m' or '1h', got 'soon'",
    "UsageError: %%launch --nodes: Input should be greater than or equal to 1",
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


def autoload_ipythondir(tmp_path: Path) -> str:
    """An IPYTHONDIR whose default profile enables the extension, as the README says to."""
    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_config.py").write_text("c.InteractiveShellApp.extensions = ['jupyter_launch']\n")
    return str(profile.parent)


def test_bad_arguments_give_one_line_usage_errors(target, tmp_path):
    """In a kernel whose profile loads the extension: the notebook's own %load_ext finds it loaded already."""
    nb = run_notebook("magics_errors", target.workdir, dict(target.env, IPYTHONDIR=autoload_ipythondir(tmp_path)))
    assert stream_text(nb.cells[0]).startswith("The jupyter_launch extension is already loaded.")
    got = [stream_text(cell, "stderr") for cell in nb.cells[1:]]
    assert len(got) == len(ERRORS)
    for text, expected in zip(got, ERRORS):
        assert text.count("\n") == 1, text
        assert text.rstrip("\n") == expected
    assert target.jobs() == []  # nothing was submitted


def test_cancel_button_cancels_the_job(served):
    nb = run_notebook("magics_cancel", served.workdir, served.env)
    assert stream_text(nb.cells[2]) == "cancelled\n"
    view = widget_parts(nb, 1)
    assert "cancelled" in view["jl-state"]["value"]
    assert view["jl-cancel"]["disabled"] is True
    # The ended job's Cancel button is gone (it used to turn into a red button naming the state).
    assert layout_of(nb, view["jl-cancel"])["display"] == "none"
    assert log_text(view["jl-log"]).startswith("started\n")
    assert "not reached" not in log_text(view["jl-log"])
    job, = served.jobs()
    assert job.state == "cancelled"
    served.check_ran_on_server(job.id, "cancelled")


def test_no_agent_for_the_queue_runs_one_in_the_kernel(client, kernel_env, tmp_path):
    assert client.live_agents("default") == []
    nb = run_notebook("magics_cancel", tmp_path, kernel_env)  # submit, then cancel: the in-kernel agent does both
    assert stream_text(nb.cells[2]) == "cancelled\n"
    view = widget_parts(nb, 1)
    assert "no agent served queue 'default': one now runs in this kernel" in html.unescape(view["jl-note"]["value"])
    assert client.live_agents("default") == []  # it stopped with the kernel


def test_a_cell_sweep_runs_one_job_per_combination_and_prints_its_table(client, kernel_env, tmp_path):
    nb = run_notebook("magics_sweep", tmp_path, kernel_env)  # no agent: one runs in the kernel
    out = stream_text(nb.cells[1])
    sweep_id = out.split("sweep ")[1].split(":")[0]
    children = client.sweep_jobs(sweep_id)
    assert sorted((j.spec["parameters"]["lr"], j.spec["parameters"]["epochs"]) for j in children) == [
        (0.01, 2), (0.01, 3), (0.1, 2), (0.1, 3)]
    assert {(j.state, j.priority, j.kind, j.parent_id) for j in children} == {("succeeded", 3, "cell", sweep_id)}
    table = out[out.index("JOB"):].splitlines()
    assert table[0].split() == ["JOB", "lr", "epochs", "STATE", "loss"]
    assert [row.split()[4] for row in table[1:]] == ["0.2", "0.3", "0.02", "0.03"]  # no metric named: in order


def test_through_a_server_a_queue_no_agent_serves_waits_for_one(launch_server, tmp_path):
    """No agent starts in the kernel for the server's queue: the job waits on the server, and the view says why."""
    from jupyter_client.manager import start_new_kernel

    from jupyter_launch.remote.client import connect
    from jupyter_launch.spec import QueueConfig, validate

    client = connect(launch_server.url, SERVER_TOKEN, home=tmp_path / "test-home")
    client.create_queue(validate(QueueConfig, {"queue_name": "unserved", "provider": {"type": "local"}}, "<test>"))
    env = dict(base_env(tmp_path), JUPYTER_LAUNCH_SERVER_URL=launch_server.url, JUPYTER_LAUNCH_TOKEN=SERVER_TOKEN,
               JUPYTER_LAUNCH_HOME=str(tmp_path / "kernel-home"))
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path), env=env)
    out: list[str] = []
    try:
        code = ("%load_ext jupyter_launch\n"
                "job = get_ipython().run_cell_magic('launch', '--queue unserved', 'print(1)')\n"
                "import time\n"
                "time.sleep(2)\n"
                "print(job.id, job.status)\n"
                "print(*job.view.notes, sep='\\n')\n")
        reply = kc.execute_interactive(code, timeout=60, output_hook=lambda msg: out.append(
            msg["content"]["text"] if msg["msg_type"] == "stream" else ""))
        assert reply["content"]["status"] == "ok", reply["content"]
        first, note = "".join(out).splitlines()
        job_id, state = first.split()
        assert state == "queued"
        assert note == (f"no agent serves queue 'unserved' on {launch_server.url}/; the job waits for one "
                        "(`jupyter launch agent --server URL --queue unserved`, with an agent token in "
                        "$JUPYTER_LAUNCH_TOKEN or --token-file FILE)")
        assert client.live_agents("unserved") == []
        assert launch_server.api("GET", f"jobs/{job_id}")[1]["state"] == "queued"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        client.delete_queue("unserved", force=True)
        client.close()


@pytest.mark.parametrize("where", ["unreachable", "wrong token"])
def test_a_server_that_refuses_is_one_line_usage_error(launch_server, tmp_path, where):
    url, token = ("http://127.0.0.1:9", SERVER_TOKEN) if where == "unreachable" else (launch_server.url, "wrong")
    script = tmp_path / "launch.ipy"
    script.write_text("%load_ext jupyter_launch\nget_ipython().run_cell_magic('launch', '', 'print(1)')\n")
    env = dict(base_env(tmp_path), JUPYTER_LAUNCH_SERVER_URL=url, JUPYTER_LAUNCH_TOKEN=token)
    proc = subprocess.run([sys.executable, "-m", "IPython", "--quick", "--no-banner", "--colors=nocolor", str(script)],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    expected = (f"UsageError: %%launch: cannot reach the jupyter-launch server at {url}/: " if where == "unreachable"
                else f"UsageError: %%launch: the server at {url}/ refused the token: ")
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(expected), proc.stderr


# ------------------------------------------------------------------ whole notebooks


def test_launch_submits_this_notebook_as_saved(served):
    client = served.client
    nb = run_notebook("magics_notebook", served.workdir, served.env, session=True)
    assert stream_text(nb.cells[1]) == "greeting: default in kernel\n"
    state, job_id = stream_text(nb.cells[4]).split()
    assert state == "succeeded"
    served.check_ran_on_server(job_id, "succeeded")
    log = client.job(job_id).logs()
    assert "greeting: hello in job\n" in log  # the parameter reached the job
    assert f"%launch: inside job {job_id}; not submitting this notebook again\n" in log
    assert [o.path for o in client.outputs(job_id)] == ["magics_notebook.html", "magics_notebook.ipynb"]
    assert "succeeded" in widget_parts(nb, 3)["jl-state"]["value"]
    # A %%launch cell in a launched notebook runs right there, in the job; from the kernel it is a job of its own.
    assert f"cell body in {job_id}\n" in log
    cell_job = next(j for j in served.jobs() if j.id != job_id)
    assert len(served.jobs()) == 2 and cell_job.kind == "cell"
    assert client.job(cell_job.id).logs() == f"cell body in {cell_job.id}\n"


def test_launch_refuses_a_notebook_with_unsaved_changes(target):
    edited = "%launch --wait --param greeting=edited"
    with pytest.raises(Exception) as info:
        run_notebook("magics_notebook", target.workdir, target.env, session=True, edit={3: edited})
    assert "magics_notebook.ipynb on disk does not have this cell yet (unsaved changes): save the notebook" \
        in str(info.value)
    assert target.jobs() == []


# ------------------------------------------------------------------ --wait and interrupts


def _execute(kc: Any, code: str, *, interrupt: Any) -> tuple[dict[str, Any], float | None]:
    """Run ``code`` with stdin allowed, call ``interrupt()`` until it returns true; the execute reply and the seconds
    from the interrupt to the reply. A prompt for input fails the test: an interrupt must not ask anything."""
    msg_id = kc.execute(code, allow_stdin=True)
    interrupted_at = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if interrupted_at is None and interrupt():
            interrupted_at = time.monotonic()
        try:
            request = kc.get_stdin_msg(timeout=0.05)
        except queue.Empty:
            pass
        else:
            raise AssertionError(f"the interrupt asked: {request['content']['prompt']!r}")
        try:
            reply = kc.get_shell_msg(timeout=0.05)
        except queue.Empty:
            continue
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"], (time.monotonic() - interrupted_at if interrupted_at else None)
    raise AssertionError("no reply")


@pytest.mark.parametrize("detach", [False, True])
def test_interrupting_wait_cancels_the_job_at_once_in_one_line(served, detach):
    from jupyter_client.manager import start_new_kernel

    client = served.client
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(served.workdir), env=served.env)
    try:
        assert kc.execute_interactive("%load_ext jupyter_launch", timeout=60)["content"]["status"] == "ok"

        def started() -> bool:
            jobs = served.jobs()
            if jobs and "started" in client.job(jobs[0].id).logs():
                km.interrupt_kernel()
                return True
            return False

        flags = "--wait --detach-on-interrupt" if detach else "--wait"
        reply, took = _execute(kc, f"%%launch {flags}\nimport time\nprint('started', flush=True)\ntime.sleep(120)",
                               interrupt=started)
        job, = served.jobs()
        assert (reply["status"], reply["ename"]) == ("error", "JobInterrupted")
        if detach:
            assert reply["traceback"] == [f"KeyboardInterrupt: stopped waiting; job {job.id} goes on (jupyter launch "
                                          f"cancel {job.id} stops it)"]
            assert client.job(job.id).status == "running"
            client.cancel(job.id)
        else:
            assert reply["traceback"] == [f"KeyboardInterrupt: job {job.id} cancelled (--detach-on-interrupt leaves a "
                                          "job running)"]
            assert client.get_job(job.id).state == "cancelled"  # ended by the time the cell did
            print(f"interrupt to the cell's end: {took:.2f} s")
        assert client.job(job.id).wait(timeout=60).state == "cancelled"
        served.check_ran_on_server(job.id, "cancelled")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# ------------------------------------------------------------------ a terminal IPython


def test_terminal_ipython_gets_plain_text(served, tmp_path):
    """Also: the extension loads from the profile's ipython_config.py, and loading it again keeps its magics."""
    script = served.workdir / "launch.ipy"
    script.write_text("import jupyter_launch\n"
                      "magics = get_ipython().magics_manager.registry['LaunchMagics']\n"
                      "jupyter_launch.load_ipython_extension(get_ipython())\n"
                      "assert get_ipython().magics_manager.registry['LaunchMagics'] is magics\n"
                      "get_ipython().run_cell_magic('launch', '--wait --pull answer', "
                      "'print(\"hello from the job\")\\nanswer = 6 * 7\\n')\n"
                      "print('answer is', answer)\n")
    env = dict(served.env, IPYTHONDIR=autoload_ipythondir(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "IPython", "--no-banner", "--colors=nocolor", str(script)],
                          env=env, capture_output=True, text=True, timeout=120, cwd=served.workdir)
    assert proc.returncode == 0, proc.stderr
    job, = served.jobs()
    served.check_ran_on_server(job.id, "succeeded")
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"job {job.id} submitted to queue default: ")  # queued, or claimed already
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


def test_a_kernel_finds_the_server_that_started_it_first(monkeypatch):
    from jupyter_launch.remote import discovery as remote

    servers = [{"pid": 2, "url": "http://newest/", "token": "b"}, {"pid": 1, "url": "http://parent/", "token": "a"}]
    monkeypatch.setattr(remote, "_running_servers", lambda: [dict(s) for s in servers])
    monkeypatch.setattr(remote, "probe", lambda url, token: True)
    monkeypatch.setenv("JPY_PARENT_PID", "1")
    assert remote.discover_server() == ("http://parent/", "a")
    monkeypatch.delenv("JPY_PARENT_PID")
    assert remote.discover_server() == ("http://newest/", "b")


def test_push_names_and_pickling():
    assert _names(["a, b", "a", "c"], "--push") == ["a", "b", "c"]
    data = pickle_variables({"f": lambda x: x + 1, "n": 3}, ["f", "n"])
    import cloudpickle

    values = cloudpickle.loads(data)
    assert values["f"](1) == 2 and values["n"] == 3
