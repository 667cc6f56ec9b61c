"""The job runner: runs inside a job (process, container, pod) and executes its notebook or cell, streaming output live.

``python -m jupyter_launch.runner JOBFILE`` runs one job and exits 0 (succeeded) or 1 (failed).
``python -m jupyter_launch.runner --warm [--kernel NAME]`` starts a kernel first, prints ``ready``, then reads one line
``{"job_file": ..., "cwd": ..., "env": {...}}`` from stdin and runs that job the same way, without waiting for a kernel.
``--no-report`` leaves the HTML report to the backend (:mod:`jupyter_launch.report`): the runner then never loads
nbconvert.

What the user's code prints goes to this process's stdout and stderr as it arrives, unchanged. Control records
(:mod:`jupyter_launch.control`) report each code cell's start as progress, and exactly one ``result`` record at the end,
flushed once the executed notebook and HTML report (unless ``--no-report``) are in the output folder and before the
kernel is shut down: from that record on, the job's log and files are complete, and what is left is only this process
ending.
Progress and messages name a cell as :func:`control.cell_name` does: ``In [n]`` as Jupyter shows it, its place among
the code cells (from 1) and its id.

The returned notebook is the one nbclient writes: outputs as the kernel sent them (no merging of streams, ``\r``
kept), widget state in ``metadata.widgets``. A cell that raises ``SystemExit`` with a clean status (``sys.exit()``,
``sys.exit(0)``) ends the run early as a success, as papermill has it, its output kept in the cell; any other status
fails the job like an error.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from jupyter_launch.report import skip_format_checkers

    skip_format_checkers()  # before nbformat is imported: see there

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import keyword  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from queue import Empty  # noqa: E402
from typing import Any  # noqa: E402

import nbformat  # noqa: E402
from jupyter_client.channels import AsyncZMQSocketChannel  # noqa: E402
from jupyter_client.kernelspec import NoSuchKernel  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402
from nbclient import NotebookClient  # noqa: E402
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError  # noqa: E402
from nbformat import NotebookNode  # noqa: E402

from . import control  # noqa: E402
from .errors import LaunchError  # noqa: E402
from .lifetime import die_with_parent  # noqa: E402
from .report import html_exporter, write_report  # noqa: E402

DEFAULT_KERNEL = "python3"
DEFAULT_OUTPUT_DIR = "outputs"
STARTUP_TIMEOUT = 60.0
SETTLE = 0.2  # seconds of silence on iopub after the kernel is ready, before its first request (see wait_for_ready)
SHUTDOWN_QUIET_TIMEOUT = 5.0  # for the kernel to run _QUIET_SHUTDOWN_CODE before its shutdown request
# The longest a wait for a kernel message blocks before looking at the socket again (see SlicedChannel).
POLL_SLICE = 0.1
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
# Statuses of SystemExit that mean "done, all is well", as IPython reports them in the error's evalue.
CLEAN_EXIT_VALUES = frozenset({"", "0", "None", "False"})

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
# ipykernel sends each write() whole within one stream message, so a record (one write) never spans two messages.
_RECORD = re.compile(re.escape(control.MARK_STR) + r"[^\n]*\n")

_PUSH_CODE = """\
def _jupyter_launch_push(path):
    import cloudpickle
    with open(path, "rb") as file:
        globals().update(cloudpickle.load(file))
try:
    _jupyter_launch_push({path})
finally:
    del _jupyter_launch_push
"""

_PULL_CODE = """\
def _jupyter_launch_pull(names, path):
    import cloudpickle
    namespace = globals()
    missing = [name for name in names if name not in namespace]
    if missing:
        raise NameError(", ".join(map(repr, missing)) + " not defined in the kernel")
    values = {{name: namespace[name] for name in names}}
    try:
        data = cloudpickle.dumps(values)
    except Exception:
        for name, value in values.items():
            try:
                cloudpickle.dumps(value)
            except Exception as exc:
                kind = type(value).__module__ + "." + type(value).__qualname__
                raise TypeError(f"{{name!r}} (a {{kind}}) cannot be pickled: {{exc}}") from None
        raise
    with open(path, "wb") as file:
        file.write(data)
try:
    _jupyter_launch_pull({names}, {path})
