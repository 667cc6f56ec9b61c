"""``LaunchClient``: the Python API for queues and jobs, and the ``Job`` handle it returns.

The client packages and submits, reads logs from an offset and follows them, cancels, reruns and fetches outputs.
It works on the embedded store (SQLite and the blob folder under the launch home, no server needed), or through a
running server's API (``jupyter_launch.remote``: ``connect`` / ``client_for``, what the CLI uses); the magics, the
CLI and the panel all go through it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .paths import default_store_url, launch_home
from .spec import JobSpec, QueueConfig, SpecError, load_job_spec, load_queue_config, validate
from .store import FINAL, BlobStore, JobRecord, LogChunk, OutputRecord, QueueRecord, SQLStore, StoreError
from .store.protocol import LocalEvents

if TYPE_CHECKING:
    from .artifact import Artifact

FOLLOW_POLL_MIN = 0.005
FOLLOW_POLL_MAX = 0.1


def read_notebook_light(path: Path) -> dict[str, Any]:
    """Check a notebook file is a readable nbformat 4 document, without importing nbformat (slow to import)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError("no such notebook", source=str(path)) from None
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", source=str(path)) from None
    try:
        nb = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise SpecError(f"not a notebook: invalid JSON ({getattr(exc, 'msg', exc)})", source=str(path), line=line) from None
    except RecursionError:
        raise SpecError("not a notebook: its JSON is nested too deeply to read", source=str(path)) from None
    if not isinstance(nb, dict):
        raise SpecError("not a notebook: no 'cells' list", source=str(path))
    if "nbformat" in nb and nb["nbformat"] != 4:  # an nbformat 3 file has worksheets, not cells: say which
        raise SpecError(f"unsupported nbformat {nb['nbformat']!r} (jupyter-launch reads nbformat 4)",
                        source=str(path), field="nbformat")
    if not isinstance(nb.get("cells"), list):
        raise SpecError("not a notebook: no 'cells' list", source=str(path))
    if nb.get("nbformat") != 4:
        raise SpecError(f"unsupported nbformat {nb.get('nbformat')!r} (jupyter-launch reads nbformat 4)",
                        source=str(path), field="nbformat")
    return nb


