"""``%launch`` and ``%%launch``: run a notebook or one cell as a job from IPython, with a live view of it.

``%load_ext jupyter_launch`` registers them (``c.InteractiveShellApp.extensions = ["jupyter_launch"]`` in
``ipython_config.py`` does it in every shell and kernel of that profile). A cell job runs the notebook's cells tagged
``launch-setup`` first, gets the variables named by ``--push`` (pickled with cloudpickle) and, once it succeeds, gives
back those named by ``--pull``. Both magics return a :class:`LaunchedJob` (a :class:`~jupyter_launch.client.Job`)
and show a live view that updates from a background thread, so the kernel stays free; ``--wait`` blocks until the job
ends instead.

Jobs go where ``jupyter launch`` sends them (:func:`~jupyter_launch.remote.discovery.client_for`): through the server
``$JUPYTER_LAUNCH_SERVER_URL`` names, else to the embedded store ``$JUPYTER_LAUNCH_HOME``/``$JUPYTER_LAUNCH_STORE_URL``
names, else through the local running Jupyter server with jupyter-launch (the one that started this kernel first),
else to the embedded store. On the embedded store, where no agent serves the queue, one runs inside this kernel (on
the view's background loop) until the kernel stops, as ``jupyter launch submit --follow`` does in its own process: a
first job needs no setup, and a standalone ``jupyter launch agent`` takes over as soon as one is running. Through a
server, the server's agents run the job.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display
from IPython.utils.process import arg_split
from traitlets import Bool, Dict, Enum, Float, Integer, Type, Unicode, default

from .client import Job, StoreError
from .errors import LaunchError, LocatedError
from .options import JobOptions, PreparedJob, prepare_job, read_notebook, split_param_args
from .spec import SpecError
from .widgets import BackgroundLoop, JobView, JobWatcher, TextView, reason_text

SETUP_TAG = "launch-setup"
PUSH_PATH = ".jupyter-launch/push.pkl"  # where the agent looks for pushed variables in a cell job's artifact
PULL_OUTPUT = "pulled.pkl"  # the output where the runner leaves pulled variables
JOB_ID_ENV = "JUPYTER_LAUNCH_JOB_ID"  # set inside a running job
CANCEL_WAIT = 60.0  # how long an interrupted --wait waits for the cancelled job to end
# Spec fields as the options that set them, for error messages.
_OPTION = {"resources.cpu": "--cpus", "resources.gpu": "--gpus", "resources.memory": "--memory",
           "resources.nodes": "--nodes", "timeout": "--timeout", "retries": "--retries", "priority": "--priority",
           "job_type": "--job-type", "env": "--env",
           "secrets": "--secret", "parameters": "--param", "image": "--image", "name": "--name"}


class JobInterrupted(KeyboardInterrupt):
    """The kernel was interrupted during ``--wait``: the job was cancelled (or, with ``--detach-on-interrupt``, left
    running). Shown as its one line: the job's view above tells the rest, the magic's frames nothing."""

    def _render_traceback_(self) -> list[str]:
        return [f"KeyboardInterrupt: {self}"]


class JobFailed(LaunchError):
    """A ``--wait`` job that did not succeed (or whose pulled variables could not be loaded); ``.job`` is its handle."""

    def __init__(self, job: LaunchedJob, message: str):
        super().__init__(message)
        self.job = job

    def _render_traceback_(self) -> list[str]:
        return [f"JobFailed: {self}"]  # the log is in the view above: no Python traceback to add


class LaunchedJob(Job):
    """The handle ``%launch``/``%%launch`` return: a :class:`Job` with its live ``view``.

    ``wait()`` returns once the view shows the end of the job, pulled variables included; ``pulled`` holds them.
    """

    def __init__(self, client: Any, job_id: str, record: Any, *, view: JobView | TextView, shell: Any):
        super().__init__(client, job_id, record)
        self.view = view
        self.watcher: JobWatcher | None = None
        self.pulled: dict[str, Any] = {}
        self.pull_error: str | None = None
        self._shell = shell
        self._shown_in: int | None = None

    def wait(self, timeout: float | None = None, poll: float = 0.05) -> Any:
        start = time.monotonic()
        if self.watcher is not None and not self.watcher.settled.wait(timeout):
            raise TimeoutError(f"job {self.id} still {self.refresh().state} after {timeout}s")
        record = self.refresh()
        if not record.done:  # the view stopped early (it says why): wait on the job itself
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
            record = super().wait(left, poll)
        return record

    def _ipython_display_(self) -> None:
        if self._shown_in is not None and self._shown_in == self._shell.execution_count:
            return  # the magic showed the view in this very cell; the returned handle adds nothing
        if isinstance(self.view, JobView):
            display(self.view)
        else:
            print(repr(self))


@magics_class
class LaunchMagics(Magics):
    """``%launch`` / ``%%launch``. Configure as ``c.LaunchMagics.*`` (e.g. in ``ipython_kernel_config.py``)."""

    client_class = Type(None, klass=object, allow_none=True, config=True,
                        help="The client jobs go through, built with client_kwargs. Unset: the one `jupyter launch` "
                             "uses (jupyter_launch.remote.discovery.client_for: a server named by "
                             "$JUPYTER_LAUNCH_SERVER_URL, a store named by $JUPYTER_LAUNCH_HOME, a local running "
                             "server, else the embedded store).")
    client_kwargs = Dict(config=True, help="Keyword arguments for client_class, or for client_for when it is unset "
                                           "(e.g. {'server': URL, 'token': TOKEN}).")
    view = Enum(["auto", "widget", "text"], "auto", config=True,
                help="How jobs are shown: widgets in a kernel and text in a terminal IPython (auto), or forced.")
    agent_in_kernel = Bool(True, config=True,
                           help="Run an agent in this kernel for a queue no agent serves (embedded store only).")
    output_base_url = Unicode(config=True, help="Base URL of the Jupyter server, for links to outputs (default: "
                                                "$JUPYTERHUB_SERVICE_PREFIX, else $JUPYTER_LAUNCH_SERVER_URL, else /).")
    tail_lines = Integer(500, config=True, help="Log lines kept in a job's view.")
    update_interval = Float(0.1, config=True, help="Seconds between two log updates of a view, at least.")

    @default("output_base_url")
    def _default_output_base_url(self) -> str:
        from .remote.http import SERVER_ENV

        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or os.environ.get(SERVER_ENV) or "/"

    def __init__(self, shell: Any = None, **kwargs: Any):
        super().__init__(shell=shell, **kwargs)
        self._client: Any = None
        self._client_future: concurrent.futures.Future[Any] | None = None
        self._stop_registered = False
        self.jobs: list[LaunchedJob] = []

    # ------------------------------------------------------------ the client

    def prewarm(self) -> None:
        """Open the client in the background (opening the SQL store takes a second or two)."""
        if self._client is None and self._client_future is None:
            self._client_future = BackgroundLoop.get().submit(_call_in_thread(self._new_client))

    def _new_client(self) -> Any:
        if self.client_class is not None:
            return self.client_class(**self.client_kwargs)
        from .remote.discovery import client_for

        return client_for(**self.client_kwargs)

    @property
    def client(self) -> Any:
        if self._client is None:
            future, self._client_future = self._client_future, None
            self._client = future.result() if future is not None else self._new_client()
        return self._client

    @client.setter
    def client(self, value: Any) -> None:
        self._client, self._client_future = value, None

    # ------------------------------------------------------------ the magic

    @magic_arguments()
    @argument("notebook", nargs="?", help="%%launch only: the notebook to run (default: this notebook, saved)")
    @argument("--queue", "-q", default="default", help="the queue to submit to (default: default)")
    @argument("--gpus", type=int, help="GPUs the job needs")
    @argument("--cpus", help="CPU cores (2, 0.5, 500m)")
    @argument("--memory", help="memory (8Gi, 512Mi)")
    @argument("--nodes", type=int, help="ranks of a distributed job, one per node (RANK, WORLD_SIZE, MASTER_ADDR...)")
    @argument("--image", help="container image for docker and kubernetes queues")
    @argument("--job-type", "-t", help="job type, matched by the queue's agents")
    @argument("--name", help="the job's name (default: the notebook's)")
    @argument("--param", "-p", nargs=2, action="append", metavar=("NAME", "VALUE"),
              help="a parameter, as NAME VALUE or NAME=VALUE; a value that is a Python literal (3, 0.1, True, "
                   "[1, 2], 'text') has its type, anything else is the exact text typed; repeatable")
    @argument("--env", action="append", metavar="KEY=VALUE", help="an environment variable; repeatable")
    @argument("--secret", action="append", metavar="NAME",
              help="an environment variable resolved on the agent at start, never stored; repeatable")
    @argument("--timeout", help="3600, 90s, 45m, 1h")
    @argument("--retries", type=int, help="attempts after a lost agent")
    @argument("--priority", type=int, help="claim order on the queue: higher first, FIFO within one (default 0)")
    @argument("--sweep", action="append", metavar="NAME=V1,V2",
              help="run one job per combination of these values (a grid sweep); repeatable")
    @argument("--max-parallel", type=int, metavar="K", help="with --sweep: at most K of its jobs run at once")
    @argument("--kernel", help="the kernel that runs the job (default: python3)")
    @argument("--wait", action="store_true",
              help="block until the job ends; interrupting the kernel cancels the job")
    @argument("--detach-on-interrupt", action="store_true",
              help="with --wait: interrupting the kernel stops waiting and leaves the job running")
    @argument("--push", action="append", metavar="A,B", help="%%%%launch: variables sent with the job")
    @argument("--pull", action="append", metavar="C,D", help="%%%%launch: variables brought back when it succeeds")
    @argument("--root", help="the folder packaged with the job (default: this kernel's working folder, or the "
                             "notebook's folder)")
    @argument("--include", action="append", metavar="GLOB", help="package only files matching these patterns")
    @line_cell_magic
    def launch(self, line: str, cell: str | None = None) -> LaunchedJob | None:
        """Run this notebook (``%launch``), another one (``%launch NOTEBOOK``) or this cell (``%%launch``) as a job.

        Returns the job's handle and shows it live: state and why, elapsed time, progress, the log, metrics logged
        with ``jupyter_launch.log({...})``, a Cancel button and the outputs. ``%%launch`` runs the notebook's cells
        tagged ``launch-setup`` first; ``--push a,b`` sends variables, ``--pull c,d`` brings variables back.
        """
        args = self.launch.parser.parse_args(split_param_args(arg_split(line)))
        magic = "%%launch" if cell is not None else "%launch"
        if cell is not None and args.notebook:
            raise UsageError(f"%%launch runs the cell below it; to run a notebook use %launch {args.notebook}")
        if cell is None and (args.push or args.pull):
            raise UsageError("--push and --pull work with %%launch cells; a whole notebook makes its own variables")
        if os.environ.get(JOB_ID_ENV):
            return self._inside_job(cell)

        try:
            client = self.client
        except ValueError as exc:  # a server URL that is not http(s)
            raise UsageError(f"{magic}: {exc}") from None

        try:
            if args.sweep:
                return self._sweep(args, cell, magic)
            if cell is not None:
                prepared, extra = self._cell_job(args, cell, magic)
                job = client.submit_prepared(prepared, queue=args.queue, extra_files=extra or None,
                                             include=args.include)
            else:
                path, root = self._notebook_path(args)
                prepared = prepare_job(_job_options(args, notebook=path, root=root), source=magic)
                current = find_notebook(self.shell)
                if current is not None and current.resolve() == path.resolve():
                    # This kernel's own notebook: what this kernel can import travels. Another notebook file
                    # carries its own kernelspec's environment, as from the CLI.
                    prepared.interpreter = sys.executable
                job = client.submit_prepared(prepared, queue=args.queue, include=args.include)
        except LocatedError as exc:  # a spec or a folder to package that is refused
            raise UsageError(_spec_message(exc, magic)) from None
        except StoreError as exc:
            raise UsageError(f"{magic}: {exc}") from None
        launched = self._show(job, args)
        if args.wait:
            self._wait(launched, detach=args.detach_on_interrupt)
            record = launched.refresh()
            if record.state != "succeeded":
                raise JobFailed(launched, f"job {job.id} {record.state}: {reason_text(record)}")
            if launched.pull_error:
                raise JobFailed(launched, launched.pull_error)
        return launched

    def _sweep(self, args: Any, cell: str | None, magic: str) -> Any:
        """``--sweep NAME=V1,V2``: a grid sweep of this cell or notebook; its table printed, once every job has
        ended with ``--wait``. Returns the sweep's record."""
        from .spec import validate
        from .sweep import SweepConfig, parse_grid, sweep_table

        if args.pull:
            raise UsageError(f"{magic}: --pull brings back one job's variables; a sweep runs many")
        sweep = validate(SweepConfig, {"parameters": parse_grid(args.sweep), "max_parallel": args.max_parallel},
                         f"{magic} --sweep")
        client = self.client
        if cell is not None:
            prepared, extra = self._cell_job(args, cell, magic)
            record, _ = client.create_sweep(prepared, queue=args.queue, sweep=sweep, extra_files=extra or None,
                                            include=args.include)
        else:
            path, root = self._notebook_path(args)
            prepared = prepare_job(_job_options(args, notebook=path, root=root), source=magic)
            record, _ = client.create_sweep(prepared, queue=args.queue, sweep=sweep, include=args.include)
        print(f"sweep {record.id}: {record.runs} job(s) on queue {record.queue} (jupyter launch sweep show "
              f"{record.id})")
        note = self._ensure_agent(record.queue)
        if note:
            print(note)
        if args.wait:
            while not all(j.done for j in client.sweep_jobs(record.id)):
                time.sleep(0.2)
            header, rows = sweep_table(record, client.sweep_jobs(record.id), client.metrics)
            widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
            for row in [header, *rows]:
                print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
        return record

    # ------------------------------------------------------------ building the job

    def _cell_job(self, args: Any, cell: str, magic: str) -> tuple[PreparedJob, dict[str, bytes]]:
        if not cell.strip():
            raise UsageError("%%launch: the cell is empty; write the code to run below the %%launch line")
        push, pull = _names(args.push, "--push"), _names(args.pull, "--pull")
        notebook = find_notebook(self.shell)
        options = _job_options(args, code=cell, root=args.root)
        # Named as the notebook shows the cell (`train.ipynb · In [4]`), so a history of cell jobs reads. The running
        # cell's number is its result's (ipykernel 7 has moved shell.execution_count on by then).
        running = getattr(getattr(self.shell, "displayhook", None), "exec_result", None)
        cell_name = f"In [{getattr(running, 'execution_count', None) or self.shell.execution_count}]"
        options.extra = {"setup": setup_cells(notebook) if notebook else [], "push": push, "pull": pull,
                         "name": f"{notebook.name} · {cell_name}" if notebook else cell_name}
        prepared = prepare_job(options, source=magic)
        prepared.interpreter = sys.executable  # the cell runs in this kernel's environment
        if notebook is not None:
            # The cell runs in this notebook's environment: its kernel and %pip lines travel with the job.
            with contextlib.suppress(SpecError):
                prepared.notebook = read_notebook(notebook)
        extra = {PUSH_PATH: pickle_variables(self.shell.user_ns, push)} if push else {}
        return prepared, extra

    def _notebook_path(self, args: Any) -> tuple[Path, Path]:
        if args.notebook:
            path = Path(args.notebook).expanduser()
            if not path.is_file():
                raise UsageError(f"%launch: no notebook at {path}")
        else:
            path = find_notebook(self.shell)
            if path is None:
                tried = notebook_candidates(self.shell)
                raise UsageError(
                    (f"%launch: this kernel's notebook ({', '.join(tried)}) is not on disk: save it first, "
                     if tried else "%launch: cannot tell which notebook this kernel runs (no JPY_SESSION_NAME or "
                                   "__session__): ") + "or name it: %launch path/to/notebook.ipynb --queue Q")
            check_saved(self.shell, path)
        root = Path(args.root).expanduser().resolve() if args.root else path.resolve().parent
        if not path.resolve().is_relative_to(root):
            raise UsageError(f"%launch: {path} is not inside --root {root}")
        return path, root

    # ------------------------------------------------------------ showing and waiting

    def _use_widgets(self) -> bool:
        if self.view != "auto":
            return self.view == "widget"
        return getattr(self.shell, "kernel", None) is not None

    def _show(self, job: Job, args: Any) -> LaunchedJob:
        client = self.client
        record = job.record
        handle = None
        if self._use_widgets():
            view: JobView | TextView = JobView(job.id, record.queue, tail_lines=self.tail_lines,
                                               output_base=self.output_base_url,
                                               on_cancel=lambda: client.cancel(job.id))
            view.show_state(record)
        else:
            view = TextView(job.id, record.queue, echo=args.wait)
            print(f"job {job.id} submitted to queue {record.queue}: {record.state} ({reason_text(record)})")
        launched = LaunchedJob(client, job.id, record, view=view, shell=self.shell)
        agent_note = self._ensure_agent(record.queue)
        if agent_note:
            view.add_note(agent_note)
        if isinstance(view, JobView):
            handle = display(view, display_id=True)
            launched._shown_in = self.shell.execution_count
        pull = list(record.spec.get("pull") or [])

        def on_final(final: Any) -> str | None:
            if final.state != "succeeded" or not pull:
                return None
            return self._pull(launched, pull)

        def on_settled() -> None:
            if handle is not None:
                handle.update(view)  # the plain-text form now tells how it ended

        watcher = JobWatcher(client, Job(client, job.id), view, interval=self.update_interval,
                             on_final=on_final, on_settled=on_settled)
        launched.watcher = watcher.start()
        self.jobs.append(launched)
        return launched

    def _pull(self, launched: LaunchedJob, names: list[str]) -> str:
        import cloudpickle

        try:
            values = cloudpickle.loads(launched.client.read_output(launched.id, PULL_OUTPUT))
        except Exception as exc:  # a missing output, a class this kernel cannot import, ...
            launched.pull_error = (f"job {launched.id} succeeded but {', '.join(names)} could not be brought back: "
                                   f"{type(exc).__name__}: {_first_line(exc)}")
            return launched.pull_error
        self.shell.user_ns.update(values)
        launched.pulled = values
        return f"pulled {', '.join(values)} into this kernel"

    def _wait(self, launched: LaunchedJob, *, detach: bool = False) -> None:
        """Block until the job's view shows its end. An interrupt cancels the job at once, no question asked (a prompt
        left the job running until answered), and waits a little for it to end, unless ``detach``: then the job goes
        on and the view keeps following it. Either way the cell ends with one line, not a traceback."""
        watcher = launched.watcher
        assert watcher is not None
        try:
            while not watcher.settled.wait(0.1):
                pass
        except KeyboardInterrupt:
            if detach:
                launched.view.add_note("interrupted: the job goes on; this view keeps following it")
                raise JobInterrupted(f"stopped waiting; job {launched.id} goes on (jupyter launch cancel "
                                     f"{launched.id} stops it)") from None
            launched.cancel()
            launched.view.add_note("interrupted: job cancelled")
            with contextlib.suppress(KeyboardInterrupt):  # a second interrupt stops waiting for the end
                watcher.settled.wait(CANCEL_WAIT)
            raise JobInterrupted(f"job {launched.id} cancelled (--detach-on-interrupt leaves a job running)") \
                from None

    def _inside_job(self, cell: str | None) -> None:
        """In a running job the magic is already where the work runs: a cell runs here, a notebook not again."""
        if cell is None:
            print(f"%launch: inside job {os.environ[JOB_ID_ENV]}; not submitting this notebook again")
            return None
        code = self.shell.transform_cell(cell)
        exec(compile(code, "<%%launch cell>", "exec"), self.shell.user_ns)  # errors fail the job's cell as they are
        return None

    # ------------------------------------------------------------ an agent in this kernel

    def _ensure_agent(self, queue: str) -> str | None:
        """On the embedded store, start an agent in this kernel for a queue none serves; through a server, say that
        the job waits for one of the server's agents. Returns the note for the view, if any."""
        client = self.client
        if client.server_url:
            if client.live_agents(queue):
                return None
            return (f"no agent serves queue {queue!r} on {client.server_url}; the job waits for one "
                    f"(`jupyter launch agent --server URL --queue {queue}`, with an agent token in "
                    "$JUPYTER_LAUNCH_TOKEN or --token-file FILE)")
        if not self.agent_in_kernel:
            return None
        if not BackgroundLoop.get().submit(client.ensure_agent(queue)).result():
            return None
        if not self._stop_registered:
            self._stop_registered = True
            # threading's exit hooks run before atexit's and newest first, so this one runs while thread pools still
            # take work (the agent reports its jobs' end through asyncio.to_thread); atexit would be too late.
            getattr(threading, "_register_atexit", atexit.register)(self.stop_agents)
        return (f"no agent served queue {queue!r}: one now runs in this kernel and stops with it; "
                f"run `jupyter launch agent --queue {queue}` to keep jobs independent of this kernel")

    def stop_agents(self, timeout: float = 30.0) -> None:
        """Stop the agents this kernel runs (their running jobs are cancelled and reported)."""
        if self._client is not None:
            concurrent.futures.wait([BackgroundLoop.get().submit(self._client.stop_agents())], timeout)


