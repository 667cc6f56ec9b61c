"""What every backend is: the run template (start, stream, wait, cancel, timeout, collect), the hooks the agent
calls around it (warm up, reap, shut down), and the registry of backends (the ``jupyter_launch.backends`` entry points).

A backend turns one claimed job into a running process, container or Kubernetes Job. It knows nothing of HTTP or
of the store: it talks to the agent only through the :class:`JobContext` it is handed for a job, and through the
:class:`Liveness` it is handed when it reaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from traitlets import Float
from traitlets.config import LoggingConfigurable

from ..errors import LaunchError
from ..spec import JobSpec, ProviderConfig

if TYPE_CHECKING:
    from ..store.base import JobStatus

ENTRY_POINT_GROUP = "jupyter_launch.backends"

# What a job is given of the environment it starts from (on the local backend, the agent's): the machine's basics,
# nothing else. Not the agent's token, its store, its cloud credentials or any other variable of the agent's: a job
# gets those only as declared ``secrets`` or in its spec's ``env``.
BASE_VARIABLES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
                            "LD_LIBRARY_PATH"})
BASE_PREFIXES = ("LC_",)
# jupyter-launch's own variables for every job, besides the JUPYTER_LAUNCH_* ones the agent puts in ``ctx.env``.
JOB_VARIABLES = {"PYTHONUNBUFFERED": "1"}


def base_variables(environ: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """The variables of ``environ`` a job may see: :data:`BASE_VARIABLES`, ``LC_*``, and the names or globs of
    ``extra`` (a backend's ``pass_env``)."""
    patterns = list(extra)
    return {k: v for k, v in environ.items()
            if k in BASE_VARIABLES or k.startswith(BASE_PREFIXES) or any(fnmatch.fnmatchcase(k, p) for p in patterns)}


def job_environment(ctx: JobContext, base: Mapping[str, str] | None = None, *, extra: Iterable[str] = (),
                    secrets: bool = True) -> dict[str, str]:
    """A job's whole environment, the one allow-list of every backend: the allowed variables of ``base`` (the agent's
    environment on the local backend; none where an image supplies its own), jupyter-launch's job variables, the
    spec's ``env`` with the ``JUPYTER_LAUNCH_*`` variables (``ctx.env``), then the declared secrets, unless the
    backend hands those over by another way (``secrets=False``: Docker's stdin, a Kubernetes Secret)."""
    env = base_variables(base or {}, extra)
    env.update(JOB_VARIABLES)
    env.update(ctx.env)
    if secrets:
        env.update(ctx.secrets)
    return env


def rank_variables(rank: int, world_size: int, local_rank: int, master_addr: str, master_port: int) -> dict[str, str]:
    """What one rank of a distributed job is told (what ``torch.distributed`` and ``torchrun`` read)."""
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(local_rank),
            "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port)}


class RankLog:
    """One rank's output as lines of the job's log: each line prefixed ``[rank N] ``; control records (metrics,
    progress, the runner's result) only from rank 0, unprefixed, so the job's metrics are rank 0's. A line is
    written once it is complete (:meth:`flush` writes what is left at the end)."""

    def __init__(self, log: Callable[[str, bytes], None], rank: int):
        self._log = log
        self.rank = rank
        self._prefix = f"[rank {rank}] ".encode()
        self._partial: dict[str, bytes] = {}

    def write(self, stream: str, data: bytes) -> None:
        lines = (self._partial.pop(stream, b"") + data).split(b"\n")
        if lines[-1]:
            self._partial[stream] = lines[-1]
        out = [self._line(line + b"\n") for line in lines[:-1]]
        text = b"".join(out)
        if text:
            self._log(stream, text)

    def _line(self, line: bytes) -> bytes:
        if line.startswith(b"\x1e"):
            return line if self.rank == 0 else b""
        return self._prefix + line

    def flush(self) -> None:
        for stream, rest in list(self._partial.items()):
            self._log(stream, self._line(rest + b"\n"))
        self._partial.clear()


class ThreadLog:
    """A reader thread's way into a job's log (``JobContext.log``, on the event loop).

    :meth:`write` hands data to the loop and returns once the loop holds less than ``ahead`` bytes of what this
    thread handed it and not yet logged, and the log has room (``JobContext.log_room``): a thread reading faster than
    the loop takes it in, or than the store does, waits instead of piling the job's output up in memory. ``stop()``
    true ends any wait (the stream is being closed).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, log: Callable[[str, bytes], None], room: asyncio.Event,
                 stop: Callable[[], bool] = lambda: False, ahead: int = 1 << 20):
        self.loop, self.log, self.room, self.stop, self.ahead = loop, log, room, stop, ahead
        self._handed = 0  # bytes handed to the loop, not yet logged
        self._taken = threading.Condition()

    def write(self, stream: str, data: bytes) -> None:
        """From the reader thread."""
        self.write_many([(stream, data)])

    def write_many(self, pieces: list[tuple[str, bytes]]) -> None:
        """From the reader thread: several ``(stream, data)`` pieces, in one call on the loop."""
        size = sum(len(data) for _, data in pieces)
        with self._taken:
            self._handed += size
        self.loop.call_soon_threadsafe(self._log, pieces, size)
        with self._taken:
            # The room is set and cleared on the loop, which notifies nobody here: looked at every 5 ms while clear.
            while (self._handed >= self.ahead or not self.room.is_set()) and not self.stop():
                self._taken.wait(0.005)

    def _log(self, pieces: list[tuple[str, bytes]], size: int) -> None:
        try:
            for stream, data in pieces:
                self.log(stream, data)
        finally:
            with self._taken:
                self._handed -= size
                self._taken.notify_all()


class _Progress:
    """Counts the bytes a job's backend logs (it wraps ``ctx.log``): a stream that still delivers is not stuck."""

    def __init__(self, ctx: JobContext):
        self.bytes = 0
        log = ctx.log

        def counted(stream: str, data: bytes) -> None:
            self.bytes += len(data)
            log(stream, data)

        ctx.log = counted


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass
class JobContext:
    """Everything a backend needs for one attempt of one job, and the calls it reports through."""

    job_id: str
    attempt: int
    fence: int
    queue: str
    spec: JobSpec
    queue_config: ProviderConfig  # the queue's provider settings: the backend's ``config_model``
    workdir: Path  # the unpacked artifact, with ``.jupyter-launch/job.json`` for the runner
    output_dir: Path  # where the job's outputs must be when the backend returns
    env: dict[str, str]  # spec env + JUPYTER_LAUNCH_* variables; no secrets (see job_environment)
    secrets: dict[str, str]  # resolved at start from the agent's environment; never stored or logged
    artifact: str | None  # manifest digest
    artifact_tar: Callable[[], Awaitable[Path]] | None = None  # the artifact as a tar file, made on demand
    gpu_ids: list[int] = field(default_factory=list)  # devices the agent reserved for this job
    agent_id: str = ""  # the agent running this attempt, for labels on what the backend creates
    # Reporting, wired by the agent:
    log: Callable[[str, bytes], None] = lambda stream, data: None
    # Set while the log has room: a backend reads no more of the job's output while it is clear (see agent.LogSink).
    log_room: asyncio.Event = field(default_factory=_set_event)
    set_reason: Callable[[str, str | None], None] = lambda reason, message=None: None
    mark_running: Callable[[], None] = lambda: None
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event)
    result_seen: asyncio.Event = field(default_factory=asyncio.Event)  # the runner's result record is in the log

    @property
    def runner_command(self) -> list[str]:
        """The command that runs a notebook or cell job inside the job's environment (relative to workdir)."""
        return ["python", "-m", "jupyter_launch.runner", ".jupyter-launch/job.json"]

    @property
    def timeout(self) -> float | None:
        return self.spec.timeout