finally:
    del _jupyter_launch_pull
"""

_ENTER_CODE = """\
import os as _jupyter_launch_os
_jupyter_launch_os.chdir({cwd})
_jupyter_launch_os.environ.update({env})
del _jupyter_launch_os
"""

# Run in an ipykernel kernel just before it is asked to shut down. ipykernel (7.4 included) races at shutdown: the
# control thread, done with the shutdown request, flushes stderr and publishes "idle" through the iopub thread's event
# pipe while the main thread is closing that pipe, and tornado then logs "Uncaught exception in ZMQStream callback ...
# ZMQError: Socket operation on non-socket" to the kernel's stderr, which is the job's log. Only that error is
# dropped, and only in tornado's callback logger; whatever else the kernel or the job's own exit handlers write at
# shutdown still reaches the log.
_QUIET_SHUTDOWN_CODE = """\
import logging as _jupyter_launch_logging, zmq as _jupyter_launch_zmq

class _JupyterLaunchShutdownRace(_jupyter_launch_logging.Filter):
    def filter(self, record, _zmq=_jupyter_launch_zmq):
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, _zmq.ZMQError) and exc.errno == _zmq.ENOTSOCK)

for _jupyter_launch_name in ("tornado.general", "tornado.application"):
    _jupyter_launch_logging.getLogger(_jupyter_launch_name).addFilter(_JupyterLaunchShutdownRace())
del _jupyter_launch_logging, _jupyter_launch_zmq, _JupyterLaunchShutdownRace, _jupyter_launch_name
"""


class JobError(LaunchError):
    """A job that cannot run as asked: carries the result's reason and a one-line message."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Outcome:
    state: str  # "succeeded" | "failed"
    reason: str
    message: str | None = None

    @property
    def record(self) -> dict[str, Any]:
        return {"type": "result", "state": self.state, "reason": self.reason, "message": self.message}


@dataclass(frozen=True)
class JobFile:
    """What to run, as the agent wrote it to ``.jupyter-launch/job.json``."""

    kind: str
    notebook: str | None = None
    code: str | None = None
    setup: tuple[str, ...] = ()
    push: str | None = None
    pull: tuple[str, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    kernel: str | None = None
    timeout_per_cell: float | None = None

    @classmethod
    def load(cls, path: Path) -> JobFile:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise JobError("invalid_job", f"cannot read the job file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise JobError("invalid_job", f"the job file {path} is not a JSON object")
        kind = data.get("kind")
        if kind == "notebook" and not isinstance(data.get("notebook"), str):
            raise JobError("invalid_job", "a notebook job needs a 'notebook' path")
        if kind == "cell" and not isinstance(data.get("code"), str):
            raise JobError("invalid_job", "a cell job needs its 'code'")
        if kind not in ("notebook", "cell"):
            raise JobError("invalid_job", f"the runner runs notebook and cell jobs, not {kind!r}")
        setup, pull = data.get("setup") or [], data.get("pull") or []
        if not all(isinstance(s, str) for s in setup) or not all(isinstance(n, str) for n in pull):
            raise JobError("invalid_job", "'setup' and 'pull' must be lists of strings")
        parameters = data.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise JobError("invalid_parameters", "'parameters' must be an object of name: value")
        timeout = data.get("timeout_per_cell")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))):
            raise JobError("invalid_job", f"'timeout_per_cell' must be a number of seconds, not {timeout!r}")
        return cls(kind=kind, notebook=data.get("notebook"), code=data.get("code"), setup=tuple(setup),
                   push=data.get("push"), pull=tuple(pull), parameters=parameters, kernel=data.get("kernel"),
                   timeout_per_cell=float(timeout) if timeout else None)


# ------------------------------------------------------------------ parameters


