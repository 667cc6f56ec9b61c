"""The local backend: a job is a process group on the agent's machine, in the unpacked artifact's folder.

Output is read from the pipes in large chunks, straight from the event loop (:class:`Pipes`); cancel is SIGTERM to
the group, a grace period, then SIGKILL. Children get PR_SET_PDEATHSIG so a killed agent leaves no job running behind
its lease. Queues with ``min_instances`` keep warm runners, each with a kernel already started.

A job sees nothing of the agent's environment beyond the allow-list of :func:`~.base.job_environment`, and runs in a
Python environment of its own layered over the interpreter's (:mod:`.job_venv`): what it installs stays its own.

A notebook or cell job ends at the runner's result record: the runner writes it once the job's outputs are in place,
the pipes are drained of what was written before it, and the runner's own ending (a kernel shutdown, the interpreter's
exit: a quarter of a second for a trivial notebook) goes on in the background, bounded by ``linger``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field
from traitlets import Float, Integer, List, Unicode

from ..control import OUTPUT_DIR_ENV
from ..images import load_environment
from ..lifetime import die_with_parent
from ..report import ReportRenderer
from ..spec import ProviderConfig
from .base import (JOB_VARIABLES, Backend, BackendError, JobContext, RankLog, Result, base_variables,
                   job_environment, rank_variables)
from .job_venv import (JobEnvironmentError, Layer, describe_interpreter, kernel_overlay, make_job_venv,
                       venv_variables)

READ_SIZE = 256 * 1024
PYTHON_NAMES = ("python", "python3")


class LocalProvider(ProviderConfig):
    """A local queue's settings: the ``provider:`` block of a queue YAML with ``type: local`` (the default)."""

    type: Literal["local"]
    min_instances: int = Field(default=0, ge=0, le=64)
    gpus: int | list[int] | None = None  # GPU slots this host offers; None = detect with nvidia-smi
    python: str | None = None  # interpreter that runs jobs; default: the agent's own


