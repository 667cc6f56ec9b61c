"""The agent: claims jobs from its queues, holds their leases, runs them through a backend, reports everything back.

One asyncio loop serves many jobs. A claim is a lease renewed by heartbeats and guarded by a fencing token, so a
stale agent can never report over a newer attempt; losing the lease stops the job. Logs are batched to the store,
control records (metrics, progress, the runner's result) are taken out of the log on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from traitlets import Bool, Dict, Float, Instance, Integer, List, Unicode, default
from traitlets.config import LoggingConfigurable

from .artifact import DEFAULT_MAX_SIZE, format_size
from .backends.base import Backend, JobContext, Liveness, Result, backend_class
from .control import OUTPUT_DIR_ENV, RecordSplitter, cell_name
from .errors import LaunchError
from .masking import Masker, StreamMasker
from .notify import WakeListener
from .paths import launch_home
from .remote.http import RemoteAuthError
from .scheduler import ScheduleFiring, Scheduler
from .spec import DEFAULT_MAX_LOG_SIZE, DEFAULT_MAX_OUTPUT_SIZE, JobSpec, ProviderConfig
from .store import (
    CANCELLED, FAILED, RUNNING, STARTING, SUCCEEDED, BlobStore, Claim, OutputRecord, StaleClaim, check_metric_record,
    check_output_path, check_progress, describe, is_disk_full, is_unreachable,
)
from .store.protocol import DiskReserve, LocalEvents, Store

FLUSH_INTERVAL = 0.02
FLUSH_BYTES = 512 * 1024
# A job's output held by its agent and not yet in the store, past which the backend stops reading it (the job's
# writes then block, as on a full pipe) until the store has taken some: a job faster than its store no longer grows
# the agent (or the server it runs in) by up to its whole log.
LOG_HIGH_WATER = 8 * 1024 * 1024
# How long a store call waits between tries while the store cannot be reached: doubling from the first to the last.
OUTAGE_RETRY_DELAYS = (0.1, 2.0)


def detect_gpus() -> list[int]:
    """GPU indices from ``nvidia-smi -L``; none when it is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [i for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


class LogTooLarge(LaunchError):
    """A job's log passed its queue's ``max_log_size``."""


class LogSink:
    """Buffers one job's output and writes it to the store in order, in batches, off the event loop, under the
    claim's fence; the job's secrets are masked in it and in its control records (metrics, progress, result) on the
    way (:mod:`.masking`). At most ``max_size`` bytes of it are kept (past that, ``too_large`` is set and
    ``on_failure`` told).

    ``room`` is set while it holds (queued, or on its way to the store) less than ``high_water`` bytes: backends
    stop reading a job's output while it is clear (:attr:`JobContext.log_room`). What is written meanwhile is kept
    all the same; nothing is dropped for want of room.

    ``call(fn, *args)`` runs each store call off the loop (the agent's tries a store that cannot be reached again,
    :meth:`Agent.store_call`); meanwhile the job is held back like a job faster than its store. ``at`` is the log's
    size when the claim was made: each write names the size it follows, so one tried again is never done twice."""

    def __init__(self, store: Any, job_id: str, fence: int, on_record: Any, on_failure: Any = None,
                 max_size: int = DEFAULT_MAX_LOG_SIZE, high_water: int = LOG_HIGH_WATER, call: Any = None,
                 at: int | None = None):
        self.store, self.job_id, self.fence, self.on_record = store, job_id, fence, on_record
        self._call = call or asyncio.to_thread
        self._at = at
        self.high_water = high_water
        self.room = asyncio.Event()
        self.room.set()
        self._sending = 0  # bytes of the store call in progress
        self.on_failure = on_failure
        self.failure: Exception | None = None  # the first write the store refused; nothing is written after it
        self.max_size = max_size
        self.too_large: LogTooLarge | None = None
        self._logged = 0
        # Runs of one stream, grown in place: appending to a bytes would copy the whole run at every read.
        self._pieces: list[tuple[str, bytearray]] = []
        self._size = 0
        self._splitters = {"stdout": RecordSplitter(), "stderr": RecordSplitter()}
        self._masker: Masker | None = None
        self._masking: dict[str, StreamMasker] = {}
        self._kick = asyncio.Event()
        self._closed = False
        self._task = asyncio.create_task(self._flusher())

    def mask(self, secrets: list[str]) -> None:
        """Mask these values in everything written from now on: the job's secrets, known once it is set up, before
        it writes anything."""
        masker = Masker(secrets)
        self._masker = masker if masker else None

    def write(self, stream: str, data: bytes) -> None:
        splitter = self._splitters.setdefault(stream, RecordSplitter())
        plain, records = splitter.feed(data)
        for rec in records:
            self.on_record(self._masker.mask_value(rec) if self._masker else rec)
        if plain and self._masker:
            plain = self._masked(stream).feed(plain)
        self._take(stream, plain)

    def _take(self, stream: str, plain: bytes) -> None:
        """Queue ``plain`` (already masked) for the store, up to ``max_size`` bytes in all."""
        if plain and self.too_large is None and self._logged + len(plain) > self.max_size:
            plain = plain[:self.max_size - self._logged]
            self.too_large = LogTooLarge(f"the job's log passed its queue's max_log_size of "
                                         f"{format_size(self.max_size)}")
            if self.on_failure is not None:
                self.on_failure(self.too_large)
        elif self.too_large is not None:
            return
        if plain:
            self._logged += len(plain)
            if self._pieces and self._pieces[-1][0] == stream:
                self._pieces[-1][1].extend(plain)
            else:
                self._pieces.append((stream, bytearray(plain)))
            self._size += len(plain)
            if self._size >= FLUSH_BYTES:
                self._kick.set()
            self._held_changed()

    def _held_changed(self) -> None:
        if self._size + self._sending >= self.high_water:
            self.room.clear()
        else:
            self.room.set()

    async def _flusher(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), FLUSH_INTERVAL)
            self._kick.clear()
            closing = self._closed  # read before flushing: pieces written during this flush need one more
            await self.flush()
            if closing:
                return

    async def flush(self) -> None:
        if not self._pieces:
            return
        pieces, self._pieces, size, self._size = self._pieces, [], self._size, 0
        if self.failure is not None:
            self._held_changed()
            return  # the log is already cut short: later output would leave a hole in the offsets
        self._sending = size
        try:
            # The runs go to the store as they are, not copied on the event loop: the sink holds them no more.
            self._at = await self._call(self.store.append_logs, self.job_id, self.fence, pieces, at=self._at)
        except Exception as exc:
            # A full disk (or a store gone away) must stop the job, not the flusher, which would otherwise die
            # silently and leave the job running with its output going nowhere.
            self.failure = exc
            if self.on_failure is not None:
                self.on_failure(exc)
        finally:
            self._sending = 0
            self._held_changed()

    def _masked(self, stream: str) -> StreamMasker:
        if stream not in self._masking:
            self._masking[stream] = self._masker.stream()  # type: ignore[union-attr]
        return self._masking[stream]

    async def close(self) -> None:
        for stream, splitter in self._splitters.items():
            rest = splitter.flush()
            if self._masker:
                rest = self._masked(stream).feed(rest) + self._masked(stream).flush()
            self._take(stream, rest)
        self._closed = True
        self._kick.set()
        await self._task


