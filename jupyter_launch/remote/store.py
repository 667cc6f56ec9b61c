"""The store and blobs as a remote agent sees them: the server's agent endpoints, with an agent token.

``HttpStore`` has the same methods, with the same signatures, as the parts of ``SQLStore`` the ``Agent`` uses, so an
agent on another machine is the same agent with a different store. ``HttpBlobs`` fetches artifacts into a local
cache and uploads outputs, asking first which blobs the server lacks.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
import urllib.parse
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..store import (
    BlobStore, Claim, Heartbeat, JobStatus, OutputRecord, QueueRecord, RemoteAuthError, RemoteError, sha256_file,
)
from .http import Http, job_record, queue_record

JOB_STATUS_BATCH = 500  # ids per request: the server refuses more (MAX_JOB_STATUS_IDS)


class HttpStore:
    """The store as a remote agent sees it, through the server's agent endpoints and an agent token."""

    def __init__(self, server_url: str, token: str, *, claim_wait: float = 20.0):
        self.http = Http(server_url, token, timeout=claim_wait + 30)
        self.claim_wait = claim_wait
        self.auth_error: RemoteAuthError | None = None

    def _call(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        try:
            return self.http.request(method, path, body, **kw)
        except RemoteAuthError as exc:
            self.auth_error = exc
            raise

    def register_agent(self, agent_id: str, queues: list[str], job_types: list[str], *, host: str,
                       info: dict[str, Any] | None = None) -> None:
        self._call("POST", "agent/register", {"agent_id": agent_id, "queues": queues, "job_types": job_types,
                                              "host": host, "info": info or {}})

    def agent_seen(self, agent_id: str) -> None:
        self._call("POST", "agent/seen", {"agent_id": agent_id})

    def unregister_agent(self, agent_id: str) -> None:
        self._call("POST", "agent/unregister", {"agent_id": agent_id})

    def requeue_expired(self) -> list[tuple[str, str]]:
        return []  # the server reaps expired leases itself (LaunchApp.reap_interval)

    def get_queue(self, name: str) -> QueueRecord:
        return queue_record(self._call("GET", f"agent/queues/{urllib.parse.quote(name)}")[1])

    def job_statuses(self, queue: str, job_ids: Collection[str]) -> dict[str, JobStatus]:
        """The state and current fencing token of each of ``job_ids`` that is a job of ``queue``; ids of other
        queues, or unknown, are left out. What an agent reaping ``queue`` needs to tell the live from the ended."""
        ids = list(dict.fromkeys(job_ids))
        found: dict[str, JobStatus] = {}
        for i in range(0, len(ids), JOB_STATUS_BATCH):
            data = self._call("POST", f"agent/queues/{urllib.parse.quote(queue)}/jobs",
                              {"job_ids": ids[i:i + JOB_STATUS_BATCH]})[1]
            found.update((job_id, JobStatus(s["state"], s["fence"])) for job_id, s in data["jobs"].items())
        return found

    def live_agent_ids(self, queue: str) -> list[str]:
        """The ids of the agents serving ``queue`` now (seen within the agents' time to live)."""
        return list(self._call("GET", f"agent/queues/{urllib.parse.quote(queue)}/agents")[1]["agents"])

    def claim_next_job(self, agent_id: str, queues: list[str], job_types: list[str] | None = None, *,
                       lease_seconds: float = 30.0, free_gpus: int | None = None) -> Claim | None:
        """Long-polls: the server holds the call up to ``claim_wait`` seconds until a job can be claimed."""
        status, data = self._call("POST", "agent/claim", {
            "agent_id": agent_id, "queues": queues, "job_types": job_types, "lease_seconds": lease_seconds,
            "free_gpus": free_gpus, "wait": self.claim_wait})
        if status == 204 or not data:
            return None
        return Claim(job=job_record(data["job"]), fence=data["fence"])

    def _job_call(self, job_id: str, action: str, body: dict[str, Any]) -> Any:
        return self._call("POST", f"agent/jobs/{job_id}/{action}", body)[1]

    def heartbeat(self, job_id: str, fence: int, *, lease_seconds: float = 30.0) -> Heartbeat:
        data = self._job_call(job_id, "heartbeat", {"fence": fence, "lease_seconds": lease_seconds})
        return Heartbeat(ok=bool(data["ok"]), cancel_requested=bool(data.get("cancel_requested")))

    def set_state(self, job_id: str, fence: int, state: str, reason: str | None = None,
                  message: str | None = None, **facts: Any) -> bool:
        return bool(self._job_call(job_id, "state", {"fence": fence, "state": state, "reason": reason,
                                                     "message": message, "facts": facts})["ok"])

    def set_progress(self, job_id: str, fence: int, progress: dict[str, Any]) -> bool:
        return bool(self._job_call(job_id, "progress", {"fence": fence, "progress": progress})["ok"])

    def finish(self, job_id: str, fence: int, state: str, *, exit_code: int | None = None,
               reason: str | None = None, message: str | None = None) -> bool:
        return bool(self._job_call(job_id, "finish", {"fence": fence, "state": state, "exit_code": exit_code,
                                                      "reason": reason, "message": message})["ok"])

    def append_logs(self, job_id: str, attempt: int, pieces: list[tuple[str, bytes]]) -> int:
        data = self._job_call(job_id, "logs", {"attempt": attempt, "pieces": [
            (stream, base64.b64encode(chunk).decode()) for stream, chunk in pieces]})
        return int(data["log_size"])

    def add_metrics(self, job_id: str, records: list[dict[str, Any]]) -> None:
        if records:
            self._job_call(job_id, "metrics", {"records": records})

    def add_outputs(self, job_id: str, outputs: list[OutputRecord]) -> None:
        if outputs:
            self._job_call(job_id, "outputs", {"outputs": [
                {"path": o.path, "digest": o.digest, "size": o.size} for o in outputs]})

    def close(self) -> None:
        self.http.close()


class HttpBlobs:
    """Blobs through the server: reads land in a local cache (a ``BlobStore``), writes upload only what is missing."""

    def __init__(self, http: Http, cache: BlobStore, *, prefix: str = "agent/blobs",
                 missing_path: str = "agent/blobs/missing"):
        self.http, self.cache, self.prefix, self.missing_path = http, cache, prefix, missing_path
        self.root = cache.root

    def _blob_path(self, digest: str) -> str:
        return f"{self.prefix}/{digest}"

    def path(self, digest: str) -> Path:
        """The blob's local path, downloaded (and its digest checked) on first use."""
        local = self.cache.path(digest)
        if local.exists():
            return local
        tmp_dir = self.cache.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=tmp_dir, delete=False) as f:
            tmp = f.name
            try:
                self.http.request("GET", self._blob_path(digest), stream_to=f)
            except BaseException:
                f.close()
                os.unlink(tmp)
                raise
        try:
            self.cache.put_file(tmp, digest if sha256_file(tmp) == digest else None)
            if not local.exists():
                raise RemoteError(f"blob {digest} arrived damaged (digest mismatch); try again", 0)
        finally:
            os.unlink(tmp)
        return local

    def has(self, digest: str) -> bool:
        return not self.missing([digest])

    def missing(self, digests: list[str]) -> list[str]:
        if not digests:
            return []
        return self.http.request("POST", self.missing_path, {"digests": list(dict.fromkeys(digests))})[1]["missing"]

    def upload(self, digest: str, src: str | Path) -> None:
        size = os.path.getsize(src)
        with open(src, "rb") as f:
            self.http.request("PUT", self._blob_path(digest), raw=f, length=size, timeout=max(60.0, size / 1e6))

    def put_file(self, src: str | Path, digest: str | None = None) -> str:
        digest = digest or sha256_file(src)
        if self.missing([digest]):
            self.upload(digest, src)
        return digest

    def put_bytes(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.missing([digest]):
            self.http.request("PUT", self._blob_path(digest), raw=data)
        return digest

    def read_bytes(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def open(self, digest: str) -> Any:
        return open(self.path(digest), "rb")