def python_literal(value: Any, name: str = "value") -> str:
    """Python source that evaluates to ``value``; only plain data is accepted, never pasted text."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return int.__repr__(value)  # not the subclass's repr: an IntEnum's is not Python source
    if isinstance(value, float):
        if math.isnan(value):
            return "float('nan')"
        if math.isinf(value):
            return "float('inf')" if value > 0 else "float('-inf')"
        return float.__repr__(value)
    if isinstance(value, str):
        return str.__repr__(value)
    if isinstance(value, list):
        return "[" + ", ".join(python_literal(v, name) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + "".join(python_literal(v, name) + ", " for v in value) + ")"
    if isinstance(value, dict):
        items = (f"{python_literal(k, name)}: {python_literal(v, name)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise JobError("invalid_parameters", f"parameter {name!r}: a {type(value).__name__} cannot be passed; "
                                         "use str, int, float, bool, None, or lists and dicts of them")


def parameters_source(parameters: dict[str, Any]) -> str:
    """The injected cell's code: one assignment per parameter."""
    lines = ["# Parameters"]
    for name, value in parameters.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise JobError("invalid_parameters", f"parameter name {name!r} is not a valid Python identifier")
        lines.append(f"{name} = {python_literal(value, name)}")
    return "\n".join(lines) + "\n"


def inject_parameters(nb: NotebookNode, parameters: dict[str, Any]) -> None:
    """Insert a cell tagged ``injected-parameters`` after the cell tagged ``parameters`` (or first), like papermill."""
    if not parameters:
        return
    cell = nbformat.v4.new_code_cell(parameters_source(parameters), metadata={"tags": [INJECTED_TAG]})
    # A notebook that comes out of an earlier job carries that job's values: replace them.
    nb.cells = [c for c in nb.cells if INJECTED_TAG not in c.metadata.get("tags", [])]
    tagged = [i for i, c in enumerate(nb.cells) if PARAMETERS_TAG in c.metadata.get("tags", [])]
    nb.cells.insert(tagged[0] + 1 if tagged else 0, cell)


# ------------------------------------------------------------------ notebooks


def read_notebook(path: Path) -> NotebookNode:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobError("invalid_notebook", f"cannot read {path}: {exc}") from None
    try:
        nb = nbformat.reads(text, as_version=4)
        _check_runnable(nb)
        nb.setdefault("nbformat_minor", 0)  # nbconvert runs a notebook that lacks it; so do we
        if nb.nbformat_minor < 5:
            nb = nbformat.v4.upgrade(nb, from_version=4, from_minor=nb.nbformat_minor)  # cell ids, for injected cells
    except Exception as exc:  # nbformat raises many kinds on bad input (NotJSONError, ValidationError, KeyError...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise JobError("invalid_notebook", f"{path} is not a valid notebook: {first}") from None
    return nb


def _check_runnable(nb: NotebookNode) -> None:
    """What running needs, which ``nbformat.reads`` only logs when it is missing (it does not refuse an invalid
    notebook, and Jupyter opens many that fail its schema in small ways). Like nbclient, the runner passes over
    cells that are not code whatever they hold (a markdown cell without source, a cell type of a later nbformat)."""
    kernelspec = nb.get("metadata", {}).get("kernelspec", {}) if isinstance(nb.get("metadata"), dict) else None
    if not isinstance(kernelspec, dict) or not isinstance(kernelspec.get("name", ""), str):
        raise ValueError("its metadata.kernelspec is not a mapping with a kernel name")
    if not isinstance(nb.get("nbformat_minor", 0), int):
        raise ValueError("nbformat_minor is not a number")
    total = len(nb.cells)
    for index, cell in enumerate(nb.cells):
        if not (isinstance(cell, dict) and isinstance(cell.get("cell_type"), str)
                and isinstance(cell.get("metadata"), dict)):
            raise ValueError(f"its cell {index + 1} of {total} lacks a cell_type or metadata")
        if cell.cell_type == "code" and not isinstance(cell.get("source"), str):
            raise ValueError(f"its cell {index + 1} of {total} is a code cell without source")


def cell_notebook(job: JobFile) -> NotebookNode:
    cells = [nbformat.v4.new_code_cell(source) for source in (*job.setup, job.code or "")]
    return nbformat.v4.new_notebook(cells=cells)