class OrderedUpdates:
    """One job's store updates (state, reason, progress), run off the event loop one after another in the order they
    were asked for: fired-and-forgotten threads could land out of order and leave a job `starting` after `running`,
    or its progress at 4 of 5. ``call(fn, *args)`` runs each off the loop (by default ``asyncio.to_thread``)."""

    def __init__(self, call: Any = None) -> None:
        self._call = call or asyncio.to_thread
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        async def run() -> None:
            async with self._lock:  # asyncio.Lock wakes waiters first-come first-served
                await self._call(fn, *args, **kwargs)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait until every update asked for so far is in the store."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class Agent(LoggingConfigurable):
    """Claims and runs jobs. Configure as ``c.Agent.*`` (and ``c.LocalBackend.*`` etc. for the backends)."""

    queues = List(Unicode(), config=True, help="Queues this agent takes jobs from.")
    job_types = List(Unicode(), config=True, help="Job types this agent accepts; empty accepts any.")
    owner = Unicode(None, allow_none=True, config=True,
                    help="The user this agent serves as: on private queues (local ones, unless marked shared) it "
                         "claims only this user's jobs; on shared queues anyone's. None (the default for a "
                         "standalone agent): it serves the team, claiming anyone's jobs on every queue it serves. A "
                         "server's in-process agent serves as the server's user (LaunchApp.server_user).")
    lease_seconds = Float(30.0, config=True, help="How long a claim holds without a heartbeat.")
    heartbeat_interval = Float(0.0, config=True, help="Seconds between heartbeats; 0 means lease_seconds / 4.")
    poll_interval = Float(5.0, config=True, help="Fallback poll when no wake-up arrives.")
    max_jobs = Integer(0, config=True, help="Jobs this agent runs at once; 0 means the number of CPUs.")
    gpus = List(Integer(), allow_none=True, default_value=None, config=True,
                help="GPU indices this agent may hand out; None detects them with nvidia-smi.")
    keep_workdirs = Bool(False, config=True, help="Keep each job's unpacked folder after it ends (debugging).")
    home = Unicode(config=True, help="The launch home: wake-up sockets, and jobs' folders unless work_root is set.")
    work_root = Unicode(config=True, help="Where jobs' folders are unpacked.")
    agent_id = Unicode(config=True, help="This agent's id in the store.")
    backend_classes = Dict(config=True, help="Provider type -> Backend class, overriding the registry.")
    store = Instance(Store, help="The store (SQLStore, or HttpStore through a server for remote agents).")
    blobs = Instance(object, help="Where artifacts and outputs live (BlobStore or the HTTP client).")
    wake_socket = Bool(True, config=True, help="Listen for wake-ups from local submits on a Unix socket.")
    max_artifact_size = Integer(DEFAULT_MAX_SIZE, config=True, help="Largest artifact this agent unpacks, in bytes (the "
                                "files its manifest lists, in all); past it the job fails `artifact_error`. The "
                                "default is the packaging limit's (`submit --max-size`).")
    run_schedules = Bool(True, config=True, help="Run a scheduler beside the agent, firing the store's schedules "
                         "(one scheduler on the store fires, decided by a lease; an agent over HTTP never does: its "
                         "server fires them).")
    stop_grace = Float(30.0, config=True, help="On a graceful stop (SIGTERM to `jupyter launch agent`), how long "
                       "running jobs may take to finish before they are interrupted and handed back.")
    store_outage_seconds = Float(60.0, config=True, help="How long a running job's store calls (its log, state, "
                                 "outputs and end) are tried again while the store cannot be reached (a database "
                                 "restarting, a server not answering); the job's output is held back meanwhile. "
                                 "Past it the job stops `log_write_failed`, or, when it had ended, its lease lapses "
                                 "and it is requeued.")

    @default("home")
    def _default_home(self) -> str:
        return str(launch_home())

    @default("work_root")
    def _default_work_root(self) -> str:
        return str(Path(self.home) / "work")

    @default("agent_id")
    def _default_agent_id(self) -> str:
        return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._handing_back: set[str] = set()  # jobs being interrupted to be given back, not finished
        self._hurry = asyncio.Event()  # a graceful stop is cut short: hand back what still runs now
        self._run_task: asyncio.Task[Any] | None = None
        self._cancel_events: dict[str, asyncio.Event] = {}
        self._backends: dict[str, Backend] = {}
        self._free_gpus: list[int] = []
        self._total_gpus = 0
        self._local_gpus = True  # False when every queue's backend schedules GPUs itself (Kubernetes)
        self._unsubscribe: list[Any] = []
        self._reapers: list[asyncio.Task[None]] = []
        self._metrics_lock = threading.Lock()
        self._listener: WakeListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.scheduler: Scheduler | None = None
        self._scheduler_task: asyncio.Task[None] | None = None
        self.refused: RemoteAuthError | None = None  # why the server stopped taking this agent's calls
        self.finished: asyncio.Queue[tuple[str, Result]] = asyncio.Queue()
        # For backends sizing warm capacity (Backend.demand): each queue's count of queued jobs when last seen, and
        # this agent's jobs on it that are claimed and not yet started.
        self._queued: dict[str, int] = {}
        self._unstarted: dict[str, int] = {}

    @classmethod
    def configurables(cls) -> list[type]:
        """This class, the scheduler it runs and every registered backend's: what ``c.Agent.*``,
        ``c.Scheduler.*`` and ``c.<Backend>.*`` configure."""
        from .backends.base import backend_classes

        return [cls, Scheduler, *backend_classes().values()]

    @property
    def capacity(self) -> int:
        return self.max_jobs or (os.cpu_count() or 2)

    def wake(self) -> None:
        """Thread-safe: claim now instead of at the next poll."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def backend(self, provider: str) -> Backend:
        if provider not in self._backends:
            cls = self.backend_classes.get(provider) or backend_class(provider)
            if isinstance(cls, str):
                from traitlets.utils.importstring import import_item

                cls = import_item(cls)
            self._backends[provider] = cls(parent=self)
        return self._backends[provider]

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        gpus = self.gpus if self.gpus is not None else await asyncio.to_thread(detect_gpus)
        self._free_gpus, self._total_gpus = list(gpus), len(gpus)
        providers = {}
        for name in self.queues:
            with contextlib.suppress(Exception):
                providers[name] = await asyncio.to_thread(self.store.get_queue, name)
        self._local_gpus = not providers or any(
            self.backend(q.provider).supported_features().get("local_gpus", True) for q in providers.values())
        await asyncio.to_thread(self.store.register_agent, self.agent_id, self.queues, self.job_types,
                                host=socket.gethostname(),
                                info={"gpus": self._total_gpus if self._local_gpus else None, "pid": os.getpid(),
                                      "owner": self.owner})
        if isinstance(self.store, LocalEvents):  # else woken by the wake socket, a long-polled claim, or the poll
            self._unsubscribe.append(self.store.subscribe("enqueued", lambda *_: self.wake()))
            self._unsubscribe.append(self.store.subscribe("cancel", self._on_cancel))
        if self.wake_socket:
            self._listener = WakeListener(self.agent_id, self._wake.set, Path(self.home))
            self._listener.start()
        for name, queue in providers.items():
            backend = self.backend(queue.provider)
            config = self.provider_config(backend, queue.config)
            await self._reap(backend, name, config)
            await backend.warm_up(name, config, self.agent_id)
            if backend.reap_interval > 0:
                self._reapers.append(asyncio.create_task(self._reap_every(backend, name, config)))
        if self.run_schedules and isinstance(self.store, ScheduleFiring):
            from .service import LaunchService

            service = LaunchService(self.store, self.blobs, home=Path(self.home))
            self.scheduler = Scheduler(parent=self, service=service, holder=self.agent_id)
            self._scheduler_task = asyncio.create_task(self.scheduler.run())
        self.log.info("agent %s serving %s (job types: %s, gpus: %d)", self.agent_id, ", ".join(self.queues),
                      ", ".join(self.job_types) or "any", self._total_gpus)

    async def stop(self, *, hand_back: bool = False, grace: float = 0.0) -> None:
        """Stop claiming, then deal with the jobs still running: cancel them (ended ``cancelled``, for an agent that
        lives and dies with its user's process), or with ``hand_back`` give them up to ``grace`` seconds to finish
        (cut short by :meth:`hurry`) and hand the rest back, interrupted and queued again with their attempt not
        counted. A claim still in flight when the stop begins (a remote agent's long poll) is handed back when it
        returns a job, so a job arriving while the agent stops is never claimed for nobody."""
        self._stopping.set()
        self._wake.set()
        interrupt = getattr(self.store, "interrupt_claims", None)  # a remote agent's long poll: no need to wait it out
        if interrupt is not None:
            interrupt()
        if self._run_task is not None and self._run_task is not asyncio.current_task():
            await asyncio.wait({self._run_task})  # its last claim has returned, and been handed back
        if self.scheduler is not None:  # another scheduler on the store takes the lease at once
            await self.scheduler.stop()
            if self._scheduler_task is not None:
                await asyncio.gather(self._scheduler_task, return_exceptions=True)
            self.scheduler.service.close()
            self.scheduler = self._scheduler_task = None
        with contextlib.suppress(Exception):  # it serves its queues no more, whatever it still has to finish
            await asyncio.to_thread(self.store.unregister_agent, self.agent_id)
        if self._running and hand_back and grace > 0:
            self.log.info("stopping: %d running job(s) have %gs to finish before they are handed back",
                          len(self._running), grace)
            deadline = time.monotonic() + grace
            hurry = asyncio.create_task(self._hurry.wait())
            try:
                while self._running and not hurry.done() and (left := deadline - time.monotonic()) > 0:
                    await asyncio.wait({hurry, *self._running.values()}, timeout=left,
                                       return_when=asyncio.FIRST_COMPLETED)
            finally:
                hurry.cancel()
        for job_id, event in list(self._cancel_events.items()):
            if hand_back:
                self._handing_back.add(job_id)
            event.set()
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)
        for unsub in self._unsubscribe:
            unsub()
        if self._listener:
            self._listener.stop()
        for task in self._reapers:
            task.cancel()
        await asyncio.gather(*self._reapers, return_exceptions=True)
        self._reapers.clear()
        for backend in self._backends.values():
            await backend.shutdown()

    def hurry(self) -> None:
        """Cut a graceful stop short: hand back at once the jobs it was waiting for (a second signal)."""
        self._hurry.set()

    @staticmethod
    def provider_config(backend: Backend, queue_config: dict[str, Any]) -> ProviderConfig:
        """The queue's ``provider:`` block as the backend's typed model."""
        return backend.config_model.model_validate(queue_config.get("provider") or {"type": backend.name})

    def liveness(self, queue: str) -> Liveness:
        """What this agent tells a backend reaping ``queue``: the store's view of its jobs and agents."""

        async def jobs(job_ids: Any) -> dict[str, Any]:
            return await asyncio.to_thread(self.store.job_statuses, queue, list(job_ids))

        async def agents() -> set[str]:
            return set(await asyncio.to_thread(self.store.live_agent_ids, queue))

        return Liveness(jobs=jobs, agents=agents)

    async def _reap(self, backend: Backend, queue: str, config: ProviderConfig) -> None:
        try:
            await backend.reap(queue, config, self.liveness(queue))
        except RemoteAuthError as exc:
            self._refuse(exc)
        except Exception:  # an unreachable engine or cluster must not stop the agent
            self.log.warning("queue %s: removing what ended jobs left failed; trying again later", queue,
                             exc_info=True)

    async def _reap_every(self, backend: Backend, queue: str, config: ProviderConfig) -> None:
        while True:
            await asyncio.sleep(backend.reap_interval)
            await self._reap(backend, queue, config)

    async def run(self) -> None:
        """Claim and run jobs until :meth:`stop`."""
        if self._loop is None:
            await self.start()
        self._run_task = asyncio.current_task()
        last_reap = 0.0
        while not self._stopping.is_set():
            self._wake.clear()
            now = time.monotonic()
            if now - last_reap >= self.interval:
                last_reap = now
                try:
                    await asyncio.to_thread(self._housekeeping)
                except RemoteAuthError as exc:
                    self._refuse(exc)
                    break
                except Exception:
                    self.log.exception("agent housekeeping failed; retrying")
            try:
                while len(self._running) < self.capacity and not self._stopping.is_set():
                    claim = await asyncio.to_thread(
                        self.store.claim_next_job, self.agent_id, self.queues, self.job_types or None,
                        lease_seconds=self.lease_seconds,
                        free_gpus=len(self._free_gpus) if self._local_gpus else None, owner=self.owner)
                    if claim is None:
                        break
                    if self._stopping.is_set():  # a long poll that outlived the stop: the job is not ours to run
                        await self._hand_back_unstarted(claim)
                        break
                    # Its cancel event exists from now: a stop before the task first runs still reaches it.
                    self._cancel_events[claim.job.id] = asyncio.Event()
                    self._running[claim.job.id] = asyncio.create_task(self._run_claim(claim))
            except RemoteAuthError as exc:
                self._refuse(exc)
                break
            except Exception:
                if self._stopping.is_set():  # the claim was cut short by the stop
                    break
                self.log.exception("claiming failed; retrying in %.1fs", self.poll_interval)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(self.poll_interval, self.interval))

    async def _hand_back_unstarted(self, claim: Claim) -> None:
        try:
            await asyncio.to_thread(self.store.hand_back, claim.job.id, claim.fence)
            self.log.info("stopping: handed back job %s, claimed as the stop began", claim.job.id)
        except Exception:  # the lease still lapses, and the job is requeued then (as an attempt)
            self.log.warning("could not hand back job %s; it is requeued when its lease expires", claim.job.id,
                             exc_info=True)

    async def store_call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, a store call, off the event loop; while it fails because the store cannot be
        reached (:func:`~.store.base.is_unreachable`), it is tried again, the waits doubling from 0.1 s to 2 s, for
        up to ``store_outage_seconds``; then, or on any other error, it raises."""
        delay, longest = OUTAGE_RETRY_DELAYS
        deadline: float | None = None
        while True:
            try:
                result = await asyncio.to_thread(fn, *args, **kwargs)
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.store_outage_seconds
                    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                    self.log.warning("the store cannot be reached (%s: %s); trying again for up to %gs",
                                     getattr(fn, "__name__", "call"), cause, self.store_outage_seconds)
                if now + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, longest)
                continue
            if deadline is not None:
                self.log.info("the store answers again (%s)", getattr(fn, "__name__", "call"))
            return result

    def _refuse(self, exc: RemoteAuthError) -> None:
        """The server refused this agent's token (revoked, or out of scope): no retry can succeed, so say so once
        and stop claiming; running jobs are stopped by :meth:`stop`, their leases expire on the server."""
        if self.refused is None:
            self.refused = exc
            self.log.error("%s; stopping", exc)
        self._stopping.set()
        self._wake.set()

    @property
    def interval(self) -> float:
        return self.heartbeat_interval or self.lease_seconds / 4

    def _housekeeping(self) -> None:
        if isinstance(self.store, DiskReserve):
            self.store.ensure_reserve()  # taken back once a full disk has room again
        self.store.agent_seen(self.agent_id)
        if self.store.requeue_expired():
            self._wake.set()

    def _on_cancel(self, job_id: str) -> None:
        event = self._cancel_events.get(job_id)
        if event is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(event.set)

    # ------------------------------------------------------------ one job

    async def _run_claim(self, claim: Claim) -> None:
        job, fence = claim.job, claim.fence
        gpu_ids: list[int] = []
        cancel = self._cancel_events.setdefault(job.id, asyncio.Event())
        lost = asyncio.Event()
        runner_result: dict[str, Any] = {}
        running_cell: dict[str, Any] = {}  # the notebook cell the runner last said it started, for a timeout's message
        result_seen = asyncio.Event()
        workdir = Path(self.work_root) / f"{job.id}-{job.attempt}"
        store = self.store

        def on_record(rec: dict[str, Any]) -> None:
            kind = rec.get("type")
            try:
                if kind == "metrics":
                    pending_metrics.append(check_metric_record(rec, time.time()))
                elif kind == "progress":
                    updates.submit(store.set_progress, job.id, fence, check_progress(rec))
                    if "cell" in rec:  # the runner's: the cell starting, or None once all have run
                        running_cell.clear()
                        running_cell.update(rec["cell"] if isinstance(rec["cell"], dict) else {})
            except ValueError as exc:  # the job printed a record the store would refuse: drop it, keep the job
                self.log.warning("job %s: a %s record was dropped: %s", job.id, kind, exc)
            if kind in ("metrics", "progress"):
                return
            if kind == "result":
                runner_result.update(rec)
                result_seen.set()

        pending_metrics: list[dict[str, Any]] = []
        updates = OrderedUpdates(self.store_call)
        def on_log_failure(exc: Exception) -> None:
            if isinstance(exc, StaleClaim):  # the claim ended (lease lost, or finished): stop, report nothing
                self.log.warning("job %s: its claim is no longer current; stopping it", job.id)
                lost.set()
            elif isinstance(exc, RemoteAuthError):
                self._refuse(exc)
            elif isinstance(exc, LogTooLarge):
                self.log.warning("job %s: %s; stopping the job", job.id, exc)
            else:
                self.log.error("job %s: the store refused its log (%s); stopping the job", job.id, exc)
            cancel.set()

        sink = LogSink(store, job.id, fence, on_record, on_log_failure, call=self.store_call, at=job.log_size)
        started: Callable[[], None] = lambda: None  # once the backend is known: tells it this job no longer waits
        beat = asyncio.create_task(self._heartbeats(job.id, fence, cancel, lost))
        result = Result(FAILED, reason="agent_error")
        try:
            try:
                spec = JobSpec.model_validate(job.spec)
            except ValueError as exc:  # stored by another version, or written past the API: fail it, say why
                errors = exc.errors() if hasattr(exc, "errors") else []
                what = (f"{'.'.join(map(str, errors[0]['loc']))}: {errors[0]['msg']}" if errors
                        else str(exc).splitlines()[0])
                result = Result(FAILED, reason="invalid_spec", message=f"{describe('invalid_spec')} ({what}); "
                                                                       "resubmit it")
                return
            queue = await self.store_call(store.get_queue, job.queue)
            sink.max_size = queue.config.get("max_log_size") or DEFAULT_MAX_LOG_SIZE  # nothing is logged before
            backend = self.backend(queue.provider)
            provider = self.provider_config(backend, queue.config)
            self._queued[job.queue] = queue.counts.get("queued", 0)
            started = self._waiting_to_start(backend, job.queue, provider)
            if backend.supported_features().get("local_gpus", True):
                if spec.resources.gpu > len(self._free_gpus):
                    result = Result(FAILED, reason="insufficient_gpus",
                                    message=f"needs {spec.resources.gpu} GPU(s); this agent has {self._total_gpus}")
                    return
                gpu_ids = [self._free_gpus.pop(0) for _ in range(spec.resources.gpu)]
            await self.store_call(store.set_state, job.id, fence, STARTING, "preparing")
            try:
                ctx = await asyncio.to_thread(self._prepare, job, fence, spec, provider, workdir, gpu_ids)
            except _JobSetupError as exc:
                result = Result(FAILED, reason=exc.reason, message=str(exc))
                return
            ctx.cancel_requested = cancel
            ctx.result_seen = result_seen
            sink.mask(list(ctx.secrets.values()))
            ctx.log = sink.write
            ctx.log_room = sink.room
            ctx.set_reason = lambda reason, message=None: updates.submit(
                store.set_state, job.id, fence, STARTING, reason, message)
            def mark_running() -> None:
                started()
                updates.submit(store.set_state, job.id, fence, RUNNING, "running", None, agent_id=self.agent_id)

            ctx.mark_running = mark_running
            metrics_task = asyncio.create_task(self._ship_metrics(job.id, fence, pending_metrics, lost))
            try:
                run = asyncio.create_task(backend.run(ctx))
                lost_wait = asyncio.create_task(lost.wait())
                await asyncio.wait({run, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
                if lost.is_set() and not run.done():
                    cancel.set()  # our lease is gone: stop the job; a newer attempt owns it now
                result = await run
                lost_wait.cancel()
            finally:
                metrics_task.cancel()
                await sink.close()
                await self.store_call(self._flush_metrics, job.id, fence, pending_metrics, lost)
                await updates.drain()
            if lost.is_set():
                pass  # the claim is no longer ours: nothing more is reported for it
            elif isinstance(sink.failure, StaleClaim):
                lost.set()
            elif sink.failure is not None:
                full = is_disk_full(sink.failure)
                cause = getattr(sink.failure, "orig", None) or sink.failure  # the driver's words, not the SQL
                if full and isinstance(store, DiskReserve):
                    await asyncio.to_thread(store.release_reserve)  # room to record the failure below
                result = Result(FAILED, reason="log_storage_full" if full else "log_write_failed", message=(
                    f"{describe('log_storage_full' if full else 'log_write_failed')}: {cause}. The log "
                    "up to that point is kept; free space where the store lives (or fix the store) and rerun"))
            elif sink.too_large is not None:
                result = Result(FAILED, reason="log_too_large", message=(
                    f"{sink.too_large}; the job was stopped. The log up to that point is kept; print less, or "
                    "raise max_log_size in the queue's config"))
            elif result.reason == "timeout" and running_cell:
                result.message = f"{result.message} while running {cell_name(running_cell)}"
            elif runner_result and result.state != "cancelled" and result.reason != "timeout":
                result.state = runner_result.get("state", result.state)
                result.reason = runner_result.get("reason") or result.reason
                result.message = runner_result.get("message") or result.message
                if result.finished_at_result:  # the status the runner exits with, as it promises
                    result.exit_code = 0 if result.state == SUCCEEDED else 1
            if sink.failure is None and not lost.is_set() and not self._given_back(job.id, result):
                try:  # (else the store has no room for them either, or the claim is gone)
                    await self.store_call(self._collect_outputs, job.id, fence, ctx.output_dir,
                                          queue.config.get("max_output_size") or DEFAULT_MAX_OUTPUT_SIZE)
                except _JobSetupError as exc:
                    result = Result(FAILED, reason=exc.reason, message=str(exc))
                except Exception as exc:
                    if not is_disk_full(exc):
                        raise
                    result = Result(FAILED, reason="storage_full", message=(
                        f"{describe('storage_full')}: {getattr(exc, 'orig', None) or exc}. No output was kept; "
                        "free space where the store's blobs live and rerun"))
        except StaleClaim:
            lost.set()  # the claim ended under us (lease lost, or another attempt): report nothing more
        except RemoteAuthError as exc:
            self._refuse(exc)
            lost.set()  # nothing more can be reported for this job; the server requeues it when its lease expires
        except Exception as exc:
            self.log.exception("job %s failed in the agent", job.id)
            result = Result(FAILED, reason="agent_error", message=f"{type(exc).__name__}: {exc}")
        finally:
            try:
                beat.cancel()
                started()
                if not sink._closed:
                    await sink.close()
                self._free_gpus.extend(gpu_ids)
                self._cancel_events.pop(job.id, None)
                await updates.drain()
                given_back = self._given_back(job.id, result)
                self._handing_back.discard(job.id)
                if given_back and not self.keep_workdirs:  # before it is claimed again, maybe on this machine
                    await asyncio.to_thread(shutil.rmtree, workdir, True)
                if lost.is_set():
                    pass  # a newer attempt owns the job, or nothing can be reported any more
                elif given_back:
                    await asyncio.to_thread(self._hand_back_interrupted, job.id, fence)
                else:
                    await self._record_end(job.id, fence, result)
                if not given_back and not self.keep_workdirs:
                    await asyncio.to_thread(shutil.rmtree, workdir, True)
            finally:  # whatever failed above, the job's slot is free again: else the agent claims one job fewer
                self._running.pop(job.id, None)
                self.finished.put_nowait((job.id, result))
                self._wake.set()

    def _waiting_to_start(self, backend: Backend, queue: str, provider: ProviderConfig) -> Callable[[], None]:
        """Count a claimed job as waiting to start on ``queue`` and tell the backend; the call returned says it has
        started (or never will), and tells the backend again (once, however often it is called)."""
        self._unstarted[queue] = self._unstarted.get(queue, 0) + 1
        self._tell_demand(backend, queue, provider)
        done = False

        def started() -> None:
            nonlocal done
            if not done:
                done = True
                self._unstarted[queue] -= 1
                self._tell_demand(backend, queue, provider)

        return started

    def _tell_demand(self, backend: Backend, queue: str, provider: ProviderConfig) -> None:
        """Tell the backend how many jobs want to start on ``queue``: those queued when last seen, and this agent's
        claimed and not yet started (as many as it could run)."""
        waiting = self._queued.get(queue, 0) + self._unstarted.get(queue, 0)
        backend.demand(queue, provider, min(waiting, self.capacity))

    async def _record_end(self, job_id: str, fence: int, result: Result) -> None:
        """Record the job's end (through a store outage of up to ``store_outage_seconds``). When it cannot be, say
        so: the job's lease lapses and it is requeued, or fails `lost` with no retries left."""
        try:
            await self.store_call(self._finish, job_id, fence, result)
        except StaleClaim:
            self.log.warning("job %s ended (%s), but its claim is no longer current: its end is not recorded by "
                             "this agent", job_id, result.state)
        except Exception as exc:
            self.log.error("job %s ended (%s, %s), but the store did not take its end (%s); it is requeued when its "
                           "lease expires", job_id, result.state, result.reason, getattr(exc, "orig", None) or exc)

    def _finish(self, job_id: str, fence: int, result: Result) -> None:
        """Record the job's end; on a disk too full for even that, free the store's reserve and record it then (a
        job must never be left `running` by a full disk)."""
        def finish() -> None:
            self.store.finish(job_id, fence, result.state, exit_code=result.exit_code, reason=result.reason,
                              message=result.message or describe(result.reason, exit_code=result.exit_code))

        try:
            finish()
        except Exception as exc:
            if not (is_disk_full(exc) and isinstance(self.store, DiskReserve) and self.store.release_reserve()):
                raise
            finish()

    def _given_back(self, job_id: str, result: Result) -> bool:
        """Whether this job's end is a hand-back: interrupted by a stopping agent (not ended on its own first)."""
        return job_id in self._handing_back and result.state == CANCELLED

    def _hand_back_interrupted(self, job_id: str, fence: int) -> None:
        try:
            if self.store.hand_back(job_id, fence):
                self.log.info("stopping: handed back job %s, interrupted; it runs again on the next agent", job_id)
        except Exception:
            self.log.warning("could not hand back job %s; it is requeued when its lease expires", job_id,
                             exc_info=True)

    def _prepare(self, job: Any, fence: int, spec: JobSpec, queue_config: ProviderConfig, workdir: Path,
                 gpu_ids: list[int]) -> JobContext:
        secrets: dict[str, str] = {}
        for name in spec.secrets:
            if name not in os.environ:
                raise _JobSetupError("secret_missing", f"secret {name!r} is not set in the agent's environment "
                                                       f"(agent {self.agent_id}); set it where the agent runs")
            secrets[name] = os.environ[name]
        if workdir.exists():
            shutil.rmtree(workdir)
        if job.artifact:
            from .artifact import ArtifactError, materialize

            try:
                materialize(job.artifact, self.blobs, workdir, max_size=self.max_artifact_size)
            except (ArtifactError, OSError, KeyError) as exc:
                raise _JobSetupError("artifact_error", f"cannot unpack artifact {job.artifact}: {exc}") from None
        else:
            workdir.mkdir(parents=True)
        control = workdir / ".jupyter-launch"
        control.mkdir(exist_ok=True)
        output_dir = workdir / ".jupyter-launch" / "outputs"
        output_dir.mkdir(exist_ok=True)
        runner_spec = {
            "kind": spec.kind, "notebook": spec.notebook, "code": spec.code, "setup": spec.setup,
            "push": ".jupyter-launch/push.pkl" if spec.push and (control / "push.pkl").exists() else None,
            "pull": spec.pull, "parameters": spec.parameters, "kernel": spec.kernel,
        }
        (control / "job.json").write_text(json.dumps(runner_spec))
        env = dict(spec.env)
        env.update({
            "JUPYTER_LAUNCH_JOB_ID": job.id, "JUPYTER_LAUNCH_ATTEMPT": str(job.attempt),
            "JUPYTER_LAUNCH_FENCE": str(fence), "JUPYTER_LAUNCH_QUEUE": job.queue,
            OUTPUT_DIR_ENV: str(output_dir),
        })
        return JobContext(job_id=job.id, attempt=job.attempt, fence=fence, queue=job.queue, spec=spec,
                          queue_config=queue_config, workdir=workdir, output_dir=output_dir,
                          env=env, secrets=secrets, artifact=job.artifact, gpu_ids=gpu_ids, agent_id=self.agent_id)

    async def _heartbeats(self, job_id: str, fence: int, cancel: asyncio.Event, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                beat = await asyncio.to_thread(self.store.heartbeat, job_id, fence, lease_seconds=self.lease_seconds)
            except RemoteAuthError as exc:
                self._refuse(exc)
                lost.set()  # no more heartbeats can land: stop the job rather than run it unreported
                return
            except Exception:
                self.log.warning("heartbeat for job %s failed; retrying", job_id, exc_info=True)
                continue
            if not beat.ok:
                self.log.warning("lease on job %s lost; stopping it", job_id)
                lost.set()
                return
            if beat.cancel_requested:
                cancel.set()

    async def _ship_metrics(self, job_id: str, fence: int, pending: list[dict[str, Any]], lost: asyncio.Event) -> None:
        while not lost.is_set():
            await asyncio.sleep(0.1)
            if pending:
                try:
                    await self.store_call(self._flush_metrics, job_id, fence, pending, lost)
                except Exception as exc:  # an outage's are kept for the next try; the final flush reports the rest
                    self.log.warning("job %s: metrics not stored yet (%s)", job_id, exc)

    def _flush_metrics(self, job_id: str, fence: int, pending: list[dict[str, Any]], lost: asyncio.Event) -> None:
        # Called from worker threads by the shipper and by the final flush: one at a time, or records are lost.
        with self._metrics_lock:
            if pending and not lost.is_set():
                batch = pending[:]
                del pending[:len(batch)]
                try:
                    self.store.add_metrics(job_id, fence, batch)
                except StaleClaim:  # the claim ended: the job is being stopped, its metrics go nowhere
                    if self._loop is not None:
                        self._loop.call_soon_threadsafe(lost.set)
                except Exception as exc:
                    if is_unreachable(exc):
                        pending[:0] = batch  # not stored: sent again, before what came since
                    raise

    def _collect_outputs(self, job_id: str, fence: int, output_dir: Path, max_size: int) -> None:
        """Store the job's output files, or none of them when together they pass ``max_size`` (checked by their
        sizes before anything is copied: a sparse file counts at its full size, as it would be stored). A file whose
        name the store refuses (a control character, too long) is skipped with a warning."""
        files = []
        if output_dir.is_dir():
            for path in sorted(output_dir.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    rel = path.relative_to(output_dir).as_posix()
                    try:
                        check_output_path(rel)
                    except ValueError as exc:
                        self.log.warning("job %s: output skipped: %s", job_id, exc)
                        continue
                    files.append((path, rel, path.stat().st_size))
        total = sum(size for _, _, size in files)
        if total > max_size:
            _, rel, size = max(files, key=lambda f: f[2])
            raise _JobSetupError("output_too_large", (
                f"{describe('output_too_large')}: {format_size(total)} in {len(files)} file(s), over the queue's "
                f"max_output_size of {format_size(max_size)} (largest: {rel}, {format_size(size)}); none was kept. "
                "Write less to the output folder, or raise max_output_size in the queue's config"))
        records = [OutputRecord(rel, self.blobs.put_file(path), size) for path, rel, size in files]
        self.store.add_outputs(job_id, fence, records)


class _JobSetupError(LaunchError):
    """A job that cannot be set up to run (a secret missing, an artifact that does not unpack), with its reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


async def serve(agent: Agent, stop: asyncio.Event) -> None:
    """Run ``agent`` until ``stop`` is set (or the server refuses its token), then stop it gracefully: no new claims,
    running jobs get ``Agent.stop_grace`` seconds to finish, the rest are handed back (:meth:`Agent.hurry` cuts the
    wait short)."""
    if agent._loop is None:
        await agent.start()
    running = asyncio.create_task(agent.run())
    stopping = asyncio.create_task(stop.wait())
    try:
        # A refused token ends the agent's loop by itself, with one line saying why.
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        await agent.stop(hand_back=True, grace=agent.stop_grace)
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running


def stop_on_signals(agent: Agent, stop: asyncio.Event) -> None:
    """How `jupyter launch agent` answers signals: SIGTERM stops it gracefully (sets ``stop``); SIGINT, or a second
    signal, hands its running jobs back at once. (SIGKILL reports nothing: their leases lapse, and they are requeued
    as a new attempt, or fail ``lost`` with no retries left.)"""
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        hurry = sig == signal.SIGINT or stop.is_set()
        agent.log.info("%s: %s", sig.name, "handing running jobs back now" if hurry else
                       f"stopping; running jobs have {agent.stop_grace:g}s to finish (SIGINT: hand them back now)")
        if hurry:
            agent.hurry()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


def make_local_agent(store: Any, queues: list[str], *, job_types: list[str] | None = None,
                     blobs: BlobStore | None = None, home: str | Path | None = None, **traits: Any) -> Agent:
    """An agent on this machine's store and blob folder (the CLI, the server and tests use this)."""
    home = Path(home) if home else launch_home()
    return Agent(store=store, blobs=blobs or BlobStore(home / "blobs"), queues=queues, home=str(home),
                 job_types=job_types or [], **traits)