class Pipes:
    """A child's stdout and stderr, read without blocking straight from the event loop.

    What is read goes to ``sink(stream, data)`` as it comes, or is kept until a sink is attached (a warm runner's
    start-up output, before its job). :meth:`drain` reads what the pipes hold at once, synchronously: everything the
    child wrote before the moment of the call. While the sink's ``room`` is clear (its log holds all it may, see
    ``agent.LogSink``) nothing more is read: the child's writes block on the full pipe until there is room again.
    """

    def __init__(self, read_size: int = READ_SIZE):
        self.read_size = read_size
        self._fds: dict[str, int] = {}
        self._write_ends: list[int] = []
        for name in ("stdout", "stderr"):
            read_end, write_end = os.pipe()
            os.set_blocking(read_end, False)
            self._fds[name] = read_end
            self._write_ends.append(write_end)
        self._kept: list[tuple[str, bytes]] = []
        self._sink: Callable[[str, bytes], None] | None = None
        self._room: asyncio.Event | None = None
        self._resume: asyncio.Task[None] | None = None  # while paused: re-adds the readers once there is room
        self._changed = asyncio.Event()
        self._ended = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    @property
    def child_ends(self) -> tuple[int, int]:
        """The write ends, for the child's stdout and stderr; :meth:`started` closes them here once it has them."""
        return self._write_ends[0], self._write_ends[1]

    def started(self) -> None:
        for fd in self._write_ends:
            os.close(fd)
        self._write_ends = []
        for name, fd in self._fds.items():
            self._loop.add_reader(fd, self._read, name)

    def _read(self, name: str) -> bool:
        """One read from a pipe; whether it gave data (False: nothing there now, or end of file)."""
        fd = self._fds.get(name)
        if fd is None:
            return False
        try:
            data = os.read(fd, self.read_size)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if data:
            self._deliver(name, data)
        else:
            self._close(name)
        return bool(data)

    def _deliver(self, name: str, data: bytes) -> None:
        if self._sink is not None:
            self._sink(name, data)
            if self._room is not None and not self._room.is_set() and self._resume is None:
                self._pause()
        else:
            self._kept.append((name, data))
            self._changed.set()

    def _pause(self) -> None:
        for fd in self._fds.values():
            self._loop.remove_reader(fd)
        self._resume = self._loop.create_task(self._resume_with_room(self._room))

    async def _resume_with_room(self, room: asyncio.Event) -> None:
        await room.wait()
        self._unpause()

    def _unpause(self) -> None:
        if self._resume is None:
            return
        if self._resume is not asyncio.current_task():
            self._resume.cancel()
        self._resume = None
        for name, fd in self._fds.items():
            self._loop.add_reader(fd, self._read, name)

    def _close(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is not None:
            self._loop.remove_reader(fd)
            os.close(fd)
        self._changed.set()
        if not self._fds:
            self._ended.set()

    def drain(self) -> None:
        """Read everything the pipes hold now (up to end of file where the writers are gone)."""
        for name in list(self._fds):
            while self._read(name):
                pass

    async def readline(self, stream: str = "stdout") -> bytes:
        """The first line kept from ``stream`` (before a sink is attached), taken out of what is kept; b"" at EOF."""
        while True:
            text = b"".join(data for name, data in self._kept if name == stream)
            line, newline, rest = text.partition(b"\n")
            if newline:
                others = [(name, data) for name, data in self._kept if name != stream]
                self._kept = others + ([(stream, rest)] if rest else [])
                return line + newline
            if stream not in self._fds:
                return b""
            self._changed.clear()
            await self._changed.wait()

    def attach(self, sink: Callable[[str, bytes], None], room: asyncio.Event | None = None) -> None:
        """Send what is read to ``sink``; read nothing while ``room`` (if given) is clear."""
        kept, self._kept = self._kept, []
        for name, data in kept:
            sink(name, data)
        self._sink, self._room = sink, room
        self._unpause()

    async def ended(self) -> None:
        """Both pipes at end of file: every process holding their write ends has closed them or exited."""
        await self._ended.wait()

    def close(self) -> None:
        """Stop reading; a writer still there gets EPIPE."""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        for fd in self._write_ends:
            os.close(fd)
        self._write_ends = []
        for name in list(self._fds):
            self._close(name)


@dataclass
class LocalHandle:
    proc: asyncio.subprocess.Process
    pipes: Pipes
    warm: bool = False
    runner: bool = False  # a notebook or cell job: it ends at the runner's result record
    venv: Path | None = None  # a warm runner's environment, made outside the job's folder: removed at its end
    ranks: list[tuple[asyncio.subprocess.Process, Pipes]] = field(default_factory=list)  # a distributed job's
    note: Callable[[bytes], None] = lambda data: None  # a line of ours in the job's log (stderr)

    @property
    def processes(self) -> list[tuple[asyncio.subprocess.Process, Pipes]]:
        """Every process of the job: its ranks, or its one process."""
        return self.ranks or [(self.proc, self.pipes)]


Runner = tuple[asyncio.subprocess.Process, Pipes, Path]  # a warm runner: its process, its pipes, its environment


class WarmPool:
    """Runners with a started kernel, waiting on stdin for a job: a notebook job then skips kernel start.

    The pool holds ``minimum`` runners (the queue's ``min_instances``) and, while jobs wait in the queue, one for each
    of them up to ``limit`` (its ``max_instances``): what is ready and what is starting together, all starting at
    once. When the queue empties it shrinks back to ``minimum``, ready runners past it ended. A job that finds no
    runner ready waits for one already starting (which is further along than a cold start would be) as long as there
    are more starting than jobs waiting; past that it starts cold.
    """

    def __init__(self, layer: Layer, size: int, env: dict[str, str], limit: int | None = None):
        self.layer = layer
        self.minimum = size
        self.limit = limit  # None: no bound but the demand the agent reports
        self.wanted = 0  # jobs waiting in the queue, as the agent last saw it
        self.env = env  # the allowed base variables: the job's own come over stdin
        self._ready: deque[Runner] = deque()
        self._spawns: set[asyncio.Task[None]] = set()
        self._waiters: deque[asyncio.Future[Runner | None]] = deque()
        self._ending: set[asyncio.Task[None]] = set()  # runners past what the pool wants, being ended
        self._closed = False

    @property
    def size(self) -> int:
        """How many runners the pool keeps, ready or starting."""
        demand = self.wanted if self.limit is None else min(self.wanted, self.limit)
        return max(self.minimum, demand)

    def demand(self, waiting: int) -> None:
        """``waiting`` jobs want to start: grow to one runner each (up to ``limit``), or shrink back."""
        self.wanted = waiting
        self.top_up()
        while self._ready and self._held() > self.size:
            proc, pipes, venv = self._ready.pop()  # the newest: its kernel is the least likely to be needed soon
            self._end_later(proc, pipes, venv)

    def _held(self) -> int:
        """Runners ready, or starting for no job in particular (the first ones to be ready go to the jobs waiting)."""
        return len(self._ready) + len(self._spawns) - len(self._waiters)

    def top_up(self) -> None:
        while not self._closed and self._held() < self.size:
            task = asyncio.get_running_loop().create_task(self._spawn())
            self._spawns.add(task)

    async def _spawn(self) -> None:
        pipes = Pipes()
        # The runner's environment, made before its job: the job's folder does not exist yet.
        venv = Path(tempfile.mkdtemp(prefix="jupyter-launch-env-")) / "env"
        proc = None
        ready = False
        try:
            await asyncio.to_thread(make_job_venv, venv, self.layer)
            out, err = pipes.child_ends
            try:
                proc = await asyncio.create_subprocess_exec(
                    str(venv / "bin" / "python"), "-m", "jupyter_launch.runner", "--warm", "--no-report",
                    stdin=asyncio.subprocess.PIPE, stdout=out, stderr=err,
                    env=venv_variables(venv, self.layer, self.env), start_new_session=True,
                    preexec_fn=die_with_parent())
            finally:
                pipes.started()
            ready = (await pipes.readline()).strip() == b"ready" and not self._closed
        except BaseException:
            self._spawns.discard(asyncio.current_task())  # type: ignore[arg-type]
            await self._discard(proc, pipes, venv)
            self._serve_waiters()
            raise
        self._spawns.discard(asyncio.current_task())  # type: ignore[arg-type]
        if ready:
            self._add((proc, pipes, venv))  # type: ignore[arg-type]
        else:
            self._end_later(proc, pipes, venv)
        self._serve_waiters()

    def _add(self, runner: Runner) -> None:
        """A runner ready: to the job waiting longest, or kept while the pool wants it, or ended."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(runner)
                return
        if self._held() < self.size:
            self._ready.append(runner)
        else:
            self._end_later(*runner)

    def _serve_waiters(self) -> None:
        """Jobs waiting past the runners still starting get none (they start cold); the pool refills."""
        while len(self._waiters) > len(self._spawns):
            waiter = self._waiters.pop()
            if not waiter.done():
                waiter.set_result(None)
        self.top_up()

    def _end_later(self, proc: asyncio.subprocess.Process | None, pipes: Pipes, venv: Path) -> None:
        task = asyncio.get_running_loop().create_task(self._discard(proc, pipes, venv))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    @staticmethod
    async def _discard(proc: asyncio.subprocess.Process | None, pipes: Pipes, venv: Path) -> None:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        pipes.close()
        remove_venv(venv)

    def ready_pids(self) -> list[int]:
        return [proc.pid for proc, _, _ in self._ready if proc.returncode is None]

    async def take(self) -> Runner | None:
        """A ready runner, or one still starting when there is one for this job; None: start the job cold."""
        while self._ready:
            proc, pipes, venv = self._ready.popleft()
            if proc.returncode is None:
                self.top_up()
                return proc, pipes, venv
            pipes.close()
            remove_venv(venv)
        if self._closed or len(self._spawns) <= len(self._waiters):
            self.top_up()
            return None
        waiter: asyncio.Future[Runner | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            runner = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                self._add(waiter.result())  # type: ignore[arg-type]
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            raise
        self.top_up()
        if runner is not None and runner[0].returncode is not None:
            runner[1].close()
            remove_venv(runner[2])
            return None
        return runner

    async def close(self) -> None:
        self._closed = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        spawns = list(self._spawns)
        for task in spawns:  # a runner still starting (a replacement) ends too
            task.cancel()
        await asyncio.gather(*spawns, *self._ending, return_exceptions=True)
        while self._ready:
            await self._discard(*self._ready.popleft())


def _status(code: int) -> int:
    return code if code >= 0 else 128 - code  # killed by signal N -> 128 + N, as a shell reports it


def remove_venv(venv: Path) -> None:
    """Remove a warm runner's environment and the temporary folder made for it."""
    shutil.rmtree(venv.parent, ignore_errors=True)


class LocalBackend(Backend):
    """Jobs as process groups on the agent's machine. Configure as ``c.LocalBackend.*``; per queue under
    ``provider:``."""

    name: ClassVar[str] = "local"
    config_model: ClassVar[type[LocalProvider]] = LocalProvider
    read_size = Integer(READ_SIZE, config=True, help="Bytes read from a job's pipes at a time.")
    linger = Float(10.0, config=True, help=(
        "Seconds a runner may take to end on its own after its result record (shutting its kernel down); then its "
        "process group is killed."))
    rank_grace = Float(10.0, config=True, help=(
        "Seconds the other ranks of a distributed job get to end after SIGTERM when one rank failed; then SIGKILL."))
    pass_env = List(Unicode(), config=True, help=(
        "More variables of the agent's environment that its jobs get, by name or glob (CUDA_*, HTTPS_PROXY). "
        "Always passed: PATH, HOME, USER, LOGNAME, SHELL, LANG, LANGUAGE, LC_*, TZ, TMPDIR, TERM, LD_LIBRARY_PATH; "
        "never anything else, unless declared as the job's secrets."))

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._pools: dict[str, WarmPool] = {}
        self._ending: set[asyncio.Task[None]] = set()  # runners ending after their job did
        self.reports = ReportRenderer()  # notebook jobs' HTML reports, rendered after the runner's result
        self._reports_starting: asyncio.Task[None] | None = None

    @classmethod
    def supported_features(cls) -> dict[str, bool]:
        return {"gpus": True, "local_gpus": True, "warm_pool": True, "images": False, "reattach": False, "ranks": True}

    def python(self, config: LocalProvider) -> str:
        return config.python or sys.executable

    async def layer(self, config: LocalProvider) -> Layer:
        """The environment of the queue's interpreter, which each job's own environment is layered over."""
        try:
            return await asyncio.to_thread(describe_interpreter, self.python(config))
        except JobEnvironmentError as exc:
            raise BackendError("environment_failed", str(exc)) from None

    def job_env(self, ctx: JobContext) -> dict[str, str]:
        """The job's variables (the allow-list); :meth:`start` puts its Python environment in front of them."""
        env = job_environment(ctx, os.environ, extra=self.pass_env)
        if ctx.gpu_ids or ctx.spec.resources.gpu == 0:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in ctx.gpu_ids)
        return env

    async def warm_up(self, queue: str, config: LocalProvider, agent_id: str) -> None:
        """Keep ``min_instances`` warm runners for this queue."""
        if config.min_instances and queue not in self._pools:
            try:
                layer = await self.layer(config)
            except BackendError as exc:
                self.log.warning("queue %s: no warm runners: %s", queue, exc.message)
                return
            base = {**base_variables(os.environ, self.pass_env), **JOB_VARIABLES}
            self._pools[queue] = WarmPool(layer, config.min_instances, base, limit=config.max_instances)
            self._pools[queue].top_up()
            self.start_reports()

    def start_reports(self) -> None:
        """Start the report renderer in the background (once), so that it is ready by the first job's result."""
        if self._reports_starting is None:
            self._reports_starting = asyncio.get_running_loop().create_task(self._start_reports())

    async def _start_reports(self) -> None:
        try:
            await self.reports.start()
        except (OSError, RuntimeError, ValueError) as exc:  # the first report starts it again, and says why not
            self.log.warning("the report renderer did not start: %s", exc)

    async def collect_outputs(self, handle: LocalHandle, ctx: JobContext) -> None:
        """A notebook job's HTML report, rendered from the executed notebook its runner wrote (runners run with
        ``--no-report``); a report that cannot be rendered is a warning in the job's log, not a failure."""
        if not handle.runner or ctx.spec.kind != "notebook" or not ctx.spec.notebook:
            return
        stem = Path(ctx.spec.notebook).stem
        executed = ctx.output_dir / f"{stem}.ipynb"
        if not executed.is_file():
            return
        try:
            await self.reports.render(executed, ctx.output_dir / f"{stem}.html")
        except (OSError, RuntimeError, ValueError) as exc:
            ctx.log("stderr", f"[jupyter-launch] warning: the HTML report was not written ({exc}); {stem}.ipynb has "
                              "the outputs\n".encode())

    def demand(self, queue: str, config: LocalProvider, waiting: int) -> None:
        """Size the queue's warm pool to the jobs that want to start (up to ``max_instances``), or back to
        ``min_instances``."""
        pool = self._pools.get(queue)
        if pool is not None:
            pool.demand(waiting)

    def warm_runners(self, queue: str) -> list[int]:
        """Pids of the runners waiting, kernel started, for this queue's next notebook job."""
        pool = self._pools.get(queue)
        return pool.ready_pids() if pool else []

    async def shutdown(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()
        if self._reports_starting is not None:
            await asyncio.gather(self._reports_starting, return_exceptions=True)
            self._reports_starting = None
        await self.reports.close()
        if self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)

    async def start(self, ctx: JobContext) -> LocalHandle:
        if ctx.spec.kind == "notebook":
            self.start_reports()
        layer = await self.layer(ctx.queue_config)
        overlay = None
        if ctx.spec.kind != "command":
            kernel = ctx.spec.kernel or load_environment(ctx.workdir).get("kernel")
            try:
                overlay = await asyncio.to_thread(kernel_overlay, ctx.workdir / ".jupyter-launch",
                                                  kernel if isinstance(kernel, str) else None, layer)
            except (OSError, ValueError, JobEnvironmentError) as exc:
                raise BackendError("environment_failed", f"cannot make an environment for kernel {kernel!r}: "
                                                         f"{exc}") from None
        if ctx.spec.kind != "command" and overlay is None and ctx.spec.resources.nodes == 1:
            pool = self._pools.get(ctx.queue)
            taken = await pool.take() if pool else None
            if taken is not None:
                proc, pipes, venv = taken
                line = json.dumps({"job_file": str(ctx.workdir / ".jupyter-launch" / "job.json"),
                                   "cwd": str(ctx.workdir), "env": {**ctx.env, **ctx.secrets,
                                   **({"CUDA_VISIBLE_DEVICES": ",".join(map(str, ctx.gpu_ids))} if ctx.gpu_ids else {})}})
                proc.stdin.write(line.encode() + b"\n")  # type: ignore[union-attr]
                await proc.stdin.drain()  # type: ignore[union-attr]
                proc.stdin.close()  # type: ignore[union-attr]
                return LocalHandle(proc, pipes, warm=True, runner=True, venv=venv)
        venv = ctx.workdir / ".jupyter-launch" / "env"
        try:
            await asyncio.to_thread(make_job_venv, venv, layer)
        except OSError as exc:
            raise BackendError("environment_failed", f"cannot make the job's environment in {venv}: {exc}") from None
        python = str(venv / "bin" / "python")
        if ctx.spec.kind == "command":
            argv = list(ctx.spec.command or [])
            if ctx.spec.image:
                ctx.log("stderr", f"[jupyter-launch] local backend: image {ctx.spec.image} is not used; "
                                  "the job runs in an environment layered over the agent's\n".encode())
            if argv and argv[0] in PYTHON_NAMES:
                argv[0] = python  # "python" in a job means its environment's interpreter, not the first on PATH
        else:
            argv = [python] + ctx.runner_command[1:] + ["--no-report"]
        env = venv_variables(venv, layer, self.job_env(ctx))
        if overlay is not None:  # the notebook's kernel, layered like the job's own environment
            env["JUPYTER_PATH"] = os.pathsep.join([str(overlay), env["JUPYTER_PATH"]])
        if ctx.spec.resources.nodes > 1:
            return await self._start_ranks(ctx, argv, env)
        pipes = Pipes(self.read_size)
        out, err = pipes.child_ends
        try:
            proc = await self._spawn(argv, ctx.workdir, env, out, err)
        except BaseException:
            pipes.close()
            raise
        pipes.started()
        return LocalHandle(proc, pipes, runner=ctx.spec.kind != "command")

    async def _spawn(self, argv: list[str], cwd: Path, env: dict[str, str], out: int,
                     err: int) -> asyncio.subprocess.Process:
        try:
            return await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, preexec_fn=die_with_parent())
        except (FileNotFoundError, PermissionError) as exc:
            raise BackendError("exit_code", f"cannot start {argv[0]!r}: {exc.strerror}") from None

    async def _start_ranks(self, ctx: JobContext, argv: list[str], env: dict[str, str]) -> LocalHandle:
        """A distributed job on this machine: one process per rank, all started or none. Rank 0 listens on a free
        port of 127.0.0.1 (MASTER_PORT); ranks past 0 write their outputs where they are not collected, so the
        job's outputs are rank 0's."""
        nodes = ctx.spec.resources.nodes
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        ranks: list[tuple[asyncio.subprocess.Process, Pipes]] = []
        try:
            for rank in range(nodes):
                rank_env = {**env, **rank_variables(rank, nodes, rank, "127.0.0.1", port)}
                if rank:
                    outputs = ctx.workdir / ".jupyter-launch" / "ranks" / str(rank) / "outputs"
                    outputs.mkdir(parents=True)
                    rank_env[OUTPUT_DIR_ENV] = str(outputs)
                pipes = Pipes(self.read_size)
                out, err = pipes.child_ends
                try:
                    proc = await self._spawn(argv, ctx.workdir, rank_env, out, err)
                except BaseException:
                    pipes.close()
                    raise
                pipes.started()
                ranks.append((proc, pipes))
        except BaseException:
            for proc, pipes in ranks:  # all ranks or none
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
                pipes.close()
            raise
        return LocalHandle(ranks[0][0], ranks[0][1], ranks=ranks, note=lambda data: ctx.log("stderr", data))

    async def stream(self, handle: LocalHandle, ctx: JobContext) -> None:
        if not handle.ranks:
            handle.pipes.attach(ctx.log, ctx.log_room)
            await handle.pipes.ended()
            return
        logs = [RankLog(ctx.log, rank) for rank in range(len(handle.ranks))]
        for (_, pipes), log in zip(handle.ranks, logs):
            pipes.attach(log.write, ctx.log_room)
        try:
            await asyncio.gather(*(pipes.ended() for _, pipes in handle.ranks))
        finally:
            for log in logs:
                log.flush()

    def finishes_at_result(self, handle: LocalHandle) -> bool:
        return handle.runner

    async def drain(self, handle: LocalHandle, ctx: JobContext) -> None:
        handle.pipes.drain()

    async def wait(self, handle: LocalHandle) -> int:
        if not handle.ranks:
            return _status(await handle.proc.wait())
        # One rank failing fails the job: the others are stopped (SIGTERM, then SIGKILL after a grace period).
        waits = {asyncio.ensure_future(proc.wait()): rank for rank, (proc, _) in enumerate(handle.ranks)}
        pending = set(waits)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            failed = sorted((waits[t], _status(t.result())) for t in done if t.result() != 0)
            if failed:
                rank, code = failed[0]
                if pending:
                    handle.note(f"[jupyter-launch] rank {rank} exited with code {code}; stopping the other "
                                f"{len(pending)} rank(s)\n".encode())
                    await self._signal_ranks(handle, self.rank_grace)
                    await asyncio.gather(*pending)
                return code
        return 0

    async def _signal_ranks(self, handle: LocalHandle, grace: float) -> None:
        """SIGTERM to every process group of the job, SIGKILL to those still there after ``grace`` seconds."""
        for proc, _ in handle.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(proc.wait() for proc, _ in handle.processes)), grace)
        except asyncio.TimeoutError:
            for proc, _ in handle.processes:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

    async def stop(self, handle: LocalHandle, grace: float) -> None:
        await self._signal_ranks(handle, grace)

    async def cleanup(self, handle: LocalHandle, ctx: JobContext, result: Result) -> None:
        if handle.proc.returncode is None and result.finished_at_result:
            # The job is over and its files are in; the runner is shutting its kernel down. Let it, for a while.
            handle.pipes.attach(lambda stream, data: None)  # the log is closed: what it prints now goes nowhere
            task = asyncio.get_running_loop().create_task(self._end(handle, self.linger))
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)
            return
        await self._end(handle, 0)

    async def _end(self, handle: LocalHandle, linger: float) -> None:
        if linger:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(handle.proc.wait(), linger)
        for proc, pipes in handle.processes:
            # A job's leftover children (a kernel it started, a background process) end with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
            pipes.close()
        if handle.venv is not None:
            await asyncio.to_thread(remove_venv, handle.venv)