async def _call_in_thread(func: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(func)


# ------------------------------------------------------------------ arguments


def _job_options(args: Any, **target: Any) -> JobOptions:
    """The magic's options as every face gives them (``jupyter_launch.options``)."""
    return JobOptions(name=args.name, job_type=args.job_type, image=args.image, kernel=args.kernel,
                      timeout=args.timeout, retries=args.retries, priority=args.priority, cpus=args.cpus,
                      gpus=args.gpus, memory=args.memory, nodes=args.nodes,
                      env=args.env or (), secrets=args.secret or (), params=args.param or (), **target)


def _names(values: list[str] | None, option: str) -> list[str]:
    names = [n.strip() for v in values or [] for n in v.split(",") if n.strip()]
    for name in names:
        if not name.isidentifier():
            raise UsageError(f"{option}: {name!r} is not a variable name")
    return list(dict.fromkeys(names))


def _spec_message(exc: Any, magic: str) -> str:
    option = _OPTION.get(exc.field or "") or _OPTION.get((exc.field or "").split(".")[0])
    if option and exc.message.startswith(option + " "):
        return exc.message  # the message names its option already
    if option:
        return f"{magic} {option}: {exc.message}"
    return f"{magic}: {exc.field + ': ' if exc.field else ''}{exc.message}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------ variables


def pickle_variables(namespace: dict[str, Any], names: list[str]) -> bytes:
    """The named variables as one cloudpickle of ``{name: value}``; what cannot be sent is named in a UsageError."""
    import cloudpickle

    missing = [name for name in names if name not in namespace]
    if missing:
        raise UsageError(f"--push: {', '.join(map(repr, missing))} not defined in this kernel")
    values = {name: namespace[name] for name in names}
    try:
        return cloudpickle.dumps(values)
    except Exception:
        for name, value in values.items():
            try:
                cloudpickle.dumps(value)
            except Exception as exc:
                kind = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
                raise UsageError(f"--push: {name!r} (a {kind}) cannot be pickled ({_first_line(exc)}); create it "
                                 f"in a cell tagged {SETUP_TAG!r} or in the launched cell instead") from None
        raise


# ------------------------------------------------------------------ this kernel's notebook


def notebook_candidates(shell: Any) -> list[str]:
    """Where the kernel's notebook may be, as frontends tell it: VS Code, ipykernel's ``__session__``, the server."""
    found = []
    for value in (shell.user_ns.get("__vsc_ipynb_file__"), shell.user_ns.get("__session__"),
                  os.environ.get("JPY_SESSION_NAME")):
        if isinstance(value, str) and value.endswith(".ipynb") and value not in found:
            found.append(value)
    return found


def find_notebook(shell: Any) -> Path | None:
    """The kernel's notebook file, or None. A relative session path is the server's; the kernel runs in its folder."""
    for value in notebook_candidates(shell):
        path = Path(value).expanduser()
        for option in ([path] if path.is_absolute() else [Path.cwd() / path, Path.cwd() / path.name]):
            if option.is_file():
                return option
    return None


def _code_cells(path: Path) -> list[dict[str, Any]]:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {_first_line(exc)}") from None
    cells = nb.get("cells") if isinstance(nb, dict) else None
    return [c for c in cells or [] if isinstance(c, dict) and c.get("cell_type") == "code"]


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def setup_cells(path: Path) -> list[str]:
    """Sources of the saved notebook's code cells tagged ``launch-setup``, in order."""
    cells = []
    for cell in _code_cells(path):
        tags = (cell.get("metadata") or {}).get("tags") or []
        source = _source(cell)
        if SETUP_TAG in tags and not source.lstrip().startswith("%%launch"):
            cells.append(source)
    return cells


def check_saved(shell: Any, path: Path) -> None:
    """Refuse to submit a notebook whose saved file does not have the cell running now: it has unsaved changes."""
    raw = shell.history_manager.input_hist_raw[-1] if shell.history_manager.input_hist_raw else ""
    if raw.strip() and not any(_source(c).strip() == raw.strip() for c in _code_cells(path)):
        raise UsageError(f"%launch: {path.name} on disk does not have this cell yet (unsaved changes): save the "
                         "notebook (Ctrl+S) and run this cell again")


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics once per shell: loading again (from the config's extensions and a ``%load_ext``, or a
    ``%reload_ext``) keeps the instance there is, with its client, its jobs and any agent it runs."""
    magics = ipython.magics_manager.registry.get(LaunchMagics.__name__)
    if not isinstance(magics, LaunchMagics):
        magics = LaunchMagics(ipython)
        ipython.register_magics(magics)
    if not os.environ.get(JOB_ID_ENV):  # inside a job the magics submit nothing
        magics.prewarm()