async def write_outputs(nb: NotebookNode, out_dir: Path, stem: str, exporter: asyncio.Future[Any] | None) -> None:
    """The executed notebook, then its HTML report (unless ``exporter`` is None: the backend renders it); a failed
    report only warns: the notebook is the record."""
    try:
        await asyncio.to_thread(nbformat.write, nb, str(out_dir / f"{stem}.ipynb"))
    except OSError as exc:
        _warn(f"the executed notebook was not written: {exc}")
        return
    if exporter is None:
        return
    try:
        await asyncio.to_thread(write_report, await exporter, nb, out_dir / f"{stem}.html")
    except Exception as exc:  # any exporter failure (templates, a broken output): keep the job's result
        _warn(f"the HTML report was not written ({type(exc).__name__}: {exc}); {stem}.ipynb has the outputs")


def _warn(text: str) -> None:
    sys.stderr.write(f"[jupyter-launch] warning: {text}\n")
    sys.stderr.flush()


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(control.encode(record))
    sys.stdout.flush()


# ------------------------------------------------------------------ kernels


class SlicedChannel(AsyncZMQSocketChannel):
    """A kernel channel whose waits never block on the socket for more than :data:`POLL_SLICE` seconds at a time.

    nbclient waits for a cell's ``execute_reply`` with ``get_msg(timeout=None)``. While it waits, its mimic of the
    Output widget sends ``comm_msg`` updates to the kernel (one for each output captured by a ``with out:`` block),
    and the wait sometimes misses the wake-up for a reply already in the socket: the run hangs with the reply unread
    (jupyter/nbclient#312; docs/fidelity.md has the measurements). A wait cut into slices looks at the socket again
    after each slice, so a missed wake-up costs at most one slice.
    """

    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = POLL_SLICE if deadline is None else min(POLL_SLICE, max(deadline - loop.time(), 0.0))
            try:
                return await super().get_msg(timeout=left)
            except Empty:
                if deadline is not None and loop.time() >= deadline:
                    raise


