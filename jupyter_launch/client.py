"""The client every face uses: ``LaunchClient`` (embedded) and ``remote.client.HttpClient`` (through a server).

Both implement :class:`Client`, so the CLI, the magics and the widgets work the same on either. The embedded client
calls :class:`~jupyter_launch.service.LaunchService` on this machine's store (SQLite and the blob folder under the
launch home, no server); the HTTP client calls the server's REST API, whose handlers call the same service. Packaging
always happens where the files are, on the client's side; the job then goes through the service.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .options import JobOptions, PreparedJob, prepare_job, read_notebook
from .paths import default_store_url, launch_home, local_user
from .spec import JobSpec, QueueConfig, validate
from .store import (
    FINAL, JOB_SORTS, BlobStore, JobRecord, LogChunk, OutputRecord, QueueRecord, ScheduleRecord, SQLStore, StoreError,
    SweepRecord,
)

if TYPE_CHECKING:
    from .artifact import Artifact
    from .sweep import SweepConfig
    from .service import LogPage

# What a face needs of the records it is handed, so that it imports the client and never the store.
__all__ = ["Client", "LaunchClient", "Job", "JobRecord", "LogChunk", "OutputRecord", "QueueRecord", "ScheduleRecord",
           "SweepRecord", "StoreError", "FINAL", "JOB_SORTS"]

class Client:
    """What a face can ask of jupyter-launch, embedded or through a server. Reads go to ``self.store`` (the SQL
    store, or the HTTP store over the REST API); subclasses say how a job is enqueued, cancelled, rerun and
    followed, and whether an agent can be started here."""

    server_url: str | None = None  # the server this client works through; None on the embedded store
    store: Any
    blobs: Any
    home: Path
    owner: str | None

    # ------------------------------------------------------------ queues

    def create_queue(self, config: QueueConfig | str | Path, *, replace: bool = False) -> QueueRecord:
        raise NotImplementedError

    def queues(self) -> list[QueueRecord]:
        return self.store.list_queues()

    def queue(self, name: str) -> QueueRecord:
        return self.store.get_queue(name)

    def delete_queue(self, name: str, *, force: bool = False) -> None:
        self.store.delete_queue(name, force=force)

    # ------------------------------------------------------------ submit

    @staticmethod
    def prepare(notebook: str | Path | None = None, *, config: str | Path | None = None,
                spec: JobSpec | dict[str, Any] | None = None, root: str | Path | None = None,
                **fields: Any) -> PreparedJob:
        """The job a Python call describes: a notebook, a job file or a spec, with spec ``fields`` laid over it."""
        fields = {k: v for k, v in fields.items() if v is not None}
        if spec is None:
            return prepare_job(JobOptions(notebook=notebook, config=config, root=root, extra=fields))
        data = spec.model_dump() if isinstance(spec, JobSpec) else dict(spec)
        data.update(fields)
        job_spec = validate(JobSpec, data, "<spec>")
        folder = Path(root or ".").resolve()
        nb = read_notebook(folder / job_spec.notebook) if job_spec.kind == "notebook" and job_spec.notebook else None
        return PreparedJob(job_spec, folder, nb)

    def submit(self, notebook: str | Path | None = None, *, queue: str = "default", config: str | Path | None = None,
               spec: JobSpec | dict[str, Any] | None = None, root: str | Path | None = None,
               extra_files: dict[str, bytes] | None = None, include: list[str] | None = None,
               max_size: int | None = None, **fields: Any) -> Job:
        """Package and enqueue; returns at once with a :class:`Job` handle."""
        prepared = self.prepare(notebook, config=config, spec=spec, root=root, **fields)
        return self.submit_prepared(prepared, queue=queue, extra_files=extra_files, include=include,
                                    max_size=max_size)

    def submit_prepared(self, prepared: PreparedJob, *, queue: str = "default", **options: Any) -> Job:
        """Package a prepared job (``options``: include, extra_files, max_size) and enqueue it."""
        raise NotImplementedError

    # ------------------------------------------------------------ jobs

    def job(self, job_id: str) -> Job:
        return Job(self, job_id)

    def get_job(self, job_id: str) -> JobRecord:
        return self.store.get_job(job_id)

    def jobs(self, *, queue: str | None = None, state: str | None = None, limit: int = 50,
             before: int | None = None, **filters: Any) -> list[JobRecord]:
        """Jobs newest first; ``filters`` are those of ``Store.list_jobs`` (owner, job_type, q, submitted_after,
        submitted_before, archived, sort, offset)."""
        return self.store.list_jobs(queue=queue, state=state, limit=limit, before=before, **filters)

    def delete(self, job_id: str) -> list[str]:
        """Delete an ended job with its log, metrics and outputs; the output blobs released."""
        return self.store.delete_job(job_id)

    def archive(self, job_id: str, archived: bool = True) -> JobRecord:
        return self.store.archive_job(job_id, archived)

    def cancel(self, job_id: str) -> JobRecord:
        raise NotImplementedError

    def rerun(self, job_id: str) -> Job:
        raise NotImplementedError

    def read_log(self, job_id: str, offset: int = 0) -> tuple[list[LogChunk], int]:
        return self.store.read_log(job_id, offset)

    def follow_events(self, job_id: str, offset: int = 0) -> AsyncIterator[LogPage | JobRecord]:
        """The job's log pages from ``offset`` and its record at each change of state, until it has ended."""
        raise NotImplementedError

    async def afollow(self, job_id: str, offset: int = 0, *, timeout: float | None = None) -> AsyncIterator[LogChunk]:
        """Log chunks from ``offset`` as they arrive, until the job ends and its log is read to the end."""
        from .service import LogPage

        deadline = None if timeout is None else time.monotonic() + timeout
        events = self.follow_events(job_id, offset)
        try:
            while True:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    item = await asyncio.wait_for(events.__anext__(), remaining)
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    state = (await asyncio.to_thread(self.get_job, job_id)).state
                    raise TimeoutError(f"job {job_id} still {state} after {timeout}s") from None
                if isinstance(item, LogPage):
                    for chunk in item.chunks:
                        yield chunk
        finally:
            await events.aclose()

    def follow(self, job_id: str, offset: int = 0, *, timeout: float | None = None) -> Iterator[LogChunk]:
        """:meth:`afollow` for sync callers (a kernel's cell included: it runs on the background loop)."""
        from .loop import BackgroundLoop

        return BackgroundLoop.get().iterate(self.afollow(job_id, offset, timeout=timeout))

    def metrics(self, job_id: str, after: int = 0) -> list[dict[str, Any]]:
        return self.store.read_metrics(job_id, after)

    def outputs(self, job_id: str) -> list[OutputRecord]:
        return self.store.list_outputs(job_id)

    def download_outputs(self, job_id: str, dest: str | Path) -> list[Path]:
        """Copy a job's outputs into ``dest`` (created), keeping their relative paths."""
        dest = Path(dest)
        written = []
        for out in self.store.list_outputs(job_id):
            rel = Path(out.path)
            if rel.is_absolute() or ".." in rel.parts:
                raise StoreError(f"job {job_id} has an unsafe output path {out.path!r}; not written")
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.blobs.path(out.digest), target)
            written.append(target)
        return written

    def read_output(self, job_id: str, path: str) -> bytes:
        for out in self.store.list_outputs(job_id):
            if out.path == path:
                return self.blobs.read_bytes(out.digest)
        raise StoreError(f"job {job_id} has no output {path!r}")

    def move_to_front(self, job_id: str) -> JobRecord:
        """Put a queued job first in its queue (its priority raised above every other queued job's there)."""
        return self.store.move_to_front(job_id)

    # ------------------------------------------------------------ sweeps

    def create_sweep(self, prepared: PreparedJob, *, queue: str = "default", sweep: SweepConfig,
                     **options: Any) -> tuple[SweepRecord, Artifact]:
        """Package a prepared job once and queue one child job per run of ``sweep`` (W&B's shape: method, parameters,
        metric); returns the sweep and what was packaged."""
        raise NotImplementedError

    def sweep(self, sweep_id: str) -> SweepRecord:
        return self.store.get_sweep(sweep_id)

    def sweep_jobs(self, sweep_id: str) -> list[JobRecord]:
        """The sweep's children, in the order they were queued."""
        from .service import sweep_children

        return sweep_children(self.store, sweep_id)

    def cancel_sweep(self, sweep_id: str) -> list[JobRecord]:
        """Cancel the children that have not ended (each as ``cancel`` does)."""
        self.store.get_sweep(sweep_id)
        return [self.cancel(j.id) if not j.done else j for j in self.sweep_jobs(sweep_id)]

    # ------------------------------------------------------------ schedules

    def create_schedule(self, prepared: PreparedJob, *, queue: str = "default", cron: str, tz: str = "UTC",
                        name: str | None = None, **options: Any) -> tuple[ScheduleRecord, Artifact]:
        """Package a prepared job once (``options``: include, max_size) and queue it at each time the five-field
        ``cron`` names in ``tz``, named ``name`` (default: the job's); returns the schedule and what was packaged."""
        raise NotImplementedError

    def schedules(self) -> list[ScheduleRecord]:
        return self.store.list_schedules()

    def schedule(self, schedule_id: str) -> ScheduleRecord:
        return self.store.get_schedule(schedule_id)

    def schedule_runs(self, schedule_id: str, *, limit: int = 10) -> list[JobRecord]:
        """The jobs the schedule queued, newest first."""
        return self.store.list_jobs(schedule_id=schedule_id, limit=limit)

    def pause_schedule(self, schedule_id: str, paused: bool = True) -> ScheduleRecord:
        return self.store.pause_schedule(schedule_id, paused)

    def delete_schedule(self, schedule_id: str) -> None:
        self.store.delete_schedule(schedule_id)

    # ------------------------------------------------------------ agents

    def live_agents(self, queue: str) -> list[str]:
        return [a["id"] for a in self.store.list_agents() if queue in a["queues"]]

    # ------------------------------------------------------------ agent tokens (for remote agents)

    def create_agent_token(self, name: str, queues: list[str]) -> tuple[str, Any]:
        """A token for a remote agent serving ``queues`` (``['*']``: all); returns ``(secret, record)``, the secret
        shown this once. Through a server, the server records its user as the creator."""
        return self.store.create_agent_token(name, queues, created_by=self.owner)

    def agent_tokens(self, *, include_revoked: bool = False) -> list[Any]:
        return self.store.list_agent_tokens(include_revoked=include_revoked)

    def revoke_agent_token(self, token_id: str) -> Any:
        """Revoke a token by its id (or the whole token); its agent gets no more work from its next call."""
        return self.store.revoke_agent_token(token_id)

    async def ensure_agent(self, queue: str) -> bool:
        """Start an agent here, on the running loop, when none serves ``queue``; True if one was started.
        Through a server this never starts one (the job waits for the server's agents)."""
        return False

    async def stop_agents(self) -> None:
        """Stop the agents :meth:`ensure_agent` started."""

    def close(self) -> None:
        self.store.close()


