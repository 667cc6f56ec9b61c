"""The client through a running server's API, with a user's token: ``HttpClient`` on an ``HttpStore``, made by
``connect``."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ..artifact import Artifact, HashCache
from ..client import Client, Job
from ..options import PreparedJob
from ..paths import launch_home
from ..service import LogPage, package
from ..spec import QueueConfig, load_queue_config
from ..store import BlobStore, JobRecord, LogChunk, QueueRecord, ScheduleRecord, SweepRecord
from ..sweep import SweepConfig
from .http import Http, RemoteError
from .store import HttpBlobs, HttpStore


class ServerBlobs(HttpBlobs):
    """The client's blobs: packaging writes to the local cache as usual; before a submit, the blobs it touched are
    checked with the server in one call and only the missing ones are uploaded."""

    def __init__(self, http: Http, cache: BlobStore):
        super().__init__(http, cache, prefix="artifacts/blobs", missing_path="artifacts/missing")
        self._touched: dict[str, None] = {}
        self._lock = threading.Lock()

    def _touch(self, digest: str) -> str:
        with self._lock:
            self._touched[digest] = None
        return digest

    def has(self, digest: str) -> bool:
        self._touch(digest)
        return self.cache.has(digest)

    def put_file(self, src: str | Path, digest: str | None = None) -> str:
        return self._touch(self.cache.put_file(src, digest))

    def put_bytes(self, data: bytes) -> str:
        return self._touch(self.cache.put_bytes(data))

    def put_stream(self, stream: Any, expected: str | None = None, max_size: int | None = None) -> str:
        return self._touch(self.cache.put_stream(stream, expected, max_size))

    def sync(self) -> list[str]:
        """Upload the blobs the server lacks, of those touched since the last sync; returns those uploaded."""
        with self._lock:
            digests, self._touched = list(self._touched), {}
        missing = self.missing(digests)
        for digest in missing:
            self.upload(digest, self.cache.path(digest))
        return missing


class HttpClient(Client):
    """A :class:`~jupyter_launch.client.Client` through a running server: reads and job operations call the REST API
    (whose handlers call the server's ``LaunchService``), logs are followed over the WebSocket stream, resuming from
    the last byte offset after a dropped connection. Jobs are packaged here, where the files are, and only the blobs
    the server lacks are uploaded."""

    reconnects = 5  # a dropped log stream is reopened from its offset this many times in a row before giving up

    def __init__(self, store: HttpStore, *, home: str | Path | None = None, owner: str | None = None):
        if store.user_http is None:
            raise ValueError("HttpClient needs an HttpStore with a user token")
        self.store = store
        self.http = store.user_http
        self.server_url = store.server_url
        self.home = Path(home) if home else launch_home()
        self.owner = owner
        self.blobs = store.blobs = ServerBlobs(self.http, BlobStore(self.home / "blobs"))
        self._hash_cache: HashCache | None = None

    def create_queue(self, config: QueueConfig | str | Path, *, replace: bool = False) -> QueueRecord:
        if not isinstance(config, QueueConfig):
            source = str(config)
            config = load_queue_config(config)
            config.check_runnable(source)
        return self.store.create_queue(config, replace=replace)

    def _package(self, prepared: PreparedJob, queue: str, **options: Any) -> Artifact:
        self.store.get_queue(queue)  # an unknown queue fails before anything is packaged
        if self._hash_cache is None:
            self._hash_cache = HashCache(self.home)
        try:
            return package(prepared, self.blobs, hash_cache=self._hash_cache, **options)
        finally:
            self._hash_cache.save()

    def submit_prepared(self, prepared: PreparedJob, *, queue: str = "default", **options: Any) -> Job:
        artifact = self._package(prepared, queue, **options)
        record = self.store.enqueue(queue, prepared.spec, artifact=artifact.digest, owner=self.owner)
        job = Job(self, record.id, record)
        job.packaged = artifact
        return job

    def create_sweep(self, prepared: PreparedJob, *, queue: str = "default", sweep: SweepConfig,
                     **options: Any) -> tuple[SweepRecord, Artifact]:
        runs = sweep.runs()
        artifact = self._package(prepared, queue, **options)
        record = self.store.create_sweep(queue, prepared.spec, artifact=artifact.digest, runs=runs,
                                         config=sweep.model_dump(mode="json", exclude_none=True),
                                         max_parallel=sweep.max_parallel, fail_fast=sweep.fail_fast, name=sweep.name)
        return record, artifact

    def create_schedule(self, prepared: PreparedJob, *, queue: str = "default", cron: str, tz: str = "UTC",
                        name: str | None = None, **options: Any) -> tuple[ScheduleRecord, Artifact]:
        from ..cron import Cron, zone_info

        Cron(cron), zone_info(tz)  # a bad expression fails before anything is packaged
        artifact = self._package(prepared, queue, **options)
        schedule = self.store.create_schedule(queue, prepared.spec, cron=cron, tz=tz, artifact=artifact.digest,
                                              name=name)
        return schedule, artifact

    def cancel(self, job_id: str) -> JobRecord:
        return self.store.request_cancel(job_id)

    def rerun(self, job_id: str) -> Job:
        record = self.store.rerun(job_id)
        return Job(self, record.id, record)

    async def follow_events(self, job_id: str, offset: int = 0) -> AsyncIterator[LogPage | JobRecord]:
        from tornado.httpclient import HTTPClientError, HTTPRequest
        from tornado.websocket import WebSocketClosedError, websocket_connect

        scheme = "wss" if self.http.scheme == "https" else "ws"
        failures = 0
        while True:
            url = f"{scheme}://{self.http.netloc}{self.http.url(f'jobs/{job_id}/logs/ws', {'offset': offset})}"
            request = HTTPRequest(url, headers={"Authorization": f"Bearer {self.http.token}"},
                                  connect_timeout=30, request_timeout=30)
            try:
                conn = await websocket_connect(request)
            except HTTPClientError as exc:
                if exc.code in (401, 403, 404):  # say why as the REST API does: one call, the server's sentence
                    await asyncio.to_thread(self.get_job, job_id)
                failures += 1
                if failures > self.reconnects:
                    raise RemoteError(f"cannot follow job {job_id} on {self.server_url}: {exc}", exc.code) from None
                await asyncio.sleep(min(0.1 * 2 ** failures, 2.0))
                continue
            except OSError as exc:
                failures += 1
                if failures > self.reconnects:
                    raise RemoteError(f"cannot reach the jupyter-launch server at {self.server_url}: {exc}", 0) from None
                await asyncio.sleep(min(0.1 * 2 ** failures, 2.0))
                continue
            try:
                while True:
                    message = await conn.read_message()
                    if message is None:
                        break  # dropped: reopen from the offset reached
                    failures = 0
                    if isinstance(message, bytes):
                        head, _, data = message.partition(b"\n")
                        meta = json.loads(head)
                        chunk = LogChunk(meta["offset"], meta["stream"], meta["attempt"], data)
                        offset = chunk.end
                        yield LogPage([chunk], offset)
                        continue
                    event = json.loads(message)
                    if event.get("event") == "state":
                        yield await asyncio.to_thread(self.get_job, job_id)
                    elif event.get("event") == "end":
                        yield await asyncio.to_thread(self.get_job, job_id)
                        return
            except WebSocketClosedError:
                pass
            finally:
                conn.close()
            failures += 1
            if failures > self.reconnects:
                raise RemoteError(f"the log stream of job {job_id} on {self.server_url} keeps dropping", 0)


def connect(server_url: str, token: str, *, home: str | Path | None = None, owner: str | None = None) -> HttpClient:
    """A client that works through a running server's API instead of the embedded store."""
    return HttpClient(HttpStore(server_url, user_token=token), home=home, owner=owner)