class Kernel:
    """A kernel this runner started, and a client connected to it.

    The kernel writes to this runner's own stdout and stderr, and ipykernel's capture of fds 1 and 2 is off: with it
    on, output written at the fd level (a subprocess, C code) is echoed to the original fds and also sent as stream
    messages that can arrive after the cell's idle status, so the log got it twice, or the notebook not at all.
    """

    def __init__(self, name: str, manager: AsyncKernelManager, ipykernel: bool = False):
        self.name = name
        self.manager = manager
        self.ipykernel = ipykernel  # it runs ipykernel (its command line says so)
        self.client = manager.client(shell_channel_class=SlicedChannel, iopub_channel_class=SlicedChannel)
        self.info: dict[str, Any] = {}  # the kernel_info reply's content

    @classmethod
    async def start(cls, name: str, cwd: Path, scratch: Path) -> Kernel:
        # IPC sockets in the scratch folder: no TCP port to race for, nothing reachable from the network.
        manager = AsyncKernelManager(kernel_name=name, transport="ipc", connection_file=str(scratch / "kernel.json"))
        try:
            # Any kernelspec that runs ipykernel, not only the ones named python3 (jupyter_client's test).
            ipykernel = any("ipykernel" in arg for arg in manager.kernel_spec.argv)  # type: ignore[union-attr]
            extra = ["--HistoryManager.hist_file=:memory:", "--IPKernelApp.capture_fd_output=False"]
            # The kernel is a new session (jupyter_client's choice), out of reach of signals to our group:
            # PR_SET_PDEATHSIG is what ends it when this runner is killed.
            await manager.start_kernel(cwd=str(cwd), preexec_fn=die_with_parent(),
                                       extra_arguments=extra if ipykernel else [])
        except NoSuchKernel:
            from jupyter_client.kernelspec import KernelSpecManager

            installed = ", ".join(sorted(KernelSpecManager().find_kernel_specs())) or "none"
            raise JobError("kernel_start_failed", f"no kernel named {name!r} in the job's environment "
                                                  f"(installed: {installed})") from None
        kernel = cls(name, manager, ipykernel)
        kernel.client.start_channels()
        try:
            await kernel.wait_for_ready(STARTUP_TIMEOUT)
        except RuntimeError as exc:
            await kernel.shutdown(now=True)
            raise JobError("kernel_start_failed", f"the {name!r} kernel did not start: {exc}") from None
        kernel.client.allow_stdin = False
        return kernel

    async def wait_for_ready(self, timeout: float) -> None:
        """Ask ``kernel_info`` until its reply is in and iopub is known to be subscribed; keep the reply in ``info``.

        iopub is up once it delivers the kernel's welcome (JEP 65, ipykernel 7) or the idle status of one of our
        requests; a request made before the subscription joined loses its status, so the request is repeated every
        half second. Then, as jupyter_client's ``wait_for_ready`` does, it listens to iopub until it has been silent
        for :data:`SETTLE` seconds. Without that wait (tried: it saves every cold job 0.2 s) a cell run at once
        in a fresh ipykernel 7 sometimes had its outputs in another order than it wrote them: ``print("a")``,
        ``print("b", file=sys.stderr)``, ``raise`` came back stderr first in 13 runs of 84 under load (nbclient: 0
        of 48; with the wait: 0 of 48; docs/fidelity.md). A warm kernel pays it before its job.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sent: set[str] = set()

        async def reply() -> dict[str, Any]:
            while True:
                msg = await self.client.get_shell_msg(timeout=max(deadline - loop.time(), 0.001))
                if msg["msg_type"] == "kernel_info_reply" and msg["parent_header"].get("msg_id") in sent:
                    return msg

        async def subscribed() -> None:
            while True:
                msg = await self.client.get_iopub_msg(timeout=max(deadline - loop.time(), 0.001))
                if msg["msg_type"] == "iopub_welcome" or (
                        msg["msg_type"] == "status" and msg["parent_header"].get("msg_id") in sent):
                    return

        waits = [asyncio.ensure_future(reply()), asyncio.ensure_future(subscribed())]
        try:
            while not all(w.done() for w in waits):
                if loop.time() > deadline:
                    raise RuntimeError(f"no reply to kernel_info in {timeout:g} s")
                if not await self.manager.is_alive():
                    raise RuntimeError("it exited before replying")
                sent.add(self.client.kernel_info())
                await asyncio.wait(waits, timeout=0.5)
                for w in waits:
                    if w.done() and w.exception() is not None:
                        raise RuntimeError(f"no reply to kernel_info in {timeout:g} s")
        finally:
            for w in waits:
                w.cancel()
        while True:  # until iopub is quiet
            try:
                await self.client.get_iopub_msg(timeout=SETTLE)
            except Empty:
                break
        content = waits[0].result()["content"]
        major = int(str(content.get("protocol_version", "5")).split(".")[0] or 5)
        if major != 5:
            self.client.session.adapt_version = major  # as jupyter_client does on a kernel_info reply
        self.info = content

    async def _next_msg(self, get: Any) -> dict[str, Any]:
        """The next message from a channel's ``get_msg``, however long it takes, as long as the kernel lives."""
        while True:
            try:
                return await get(timeout=1)
            except Empty:
                if not await self.manager.is_alive():
                    raise DeadKernelError("Kernel died") from None

    async def run_silently(self, code: str) -> dict[str, Any]:
        """Run code the notebook does not show; the execute_reply's content (status, ename, evalue)."""
        msg_id = self.client.execute(code, silent=True, store_history=False, allow_stdin=False)
        while True:
            reply = await self._next_msg(self.client.get_shell_msg)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]

    async def run_until_idle(self, code: str) -> None:
        """Run code the notebook does not show, and wait for the kernel's idle status after it.

        The reply comes before ipykernel has put its SIGINT handler back: jupyter_client's shutdown interrupts the
        kernel first, and in that gap the interrupt is a ``KeyboardInterrupt caught in kernel`` line in the log.
        """
        msg_id = self.client.execute(code, silent=True, store_history=False, allow_stdin=False)
        while True:
            msg = await self._next_msg(self.client.get_iopub_msg)
            if (msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle"
                    and msg["parent_header"].get("msg_id") == msg_id):
                return

    async def enter(self, cwd: Path, env: dict[str, str]) -> None:
        """Move a kernel started ahead of its job (warm) into the job's working folder and environment."""
        reply = await self.run_silently(_ENTER_CODE.format(cwd=python_literal(str(cwd)), env=python_literal(env)))
        if reply["status"] != "ok":
            raise JobError("kernel_start_failed", f"cannot move the warm kernel into the job: {reply.get('evalue')}")

    async def how_it_ended(self) -> str:
        """How a dead kernel's process ended, for the job's message: an OOM kill shows as SIGKILL."""
        code = await self.manager.provisioner.poll() if self.manager.provisioner else None
        if code is None:
            return "it stopped answering"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    async def shutdown(self, now: bool) -> None:
        if not now and self.ipykernel:
            with contextlib.suppress(Exception):  # a kernel that cannot take it is shut down all the same
                await asyncio.wait_for(self.run_until_idle(_QUIET_SHUTDOWN_CODE), SHUTDOWN_QUIET_TIMEOUT)
        self.client.stop_channels()
        await self.manager.shutdown_kernel(now=now)


