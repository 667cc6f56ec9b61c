"""``LaunchService``: the one owner of every job operation, over a store and a blob store.

Submit (a prepared job → artifact → enqueue → wake the agents), cancel, rerun, follow (one async generator from a
byte offset to the job's end) and "make sure an agent serves this queue here". The embedded ``LaunchClient`` and the
server's REST handlers both call it; the HTTP client calls those handlers. Store calls are blocking: the service runs
them through ``run_blocking`` (``asyncio.to_thread`` unless the server hands it its own pool).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .events import StoreEvents
from .notify import wake_agents
from .options import PreparedJob
from .spec import JobSpec, QueueConfig, load_queue_config
from .store import FINAL, BlobStore, JobRecord, LogChunk, NotFound, QueueRecord, ScheduleRecord, SweepRecord

if TYPE_CHECKING:
    from .agent import Agent
    from .sweep import SweepConfig
    from .artifact import Artifact, HashCache

PAGE = 1024 * 1024  # log bytes read per store call for one follower
POLL_MIN = 0.005  # seconds; a follower's poll doubles from here while nothing arrives, up to its poll_max


@dataclass
class LogPage:
    """Log chunks read from the store, and the offset to read from next."""

    chunks: list[LogChunk]
    next_offset: int


class SharedPages:
    """Log pages read from the store, shared by the followers of a job on one event loop.

    Followers at the same offset of the same job get the one page: one store read and one copy in memory, whether
    they ask while it is being read or after. A log is only appended to, so a page read once stays true (one read
    while the log was shorter ends earlier, and its followers read on from there). At most ``keep`` pages per job
    are kept, the ones read last; a job's pages go when its last follower leaves.
    """

    def __init__(self, keep: int = 8):
        self.keep = keep
        self._pages: dict[str, dict[int, asyncio.Future[tuple[list[LogChunk], int]]]] = {}  # by job, by offset
        self._followers: dict[str, int] = {}

    def join(self, job_id: str) -> None:
        self._followers[job_id] = self._followers.get(job_id, 0) + 1

    def leave(self, job_id: str) -> None:
        left = self._followers.get(job_id, 1) - 1
        if left:
            self._followers[job_id] = left
        else:
            self._followers.pop(job_id, None)
            self._pages.pop(job_id, None)

    def kept(self, job_id: str) -> int:
        """How many pages of the job are kept now (read, or being read)."""
        return len(self._pages.get(job_id, ()))

    async def read(self, job_id: str, offset: int, read: Callable[[], Awaitable[tuple[list[LogChunk], int]]]
                   ) -> tuple[list[LogChunk], int]:
        """The page at ``offset``: the one kept, or ``read()`` (once, for every follower asking meanwhile). An empty
        or failed read is not kept: the next follower asking reads again."""
        pages = self._pages.setdefault(job_id, {})
        page = pages.get(offset)
        if page is None or (page.done() and (page.cancelled() or page.exception() is not None
                                             or not page.result()[0])):
            page = asyncio.ensure_future(read())
            pages[offset] = page
            while len(pages) > self.keep:
                del pages[next(iter(pages))]  # the oldest: followers behind it read the store again
        return await asyncio.shield(page)  # a follower leaving does not cancel the read the others wait for


@dataclass(frozen=True)
class Caller:
    """Who asks the server for a job operation, as its authorizer answered: ``name`` is the identity that owns the
    jobs it submits; ``admin`` (authorized for ``launch_admin`` with the operation's action) reaches every user's
    jobs, anyone else only their own. The embedded client passes none: its store is its own user's."""

    name: str
    admin: bool

    def reaches(self, job: JobRecord) -> bool:
        return self.admin or job.owner == self.name


def package(prepared: PreparedJob, blobs: Any, *, hash_cache: HashCache | None = None,
            include: list[str] | None = None, extra_files: dict[str, bytes] | None = None,
            max_size: int | None = None) -> Artifact:
    """The job's folder and environment as a content-addressed artifact in ``blobs`` (only missing blobs written).

    The environment is captured from the Python the notebook's kernel runs (with its ``%pip`` lines and the sources
    of its local distributions), so every face that submits the same notebook and folder produces the same artifact.
    """
    from .artifact import DEFAULT_MAX_SIZE, build_artifact
    from .environment import capture

    spec = prepared.spec
    environment, sources = capture(prepared.notebook, spec.kernel, interpreter=prepared.interpreter)
    return build_artifact(prepared.folder, blobs, include=include, environment=environment,
                          entrypoint=spec.notebook or (" ".join(spec.command or []) or None),
                          max_size=max_size or DEFAULT_MAX_SIZE, hash_cache=hash_cache, extra_files=extra_files,
                          sources=sources)


def sweep_children(store: Any, sweep_id: str) -> list[JobRecord]:
    """Every child job of a sweep, in the order they were queued."""
    children: list[JobRecord] = []
    before = None
    while True:
        page = store.list_jobs(parent_id=sweep_id, limit=500, before=before)
        children += page
        if len(page) < 500:
            return children[::-1]
        before = page[-1].seq


class LaunchService:
    """Job operations on one store. ``home`` is the launch home whose local agents a submit wakes."""

    def __init__(self, store: Any, blobs: BlobStore | Any, *, home: Path,
                 run_blocking: Callable[..., Awaitable[Any]] | None = None):
        self.store = store
        self.blobs = blobs
        self.home = Path(home)
        self.events = StoreEvents(store)
        self._run = run_blocking or asyncio.to_thread
        self._hash_cache: HashCache | None = None
        self._agents: dict[str, tuple[Agent, asyncio.Task[Any]]] = {}
        self._pages: dict[asyncio.AbstractEventLoop, SharedPages] = {}  # its followers' log pages, per event loop

    # ------------------------------------------------------------ queues

    def create_queue(self, config: QueueConfig | str | Path, *, replace: bool = False) -> QueueRecord:
        source = None
        if not isinstance(config, QueueConfig):
            source = str(config)
            config = load_queue_config(config)
        config.check_runnable(source)
        return self.store.create_queue(config, replace=replace)

    # ------------------------------------------------------------ jobs

    def wake(self) -> None:
        """Wake this launch home's idle agents now (in-process ones are woken by the store's own event)."""
        wake_agents(self.home)

    def package(self, prepared: PreparedJob, **options: Any) -> Artifact:
        from .artifact import HashCache

        if self._hash_cache is None:
            self._hash_cache = HashCache(self.home)
        try:
            return package(prepared, self.blobs, hash_cache=self._hash_cache, **options)
        finally:
            self._hash_cache.save()

    def submit(self, prepared: PreparedJob, *, queue: str, owner: str | None, owner_name: str | None = None,
               **options: Any) -> tuple[JobRecord, Artifact]:
        """Package the prepared job, enqueue it and wake the agents; returns the job and what was packaged."""
        self.store.get_queue(queue)  # an unknown queue fails before anything is packaged
        artifact = self.package(prepared, **options)
        return self.enqueue(prepared.spec, queue=queue, artifact=artifact.digest, owner=owner,
                            owner_name=owner_name), artifact

    def enqueue(self, spec: JobSpec, *, queue: str, artifact: str | None, owner: str | None,
                owner_name: str | None = None) -> JobRecord:
        """Enqueue a job whose artifact is already in the blob store (a client packaged and uploaded it)."""
        record = self.store.enqueue(queue, spec, artifact=artifact, owner=owner, owner_name=owner_name)
        self.wake()
        return record

    def get_job(self, job_id: str, *, caller: Caller | None = None) -> JobRecord:
        """The job, when ``caller`` may reach it. Another user's job is "unknown", worded exactly as a job that does
        not exist, so a caller learns nothing of the jobs it may not see. Every job route of the server comes
        through here (cancel and rerun below do), before it reads or changes anything of the job."""
        job = self.store.get_job(job_id)
        if caller is not None and not caller.reaches(job):
            raise NotFound(f"unknown job {job_id!r}")
        return job

    def list_jobs(self, *, caller: Caller | None = None, owner: str | None = None, **filters: Any) -> list[JobRecord]:
        """Jobs as the store lists them (``filters``: those of ``Store.list_jobs``), only ``owner``'s when given. A
        caller who is not an admin gets only their own: the store's query is filtered, so a page is never short of
        theirs."""
        if caller is not None and not caller.admin:
            if owner is not None and owner != caller.name:
                return []
            owner = caller.name
        return self.store.list_jobs(owner=owner, **filters)

    def cancel(self, job_id: str, *, caller: Caller | None = None) -> JobRecord:
        if caller is not None:
            self.get_job(job_id, caller=caller)
        record = self.store.request_cancel(job_id)
        self.wake()
        return record

    def rerun(self, job_id: str, *, owner: str | None, owner_name: str | None = None,
              caller: Caller | None = None) -> JobRecord:
        """A new job with the old one's spec and artifact, owned by ``owner`` (who asked)."""
        if caller is not None:
            self.get_job(job_id, caller=caller)
        record = self.store.rerun(job_id, owner=owner, owner_name=owner_name)
        self.wake()
        return record

    def move_to_front(self, job_id: str, *, caller: Caller | None = None) -> JobRecord:
        """Put a queued job first in its queue's claim order (its priority raised above every other queued job's)."""
        if caller is not None:
            self.get_job(job_id, caller=caller)
        return self.store.move_to_front(job_id)

    def delete_job(self, job_id: str, *, caller: Caller | None = None) -> list[str]:
        """Delete an ended job with its log, metrics and outputs, and remove from the blob store the output blobs
        nothing else uses: no other job's output, no artifact and no file an artifact lists (an output can be
        byte for byte an input of another job). Returns the digests removed."""
        if caller is not None:
            self.get_job(job_id, caller=caller)
        candidates = set(self.store.delete_job(job_id))
        if candidates:
            candidates -= self._artifact_files(candidates)
            for digest in sorted(candidates):
                self.blobs.remove(digest)
        return sorted(candidates)

    def _artifact_files(self, digests: set[str]) -> set[str]:
        """Those of ``digests`` that a remaining job's artifact lists as one of its files."""
        from .artifact import ArtifactError, load_manifest

        listed: set[str] = set()
        for artifact in self.store.artifact_digests():
            try:
                files = load_manifest(artifact, self.blobs)["files"]
            except (ArtifactError, OSError):
                continue  # an artifact whose manifest is gone lists nothing that can still be used
            listed.update(entry["digest"] for entry in files.values() if entry.get("digest") in digests)
            if listed == digests:
                break
        return listed

    def archive_job(self, job_id: str, archived: bool = True, *, caller: Caller | None = None) -> JobRecord:
        if caller is not None:
            self.get_job(job_id, caller=caller)
        return self.store.archive_job(job_id, archived)

    def live_agents(self, queue: str, *, owner: str | None = None) -> list[str]:
        """The ids of the live agents serving ``queue``; with ``owner``, only those that would run that user's jobs
        there (on a private queue: agents serving as them, or as no user)."""
        agents = [a for a in self.store.list_agents() if queue in a["queues"]]
        if owner is not None and not self.store.get_queue(queue).shared:
            agents = [a for a in agents if (a.get("info") or {}).get("owner") in (None, owner)]
        return [a["id"] for a in agents]

    # ------------------------------------------------------------ sweeps

    def create_sweep(self, prepared: PreparedJob, *, queue: str, sweep: SweepConfig, owner: str | None,
                     **options: Any) -> tuple[SweepRecord, Artifact]:
        """Package the prepared job once and queue one child job per run of ``sweep``, all of that artifact."""
        runs = sweep.runs()
        self.store.get_queue(queue)
        artifact = self.package(prepared, **options)
        record = self.store.create_sweep(queue, prepared.spec, artifact=artifact.digest, runs=runs,
                                         config=sweep.model_dump(mode="json", exclude_none=True),
                                         max_parallel=sweep.max_parallel, fail_fast=sweep.fail_fast,
                                         name=sweep.name, owner=owner)
        self.wake()
        return record, artifact

    def get_sweep(self, sweep_id: str, *, caller: Caller | None = None) -> SweepRecord:
        sweep = self.store.get_sweep(sweep_id)
        if caller is not None and not (caller.admin or sweep.owner == caller.name):
            raise NotFound(f"unknown sweep {sweep_id!r}")
        return sweep

    def cancel_sweep(self, sweep_id: str, *, caller: Caller | None = None) -> list[JobRecord]:
        """Cancel the sweep's children that have not ended; the children as they are after."""
        self.get_sweep(sweep_id, caller=caller)
        children = sweep_children(self.store, sweep_id)
        done = [self.store.request_cancel(j.id) if not j.done else j for j in children]
        self.wake()
        return done

    # ------------------------------------------------------------ schedules

    def create_schedule(self, prepared: PreparedJob, *, queue: str, cron: str, tz: str = "UTC",
                        name: str | None = None, owner: str | None, **options: Any) -> tuple[ScheduleRecord, Artifact]:
        """Package the prepared job once and keep it as a schedule: each time ``cron`` names in ``tz``, a job of
        that artifact named after the schedule is queued on ``queue``."""
        from .cron import Cron, zone_info

        Cron(cron), zone_info(tz)  # a bad expression fails before anything is packaged
        self.store.get_queue(queue)
        artifact = self.package(prepared, **options)
        schedule = self.store.create_schedule(queue, prepared.spec, cron=cron, tz=tz, artifact=artifact.digest,
                                              name=name, owner=owner)
        return schedule, artifact

    def get_schedule(self, schedule_id: str, *, caller: Caller | None = None) -> ScheduleRecord:
        """The schedule, when ``caller`` may reach it (its owner, or an admin); else "unknown", as for jobs."""
        schedule = self.store.get_schedule(schedule_id)
        if caller is not None and not (caller.admin or schedule.owner == caller.name):
            raise NotFound(f"unknown schedule {schedule_id!r}; see `jupyter launch schedule list`")
        return schedule

    def list_schedules(self, *, caller: Caller | None = None) -> list[ScheduleRecord]:
        return self.store.list_schedules(owner=None if caller is None or caller.admin else caller.name)

    def pause_schedule(self, schedule_id: str, paused: bool = True, *,
                       caller: Caller | None = None) -> ScheduleRecord:
        self.get_schedule(schedule_id, caller=caller)
        return self.store.pause_schedule(schedule_id, paused)

    def delete_schedule(self, schedule_id: str, *, caller: Caller | None = None) -> None:
        self.get_schedule(schedule_id, caller=caller)
        self.store.delete_schedule(schedule_id)

    def fire_schedule(self, schedule: ScheduleRecord, next_run_at: float | None, *, run: bool,
                      now: float | None = None) -> JobRecord | None:
        """Queue the schedule's job for its due time (``run``; else only move it on) and wake the agents; ``None``
        when another scheduler fired that time first."""
        return self.fire_schedules([(schedule, next_run_at, run)], now=now)[0]

    def fire_schedules(self, fires: list[tuple[ScheduleRecord, float | None, bool]], *,
                       now: float | None = None) -> list[JobRecord | None]:
        """``fire_schedule`` for many, in one transaction of the store."""
        jobs = self.store.fire_schedules([(s.id, s.next_run_at, nxt, run) for s, nxt, run in fires], now=now)
        if any(job is not None for job in jobs):
            self.wake()
        return jobs

    async def follow(self, job_id: str, offset: int = 0, *, page: int = PAGE, poll_min: float = POLL_MIN,
                     poll_max: float = 0.1) -> AsyncIterator[LogPage | JobRecord]:
        """The job's log from ``offset`` a page at a time, and its record whenever its state or reason changes, until
        it has ended and its log is read to the end (the last record yielded is the final one). Followers of one job
        share the pages they read (:class:`SharedPages`): a page's chunks are the same objects for each.

        Woken by the store's in-process events where the writer shares this process; otherwise it polls, from
        ``poll_min`` doubling up to ``poll_max`` while nothing arrives (an agent in another process writing to the same
        SQLite file, a shared PostgreSQL store written by another server).
        """
        event = self.events.watch(job_id)
        last: tuple[str, str | None] | None = None
        delay = poll_min
        pages = self.shared_pages()
        pages.join(job_id)
        try:
            while True:
                event.clear()
                at = offset
                chunks, nxt = await pages.read(job_id, at, lambda: self._run(self.store.read_log, job_id, at,
                                                                               limit=page))
                if chunks:
                    yield LogPage(chunks, nxt)
                    offset, delay = nxt, poll_min
                    continue
                job = await self._run(self.store.get_job, job_id)
                if (job.state, job.reason) != last:
                    last = (job.state, job.reason)
                    yield job
                if job.state in FINAL and offset >= job.log_size:
                    return
                try:
                    await asyncio.wait_for(event.wait(), delay)
                except asyncio.TimeoutError:
                    delay = min(delay * 2, poll_max)
        finally:
            pages.leave(job_id)
            self.events.unwatch(job_id, event)

    def shared_pages(self) -> SharedPages:
        """The log pages the followers on the running event loop share."""
        loop = asyncio.get_running_loop()
        if loop not in self._pages:
            for closed in [other for other in self._pages if other.is_closed()]:
                del self._pages[closed]
            self._pages[loop] = SharedPages()
        return self._pages[loop]

    # ------------------------------------------------------------ an agent here

    async def ensure_agent(self, queue: str, *, owner: str | None = None) -> bool:
        """Start an agent in this process, on the running loop, for a queue no live agent serves; True if started.
        It serves as ``owner`` (the client's user): on a private queue it runs only their jobs.

        It runs until :meth:`stop_agents` (the CLI stops it when the followed job ends, a kernel when it exits).
        """
        if queue in self._agents or await self._run(lambda: self.live_agents(queue, owner=owner)):
            return False
        from .agent import make_local_agent

        agent = make_local_agent(self.store, [queue], blobs=self.blobs, home=self.home, wake_socket=False,
                                 owner=owner)
        await agent.start()
        self._agents[queue] = (agent, asyncio.create_task(agent.run()))
        return True

    async def stop_agents(self) -> None:
        """Stop the agents :meth:`ensure_agent` started (their running jobs are cancelled and reported)."""
        agents, self._agents = list(self._agents.values()), {}
        for agent, task in agents:
            await agent.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def close(self) -> None:
        self.events.close()