class LaunchClient(Client):
    """Submit and watch jobs on this machine's store. ``LaunchClient()`` uses ``$JUPYTER_LAUNCH_HOME``."""

    def __init__(self, store_url: str | None = None, *, home: str | Path | None = None, store: Any = None,
                 blobs: Any = None, owner: str | None = None, store_class: type = SQLStore,
                 blob_store_class: type = BlobStore):
        from .service import LaunchService

        self.home = Path(home) if home else launch_home()
        self.store = store or store_class(store_url or (f"sqlite:///{self.home / 'launch.db'}" if home
                                                        else default_store_url()))
        self.blobs = blobs or blob_store_class(self.home / "blobs")
        self.owner = owner or local_user()
        self.store.ensure_default_queue()
        self.service = LaunchService(self.store, self.blobs, home=self.home)

    def create_queue(self, config: QueueConfig | str | Path, *, replace: bool = False) -> QueueRecord:
        return self.service.create_queue(config, replace=replace)

    def submit_prepared(self, prepared: PreparedJob, *, queue: str = "default", **options: Any) -> Job:
        record, artifact = self.service.submit(prepared, queue=queue, owner=self.owner, **options)
        job = Job(self, record.id, record)
        job.packaged = artifact
        return job

    def cancel(self, job_id: str) -> JobRecord:
        return self.service.cancel(job_id)

    def move_to_front(self, job_id: str) -> JobRecord:
        return self.service.move_to_front(job_id)

    def create_sweep(self, prepared: PreparedJob, *, queue: str = "default", sweep: SweepConfig,
                     **options: Any) -> tuple[SweepRecord, Artifact]:
        return self.service.create_sweep(prepared, queue=queue, sweep=sweep, owner=self.owner, **options)

    def cancel_sweep(self, sweep_id: str) -> list[JobRecord]:
        return self.service.cancel_sweep(sweep_id)

    def create_schedule(self, prepared: PreparedJob, *, queue: str = "default", cron: str, tz: str = "UTC",
                        name: str | None = None, **options: Any) -> tuple[ScheduleRecord, Artifact]:
        return self.service.create_schedule(prepared, queue=queue, cron=cron, tz=tz, name=name, owner=self.owner,
                                            **options)

    def delete(self, job_id: str) -> list[str]:
        return self.service.delete_job(job_id)

    def rerun(self, job_id: str) -> Job:
        record = self.service.rerun(job_id, owner=self.owner)
        return Job(self, record.id, record)

    def follow_events(self, job_id: str, offset: int = 0) -> AsyncIterator[LogPage | JobRecord]:
        return self.service.follow(job_id, offset)

    def live_agents(self, queue: str) -> list[str]:
        return self.service.live_agents(queue, owner=self.owner)

    async def ensure_agent(self, queue: str) -> bool:
        return await self.service.ensure_agent(queue, owner=self.owner)

    async def stop_agents(self) -> None:
        await self.service.stop_agents()

    def close(self) -> None:
        self.service.close()
        self.store.close()