# ------------------------------------------------------------------ execution


class StreamingClient(NotebookClient):
    """An nbclient NotebookClient that also writes each output to this process's stdout/stderr as it arrives.

    Stream text is written as printed; a rich output shows its ``text/plain``; an error its traceback (on stderr,
    without ANSI colours). Control records are forwarded to stdout and kept out of the stored notebook.
    """

    def output(self, outs: list[NotebookNode], msg: dict[str, Any], display_id: str | None,
               cell_index: int) -> NotebookNode | None:
        msg_type, content = msg["msg_type"], msg["content"]
        if msg_type == "stream":
            text = content.get("text", "")
            records = _RECORD.findall(text)
            plain = _RECORD.sub("", text) if records else text
            if content.get("name") == "stderr":
                _write(sys.stdout, "".join(records))
                _write(sys.stderr, plain)
            else:
                _write(sys.stdout, text)
            if not plain:
                return None
            content["text"] = plain
        elif msg_type in ("display_data", "execute_result"):
            data = content.get("data", {})
            summary = data.get("text/plain") or "[" + ", ".join(sorted(data)) + "]"
            _write(sys.stdout, summary if summary.endswith("\n") else summary + "\n")
        elif msg_type == "error":
            _write(sys.stderr, _ANSI.sub("", "\n".join(content.get("traceback", []))) + "\n")
        return super().output(outs, msg, display_id, cell_index)


def _write(stream: Any, text: str) -> None:
    if text:
        stream.write(text)
        stream.flush()


def is_clean_exit(ename: str | None, evalue: str | None) -> bool:
    return ename == "SystemExit" and (evalue or "") in CLEAN_EXIT_VALUES


async def execute_cells(client: StreamingClient, nb: NotebookNode, kernel: Kernel,
                        cancelled: Callable[[], bool] = lambda: False) -> Outcome:
    """Run the code cells in order, reporting progress before each; stop at the first failure or clean exit.

    Each progress record carries the cell about to run (``execution_count``, ``index`` among the code cells from 1,
    ``id``) and names it (:func:`control.cell_name`) as its description; so do the result's messages. The widget
    state is stored in the notebook's metadata however the run ends, as nbclient stores it.

    ``cancelled`` is asked before each cell: a cancel that lands just as a cell ends can be lost inside nbclient (its
    ``asyncio.wait_for`` on the cell's last output returns the output, and drops the cancellation, when both are due
    at once), and the next cell would then run as if nothing had been asked.
    """
    numbered = enumerate((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), start=1)
    # The cells nbclient runs: not empty, not tagged skip-execution.
    code_cells = [(number, i) for number, i in numbered if nb.cells[i].source.strip()
                  and client.skip_cells_with_tag not in nb.cells[i].metadata.get("tags", [])]
    total = len(code_cells)
    try:
        for done, (number, index) in enumerate(code_cells):
            if cancelled():
                raise asyncio.CancelledError
            count = client.code_cells_executed + 1  # the prompt nbclient gives it, In [count]
            cell = {"execution_count": count, "index": number, "id": nb.cells[index].get("id")}
            name = control.cell_name(cell)
            _emit({"type": "progress", "value": done, "total": total, "description": name, "cell": cell})
            try:
                await client.async_execute_cell(nb.cells[index], index, execution_count=count)
            except CellExecutionError as exc:
                if is_clean_exit(exc.ename, exc.evalue):
                    return Outcome("succeeded", "completed", f"stopped early at {name}: SystemExit({exc.evalue})")
                return Outcome("failed", "cell_error", f"{name}: {exc.ename}: {exc.evalue}")
            except CellTimeoutError:
                return Outcome("failed", "timeout", f"{name} ran past its timeout of {client.timeout} s")
            except DeadKernelError:
                return Outcome("failed", "kernel_died",
                               f"the kernel died while running {name} ({await kernel.how_it_ended()})")
    finally:
        client.set_widgets_metadata()
    _emit({"type": "progress", "value": total, "total": total, "description": "done", "cell": None})
    return Outcome("succeeded", "completed")


