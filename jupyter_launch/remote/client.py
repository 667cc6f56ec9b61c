"""``LaunchClient`` through a running server's API, with a user's token (``connect``)."""

from __future__ import annotations

import base64
import contextlib
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..store import BlobStore, JobRecord, LogChunk, NotFound, OutputRecord, QueueRecord
from .http import Http, job_record, queue_record
from .store import HttpBlobs


class ServerStore:
    """The store methods ``LaunchClient`` uses, through the user endpoints of a running server."""

    def __init__(self, http: Http):
        self.http = http
        self.blobs: ServerBlobs | None = None

    def ensure_defaultqueue_record(self) -> None:
        """The server makes the default queue itself."""

    def subscribe(self, event_name: str, callback: Callable[..., None]) -> Callable[[], None]:
        return lambda: None  # no in-process events across HTTP; followers poll

    def createqueue_record(self, config: Any, *, replace: bool = False) -> QueueRecord:
        data = config.model_dump(mode="json", exclude_none=True)
        if replace:
            with contextlib.suppress(NotFound):
                return queue_record(self.http.request("PUT", f"queues/{config.queue_name}", data)[1])
        return queue_record(self.http.request("POST", "queues", data)[1])

    def list_queues(self) -> list[QueueRecord]:
        return [queue_record(q) for q in self.http.request("GET", "queues")[1]["queues"]]

    def getqueue_record(self, name: str) -> QueueRecord:
        return queue_record(self.http.request("GET", f"queues/{urllib.parse.quote(name)}")[1])

    def deletequeue_record(self, name: str, *, force: bool = False) -> None:
        self.http.request("DELETE", f"queues/{urllib.parse.quote(name)}", params={"force": str(force).lower()})

    def enqueue(self, queue: str, spec: Any, *, artifact: str | None, owner: str | None = None,
                rerun_of: str | None = None) -> JobRecord:
        if artifact and self.blobs is not None:
            self.blobs.sync()
        return job_record(self.http.request("POST", "jobs", {"queue": queue, "spec": spec.model_dump(mode="json"),
                                                       "artifact": artifact})[1])

    def getjob_record(self, job_id: str) -> JobRecord:
        return job_record(self.http.request("GET", f"jobs/{job_id}")[1])

    def list_jobs(self, *, queue: str | None = None, state: str | None = None, limit: int = 50,
                  before: int | None = None) -> list[JobRecord]:
        data = self.http.request("GET", "jobs", params={"queue": queue, "state": state, "limit": limit,
                                                        "before": before})[1]
        return [job_record(j) for j in data["jobs"]]

    def request_cancel(self, job_id: str) -> JobRecord:
        return job_record(self.http.request("POST", f"jobs/{job_id}/cancel")[1])

    def rerun(self, job_id: str, *, owner: str | None = None) -> JobRecord:
        return job_record(self.http.request("POST", f"jobs/{job_id}/rerun")[1])

    def read_log(self, job_id: str, offset: int = 0, *, limit: int = 4 * 1024 * 1024) -> tuple[list[LogChunk], int]:
        data = self.http.request("GET", f"jobs/{job_id}/logs", params={"offset": offset, "limit": limit,
                                                                       "encoding": "base64"})[1]
        chunks = [LogChunk(c["offset"], c["stream"], c["attempt"], base64.b64decode(c["data"]))
                  for c in data["chunks"]]
        return chunks, data["next_offset"]

    def read_metrics(self, job_id: str, after: int = 0) -> list[dict[str, Any]]:
        return self.http.request("GET", f"jobs/{job_id}/metrics", params={"after": after})[1]["metrics"]

    def list_outputs(self, job_id: str) -> list[OutputRecord]:
        data = self.http.request("GET", f"jobs/{job_id}/outputs")[1]
        return [OutputRecord(o["path"], o["digest"], o["size"]) for o in data["outputs"]]

    def list_agents(self) -> list[dict[str, Any]]:
        return self.http.request("GET", "agents")[1]["agents"]

    def close(self) -> None:
        self.http.close()


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


def connect(server_url: str, token: str, *, home: str | Path | None = None, owner: str | None = None) -> Any:
    """A ``LaunchClient`` that works through a running server's API instead of the embedded store."""
    from ..client import LaunchClient
    from ..paths import launch_home

    http = Http(server_url, token)
    cache = BlobStore((Path(home) if home else launch_home()) / "blobs")
    store = ServerStore(http)
    store.blobs = ServerBlobs(http, cache)
    client = LaunchClient(store=store, blobs=store.blobs, home=home, owner=owner)  # type: ignore[arg-type]
    client.server_url = http.server_url
    return client