class Job:
    """A handle on one job: ``.status``, ``.logs()``, ``.wait()``, ``.cancel()``, ``.outputs``, ``.metrics``."""

    def __init__(self, client: Client, job_id: str, record: JobRecord | None = None):
        self.client = client
        self.id = job_id
        self._record = record
        self.packaged: Artifact | None = None  # what submit packaged (its size report); None on other handles

    def __repr__(self) -> str:
        r = self.record
        reason = f" ({r.reason})" if r.reason else ""
        return f"<Job {self.id} {r.state}{reason} on {r.queue}>"

    @property
    def record(self) -> JobRecord:
        if self._record is None or not self._record.done:
            self._record = self.client.get_job(self.id)
        return self._record

    def refresh(self) -> JobRecord:
        self._record = self.client.get_job(self.id)
        return self._record

    @property
    def status(self) -> str:
        return self.refresh().state

    @property
    def reason(self) -> str | None:
        return self.refresh().reason

    def logs(self, offset: int = 0) -> str:
        """The log so far as text (stdout and stderr in the order they were written)."""
        out: list[bytes] = []
        while True:
            chunks, nxt = self.client.read_log(self.id, offset)
            if not chunks:
                break
            out.extend(c.data for c in chunks)
            offset = nxt
        return b"".join(out).decode("utf-8", "replace")

    def follow(self, offset: int = 0, timeout: float | None = None) -> Iterator[LogChunk]:
        return self.client.follow(self.id, offset, timeout=timeout)

    def wait(self, timeout: float | None = None, poll: float = 0.05) -> JobRecord:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rec = self.refresh()
            if rec.done:
                return rec
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {rec.state} after {timeout}s")
            time.sleep(poll)

    def cancel(self) -> JobRecord:
        self._record = self.client.cancel(self.id)
        return self._record

    @property
    def outputs(self) -> list[OutputRecord]:
        return self.client.outputs(self.id)

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return self.client.metrics(self.id)

    def print_logs(self, file: Any = None) -> None:
        for chunk in self.follow():
            stream = (sys.stderr if chunk.stream == "stderr" else sys.stdout) if file is None else file
            stream.write(chunk.data.decode("utf-8", "replace"))
            stream.flush()
