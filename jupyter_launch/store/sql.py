"""The durable store on SQLAlchemy 2: SQLite (WAL, the default) or PostgreSQL (a team sharing queues).

Queues, jobs with leases and fencing tokens, agents, log chunks with byte offsets, metrics and outputs. Every method
is one short transaction; claims take the write lock (SQLite ``BEGIN IMMEDIATE``, PostgreSQL row locks with
``SKIP LOCKED``) so two agents never take the same job and ``max_instances`` holds.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, event, func, select, text
from sqlalchemy.engine import Engine
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from ..spec import JobSpec, QueueConfig
from . import base
from . import schema as t
from .base import (
    ACTIVE, CANCELLED, CLAIMED, DEFAULT_JOB_SORT, FAILED, FINAL, LOCAL_CLAIM, MAX_COUNT, MAX_EXIT_CODE,
    MAX_LEASE_SECONDS, MIN_EXIT_CODE, MIN_LEASE_SECONDS, QUEUED, RUNNING, STARTING, AgentIdTaken, Claim, Heartbeat,
    JobRecord, JobStatus, LogChunk, NotFound, OutputRecord, QueueRecord, ScheduleRecord, StaleClaim, StoreError,
    StoreUnusable, SweepRecord, check_job_query, check_metric_record, check_number, check_output_path,
    check_progress, describe, is_disk_full, queue_is_shared,
)
from .blobs import _check as check_digest
from .tokens import AgentTokenRows

SCHEMA_REVISION = "0005"
_MIGRATE_IN_CHILD = ("import os\nfrom jupyter_launch.store.sql import SQLStore\n"
                     "SQLStore(os.environ['JUPYTER_LAUNCH_MIGRATE_URL'], migrate=False).migrate()\n")
RESERVE_BYTES = 1024 * 1024  # disk kept free beside a SQLite store, to record failures once the disk is full
MAX_CHUNK = 256 * 1024  # log chunks are split to this size so an offset read scans a bounded window
DEFAULT_QUEUE = "default"
MAX_SWEEP_RUNS = 1000  # children one sweep may queue
LIST_AHEAD_CAP = 1000  # a listed queued job counts the jobs ahead of it up to this many

_JOB_COLUMNS = [c.name for c in t.jobs.columns]
_SORT_COLUMNS = {"started": "started_at", "finished": "finished_at"}  # sort names that are not the column's


def new_job_id() -> str:
    """Short, unique, roughly time-ordered: 8 hex of seconds + 6 random hex."""
    return f"{int(time.time()):08x}{secrets.token_hex(3)}"


def new_batch_id() -> str:
    """An id for rows made by the hundred in one second (a sweep's children, a minute's scheduled jobs, schedules):
    4 more random hex, so a thousand in one second collide with odds of about 1 in 10**7, not 1 in 30."""
    return new_job_id() + secrets.token_hex(2)


def _row_to_job(row: Any) -> JobRecord:
    return JobRecord(**{name: getattr(row, name) for name in _JOB_COLUMNS})


class SQLStore(AgentTokenRows):
    """The store. ``url`` is a SQLAlchemy URL: ``sqlite:///path/launch.db`` or ``postgresql+psycopg://...``.

    Implements the ``Store`` protocol (store/protocol.py) and its optional capabilities; agent tokens come from
    :class:`~.tokens.AgentTokenRows`."""

    def __init__(self, url: str, *, migrate: bool = True):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.path: Path | None = None  # a SQLite store's file
        self.reserve_path: Path | None = None
        if self.is_sqlite:
            path = url.split(":///", 1)[1] if ":///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                self.path = Path(path)
                self.reserve_path = Path(path + "-reserve")
                self.ensure_reserve()
            # A pool of connections: opening one costs its PRAGMAs; threads (asyncio.to_thread) share the pool.
            self.engine: Engine = create_engine(url, pool_size=8, max_overflow=16,
                                                connect_args={"check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_on_connect)
            event.listen(self.engine, "begin", _sqlite_on_begin)
        else:
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://"):]
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
        self._listeners: dict[str, list[Callable[..., None]]] = {}
        self._lock = threading.Lock()
        if migrate:
            self.migrate()

    # ------------------------------------------------------------ plumbing

    def ensure_reserve(self) -> None:
        """Hold a little disk space beside a SQLite store. Once its disk is full SQLite cannot commit even a
        one-row update; deleting the reserve (``release_reserve``) frees the room to record why a job stopped
        instead of leaving it running forever. A no-op when the reserve is there or the disk is still full."""
        if self.reserve_path is None or self.reserve_path.exists():
            return
        partial = self.reserve_path.with_name(self.reserve_path.name + ".partial")
        try:
            with open(partial, "wb") as f:
                f.write(bytes(RESERVE_BYTES))  # written out, not sparse: the blocks must really be held
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, self.reserve_path)
        except OSError:
            with contextlib.suppress(OSError):
                partial.unlink()

    def release_reserve(self) -> bool:
        """Give the reserve's space back to the store; True when there was one."""
        if self.reserve_path is None:
            return False
        try:
            self.reserve_path.unlink()
            return True
        except FileNotFoundError:
            return False

    def migrate(self, *, in_child: bool = False) -> None:
        """Bring the schema to this version with alembic (skipped when already current: it costs an import).

        ``in_child`` runs alembic in a short child process instead, for a long-lived process (the server) that should
        not hold alembic, mako and pygments in memory (about 10 MB) for a step it takes once. The URL travels in the
        child's environment, never on its command line."""
        with self._unusable_as_one_line(), self.engine.connect() as conn:
            try:
                current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except Exception as exc:
                if self.unusable(exc) is not None:
                    raise
                conn.rollback()
                current = None
        if current == SCHEMA_REVISION:
            return
        if in_child and not self.url.endswith(":memory:"):
            env = dict(os.environ, JUPYTER_LAUNCH_MIGRATE_URL=self.url, PYTHONPATH=os.pathsep.join(sys.path))
            proc = subprocess.run([sys.executable, "-c", _MIGRATE_IN_CHILD], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise StoreError(f"bringing the store's schema up to date failed: {last}")
            return
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self._write() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._unusable_as_one_line(), self.engine.connect() as conn:
            conn = conn.execution_options(launch_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._unusable_as_one_line(), self.engine.connect() as conn:
            with conn.begin():
                yield conn

    @contextmanager
    def _unusable_as_one_line(self) -> Iterator[None]:
        """A damaged database file or a full disk is a ``StoreUnusable`` naming the file and the fix, not a page of
        SQL traceback; every other database error passes unchanged."""
        try:
            yield
        except DBAPIError as exc:
            unusable = self.unusable(exc)
            if unusable is None:
                raise
            raise unusable from None

    def unusable(self, exc: BaseException) -> StoreUnusable | None:
        """The one-line error for ``exc`` when it says the database cannot be used (damaged, or its disk full)."""
        orig = getattr(exc, "orig", None) or exc
        where = self.path or redact_url(self.url)
        # SQLite says only "disk I/O error" when a full disk stops it opening its WAL index: look at the disk.
        io_error_on_a_full_disk = "disk i/o error" in str(orig).lower() and self.path is not None and _no_room(
            self.path.parent)
        if is_disk_full(exc) or io_error_on_a_full_disk:
            room = f" in {self.path.parent} (df -h {self.path.parent})" if self.path else " on the database's disk"
            return StoreUnusable(f"the store {where} cannot be written: its disk is full ({orig}); free space{room} "
                                 "and retry", orig)
        damaged = ("file is not a database", "database disk image is malformed", "file is encrypted")
        if any(text in str(orig).lower() for text in damaged):
            fix = (f"move it aside (mv {where} {where}.damaged) to start an empty store, or put back a backup"
                   if self.path else "restore the database from a backup")
            return StoreUnusable(f"the store {where} is damaged ({orig}): {fix}", orig)
        return None

    def _insert_ignoring_conflicts(self, table: Any) -> Any:
        """``INSERT ... ON CONFLICT DO NOTHING`` into ``table``, in this store's dialect. Only that dialect is
        imported: a server on SQLite need not hold PostgreSQL's (5 MB of an idle server's RSS)."""
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        return insert(table).on_conflict_do_nothing()

    def subscribe(self, event_name: str, callback: Callable[..., None]) -> Callable[[], None]:
        """In-process notifications (``enqueued``, ``state``, ``log``, ``metrics``); returns an unsubscribe."""
        with self._lock:
            self._listeners.setdefault(event_name, []).append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._listeners.get(event_name, []):
                    self._listeners[event_name].remove(callback)

        return unsubscribe

    def _emit(self, event_name: str, *args: Any) -> None:
        for cb in list(self._listeners.get(event_name, ())):
            cb(*args)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------ queues

    def create_queue(self, config: QueueConfig, *, replace: bool = False) -> QueueRecord:
        config.check_runnable()
        now = time.time()
        data = config.model_dump(mode="json", exclude_none=True)
        with self._write() as c:
            exists = c.execute(select(t.queues.c.name).where(t.queues.c.name == config.queue_name)).first()
            if exists and not replace:
                raise StoreError(f"queue {config.queue_name!r} already exists; use `queue update` to change it")
            if exists:
                c.execute(t.queues.update().where(t.queues.c.name == config.queue_name).values(
                    provider=config.provider.type, config=data, updated_at=now))
            else:
                c.execute(t.queues.insert().values(name=config.queue_name, provider=config.provider.type,
                                                   config=data, created_at=now, updated_at=now))
        self._emit("queue", config.queue_name)
        return self.get_queue(config.queue_name)

    def ensure_default_queue(self) -> None:
        with self._read() as c:
            if c.execute(select(t.queues.c.name).where(t.queues.c.name == DEFAULT_QUEUE)).first():
                return
        try:
            self.create_queue(QueueConfig(queue_name=DEFAULT_QUEUE, description="local jobs, created on first use"))
        except StoreError:
            pass  # another process made it first

    def get_queue(self, name: str) -> QueueRecord:
        with self._read() as c:
            row = c.execute(select(t.queues).where(t.queues.c.name == name)).first()
            if row is None:
                names = [r.name for r in c.execute(select(t.queues.c.name).order_by(t.queues.c.name))]
                known = ", ".join(names) if names else "none yet"
                raise NotFound(f"unknown queue {name!r} (queues: {known}); create it with `jupyter launch queue create FILE`")
            return self._queue_record(c, row)

    def list_queues(self) -> list[QueueRecord]:
        with self._read() as c:
            rows = c.execute(select(t.queues).order_by(t.queues.c.name)).all()
            return [self._queue_record(c, r) for r in rows]

    def _queue_record(self, c: Connection, row: Any) -> QueueRecord:
        counts = dict(c.execute(
            select(t.jobs.c.state, func.count()).where(t.jobs.c.queue == row.name,
                                                       t.jobs.c.state.in_((QUEUED,) + ACTIVE))
            .group_by(t.jobs.c.state)).all())
        agents = [a.id for a in self._live_agents(c) if row.name in a.queues]
        return QueueRecord(row.name, row.provider, row.config, row.created_at, row.updated_at, counts, agents)

    def delete_queue(self, name: str, *, force: bool = False) -> None:
        with self._write() as c:
            if not c.execute(select(t.queues.c.name).where(t.queues.c.name == name)).first():
                raise NotFound(f"unknown queue {name!r}")
            busy = c.execute(select(func.count()).select_from(t.jobs).where(
                t.jobs.c.queue == name, t.jobs.c.state.in_((QUEUED,) + ACTIVE))).scalar()
            if busy and not force:
                raise StoreError(f"queue {name!r} has {busy} queued or running job(s); cancel them or use --force")
            if busy:
                c.execute(t.jobs.update().where(t.jobs.c.queue == name, t.jobs.c.state == QUEUED).values(
                    state=CANCELLED, reason="cancelled", message="its queue was deleted", finished_at=time.time()))
                c.execute(t.jobs.update().where(t.jobs.c.queue == name, t.jobs.c.state.in_(ACTIVE)).values(
                    cancel_requested=True))
            c.execute(t.queues.delete().where(t.queues.c.name == name))
        self._emit("queue", name)

    # ------------------------------------------------------------ jobs

    def enqueue(self, queue: str, spec: JobSpec, *, artifact: str | None, owner: str | None = None,
                owner_name: str | None = None, rerun_of: str | None = None,
                parent_id: str | None = None) -> JobRecord:
        with self._write() as c:
            job = self._insert_job(c, queue, spec, artifact=artifact, owner=owner, owner_name=owner_name,
                                   rerun_of=rerun_of, parent_id=parent_id)
        self._emit("enqueued", job)
        return job

    @staticmethod
    def _insert_job(c: Connection, queue: str, spec: JobSpec, *, artifact: str | None, owner: str | None,
                    owner_name: str | None = None, rerun_of: str | None = None, schedule_id: str | None = None,
                    parent_id: str | None = None) -> JobRecord:
        return SQLStore._insert_jobs(c, [(queue, spec, artifact, owner, schedule_id, parent_id)],
                                     owner_name=owner_name, rerun_of=rerun_of)[0]

    @staticmethod
    def _insert_jobs(c: Connection, jobs: list[tuple[str, JobSpec, str | None, str | None, str | None, str | None]],
                     *, owner_name: str | None = None, rerun_of: str | None = None) -> list[JobRecord]:
        """Queue ``(queue, spec, artifact, owner, schedule_id, parent_id)`` jobs in the caller's transaction, each
        queue checked once; ``NotFound`` or ``StoreError`` (and nothing queued) for one a queue does not take."""
        configs: dict[str, Any] = {}
        rows = []
        now = time.time()
        for queue, spec, artifact, owner, schedule_id, parent_id in jobs:
            if queue not in configs:
                q = c.execute(select(t.queues.c.config).where(t.queues.c.name == queue)).first()
                if q is None:
                    raise NotFound(f"unknown queue {queue!r}; see `jupyter launch queue list`")
                configs[queue] = q.config
            accepted = configs[queue].get("job_types") or []
            if accepted and spec.job_type not in accepted:
                raise StoreError(f"queue {queue!r} accepts job types {accepted}, not {spec.job_type!r}")
            rows.append(dict(
                id=new_batch_id() if schedule_id or parent_id else new_job_id(), queue=queue,
                job_type=spec.job_type, kind=spec.kind, name=spec.name, state=QUEUED, reason=None, message=None,
                spec=spec.model_dump(mode="json"), artifact=artifact, owner=owner, owner_name=owner_name, attempt=1,
                retries=spec.retries,
                fence=0, cancel_requested=False, gpus=spec.resources.gpu, log_size=0, rerun_of=rerun_of,
                submitted_at=now, priority=spec.priority, schedule_id=schedule_id, parent_id=parent_id))
        if len(rows) == 1:  # values as parameters, not in the statement: one compiled INSERT is cached and reused
            seqs = [c.execute(t.jobs.insert(), rows[0]).inserted_primary_key[0]]
        else:
            c.execute(t.jobs.insert(), rows)
            by_id = dict(c.execute(select(t.jobs.c.id, t.jobs.c.seq).where(
                t.jobs.c.id.in_([r["id"] for r in rows]))).all())
            seqs = [by_id[r["id"]] for r in rows]
        return [JobRecord(seq=seq, lease_expires=None, agent_id=None, exit_code=None, claimed_at=None,
                          started_at=None, finished_at=None, progress=None, **row) for seq, row in zip(seqs, rows)]

    def enqueue_many(self, queue: str, specs: Iterable[JobSpec], *, artifact: str | None) -> int:
        """Bulk enqueue in one transaction (benchmarks and tests filling a queue)."""
        now = time.time()
        rows = [dict(id=new_batch_id(), queue=queue, job_type=s.job_type, kind=s.kind,
                     name=s.name, state=QUEUED, spec=s.model_dump(mode="json"), artifact=artifact, attempt=1,
                     retries=s.retries, fence=0, cancel_requested=False, gpus=s.resources.gpu, log_size=0,
                     submitted_at=now, priority=s.priority) for s in specs]
        with self._write() as c:
            c.execute(t.jobs.insert(), rows)
        return len(rows)

    def get_job(self, job_id: str) -> JobRecord:
        with self._read() as c:
            row = c.execute(select(t.jobs).where(t.jobs.c.id == job_id)).first()
            if row is None:
                raise NotFound(f"unknown job {job_id!r}")
            job = _row_to_job(row)
            if job.state == QUEUED:
                self._explain_waiting(c, [job], count_cap=None)
            return job

    def job_statuses(self, queue: str, job_ids: Collection[str]) -> dict[str, JobStatus]:
        """The state and current fencing token of each of ``job_ids`` that is a job of ``queue``; ids of other
        queues, or unknown, are left out. What an agent reaping ``queue`` needs to tell the live from the ended."""
        ids = list(dict.fromkeys(job_ids))
        found: dict[str, JobStatus] = {}
        with self._read() as c:
            for i in range(0, len(ids), 500):  # bounded IN lists (SQLite's variable limit)
                rows = c.execute(select(t.jobs.c.id, t.jobs.c.state, t.jobs.c.fence).where(
                    t.jobs.c.queue == queue, t.jobs.c.id.in_(ids[i:i + 500])))
                found.update((row.id, JobStatus(row.state, row.fence)) for row in rows)
        return found

    def list_jobs(self, *, queue: str | None = None, state: str | None = None, limit: int = 50,
                  before: int | None = None, owner: str | None = None, job_type: str | None = None,
                  q: str | None = None, submitted_after: float | None = None,
                  submitted_before: float | None = None, archived: bool | None = False,
                  sort: str = DEFAULT_JOB_SORT, offset: int = 0, schedule_id: str | None = None,
                  parent_id: str | None = None) -> list[JobRecord]:
        """Jobs matching every filter given, in ``sort`` order (newest first by default); see the protocol."""
        check_number("limit", limit, 1, MAX_COUNT, integer=True)
        if before is not None:
            check_number("before", before, 0, MAX_COUNT, integer=True)
        states, column, descending = check_job_query(state=state, q=q, sort=sort, submitted_after=submitted_after,
                                                     submitted_before=submitted_before, offset=offset)
        jobs_t = t.jobs.c
        # The page's rows are picked by seq first, then read whole: sorting 200,000 full rows (their specs
        # included) by a column without an index took 2 s on SQLite; their seqs alone sort in a tenth of that.
        query = select(jobs_t.seq)
        if owner is not None:
            query = query.where(jobs_t.owner == owner)
        if queue:
            query = query.where(jobs_t.queue == queue)
        if schedule_id is not None:
            query = query.where(jobs_t.schedule_id == schedule_id)
        if parent_id is not None:
            query = query.where(jobs_t.parent_id == parent_id)
        if states:
            query = query.where(jobs_t.state.in_(states))
        if job_type:
            query = query.where(jobs_t.job_type == job_type)
        if q:
            query = query.where(jobs_t.name.icontains(q, autoescape=True) | jobs_t.id.startswith(q, autoescape=True))
        if submitted_after is not None:
            query = query.where(jobs_t.submitted_at >= submitted_after)
        if submitted_before is not None:
            query = query.where(jobs_t.submitted_at < submitted_before)
        if archived is not None:
            query = query.where(jobs_t.archived_at.is_not(None) if archived else jobs_t.archived_at.is_(None))
        if before is not None:
            query = query.where(jobs_t.seq < before)
        if column == "submitted":
            order = [jobs_t.seq.desc() if descending else jobs_t.seq.asc()]
        else:
            key = getattr(jobs_t, _SORT_COLUMNS.get(column, column))
            # Jobs without the value (not started, not named) last either way; ties newest first.
            order = [(key.desc() if descending else key.asc()).nulls_last(), jobs_t.seq.desc()]
        page = query.order_by(*order).limit(limit).offset(offset or None).subquery()
        rows = select(t.jobs).join(page, t.jobs.c.seq == page.c.seq).order_by(*order)
        with self._read() as c:
            jobs = [_row_to_job(r) for r in c.execute(rows)]
            self._explain_waiting(c, [j for j in jobs if j.state == QUEUED], count_cap=LIST_AHEAD_CAP)
            return jobs

    def delete_job(self, job_id: str) -> list[str]:
        """Delete an ended job with its log, metrics and outputs. Returns the digests of its outputs that nothing
        left in the store names (no other job's output or artifact), for the caller to remove from its blob store;
        their blob grants are dropped here. A job not ended is refused (cancel it first)."""
        with self._write() as c:
            self._ended_job(c, job_id, "delete")
            digests = {r.digest for r in c.execute(select(t.outputs.c.digest).where(t.outputs.c.job_id == job_id))}
            c.execute(t.log_chunks.delete().where(t.log_chunks.c.job_id == job_id))
            c.execute(t.metrics.delete().where(t.metrics.c.job_id == job_id))
            c.execute(t.outputs.delete().where(t.outputs.c.job_id == job_id))
            c.execute(t.jobs.delete().where(t.jobs.c.id == job_id))
            if digests:
                kept = {r.digest for r in c.execute(select(t.outputs.c.digest).where(t.outputs.c.digest.in_(digests)))}
                kept |= {r.artifact for r in c.execute(select(t.jobs.c.artifact).where(t.jobs.c.artifact.in_(digests)))}
                digests -= kept
                if digests:
                    c.execute(t.blob_grants.delete().where(t.blob_grants.c.digest.in_(digests)))
        self._emit("state", job_id, None)
        return sorted(digests)

    def archive_job(self, job_id: str, archived: bool = True) -> JobRecord:
        """Archive an ended job (hidden from listings unless asked for), or bring it back with ``archived=False``."""
        with self._write() as c:
            self._ended_job(c, job_id, "archive")
            c.execute(t.jobs.update().where(t.jobs.c.id == job_id).values(
                archived_at=time.time() if archived else None))
        return self.get_job(job_id)

    def artifact_digests(self) -> list[str]:
        """The artifacts the store's jobs name (what a blob cleanup must keep, with the files they list)."""
        with self._read() as c:
            return [r.artifact for r in c.execute(select(t.jobs.c.artifact).where(
                t.jobs.c.artifact.is_not(None)).distinct())]

    @staticmethod
    def _ended_job(c: Connection, job_id: str, action: str) -> None:
        row = c.execute(select(t.jobs.c.state).where(t.jobs.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"unknown job {job_id!r}")
        if row.state not in FINAL:
            raise StoreError(f"job {job_id} is {row.state}; only an ended job can be {action}d (cancel it first: "
                             f"`jupyter launch cancel {job_id}`)")

    def _explain_waiting(self, c: Connection, jobs: list[JobRecord], *, count_cap: int | None) -> None:
        """A queued job's reason is derived from the queue's state now, so it is never stale, and says how many jobs
        are ahead of it (counted up to ``count_cap``: a page of a long queue stays cheap; ``None``: exactly)."""
        if not jobs:
            return
        live = self._live_agents(c)
        cache: dict[str, tuple[int | None, int, bool]] = {}
        for job in jobs:
            if job.queue not in cache:
                cfg = c.execute(select(t.queues.c.config).where(t.queues.c.name == job.queue)).scalar() or {}
                running = c.execute(select(func.count()).select_from(t.jobs).where(
                    t.jobs.c.queue == job.queue, t.jobs.c.state.in_(ACTIVE))).scalar()
                cache[job.queue] = ((cfg.get("provider") or {}).get("max_instances"), running, queue_is_shared(cfg))
            max_instances, running, shared = cache[job.queue]
            # On a private queue an agent serving as another user never claims this job (claim_next_job).
            serving = [a for a in live if job.queue in a.queues
                       and (shared or (a.info or {}).get("owner") in (None, job.owner))]
            facts: dict[str, Any] = dict(queue=job.queue, job_type=job.job_type, max_instances=max_instances,
                                         attempt=job.attempt)
            ahead = self._ahead(c, job, count_cap)
            if not serving:
                reason = "no_agent_for_queue"
            elif not any(not a.job_types or job.job_type in a.job_types for a in serving):
                reason = "no_agent_for_job_type"
            elif job.gpus and _most_gpus(serving) < job.gpus:
                reason = "insufficient_gpus"
                facts.update(gpus=job.gpus, have=_most_gpus(serving))
            elif max_instances is not None and running >= max_instances:
                reason = "waiting_for_capacity"
            elif job.parent_id is not None and c.execute(
                    _full_sweeps().where(t.sweeps.c.id == job.parent_id)).first():
                reason = "sweep_at_max_parallel"
                facts["max_parallel"] = c.execute(select(t.sweeps.c.max_parallel).where(
                    t.sweeps.c.id == job.parent_id)).scalar()
            elif ahead["ahead"]:
                reason = "waiting_in_line"
            else:
                reason = "requeued" if job.attempt > 1 else "waiting_for_agent"
            facts.update(ahead)
            job.reason = reason
            job.message = describe(reason, **facts)
            if reason != "waiting_in_line" and ahead["ahead"]:  # never starved silently: say where it stands
                job.message += f"; {ahead['ahead']} job(s) ahead of it ({ahead['higher']} at a higher priority)"

    @staticmethod
    def _ahead(c: Connection, job: JobRecord, cap: int | None = None) -> dict[str, Any]:
        """How many queued jobs of its queue are claimed before ``job`` (claim order: priority, then seq), and how
        many of those have a higher priority; each count stops at ``cap`` (then shown as "CAP+")."""
        queued = (t.jobs.c.queue == job.queue) & (t.jobs.c.state == QUEUED)

        def count(*where: Any) -> int:
            rows = select(t.jobs.c.seq).where(queued, *where)
            if cap is not None:
                rows = rows.limit(cap)
            return c.execute(select(func.count()).select_from(rows.subquery())).scalar()

        higher = count(t.jobs.c.priority > job.priority)
        same = count(t.jobs.c.priority == job.priority, t.jobs.c.seq < job.seq)
        capped = cap is not None and max(higher, same) >= cap
        return {"ahead": f"{higher + same:,}+" if capped else higher + same,
                "higher": f"{higher:,}+" if cap is not None and higher >= cap else higher}

    def claim_next_job(self, agent_id: str, queues: list[str], job_types: list[str] | None = None, *,
                       lease_seconds: float = 30.0, free_gpus: int | None = None, owner: str | None = None,
                       token_id: str | None = None) -> Claim | None:
        """Take the queued job this agent may run that comes first (highest priority, then oldest), as a lease;
        ``None`` when there is none. ``owner``: the user the agent serves as; on private queues it takes only their
        jobs (``queue_is_shared``). ``token_id``: the agent token claiming (through a server); only that token may
        then report on the claim."""
        check_number("lease_seconds", lease_seconds, MIN_LEASE_SECONDS, MAX_LEASE_SECONDS)
        if free_gpus is not None:
            check_number("free_gpus", free_gpus, 0, MAX_COUNT, integer=True)
        now = time.time()
        with self._write() as c:
            qsel = select(t.queues.c.name, t.queues.c.config).where(t.queues.c.name.in_(queues))
            if not self.is_sqlite:  # serialise claims per queue so max_instances holds across servers
                qsel = qsel.order_by(t.queues.c.name).with_for_update()
            qrows = c.execute(qsel).all()
            open_queues, private = [], []
            for qr in qrows:
                cap = (qr.config.get("provider") or {}).get("max_instances")
                if cap is not None:
                    running = c.execute(select(func.count()).select_from(t.jobs).where(
                        t.jobs.c.queue == qr.name, t.jobs.c.state.in_(ACTIVE))).scalar()
                    if running >= cap:
                        continue
                open_queues.append(qr.name)
                if owner is not None and not queue_is_shared(qr.config):
                    private.append(qr.name)
            if not open_queues:
                return None
            q = select(t.jobs).where(t.jobs.c.state == QUEUED, t.jobs.c.queue.in_(open_queues))
            if private:
                q = q.where(t.jobs.c.queue.not_in(private) | (t.jobs.c.owner == owner))
            if job_types:
                q = q.where(t.jobs.c.job_type.in_(job_types))
            if free_gpus is not None:
                q = q.where(t.jobs.c.gpus <= free_gpus)
            full = _full_sweeps()
            q = q.where(t.jobs.c.parent_id.is_(None) | t.jobs.c.parent_id.not_in(full))
            q = q.order_by(t.jobs.c.priority.desc(), t.jobs.c.seq).limit(1)
            if not self.is_sqlite:
                q = q.with_for_update(skip_locked=True)
            row = c.execute(q).first()
            if row is None:
                return None
            fence = row.fence + 1
            c.execute(t.jobs.update().where(t.jobs.c.seq == row.seq).values(
                state=CLAIMED, agent_id=agent_id, fence=fence, lease_expires=now + lease_seconds,
                claimed_at=now, reason="claimed", message=describe("claimed", agent_id=agent_id),
                exit_code=None, claim_token=token_id or LOCAL_CLAIM))
            job = _row_to_job(row)
        job.state, job.agent_id, job.fence, job.lease_expires, job.claimed_at = CLAIMED, agent_id, fence, now + lease_seconds, now
        job.claim_token = token_id or LOCAL_CLAIM
        self._emit("state", job.id, CLAIMED)
        return Claim(job=job, fence=fence)

    def heartbeat(self, job_id: str, fence: int, *, lease_seconds: float = 30.0) -> Heartbeat:
        check_number("lease_seconds", lease_seconds, MIN_LEASE_SECONDS, MAX_LEASE_SECONDS)
        with self._write() as c:
            row = c.execute(select(t.jobs.c.fence, t.jobs.c.state, t.jobs.c.cancel_requested)
                            .where(t.jobs.c.id == job_id)).first()
            if row is None or row.fence != fence or row.state not in ACTIVE:
                return Heartbeat(ok=False)
            c.execute(t.jobs.update().where(t.jobs.c.id == job_id, t.jobs.c.fence == fence)
                      .values(lease_expires=time.time() + lease_seconds))
            return Heartbeat(ok=True, cancel_requested=bool(row.cancel_requested))

    def set_state(self, job_id: str, fence: int, state: str, reason: str | None = None,
                  message: str | None = None, **facts: Any) -> bool:
        """Move an active job to ``starting``/``running`` (or change its reason). False if the fence is stale."""
        assert state in (CLAIMED, STARTING, RUNNING), state
        values: dict[str, Any] = dict(state=state, reason=reason, message=message or describe(reason, **facts))
        if state == RUNNING:
            values["started_at"] = func.coalesce(t.jobs.c.started_at, time.time())
        with self._write() as c:
            n = c.execute(t.jobs.update().where(t.jobs.c.id == job_id, t.jobs.c.fence == fence,
                                                t.jobs.c.state.in_(ACTIVE)).values(**values)).rowcount
        if n:
            self._emit("state", job_id, state)
        return bool(n)

    def set_progress(self, job_id: str, fence: int, progress: dict[str, Any]) -> bool:
        check_progress(progress)
        with self._write() as c:
            n = c.execute(t.jobs.update().where(t.jobs.c.id == job_id, t.jobs.c.fence == fence,
                                                t.jobs.c.state.in_(ACTIVE)).values(progress=progress)).rowcount
        if n:
            self._emit("progress", job_id, progress)
        return bool(n)

    def finish(self, job_id: str, fence: int, state: str, *, exit_code: int | None = None,
               reason: str | None = None, message: str | None = None) -> bool:
        assert state in FINAL, state
        if exit_code is not None:
            check_number("exit_code", exit_code, MIN_EXIT_CODE, MAX_EXIT_CODE, integer=True)
        now = time.time()
        stopped: list[str] = []
        with self._write() as c:
            n = c.execute(t.jobs.update().where(t.jobs.c.id == job_id, t.jobs.c.fence == fence,
                                                t.jobs.c.state.in_(ACTIVE)).values(
                state=state, exit_code=exit_code, reason=reason, message=message or describe(reason, exit_code=exit_code),
                finished_at=now, lease_expires=None, started_at=func.coalesce(t.jobs.c.started_at, now))).rowcount
            if n and state == FAILED:
                stopped = self._fail_fast(c, job_id, now)
        if n:
            self._emit("state", job_id, state)
        for sibling in stopped:
            self._emit("cancel", sibling)
            self._emit("state", sibling, None)
        return bool(n)

    @staticmethod
    def _fail_fast(c: Connection, job_id: str, now: float) -> list[str]:
        """A child of a sweep that fails fast has failed: its queued siblings are cancelled, its running ones asked
        to stop. The siblings stopped."""
        parent = c.execute(select(t.jobs.c.parent_id).where(t.jobs.c.id == job_id)).scalar()
        if parent is None or not c.execute(select(t.sweeps.c.fail_fast).where(t.sweeps.c.id == parent)).scalar():
            return []
        siblings = (t.jobs.c.parent_id == parent) & (t.jobs.c.id != job_id)
        queued = list(c.execute(select(t.jobs.c.id).where(siblings, t.jobs.c.state == QUEUED)).scalars())
        active = list(c.execute(select(t.jobs.c.id).where(siblings, t.jobs.c.state.in_(ACTIVE))).scalars())
        if queued:
            c.execute(t.jobs.update().where(t.jobs.c.id.in_(queued), t.jobs.c.state == QUEUED).values(
                state=CANCELLED, reason="sweep_failed_fast", message=describe("sweep_failed_fast", failed=job_id),
                finished_at=now))
        if active:
            c.execute(t.jobs.update().where(t.jobs.c.id.in_(active)).values(cancel_requested=True))
        return queued + active

    def hand_back(self, job_id: str, fence: int) -> bool:
        """An agent that is stopping gives a claimed job back: queued again at once, its attempt not counted and its
        fence moved on so the agent's late reports are refused (cancelled instead, when a cancel was asked for).
        False when the fence is stale or the job already ended."""
        now = time.time()
        with self._write() as c:
            row = c.execute(select(t.jobs.c.agent_id, t.jobs.c.cancel_requested).where(
                t.jobs.c.id == job_id, t.jobs.c.fence == fence, t.jobs.c.state.in_(ACTIVE))).first()
            if row is None:
                return False
            if row.cancel_requested:
                values = dict(state=CANCELLED, reason="cancelled", message=describe("cancelled"), finished_at=now)
            else:
                values = dict(state=QUEUED, reason="handed_back", message=describe("handed_back",
                                                                                   agent_id=row.agent_id))
            c.execute(t.jobs.update().where(t.jobs.c.id == job_id, t.jobs.c.fence == fence).values(
                agent_id=None, lease_expires=None, claimed_at=None, fence=fence + 1, **values))
        self._emit("state", job_id, values["state"])
        if values["state"] == QUEUED:
            self._emit("enqueued", None)
        return True

    def request_cancel(self, job_id: str) -> JobRecord:
        """Queued jobs are cancelled at once; active ones are flagged and their agent stops them."""
        now = time.time()
        with self._write() as c:
            row = c.execute(select(t.jobs.c.state).where(t.jobs.c.id == job_id)).first()
            if row is None:
                raise NotFound(f"unknown job {job_id!r}")
            if row.state == QUEUED:
                c.execute(t.jobs.update().where(t.jobs.c.id == job_id, t.jobs.c.state == QUEUED).values(
                    state=CANCELLED, reason="cancelled", message=describe("cancelled"), finished_at=now))
            elif row.state in ACTIVE:
                c.execute(t.jobs.update().where(t.jobs.c.id == job_id).values(cancel_requested=True))
        self._emit("cancel", job_id)
        self._emit("state", job_id, None)
        return self.get_job(job_id)

    def requeue_expired(self) -> list[tuple[str, str]]:
        """Leases past their time: requeue with attempt + 1 while retries are left, else fail as ``lost``."""
        now = time.time()
        changed: list[tuple[str, str]] = []
        with self._write() as c:
            rows = c.execute(select(t.jobs.c.id, t.jobs.c.attempt, t.jobs.c.retries, t.jobs.c.cancel_requested)
                             .where(t.jobs.c.state.in_(ACTIVE), t.jobs.c.lease_expires < now)).all()
            for r in rows:
                if r.cancel_requested:
                    values = dict(state=CANCELLED, reason="cancelled",
                                  message="cancelled; its agent stopped answering before confirming",
                                  finished_at=now, lease_expires=None)
                elif r.attempt <= r.retries:
                    values = dict(state=QUEUED, attempt=r.attempt + 1, agent_id=None, lease_expires=None,
                                  reason="requeued", message=describe("requeued", attempt=r.attempt + 1))
                else:
                    values = dict(state=FAILED, reason="lost", message=describe("lost"), finished_at=now,
                                  lease_expires=None)
                c.execute(t.jobs.update().where(t.jobs.c.id == r.id, t.jobs.c.state.in_(ACTIVE),
                                                t.jobs.c.lease_expires < now).values(**values))
                changed.append((r.id, values["state"]))
        for job_id, state in changed:
            self._emit("state", job_id, state)
            if state == QUEUED:
                self._emit("enqueued", None)
        return changed

    def rerun(self, job_id: str, *, owner: str | None = None, owner_name: str | None = None) -> JobRecord:
        old = self.get_job(job_id)
        spec = JobSpec.model_validate(old.spec)
        return self.enqueue(old.queue, spec, artifact=old.artifact, owner=owner or old.owner,
                            owner_name=owner_name if owner else old.owner_name, rerun_of=old.id,
                            parent_id=old.parent_id)

    def move_to_front(self, job_id: str) -> JobRecord:
        """Put a queued job first in its queue's claim order: its priority becomes one above the highest of the
        other queued jobs there (unchanged when nothing is ahead of it). ``StoreError`` for a job not queued."""
        with self._write() as c:
            row = c.execute(select(t.jobs).where(t.jobs.c.id == job_id)).first()
            if row is None:
                raise NotFound(f"unknown job {job_id!r}")
            if row.state != QUEUED:
                raise StoreError(f"job {job_id} is {row.state}; only a queued job can be moved")
            job = _row_to_job(row)
            if self._ahead(c, job)["ahead"]:
                top = c.execute(select(func.max(t.jobs.c.priority)).where(
                    t.jobs.c.queue == job.queue, t.jobs.c.state == QUEUED, t.jobs.c.id != job_id)).scalar()
                c.execute(t.jobs.update().where(t.jobs.c.id == job_id).values(priority=top + 1))
        self._emit("state", job_id, QUEUED)
        return self.get_job(job_id)

    # ------------------------------------------------------------ agents

    def release_agent_leases(self, agent_id: str) -> None:
        """Fence off and expire the leases of an agent's active jobs (the server hands its jobs back on shutdown):
        the agent's late reports are refused, and the next ``requeue_expired`` requeues the jobs."""
        with self._write() as c:
            c.execute(t.jobs.update().where(t.jobs.c.agent_id == agent_id, t.jobs.c.state.in_(ACTIVE))
                      .values(fence=t.jobs.c.fence + 1, lease_expires=0.0))

    def register_agent(self, agent_id: str, queues: list[str], job_types: list[str], *, host: str,
                       info: dict[str, Any] | None = None, token_id: str | None = None) -> None:
        """``token_id``: the agent token registering it (``None``: this process's own agent). A live registration
        by another token, or by the server, is not replaced (``AgentIdTaken``); a lapsed one is."""
        now = time.time()
        with self._write() as c:
            row = c.execute(select(t.agents.c.token_id, t.agents.c.last_seen).where(t.agents.c.id == agent_id)).first()
            if row is not None and row.token_id != token_id and row.last_seen > now - base.AGENT_TTL:
                raise AgentIdTaken(_taken(agent_id, row.token_id))
            c.execute(t.agents.delete().where(t.agents.c.id == agent_id))
            c.execute(t.agents.insert().values(id=agent_id, host=host, queues=queues, job_types=job_types,
                                               started_at=now, last_seen=now, info=info or {}, token_id=token_id))

    def agent_seen(self, agent_id: str, *, token_id: str | None = None) -> None:
        with self._write() as c:
            self._own_agent(c, agent_id, token_id)
            c.execute(t.agents.update().where(t.agents.c.id == agent_id).values(last_seen=time.time()))

    def unregister_agent(self, agent_id: str, *, token_id: str | None = None) -> None:
        with self._write() as c:
            self._own_agent(c, agent_id, token_id)
            c.execute(t.agents.delete().where(t.agents.c.id == agent_id))

    def check_agent_id(self, agent_id: str, token_id: str | None) -> None:
        """``AgentIdTaken`` when ``agent_id`` is registered by another agent token or by the server (a claim under
        it would pass as that agent's); an unregistered id is anyone's."""
        with self._read() as c:
            self._own_agent(c, agent_id, token_id)

    @staticmethod
    def _own_agent(c: Connection, agent_id: str, token_id: str | None) -> None:
        row = c.execute(select(t.agents.c.token_id).where(t.agents.c.id == agent_id)).first()
        if row is not None and row.token_id != token_id:
            raise AgentIdTaken(_taken(agent_id, row.token_id))

    def list_agents(self) -> list[dict[str, Any]]:
        with self._read() as c:
            return [dict(r._mapping) for r in self._live_agents(c)]

    def live_agent_ids(self, queue: str) -> list[str]:
        """The ids of the agents serving ``queue`` now (seen within the agents' time to live)."""
        with self._read() as c:
            return sorted(r.id for r in self._live_agents(c) if queue in (r.queues or []))

    def _live_agents(self, c: Connection) -> list[Any]:
        return c.execute(select(t.agents).where(t.agents.c.last_seen > time.time() - base.AGENT_TTL)).all()

    # ------------------------------------------------------------ logs, metrics, outputs

    def append_logs(self, job_id: str, fence: int, pieces: list[tuple[str, bytes]], at: int | None = None) -> int:
        """Append ``(stream, data)`` pieces in order, under the claim ``fence`` (the chunks carry its attempt);
        returns the log's new size in bytes. ``StaleClaim`` when the claim is no longer current. With ``at`` (the
        size the pieces follow), a write already done answers the log's size and is not done twice."""
        # Views, not slices: a slice of a large piece copies it once more, holding the GIL the event loop needs.
        pieces = [(s, memoryview(d)[i:i + MAX_CHUNK]) for s, d in pieces if d for i in range(0, len(d), MAX_CHUNK)]
        total = sum(len(d) for _, d in pieces)
        with self._write() as c:
            attempt = self._current_claim(c, job_id, fence).attempt
            if not pieces:
                return self.get_job(job_id).log_size
            grow = t.jobs.update().where(t.jobs.c.id == job_id)
            if at is not None:
                grow = grow.where(t.jobs.c.log_size == at)
            size = c.execute(grow.values(log_size=t.jobs.c.log_size + total).returning(t.jobs.c.log_size)).scalar()
            if size is None:  # (only with `at`) the log is not where these pieces follow
                now = c.execute(select(t.jobs.c.log_size).where(t.jobs.c.id == job_id)).scalar()
                if now == at + total:
                    return now  # this very write, done by a try whose answer was lost
                raise StoreError(f"job {job_id}: its log is {now} bytes, not the {at} this write follows; nothing "
                                 "was written")
            offset = size - total
            rows = []
            for stream, data in pieces:
                rows.append(dict(job_id=job_id, offset=offset, stream=stream, attempt=attempt, data=data))
                offset += len(data)
            c.execute(t.log_chunks.insert(), rows)
        self._emit("log", job_id, size)
        return size

    def read_log(self, job_id: str, offset: int = 0, *, limit: int = 4 * 1024 * 1024) -> tuple[list[LogChunk], int]:
        """Chunks from ``offset`` (the first one trimmed to start there) and the offset to read from next."""
        check_number("offset", offset, 0, MAX_COUNT, integer=True)
        check_number("limit", limit, 1, MAX_COUNT, integer=True)
        chunks: list[LogChunk] = []
        nxt, got = offset, 0
        with self._read() as c:
            rows = c.execute(select(t.log_chunks.c.offset, t.log_chunks.c.stream, t.log_chunks.c.attempt,
                                    t.log_chunks.c.data)
                             .where(t.log_chunks.c.job_id == job_id, t.log_chunks.c.offset > offset - MAX_CHUNK,
                                    t.log_chunks.c.offset + func.length(t.log_chunks.c.data) > offset)
                             # a bounded number of rows, so one read never holds the whole log in memory
                             .order_by(t.log_chunks.c.offset).limit(max(8, limit // 8192)))
            # Iterate, don't fetch all: SQLite then reads no row past the page's byte limit.
            for r in rows:
                end = r.offset + len(r.data)
                if end <= offset:
                    continue
                data = bytes(r.data)
                if r.offset < offset:
                    data = data[offset - r.offset:]
                chunks.append(LogChunk(max(r.offset, offset), r.stream, r.attempt, data))
                nxt = end
                got += len(data)
                if got >= limit:
                    break
        return chunks, nxt

    def add_metrics(self, job_id: str, fence: int, records: list[dict[str, Any]]) -> None:
        now = time.time()
        rows = [dict(job_id=job_id, **check_metric_record(r, now)) for r in records]
        with self._write() as c:
            self._current_claim(c, job_id, fence)
            if not rows:
                return
            c.execute(t.metrics.insert(), rows)
        self._emit("metrics", job_id)

    def read_metrics(self, job_id: str, after: int = 0) -> list[dict[str, Any]]:
        check_number("after", after, 0, MAX_COUNT, integer=True)
        with self._read() as c:
            rows = c.execute(select(t.metrics).where(t.metrics.c.job_id == job_id, t.metrics.c.id > after)
                             .order_by(t.metrics.c.id)).all()
        return [dict(id=r.id, step=r.step, time=r.time, data=r.data) for r in rows]

    def add_outputs(self, job_id: str, fence: int, outputs: list[OutputRecord]) -> None:
        """Record output files under the claim ``fence``; their blobs become readable by the agents of the job's
        queue. Paths are checked like an artifact's; ``StaleClaim`` when the claim is no longer current."""
        for o in outputs:
            check_output_path(o.path)
            check_digest(o.digest)
            check_number(f"size of output {o.path}", o.size, 0, MAX_COUNT, integer=True)
        with self._write() as c:
            queue = self._current_claim(c, job_id, fence).queue
            if not outputs:
                return
            c.execute(t.outputs.delete().where(t.outputs.c.job_id == job_id,
                                               t.outputs.c.path.in_([o.path for o in outputs])))
            c.execute(t.outputs.insert(), [dict(job_id=job_id, path=o.path, digest=o.digest, size=o.size)
                                           for o in outputs])
            self._grant(c, [o.digest for o in outputs], f"queue:{queue}")

    @staticmethod
    def _current_claim(c: Connection, job_id: str, fence: int) -> Any:
        """The job's row when ``fence`` is its current claim and it is active; else ``NotFound`` or ``StaleClaim``."""
        row = c.execute(select(t.jobs.c.fence, t.jobs.c.state, t.jobs.c.attempt, t.jobs.c.queue)
                        .where(t.jobs.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"unknown job {job_id!r}")
        if row.fence != fence or row.state not in ACTIVE:
            raise StaleClaim(f"job {job_id}: the claim with fence {fence} is no longer current (the job is "
                             f"{row.state}, fence {row.fence}); nothing was written")
        return row

    # ------------------------------------------------------------ blob grants (what agent tokens may read)

    def grant_blobs(self, digests: Iterable[str], grantee: str) -> None:
        """Let ``grantee`` (``queue:NAME`` or ``token:ID``) read these blobs through the agent routes."""
        with self._write() as c:
            self._grant(c, digests, grantee)

    def _grant(self, c: Connection, digests: Iterable[str], grantee: str) -> None:
        wanted = sorted(set(digests))
        if wanted:  # ON CONFLICT DO NOTHING: two servers on one PostgreSQL may grant the same blob at once
            insert = self._insert_ignoring_conflicts(t.blob_grants)
            c.execute(insert, [dict(digest=d, grantee=grantee) for d in wanted])

    def granted_blobs(self, digests: Collection[str], grantees: Collection[str] | None, token_id: str) -> set[str]:
        """Which of ``digests`` the agent token ``token_id`` may read: those granted to it or to one of
        ``grantees`` (``None``: any queue, for a token scoped to every queue)."""
        wanted = set(digests)
        if not wanted:
            return set()
        who = t.blob_grants.c.grantee == f"token:{token_id}"
        if grantees is None:
            who = who | t.blob_grants.c.grantee.like("queue:%")
        else:
            who = who | t.blob_grants.c.grantee.in_(list(grantees))
        with self._read() as c:
            return set(c.execute(select(t.blob_grants.c.digest).distinct()
                                 .where(t.blob_grants.c.digest.in_(wanted), who)).scalars())

    def list_outputs(self, job_id: str) -> list[OutputRecord]:
        with self._read() as c:
            rows = c.execute(select(t.outputs).where(t.outputs.c.job_id == job_id).order_by(t.outputs.c.path)).all()
        return [OutputRecord(r.path, r.digest, r.size) for r in rows]

    # ------------------------------------------------------------ sweeps

    def create_sweep(self, queue: str, spec: JobSpec, *, artifact: str | None, runs: list[dict[str, Any]],
                     config: dict[str, Any], max_parallel: int | None = None, fail_fast: bool = False,
                     name: str | None = None, owner: str | None = None) -> SweepRecord:
        """A sweep and its children, in one transaction: one job per run, ``spec`` with the run's parameters laid
        over its own, named ``NAME-N``. ``ValueError`` naming the field for runs that are not parameters."""
        name = name or spec.name or "sweep"
        check_number("runs", len(runs), 1, MAX_SWEEP_RUNS, integer=True)
        if max_parallel is not None:
            check_number("max_parallel", max_parallel, 1, MAX_COUNT, integer=True)
        children = []
        for i, run in enumerate(runs, 1):
            if not isinstance(run, dict):
                raise ValueError(f"runs: run {i} must be an object of parameters, not {type(run).__name__}")
            try:
                children.append(JobSpec.model_validate({**spec.model_dump(mode="json"), "name": f"{name}-{i}",
                                                        "parameters": {**spec.parameters, **run}}))
            except ValidationError as exc:
                err = exc.errors()[0]
                field = ".".join(str(x) for x in err["loc"]) or "runs"
                raise ValueError(f"runs: run {i}: {field}: {err['msg'].removeprefix('Value error, ')}") from None
        record = SweepRecord(id=new_batch_id(), name=name, queue=queue, config=config, runs=len(runs),
                             max_parallel=max_parallel, fail_fast=fail_fast, owner=owner, created_at=time.time())
        with self._write() as c:
            c.execute(t.sweeps.insert(), record.to_dict())
            jobs = self._insert_jobs(c, [(queue, child, artifact, owner, None, record.id) for child in children])
        for job in jobs:
            self._emit("enqueued", job)
        return record

    def get_sweep(self, sweep_id: str) -> SweepRecord:
        with self._read() as c:
            row = c.execute(select(t.sweeps).where(t.sweeps.c.id == sweep_id)).first()
        if row is None:
            raise NotFound(f"unknown sweep {sweep_id!r}")
        return SweepRecord(**row._mapping)

    # ------------------------------------------------------------ schedules

    def create_schedule(self, queue: str, spec: JobSpec, *, cron: str, tz: str = "UTC", artifact: str | None,
                        name: str | None = None, owner: str | None = None) -> ScheduleRecord:
        """A recurring job on ``queue``: ``spec`` (with its ``artifact``) queued at each time ``cron`` names in
        ``tz``. ``ValueError`` naming the field for a bad expression or time zone."""
        name = name or spec.name or "schedule"
        try:  # a schedule's name is its jobs' name
            JobSpec.model_validate({**spec.model_dump(mode="json"), "name": name})
        except ValidationError as exc:
            raise ValueError(f"name: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        now = time.time()
        next_run = _next_run(cron, tz, now)
        values = dict(id=new_batch_id(), name=name, queue=queue, cron=cron, tz=tz, spec=spec.model_dump(mode="json"),
                      artifact=artifact, owner=owner, paused=False, next_run_at=next_run, last_run_at=None,
                      created_at=now)
        with self._write() as c:
            if not c.execute(select(t.queues.c.name).where(t.queues.c.name == queue)).first():
                raise NotFound(f"unknown queue {queue!r}; see `jupyter launch queue list`")
            c.execute(t.schedules.insert(), values)
        self._emit("schedule", values["id"])
        return ScheduleRecord(**values)

    def get_schedule(self, schedule_id: str) -> ScheduleRecord:
        with self._read() as c:
            row = c.execute(select(t.schedules).where(t.schedules.c.id == schedule_id)).first()
        if row is None:
            raise NotFound(f"unknown schedule {schedule_id!r}; see `jupyter launch schedule list`")
        return ScheduleRecord(**row._mapping)

    def list_schedules(self, *, owner: str | None = None) -> list[ScheduleRecord]:
        """Every schedule (only ``owner``'s when given), by name."""
        q = select(t.schedules).order_by(t.schedules.c.name, t.schedules.c.created_at)
        if owner is not None:
            q = q.where(t.schedules.c.owner == owner)
        with self._read() as c:
            return [ScheduleRecord(**r._mapping) for r in c.execute(q)]

    def pause_schedule(self, schedule_id: str, paused: bool = True) -> ScheduleRecord:
        """Pause a schedule (it fires no more), or resume it (``paused=False``: from its next time after now; the
        times it missed while paused do not fire)."""
        with self._write() as c:
            row = c.execute(select(t.schedules.c.cron, t.schedules.c.tz).where(
                t.schedules.c.id == schedule_id)).first()
            if row is None:
                raise NotFound(f"unknown schedule {schedule_id!r}; see `jupyter launch schedule list`")
            next_run = None if paused else _next_run(row.cron, row.tz, time.time())
            c.execute(t.schedules.update().where(t.schedules.c.id == schedule_id).values(
                paused=paused, next_run_at=next_run))
        self._emit("schedule", schedule_id)
        return self.get_schedule(schedule_id)

    def delete_schedule(self, schedule_id: str) -> None:
        """Delete a schedule; the jobs it queued stay."""
        with self._write() as c:
            if not c.execute(t.schedules.delete().where(t.schedules.c.id == schedule_id)).rowcount:
                raise NotFound(f"unknown schedule {schedule_id!r}; see `jupyter launch schedule list`")
        self._emit("schedule", schedule_id)

    # What a scheduler uses (``Scheduler`` in scheduler.py); not in the protocol: a server fires for its remote
    # agents, which reach the store only through it.

    def take_lease(self, name: str, holder: str, seconds: float, *, now: float | None = None) -> bool:
        """Hold the store-wide lease ``name`` for ``seconds`` (take it when free or lapsed, renew it when held by
        ``holder``); false when another holder has it."""
        check_number("lease seconds", seconds, MIN_LEASE_SECONDS, MAX_LEASE_SECONDS)
        now = time.time() if now is None else now
        # One conditional UPDATE (or the first INSERT): two takers at once on PostgreSQL cannot both win.
        with self._write() as c:
            taken = c.execute(t.leases.update().where(
                t.leases.c.name == name, (t.leases.c.holder == holder) | (t.leases.c.expires_at <= now))
                .values(holder=holder, expires_at=now + seconds)).rowcount
            if taken:
                return True
            # RETURNING, not rowcount: the PostgreSQL driver's rowcount does not say whether DO NOTHING did nothing.
            insert = self._insert_ignoring_conflicts(t.leases)
            return c.execute(insert.values(name=name, holder=holder, expires_at=now + seconds)
                             .returning(t.leases.c.name)).first() is not None

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up, if ``holder`` has it, so another takes it at once."""
        with self._write() as c:
            c.execute(t.leases.delete().where(t.leases.c.name == name, t.leases.c.holder == holder))

    def due_schedules(self, now: float, *, limit: int = 500) -> list[ScheduleRecord]:
        """Schedules not paused whose next time is at or before ``now``, earliest first."""
        with self._read() as c:
            rows = c.execute(select(t.schedules).where(
                t.schedules.c.paused.is_(False), t.schedules.c.next_run_at <= now)
                .order_by(t.schedules.c.next_run_at, t.schedules.c.id).limit(limit))
            return [ScheduleRecord(**r._mapping) for r in rows]

    def next_schedule_time(self) -> float | None:
        """The earliest next time of any schedule not paused."""
        with self._read() as c:
            return c.execute(select(func.min(t.schedules.c.next_run_at)).where(
                t.schedules.c.paused.is_(False))).scalar()

    def fire_schedule(self, schedule_id: str, due_at: float, next_run_at: float | None, *, run: bool,
                      now: float | None = None) -> JobRecord | None:
        """Move a schedule from ``due_at`` to ``next_run_at`` and, with ``run``, queue its job, in one transaction:
        only when its next time is still ``due_at``, so each time fires once however many schedulers try. The job
        (``None`` when another scheduler fired it first, or when it was not run)."""
        return self.fire_schedules([(schedule_id, due_at, next_run_at, run)], now=now)[0]

    def fire_schedules(self, fires: list[tuple[str, float, float | None, bool]], *,
                       now: float | None = None) -> list[JobRecord | None]:
        """``fire_schedule`` for many ``(schedule_id, due_at, next_run_at, run)`` in one transaction (a minute
        when a thousand schedules are due queues them in one commit); the job of each, or ``None``."""
        now = time.time() if now is None else now
        with self._write() as c:
            rows = {r.id: r for r in c.execute(select(t.schedules).where(
                t.schedules.c.id.in_([f[0] for f in fires])))}
            wanted: list[tuple[str, JobSpec, str | None, str | None, str | None, str | None]] = []
            # Rows locked in one order (by id) whatever the caller's: two schedulers on PostgreSQL never deadlock.
            for schedule_id, due_at, next_run_at, run in sorted(fires, key=lambda f: f[0]):
                # The compare-and-set is the UPDATE's own condition: on PostgreSQL a second scheduler's UPDATE
                # waits for the first's row lock, then finds the time moved on and changes nothing.
                values: dict[str, Any] = dict(next_run_at=next_run_at)
                if run:
                    values["last_run_at"] = now
                moved = c.execute(t.schedules.update().where(
                    t.schedules.c.id == schedule_id, t.schedules.c.next_run_at == due_at,
                    t.schedules.c.paused.is_(False)).values(**values)).rowcount
                if moved and run:
                    row = rows[schedule_id]
                    spec = JobSpec.model_validate({**row.spec, "name": row.name})
                    wanted.append((row.queue, spec, row.artifact, row.owner, schedule_id, None))
            queued = iter(self._insert_jobs(c, wanted)) if wanted else iter(())
        by_schedule = {job.schedule_id: job for job in queued}
        for job in by_schedule.values():
            self._emit("enqueued", job)
        return [by_schedule.get(f[0]) if f[3] else None for f in fires]

    def count_jobs(self, *, queue: str | None = None, state: str | None = None) -> int:
        q = select(func.count()).select_from(t.jobs)
        if queue:
            q = q.where(t.jobs.c.queue == queue)
        if state:
            q = q.where(t.jobs.c.state.in_(state.split(",")))
        with self._read() as c:
            return c.execute(q).scalar()


def _full_sweeps() -> Any:
    """The sweeps with ``max_parallel`` children active already: their other children wait."""
    active = (select(func.count()).select_from(t.jobs).where(t.jobs.c.parent_id == t.sweeps.c.id,
                                                            t.jobs.c.state.in_(ACTIVE)).scalar_subquery())
    return select(t.sweeps.c.id).where(t.sweeps.c.max_parallel.is_not(None), active >= t.sweeps.c.max_parallel)


def _next_run(cron: str, tz: str, after: float) -> float:
    """The schedule's first time after ``after``; ``ValueError`` naming the field when there is none."""
    from ..cron import SEARCH_YEARS, Cron, CronError

    nxt = Cron(cron).next_after(after, tz)
    if nxt is None:
        raise CronError(f"{cron!r} names no time in the next {SEARCH_YEARS} years")
    return nxt


def _no_room(folder: Path) -> bool:
    """Whether the disk under ``folder`` has less free space than a few database pages."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def redact_url(url: str) -> str:
    """A database URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def _taken(agent_id: str, owner: str | None) -> str:
    by = f"agent token {owner}" if owner else "the server's own agent"
    return f"agent id {agent_id!r} is registered by {by}; an agent token may use only ids it registered itself"


def _most_gpus(agents: list[Any]) -> float:
    """The most GPUs any of these agents can hand out; an agent whose backend schedules its own (info gpus None)
    counts as unlimited."""
    counts = [(a.info or {}).get("gpus", 0) for a in agents]
    return float("inf") if any(c is None for c in counts) else max(int(c or 0) for c in counts)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself, so writes can take the lock up front (IMMEDIATE).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("launch_write") else "BEGIN")