class Runner:
    """Runs one job in this process's working folder, with a kernel it starts or one started before (warm)."""

    def __init__(self, scratch: Path, kernel: Kernel | None = None, exporter: asyncio.Future[Any] | None = None,
                 report: bool = True):
        self.scratch = scratch
        self.kernel = kernel
        self.exporter = exporter  # the HTML report's, made ahead
        self.report = report  # False: the backend renders the report (:mod:`.report`), after the result record
        self.cancelled = False

    async def run(self, job_path: Path, kernel_env: dict[str, str] | None = None) -> int:
        """Run the job; ``kernel_env`` is set in an already started kernel first. Returns the exit code."""
        out_dir = Path(os.environ.get(control.OUTPUT_DIR_ENV) or DEFAULT_OUTPUT_DIR).absolute()
        os.environ[control.OUTPUT_DIR_ENV] = str(out_dir)  # the kernel's control.output_dir() finds it
        nb: NotebookNode | None = None
        stem, exporter = "cell", None
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._cancel, task)
        try:
            job = JobFile.load(job_path)
            if job.kind == "notebook":
                stem = Path(job.notebook or "").stem
                nb = read_notebook(Path(job.notebook or ""))
                if self.report:
                    exporter = self.exporter or asyncio.ensure_future(asyncio.to_thread(html_exporter))
            else:
                nb = cell_notebook(job)
            inject_parameters(nb, job.parameters)
            out_dir.mkdir(parents=True, exist_ok=True)
            outcome = await self._execute(job, nb, {**(kernel_env or {}), control.OUTPUT_DIR_ENV: str(out_dir)})
        except JobError as exc:
            outcome = Outcome("failed", exc.reason, exc.message)
        except DeadKernelError:  # outside a cell: loading pushed variables, pulling
            outcome = Outcome("failed", "kernel_died", "the kernel died")
        except asyncio.CancelledError:
            outcome = Outcome("failed", "cancelled", "stopped by a signal")
        except Exception as exc:  # a bug or an unusable environment: the job still gets its one result
            import traceback

            traceback.print_exc()
            outcome = Outcome("failed", "runner_error", f"{type(exc).__name__}: {exc}")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if self.cancelled:  # nbclient reports a cell cancelled under it as a dead kernel
            outcome = Outcome("failed", "cancelled", "stopped by a signal")
        # The outputs are written, then the result goes out, then the kernel is shut down: the result record says the
        # job's files are complete, so the agent can end the job there, while a kernel's shutdown (which sometimes
        # stalls for seconds) and this interpreter's exit go on behind it.
        kernel, shutting = self.kernel, None
        if kernel is not None and outcome.reason in ("timeout", "kernel_died", "cancelled"):
            shutting = asyncio.create_task(kernel.shutdown(now=True))  # nothing more to wait for from it
        if nb is not None and out_dir.is_dir():
            try:
                await write_outputs(nb, out_dir, stem, exporter)
            except Exception as exc:  # write_outputs warns for what it expects; this is for the rest
                _warn(f"the outputs were not written: {type(exc).__name__}: {exc}")
        _emit(outcome.record)
        if kernel is not None:
            try:
                await (shutting or kernel.shutdown(now=False))
            except Exception as exc:
                _warn(f"after the job, shutting the kernel down: {type(exc).__name__}: {exc}")
        return 0 if outcome.state == "succeeded" else 1

    def _cancel(self, task: asyncio.Task[Any] | None) -> None:
        self.cancelled = True
        if task is not None:
            task.cancel()

    async def _execute(self, job: JobFile, nb: NotebookNode, kernel_env: dict[str, str]) -> Outcome:
        kernel_name = job.kernel or nb.metadata.get("kernelspec", {}).get("name") or DEFAULT_KERNEL
        if self.kernel is not None and self.kernel.name != kernel_name:
            await self.kernel.shutdown(now=True)  # the warm kernel is the wrong language for this job
            self.kernel = None
        if self.kernel is None:
            self.kernel = await Kernel.start(kernel_name, Path.cwd(), self.scratch)
        else:
            await self.kernel.enter(Path.cwd(), kernel_env)
        kernel = self.kernel
        spec = kernel.manager.kernel_spec
        if spec is not None and "kernelspec" not in nb.metadata:  # a cell job's notebook opens with its kernel
            nb.metadata["kernelspec"] = {"name": kernel_name, "display_name": spec.display_name,
                                         "language": spec.language}
        client = StreamingClient(nb, km=kernel.manager,
                                 timeout=math.ceil(job.timeout_per_cell) if job.timeout_per_cell else None,
                                 resources={"metadata": {"path": str(Path.cwd())}})
        client.kc = kernel.client
        if "language_info" in kernel.info:
            nb.metadata["language_info"] = kernel.info["language_info"]
        if job.push:
            reply = await kernel.run_silently(_PUSH_CODE.format(path=python_literal(str(Path(job.push).absolute()))))
            if reply["status"] != "ok":
                return Outcome("failed", "push_failed",
                               f"cannot load the pushed variables: {reply.get('ename')}: {reply.get('evalue')}")
        outcome = await execute_cells(client, nb, kernel, lambda: self.cancelled)
        if outcome.state == "succeeded" and job.pull:
            path = Path(os.environ[control.OUTPUT_DIR_ENV]) / "pulled.pkl"
            reply = await kernel.run_silently(_PULL_CODE.format(names=python_literal(list(job.pull)),
                                                                path=python_literal(str(path))))
            if reply["status"] != "ok":
                return Outcome("failed", "pull_failed", f"cannot pull variables: {reply.get('evalue')}")
        return outcome


