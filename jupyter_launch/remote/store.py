"""The store and blobs through a running server's REST API: ``HttpStore`` for remote agents and HTTP clients alike.

``HttpStore`` implements the ``Store`` protocol (store/protocol.py) fully, so an agent on another machine is the same
agent with a different store, and a client through a server is the same client. ``HttpBlobs`` fetches artifacts
into a local cache and uploads outputs, asking first which blobs the server lacks.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import tempfile
import urllib.parse
from collections.abc import Collection
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..store import (
    ARCHIVED_CHOICES, BlobStore, Claim, Heartbeat, JobRecord, JobStatus, LogChunk, NotFound, OutputRecord, QueueRecord,
    ScheduleRecord, StaleClaim, SweepRecord, sha256_file,
)
from ..store.tokens import AgentToken, token_id
from .http import STALE_CLAIM, Http, RemoteAuthError, RemoteError, job_record, queue_record

_USER_ROUTES = "queues, jobs, logs, metrics, outputs, agents and tokens"
_AGENT_ROUTES = "registering, claiming and reporting on claimed jobs"

JOB_STATUS_BATCH = 500  # ids per request: the server refuses more (MAX_JOB_STATUS_IDS)


class HttpStore:
    """The store through a server's API, with up to two credentials, each for its own routes:

    * ``user_token``, a Jupyter identity (the server's token, a JupyterHub token; ``""`` sends none), for the user
      routes (``/launch/api/queues``, ``jobs``, ``agents``, ``tokens``, ...), authorized as the server authorizes
      that user. The server records that user as a job's owner: ``owner`` arguments are not sent.
    * ``agent_token``, an agent token (``jla_...``, from ``jupyter launch token create``), for the agent routes
      (``/launch/api/agent/...``): registering, claims (long-polled up to ``claim_wait`` seconds), and reports on
      claimed jobs (heartbeat, state, progress, finish, logs, metrics, outputs), scoped to the token's queues.

    A remote agent holds only an agent token, a client (``connect``) only a user token. A call whose credential the
    store was not given raises ``RemoteAuthError`` naming it, and sends nothing. ``get_queue``, which both kinds of
    caller make, takes the user route when there is a user token and the agent route otherwise. Leases are reaped
    by the server itself (``LaunchApp.reap_interval``), so ``requeue_expired`` has nothing to do here.
    """

    def __init__(self, server_url: str, *, user_token: str | None = None, agent_token: str | None = None,
                 claim_wait: float = 20.0):
        self.user_http = Http(server_url, user_token) if user_token is not None else None
        self.agent_http = Http(server_url, agent_token, timeout=claim_wait + 30) if agent_token is not None else None
        # Claims on connections of their own, so that a stopping agent can cut its long poll short (interrupt_claims)
        # without breaking its other calls.
        self.claim_http = Http(server_url, agent_token, timeout=claim_wait + 30) if agent_token is not None else None
        self._interrupted: list[Http] = []
        if self.user_http is None and self.agent_http is None:
            raise ValueError("HttpStore needs a user token, an agent token, or both")
        self.server_url = (self.user_http or self.agent_http).server_url  # type: ignore[union-attr]
        self.claim_wait = claim_wait
        self.auth_error: RemoteAuthError | None = None  # the agent token's refusal, once the server refused it
        self.blobs: Any = None  # set by ``connect``: blobs packaged locally, uploaded before a submit names them

    # ------------------------------------------------------------ transport

    def _user(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        if self.user_http is None:
            raise RemoteAuthError(f"this store has no user token for {self.server_url}: {_USER_ROUTES} need one "
                                  "(the server's token, or a JupyterHub token)", 0)
        return self.user_http.request(method, path, body, **kw)[1]

    def _agent(self, method: str, path: str, body: Any = None, *, via: Http | None = None,
               **kw: Any) -> tuple[int, Any]:
        if self.agent_http is None:
            raise RemoteAuthError(f"this store has no agent token for {self.server_url}: {_AGENT_ROUTES} need one "
                                  "(`jupyter launch token create`)", 0)
        try:
            return (via or self.agent_http).request(method, path, body, **kw)
        except RemoteAuthError as exc:
            self.auth_error = exc
            raise

    def _job_call(self, job_id: str, action: str, body: dict[str, Any]) -> Any:
        try:
            return self._agent("POST", f"agent/jobs/{_q(job_id)}/{action}", body)[1]
        except RemoteError as exc:
            if exc.status == 409 and exc.reason == STALE_CLAIM:
                raise StaleClaim(str(exc)) from None
            raise

    # ------------------------------------------------------------ queues

    def create_queue(self, config: Any, *, replace: bool = False) -> QueueRecord:
        data = config.model_dump(mode="json", exclude_none=True)
        if replace:
            with contextlib.suppress(NotFound):
                return queue_record(self._user("PUT", f"queues/{_q(config.queue_name)}", data))
        return queue_record(self._user("POST", "queues", data))

    def ensure_default_queue(self) -> None:
        """Nothing to do: the server makes the default queue when it starts."""

    def get_queue(self, name: str) -> QueueRecord:
        if self.user_http is not None:
            return queue_record(self._user("GET", f"queues/{_q(name)}"))
        return queue_record(self._agent("GET", f"agent/queues/{_q(name)}")[1])

    def list_queues(self) -> list[QueueRecord]:
        return [queue_record(q) for q in self._user("GET", "queues")["queues"]]

    def delete_queue(self, name: str, *, force: bool = False) -> None:
        self._user("DELETE", f"queues/{_q(name)}", params={"force": str(force).lower()})

    # ------------------------------------------------------------ jobs, as a user sees them

    def enqueue(self, queue: str, spec: Any, *, artifact: str | None, owner: str | None = None,
                owner_name: str | None = None) -> JobRecord:
        if artifact and self.blobs is not None:
            self.blobs.sync()
        return job_record(self._user("POST", "jobs", {"queue": queue, "spec": spec.model_dump(mode="json"),
                                                      "artifact": artifact}))

    def get_job(self, job_id: str) -> JobRecord:
        return job_record(self._user("GET", f"jobs/{_q(job_id)}"))

    def list_jobs(self, *, queue: str | None = None, state: str | None = None, limit: int = 50,
                  before: int | None = None, owner: str | None = None, job_type: str | None = None,
                  q: str | None = None, submitted_after: float | None = None,
                  submitted_before: float | None = None, archived: bool | None = False,
                  sort: str = "-submitted", offset: int = 0, schedule_id: str | None = None,
                  parent_id: str | None = None) -> list[JobRecord]:
        shown = {value: name for name, value in ARCHIVED_CHOICES.items()}[archived]
        data = self._user("GET", "jobs", params={
            "queue": queue, "state": state, "limit": limit, "before": before, "owner": owner, "job_type": job_type,
            "q": q, "submitted_after": submitted_after, "submitted_before": submitted_before, "archived": shown,
            "sort": sort, "offset": offset or None, "schedule": schedule_id, "parent": parent_id})
        return [job_record(j) for j in data["jobs"]]

    def delete_job(self, job_id: str) -> list[str]:
        return self._user("DELETE", f"jobs/{_q(job_id)}")["released"]

    def archive_job(self, job_id: str, archived: bool = True) -> JobRecord:
        return job_record(self._user("POST", f"jobs/{_q(job_id)}/{'archive' if archived else 'unarchive'}"))

    def request_cancel(self, job_id: str) -> JobRecord:
        return job_record(self._user("POST", f"jobs/{_q(job_id)}/cancel"))

    def rerun(self, job_id: str, *, owner: str | None = None, owner_name: str | None = None) -> JobRecord:
        return job_record(self._user("POST", f"jobs/{_q(job_id)}/rerun"))

    def requeue_expired(self) -> list[tuple[str, str]]:
        return []  # the server reaps expired leases itself (LaunchApp.reap_interval)

    def move_to_front(self, job_id: str) -> JobRecord:
        return job_record(self._user("POST", f"jobs/{_q(job_id)}/move", {"front": True}))

    # ------------------------------------------------------------ sweeps

    def create_sweep(self, queue: str, spec: Any, *, artifact: str | None, runs: list[dict[str, Any]],
                     config: dict[str, Any], max_parallel: int | None = None, fail_fast: bool = False,
                     name: str | None = None, owner: str | None = None) -> SweepRecord:
        """``owner`` is the user of the user token, as the server records it; the argument is not sent."""
        if artifact and self.blobs is not None:
            self.blobs.sync()
        return sweep_record(self._user("POST", "sweeps", {
            "queue": queue, "spec": spec.model_dump(mode="json"), "artifact": artifact, "runs": runs,
            "config": config, "max_parallel": max_parallel, "fail_fast": fail_fast, "name": name}))

    def get_sweep(self, sweep_id: str) -> SweepRecord:
        return sweep_record(self._user("GET", f"sweeps/{_q(sweep_id)}"))

    # ------------------------------------------------------------ schedules

    def create_schedule(self, queue: str, spec: Any, *, cron: str, tz: str = "UTC", artifact: str | None,
                        name: str | None = None, owner: str | None = None) -> ScheduleRecord:
        """``owner`` is the user of the user token, as the server records it; the argument is not sent."""
        if artifact and self.blobs is not None:
            self.blobs.sync()
        return schedule_record(self._user("POST", "schedules", {
            "queue": queue, "spec": spec.model_dump(mode="json"), "artifact": artifact, "cron": cron, "tz": tz,
            "name": name}))

    def get_schedule(self, schedule_id: str) -> ScheduleRecord:
        return schedule_record(self._user("GET", f"schedules/{_q(schedule_id)}"))

    def list_schedules(self, *, owner: str | None = None) -> list[ScheduleRecord]:
        schedules = [schedule_record(d) for d in self._user("GET", "schedules")["schedules"]]
        return [s for s in schedules if owner is None or s.owner == owner]

    def pause_schedule(self, schedule_id: str, paused: bool = True) -> ScheduleRecord:
        action = "pause" if paused else "resume"
        return schedule_record(self._user("POST", f"schedules/{_q(schedule_id)}/{action}"))

    def delete_schedule(self, schedule_id: str) -> None:
        self._user("DELETE", f"schedules/{_q(schedule_id)}")

    # ------------------------------------------------------------ jobs, as an agent runs them

    def job_statuses(self, queue: str, job_ids: Collection[str]) -> dict[str, JobStatus]:
        """The state and current fencing token of each of ``job_ids`` that is a job of ``queue``; ids of other
        queues, or unknown, are left out. What an agent reaping ``queue`` needs to tell the live from the ended."""
        ids = list(dict.fromkeys(job_ids))
        found: dict[str, JobStatus] = {}
        for i in range(0, len(ids), JOB_STATUS_BATCH):
            data = self._agent("POST", f"agent/queues/{_q(queue)}/jobs",
                              {"job_ids": ids[i:i + JOB_STATUS_BATCH]})[1]
            found.update((job_id, JobStatus(s["state"], s["fence"])) for job_id, s in data["jobs"].items())
        return found

    def live_agent_ids(self, queue: str) -> list[str]:
        """The ids of the agents serving ``queue`` now (seen within the agents' time to live)."""
        return list(self._agent("GET", f"agent/queues/{_q(queue)}/agents")[1]["agents"])

    def claim_next_job(self, agent_id: str, queues: list[str], job_types: list[str] | None = None, *,
                       lease_seconds: float = 30.0, free_gpus: int | None = None,
                       owner: str | None = None) -> Claim | None:
        """Long-polls: the server holds the call up to ``claim_wait`` seconds until a job can be claimed."""
        status, data = self._agent("POST", "agent/claim", {
            "agent_id": agent_id, "queues": queues, "job_types": job_types, "lease_seconds": lease_seconds,
            "free_gpus": free_gpus, "owner": owner, "wait": self.claim_wait}, via=self.claim_http)
        if status == 204 or not data:
            return None
        return Claim(job=job_record(data["job"]), fence=data["fence"])

    def interrupt_claims(self) -> None:
        """End the claim in flight now (from any thread); later claims go through new connections. The server,
        seeing the call gone, claims nothing for it, or hands back a job it could no longer deliver."""
        old = self.claim_http
        if old is not None:
            self.claim_http = Http(old.server_url, old.token, timeout=old.timeout)
            self._interrupted.append(old)  # closed with the store
            old.abort()

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

    def hand_back(self, job_id: str, fence: int) -> bool:
        return bool(self._job_call(job_id, "hand_back", {"fence": fence})["ok"])

    # ------------------------------------------------------------ agents

    def register_agent(self, agent_id: str, queues: list[str], job_types: list[str], *, host: str,
                       info: dict[str, Any] | None = None) -> None:
        self._agent("POST", "agent/register", {"agent_id": agent_id, "queues": queues, "job_types": job_types,
                                               "host": host, "info": info or {}})

    def agent_seen(self, agent_id: str) -> None:
        self._agent("POST", "agent/seen", {"agent_id": agent_id})

    def unregister_agent(self, agent_id: str) -> None:
        self._agent("POST", "agent/unregister", {"agent_id": agent_id})

    def list_agents(self) -> list[dict[str, Any]]:
        return self._user("GET", "agents")["agents"]

    # ------------------------------------------------------------ logs, metrics, outputs

    def append_logs(self, job_id: str, fence: int, pieces: list[tuple[str, bytes]], at: int | None = None) -> int:
        data = self._job_call(job_id, "logs", {"fence": fence, "at": at, "pieces": [
            (stream, base64.b64encode(chunk).decode()) for stream, chunk in pieces]})
        return int(data["log_size"])

    def read_log(self, job_id: str, offset: int = 0, *, limit: int = 4 * 1024 * 1024) -> tuple[list[LogChunk], int]:
        data = self._user("GET", f"jobs/{_q(job_id)}/logs", params={"offset": offset, "limit": limit,
                                                                    "encoding": "base64"})
        chunks = [LogChunk(c["offset"], c["stream"], c["attempt"], base64.b64decode(c["data"]))
                  for c in data["chunks"]]
        return chunks, data["next_offset"]

    def add_metrics(self, job_id: str, fence: int, records: list[dict[str, Any]]) -> None:
        self._job_call(job_id, "metrics", {"fence": fence, "records": records})

    def read_metrics(self, job_id: str, after: int = 0) -> list[dict[str, Any]]:
        return self._user("GET", f"jobs/{_q(job_id)}/metrics", params={"after": after})["metrics"]

    def add_outputs(self, job_id: str, fence: int, outputs: list[OutputRecord]) -> None:
        self._job_call(job_id, "outputs", {"fence": fence, "outputs": [
            {"path": o.path, "digest": o.digest, "size": o.size} for o in outputs]})

    def list_outputs(self, job_id: str) -> list[OutputRecord]:
        data = self._user("GET", f"jobs/{_q(job_id)}/outputs")
        return [OutputRecord(o["path"], o["digest"], o["size"]) for o in data["outputs"]]

    # ------------------------------------------------------------ agent tokens

    def create_agent_token(self, name: str, queues: list[str], *,
                           created_by: str | None = None) -> tuple[str, AgentToken]:
        """``created_by`` is the user of the user token, as the server records it; the argument is not sent."""
        data = self._user("POST", "tokens", {"name": name, "queues": list(queues)})
        return data["token"], AgentToken.from_dict(data)

    def list_agent_tokens(self, *, include_revoked: bool = False) -> list[AgentToken]:
        data = self._user("GET", "tokens", params={"include_revoked": str(include_revoked).lower()})
        return [AgentToken.from_dict(d) for d in data["tokens"]]

    def revoke_agent_token(self, token: str) -> AgentToken:
        return AgentToken.from_dict(self._user("DELETE", f"tokens/{_q(token_id(token))}"))

    def verify_agent_token(self, token: str) -> AgentToken | None:
        """Asks the server with ``token`` itself as the credential: a refusal means it is unknown or revoked."""
        http = Http(self.server_url, token)
        try:
            return AgentToken.from_dict(http.request("GET", "agent/token")[1])
        except RemoteAuthError:
            return None
        finally:
            http.close()

    def close(self) -> None:
        for http in (self.user_http, self.agent_http, self.claim_http, *self._interrupted):
            if http is not None:
                http.close()


def sweep_record(d: dict[str, Any]) -> SweepRecord:
    return SweepRecord(**{f.name: d.get(f.name) for f in fields(SweepRecord)})


def schedule_record(d: dict[str, Any]) -> ScheduleRecord:
    return ScheduleRecord(**{f.name: d.get(f.name) for f in fields(ScheduleRecord)})


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


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