class LaunchClient:
    """Submit and watch jobs. ``LaunchClient()`` uses this machine's store (``$JUPYTER_LAUNCH_HOME``)."""

    server_url: str | None = None  # the server this client works through; None on the embedded store

    def __init__(self, store_url: str | None = None, *, home: str | Path | None = None, store: SQLStore | None = None,
                 blobs: BlobStore | None = None, owner: str | None = None):
        self.home = Path(home) if home else launch_home()
        self.store = store or SQLStore(store_url or (f"sqlite:///{self.home / 'launch.db'}" if home else default_store_url()))
        self.blobs = blobs or BlobStore(self.home / "blobs")
        self.owner = owner or os.environ.get("JUPYTERHUB_USER") or os.environ.get("USER") or None
        self.store.ensure_default_queue()
        self._hash_cache = None

    # ------------------------------------------------------------ queues

    def create_queue(self, config: QueueConfig | str | Path, *, replace: bool = False) -> QueueRecord:
        source = None
        if not isinstance(config, QueueConfig):
            source = str(config)
            config = load_queue_config(config)
        config.check_runnable(source)
        return self.store.create_queue(config, replace=replace)

    def queues(self) -> list[QueueRecord]:
        return self.store.list_queues()

    def queue(self, name: str) -> QueueRecord:
        return self.store.get_queue(name)

    def delete_queue(self, name: str, *, force: bool = False) -> None:
        self.store.delete_queue(name, force=force)

    # ------------------------------------------------------------ submit

    def build_spec(self, notebook: str | Path | None = None, *, config: str | Path | None = None,
                   spec: JobSpec | dict[str, Any] | None = None, root: str | Path | None = None,
                   **overrides: Any) -> tuple[JobSpec, Path, dict[str, Any] | None]:
        """The job spec, the folder to package, and the notebook (parsed) when there is one."""
        nb = None
        if spec is not None:
            data = spec.model_dump() if isinstance(spec, JobSpec) else dict(spec)
            data.update({k: v for k, v in overrides.items() if v is not None})
            result = validate(JobSpec, data, "<spec>")
            base = Path(root or ".").resolve()
        elif config is not None:
            base = Path(root).resolve() if root else Path(config).resolve().parent
            result = load_job_spec(config, {k: v for k, v in overrides.items() if v is not None})
            if result.kind == "notebook" and result.notebook:
                nb = read_notebook_light(base / result.notebook)
        elif notebook is not None:
            path = Path(notebook).resolve()
            nb = read_notebook_light(path)
            base = Path(root).resolve() if root else path.parent
            try:
                rel = path.relative_to(base).as_posix()
            except ValueError:
                raise SpecError(f"the notebook is not inside the folder to package ({base})", source=str(notebook)) from None
            data = {"kind": "notebook", "notebook": rel, "name": path.stem}
            data.update({k: v for k, v in overrides.items() if v is not None})
            result = validate(JobSpec, data, str(notebook))
        else:
            raise SpecError("nothing to submit: give a notebook, --config FILE or a spec")
        return result, base, nb

    def submit(self, notebook: str | Path | None = None, *, queue: str = "default", config: str | Path | None = None,
               spec: JobSpec | dict[str, Any] | None = None, root: str | Path | None = None,
               extra_files: dict[str, bytes] | None = None, include: list[str] | None = None,
               max_size: int | None = None, **overrides: Any) -> Job:
        """Package and enqueue; returns at once with a :class:`Job` handle."""
        from .artifact import DEFAULT_MAX_SIZE, HashCache, build_artifact, capture_environment

        job_spec, base, nb = self.build_spec(notebook, config=config, spec=spec, root=root, **overrides)
        self.store.get_queue(queue)  # unknown queue: fail before packaging anything
        if self._hash_cache is None:
            self._hash_cache = HashCache(self.home)
        environment = capture_environment(nb, job_spec.kernel)
        artifact = build_artifact(base, self.blobs, include=include, environment=environment,
                                  entrypoint=job_spec.notebook or (" ".join(job_spec.command or []) or None),
                                  max_size=max_size or DEFAULT_MAX_SIZE, hash_cache=self._hash_cache,
                                  extra_files=extra_files)
        self._hash_cache.save()
        record = self.store.enqueue(queue, job_spec, artifact=artifact.digest, owner=self.owner)
        from .notify import wake_agents

        wake_agents(self.home)
        job = Job(self, record.id, record)
        job.packaged = artifact
        return job

    # ------------------------------------------------------------ jobs

    def job(self, job_id: str) -> Job:
        return Job(self, job_id)

    def jobs(self, *, queue: str | None = None, state: str | None = None, limit: int = 50,
             before: int | None = None) -> list[JobRecord]:
        return self.store.list_jobs(queue=queue, state=state, limit=limit, before=before)

    def cancel(self, job_id: str) -> JobRecord:
        record = self.store.request_cancel(job_id)
        from .notify import wake_agents

        wake_agents(self.home)
        return record

    def rerun(self, job_id: str) -> Job:
        record = self.store.rerun(job_id, owner=self.owner)
        from .notify import wake_agents

        wake_agents(self.home)
        return Job(self, record.id, record)

    def read_log(self, job_id: str, offset: int = 0) -> tuple[list[LogChunk], int]:
        return self.store.read_log(job_id, offset)

    def follow(self, job_id: str, offset: int = 0, *, timeout: float | None = None) -> Iterator[LogChunk]:
        """Log chunks from ``offset`` as they arrive, until the job ends and its log is read to the end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = FOLLOW_POLL_MIN
        while True:
            chunks, nxt = self.store.read_log(job_id, offset)
            if chunks:
                yield from chunks
                offset = nxt
                delay = FOLLOW_POLL_MIN
                continue
            job = self.store.get_job(job_id)
            if job.state in FINAL and offset >= job.log_size:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, FOLLOW_POLL_MAX)

    async def afollow(self, job_id: str, offset: int = 0) -> AsyncIterator[LogChunk]:
        """:meth:`follow` for an event loop: wakes on in-process log events, polls otherwise."""
        wake = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_log(jid: str, *_: Any) -> None:
            if jid == job_id:
                loop.call_soon_threadsafe(wake.set)

        # In-process events wake the follower at once; a store behind a server has none, so it polls.
        unsubscribes = ([self.store.subscribe(name, on_log) for name in ("log", "state")]
                        if isinstance(self.store, LocalEvents) else [])
        try:
            delay = FOLLOW_POLL_MIN
            while True:
                wake.clear()
                chunks, nxt = await asyncio.to_thread(self.store.read_log, job_id, offset)
                if chunks:
                    for chunk in chunks:
                        yield chunk
                    offset = nxt
                    delay = FOLLOW_POLL_MIN
                    continue
                job = await asyncio.to_thread(self.store.get_job, job_id)
                if job.state in FINAL and offset >= job.log_size:
                    return
                try:
                    await asyncio.wait_for(wake.wait(), delay)
                except asyncio.TimeoutError:
                    delay = min(delay * 2, FOLLOW_POLL_MAX)
        finally:
            for unsubscribe in unsubscribes:
                unsubscribe()

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

    def live_agents(self, queue: str) -> list[str]:
        return [a["id"] for a in self.store.list_agents() if queue in a["queues"]]

    def close(self) -> None:
        self.store.close()


class Job:
    """A handle on one job: ``.status``, ``.logs()``, ``.wait()``, ``.cancel()``, ``.outputs``, ``.metrics``."""

    def __init__(self, client: LaunchClient, job_id: str, record: JobRecord | None = None):
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
            self._record = self.client.store.get_job(self.id)
        return self._record

    def refresh(self) -> JobRecord:
        self._record = self.client.store.get_job(self.id)
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