# ------------------------------------------------------------------ entry points


async def run_cold(job_path: Path, report: bool = True) -> int:
    with tempfile.TemporaryDirectory(prefix="jupyter-launch-") as scratch:
        return await Runner(Path(scratch), report=report).run(job_path)


async def run_warm(kernel_name: str, report: bool = True) -> int:
    """Start a kernel, say ``ready``, wait for one job on stdin, run it; a closed stdin ends quietly."""
    scratch = Path(tempfile.mkdtemp(prefix="jupyter-launch-"))
    try:
        exporter = asyncio.ensure_future(asyncio.to_thread(html_exporter)) if report else None
        try:
            kernel = await Kernel.start(kernel_name, scratch, scratch)
        except JobError as exc:  # no job yet to report on: the pool sees no "ready"
            _warn(exc.message)
            return 1
        if exporter is not None:
            await asyncio.wait([exporter])
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line.strip():
            await kernel.shutdown(now=True)
            return 0
        try:
            request = json.loads(line)
            env = {str(k): str(v) for k, v in (request.get("env") or {}).items()}
            os.chdir(request["cwd"])
            job_file = Path(request["job_file"])
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
            _emit(Outcome("failed", "invalid_job", f"a warm runner needs {{job_file, cwd, env}}: {exc!r}").record)
            await kernel.shutdown(now=True)
            return 1
        os.environ.update(env)
        return await Runner(scratch, kernel, exporter, report=report).run(job_file, kernel_env=env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jupyter_launch.runner", description=__doc__.splitlines()[0])
    parser.add_argument("job_file", nargs="?", type=Path, help="the job's JSON file (.jupyter-launch/job.json)")
    parser.add_argument("--warm", action="store_true", help="start a kernel now, then read the job from stdin")
    parser.add_argument("--kernel", default=DEFAULT_KERNEL, help="the kernel a warm runner starts")
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="write no HTML report: the backend renders it from the executed notebook")
    args = parser.parse_args(argv)
    if not args.warm and args.job_file is None:
        parser.error("give a job file, or --warm")
    die_with_parent()()  # the agent that started us is gone: so is the job
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(encoding="utf-8", errors="replace")  # type: ignore[union-attr]
    return asyncio.run(run_warm(args.kernel, args.report) if args.warm else run_cold(args.job_file, args.report))


if __name__ == "__main__":
    sys.exit(main())