@dataclass
class Result:
    state: str  # succeeded | failed | cancelled
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    finished_at_result: bool = False  # ended at the runner's result record, its process still ending


class BackendError(LaunchError, RuntimeError):
    """A failure with a reason code the user sees (``image_pull_failed``, ``no_gpu_runtime``, ...)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Liveness:
    """What the agent tells a backend, when it reaps one queue, about the jobs and agents the store has now."""

    # The state and current fencing token of each given job id that is a job of the queue; ids the store does not
    # have on this queue (another store's jobs, on a shared engine or namespace) are left out.
    jobs: Callable[[Collection[str]], Awaitable[dict[str, JobStatus]]]
    # The ids of the agents serving the queue now (this one included).
    agents: Callable[[], Awaitable[set[str]]]


class Backend(LoggingConfigurable):
    """Subclasses implement ``start``, ``stream``, ``wait`` and ``stop``; ``run`` drives them the same way for all.

    The template: ``prepare`` (images, environments) → ``start`` → ``mark_running`` → ``stream`` while ``wait``;
    cancel or timeout → ``stop(grace)``; then ``collect_outputs`` and ``cleanup`` whatever happened.

    Around the jobs, the agent calls, for each queue it serves: ``reap`` when it starts (and every ``reap_interval``
    seconds after), then ``warm_up``; and ``shutdown`` once when it stops.
    """

    name: ClassVar[str] = ""
    # The queue's ``provider:`` block for this backend (its ``type`` a Literal of the backend's entry point name):
    # the queue YAML is validated by it, and the backend gets it as ``ctx.queue_config``.
    config_model: ClassVar[type[ProviderConfig]]
    stream_drain_timeout = Float(10.0, config=True, help=(
        "Seconds to wait for log streams to end after exit without them logging anything: a stream still "
        "delivering (a long log held back while the store takes it in) is waited for."))
    reap_interval = Float(0.0, config=True, help=(
        "Seconds between the agent's sweeps of what this backend's ended jobs left behind, after the one at its "
        "start; 0: only at its start."))

    @classmethod
    def supported_features(cls) -> dict[str, bool]:
        """What the UI and agent may rely on, instead of guessing from the backend's name."""
        # local_gpus: the agent hands out this machine's GPU ids (local, docker); a cluster schedules its own.
        # ranks: runs a distributed job's ``resources.nodes`` ranks (local, kubernetes, slurm).
        return {"gpus": False, "local_gpus": False, "warm_pool": False, "images": False, "reattach": False,
                "ranks": False}

    async def reap(self, queue: str, config: ProviderConfig, live: Liveness) -> list[str]:
        """Remove what ended jobs (or jobs' earlier attempts) of ``queue`` left running: containers, cluster objects.
        Everything of a live job's current attempt, and of jobs ``live`` does not know, is left alone. Returns what
        was removed (ids or names)."""
        return []

    async def warm_up(self, queue: str, config: ProviderConfig, agent_id: str) -> None:
        """Get ``queue`` ready for its first job (warm pools of ``min_instances``); ``agent_id`` is the agent's."""

    def demand(self, queue: str, config: ProviderConfig, waiting: int) -> None:
        """``waiting`` jobs want to start on ``queue``: those queued, and those claimed and not yet started (as many
        as this agent could run). A backend keeping capacity warm for the queue (a pool past ``min_instances``) sizes
        it to them. The agent calls it at each claim, before the claimed job's ``start``, and as each starts."""

    async def shutdown(self) -> None:
        """Release what the backend holds across jobs (warm pools, clients); the agent calls it once, at its stop."""

    async def prepare(self, ctx: JobContext) -> None:
        """Get the job's environment ready (build or pull an image). Raise BackendError to fail with a reason."""

    async def start(self, ctx: JobContext) -> Any:
        raise NotImplementedError

    async def stream(self, handle: Any, ctx: JobContext) -> None:
        """Send the job's output to ``ctx.log`` until its streams end."""
        raise NotImplementedError

    async def wait(self, handle: Any) -> int:
        """Wait for the job to end and return its exit code."""
        raise NotImplementedError

    async def stop(self, handle: Any, grace: float) -> None:
        """Ask the job to stop (SIGTERM or the equivalent), then force it after ``grace`` seconds."""
        raise NotImplementedError

    def mark_running(self, handle: Any, ctx: JobContext) -> None:
        """Called once the job has started: report it running. A backend whose jobs may wait in a scheduler of its
        own after ``start`` (a Slurm queue) reports it from ``wait`` instead, when the job really runs."""
        ctx.mark_running()

    def finishes_at_result(self, handle: Any) -> bool:
        """Whether this job ends at the runner's result record rather than at its process's exit: true where the
        runner writes the outputs straight into ``ctx.output_dir`` (a local process), so nothing is left to collect
        once the record is out. The process is then the backend's to end, in ``cleanup``."""
        return False

    async def drain(self, handle: Any, ctx: JobContext) -> None:
        """Send ``ctx.log`` all the output the job wrote before now; called when it ends at its result record."""

    async def collect_outputs(self, handle: Any, ctx: JobContext) -> None:
        """Make sure the job's output files are in ``ctx.output_dir`` (local backends write there directly); called
        once the job has ended, or once its runner's result record is in (``finishes_at_result``)."""

    async def cleanup(self, handle: Any, ctx: JobContext, result: Result) -> None:
        """Release what the job held (containers, Kubernetes objects)."""

    def grace_period(self, ctx: JobContext) -> float:
        return float(ctx.queue_config.grace_period)

    async def run(self, ctx: JobContext) -> Result:
        nodes = ctx.spec.resources.nodes
        if nodes > 1 and not self.supported_features().get("ranks", False):
            return Result("failed", reason="nodes_unsupported", message=(
                f"the job asks for {nodes} nodes, and the {self.name} backend runs a job as one rank: submit it to a "
                "local, kubernetes or slurm queue, or with --nodes 1"))
        try:
            await self.prepare(ctx)
        except BackendError as exc:
            return Result("failed", reason=exc.reason, message=exc.message)
        if ctx.cancel_requested.is_set():
            return Result("cancelled", reason="cancelled")
        try:
            handle = await self.start(ctx)
        except BackendError as exc:
            return Result("failed", reason=exc.reason, message=exc.message)
        result = Result("failed", reason="agent_error")
        tasks: list[asyncio.Task[Any]] = []
        try:
            self.mark_running(handle, ctx)
            logged = _Progress(ctx)
            streaming = asyncio.create_task(self.stream(handle, ctx))
            waiting = asyncio.create_task(self.wait(handle))
            cancelling = asyncio.create_task(ctx.cancel_requested.wait())
            tasks = [streaming, waiting, cancelling]
            ends = {waiting, cancelling}
            at_result = self.finishes_at_result(handle)
            if at_result:
                ends.add(asyncio.create_task(ctx.result_seen.wait()))
                tasks.extend(ends - set(tasks))
            done, _ = await asyncio.wait(ends, timeout=ctx.timeout, return_when=asyncio.FIRST_COMPLETED)
            if at_result and ctx.result_seen.is_set() and not done & {waiting, cancelling}:
                await self.drain(handle, ctx)
                await self.collect_outputs(handle, ctx)
                result = Result("succeeded", 0, "completed", finished_at_result=True)  # the agent reads the record
                return result
            stopped_by = None
            if waiting not in done:
                stopped_by = "cancelled" if cancelling in done else "timeout"
                await self.stop(handle, self.grace_period(ctx))
            cancelling.cancel()
            exit_code = await waiting
            while not streaming.done():
                before = logged.bytes
                await asyncio.wait({streaming}, timeout=self.stream_drain_timeout)
                if not streaming.done() and logged.bytes == before:
                    streaming.cancel()
                    self.log.warning("job %s: log stream did not end after exit, and logged nothing for %ss",
                                     ctx.job_id, self.stream_drain_timeout)
                    break
            if streaming.done() and not streaming.cancelled() and streaming.exception():
                raise streaming.exception()  # type: ignore[misc]
            if stopped_by == "cancelled":
                result = Result("cancelled", exit_code, "cancelled")
            elif stopped_by == "timeout":
                result = Result("failed", exit_code, "timeout", f"ran past its timeout of {ctx.timeout:g}s")
            elif exit_code == 0:
                result = Result("succeeded", 0, "completed")
            else:
                result = Result("failed", exit_code, "exit_code")
            await self.collect_outputs(handle, ctx)
            return result
        except BackendError as exc:
            result = Result("failed", reason=exc.reason, message=exc.message)
            return result
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.shield(self.cleanup(handle, ctx, result))


@functools.lru_cache(maxsize=None)
def backend_classes() -> dict[str, type[Backend]]:
    """Every installed backend by provider type: the ``jupyter_launch.backends`` entry points, loaded once.

    A backend that fails to load is left out with a warning, so one broken plug-in does not stop the others' queues.
    """
    classes: dict[str, type[Backend]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in classes:
            continue  # the first distribution on sys.path wins, as for a module
        try:
            classes[ep.name] = ep.load()
        except Exception as exc:
            logging.getLogger(__name__).warning("backend %r (%s) cannot be loaded: %s", ep.name, ep.value, exc)
    return classes


def backend_class(name: str) -> type[Backend]:
    """The backend for a provider type."""
    try:
        return backend_classes()[name]
    except KeyError:
        raise KeyError(f"no backend registered for provider type {name!r}") from None
