"""Talking to a running server over HTTP: the remote agent's store and blobs, and ``LaunchClient`` over the API.

``HttpStore`` has the same methods, with the same signatures, as the parts of ``SQLStore`` the ``Agent`` uses, so an
agent on another machine is the same agent with a different store. ``HttpBlobs`` fetches artifacts into a local
cache and uploads outputs, asking first which blobs the server lacks. ``ServerStore``/``ServerBlobs`` do the same for
``LaunchClient`` with a user's token; :func:`connect` and :func:`client_for` build such a client.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import tempfile
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..store import (
    BlobStore, Claim, Heartbeat, JobRecord, LogChunk, NotFound, OutputRecord, QueueRecord, RemoteAuthError, RemoteError,
    StoreError, sha256_file,
)

API = "launch/api"
SERVER_ENV, TOKEN_ENV = "JUPYTER_LAUNCH_SERVER_URL", "JUPYTER_LAUNCH_TOKEN"
STORE_ENVS = ("JUPYTER_LAUNCH_HOME", "JUPYTER_LAUNCH_STORE_URL")
_JOB_FIELDS = [f.name for f in fields(JobRecord)]
_QUEUE_FIELDS = [f.name for f in fields(QueueRecord)]


class Http:
    """A small keep-alive HTTP client: one connection per thread, JSON in and out, the server's errors raised."""

    def __init__(self, server_url: str, token: str, *, timeout: float = 60.0):
        parsed = urllib.parse.urlparse(server_url if "://" in server_url else f"http://{server_url}")
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"server URL must be http:// or https://, not {server_url!r}")
        self.scheme, self.netloc = parsed.scheme, parsed.netloc
        self.base_path = (parsed.path.rstrip("/") + "/") if parsed.path else "/"
        self.server_url = f"{parsed.scheme}://{parsed.netloc}{self.base_path}"
        self.token = token
        self.timeout = timeout
        self._local = threading.local()
        self._conns: list[http.client.HTTPConnection] = []
        self._conns_lock = threading.Lock()

    def _conn(self, timeout: float) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            conn = cls(self.netloc, timeout=timeout)
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def url(self, path: str, params: dict[str, Any] | None = None) -> str:
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
        return f"{self.base_path}{API}/{path}" + (f"?{query}" if query else "")

    def request(self, method: str, path: str, body: Any = None, *, params: dict[str, Any] | None = None,
                raw: bytes | Any = None, timeout: float | None = None, stream_to: Any = None,
                length: int | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data: Any = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            data = raw
            headers["Content-Type"] = "application/octet-stream"
            if length is not None:
                headers["Content-Length"] = str(length)
        elif method in ("POST", "PUT"):
            data = b""
        url = self.url(path, params)
        for attempt in range(2):
            conn = self._conn(timeout or self.timeout)
            try:
                conn.request(method, url, body=data, headers=headers)
                resp = conn.getresponse()
                if stream_to is not None and resp.status == 200:
                    while block := resp.read(256 * 1024):
                        stream_to.write(block)
                    return 200, None
                payload = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                conn.close()
                self._local.conn = None
                with self._conns_lock:
                    if conn in self._conns:
                        self._conns.remove(conn)
                # A kept-alive connection the server closed: retry once on a fresh one (not for streamed bodies).
                if attempt or (raw is not None and not isinstance(raw, bytes)):
                    raise RemoteError(f"cannot reach the jupyter-launch server at {self.server_url}: {exc}", 0) from None
        ctype = resp.getheader("Content-Type", "")
        parsed = json.loads(payload) if payload and ctype.startswith("application/json") else payload
        if resp.status >= 400:
            message = parsed.get("message") if isinstance(parsed, dict) else None
            message = message or f"HTTP {resp.status} {resp.reason}"
            if resp.status in (401, 403):
                hint = "" if self.token else f"; no token was given (--token or ${TOKEN_ENV})"
                raise RemoteAuthError(f"the server at {self.server_url} refused the token: {message}{hint}",
                                      resp.status)
            if resp.status == 404:
                raise NotFound(message)
            if resp.status == 429:
                raise RemoteError(message, 429)
            raise RemoteError(message, resp.status)
        return resp.status, parsed

    def close(self) -> None:
        """Close every thread's connection (each thread opens a new one on its next call)."""
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()


def _job(d: dict[str, Any]) -> JobRecord:
    return JobRecord(**{k: d.get(k) for k in _JOB_FIELDS})


def _queue(d: dict[str, Any]) -> QueueRecord:
    return QueueRecord(**{k: d[k] for k in _QUEUE_FIELDS if k in d})


# ------------------------------------------------------------------ remote agents

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
        return _queue(self._call("GET", f"agent/queues/{urllib.parse.quote(name)}")[1])

    def claim_next_job(self, agent_id: str, queues: list[str], job_types: list[str] | None = None, *,
                       lease_seconds: float = 30.0, free_gpus: int | None = None) -> Claim | None:
        """Long-polls: the server holds the call up to ``claim_wait`` seconds until a job can be claimed."""
        status, data = self._call("POST", "agent/claim", {
            "agent_id": agent_id, "queues": queues, "job_types": job_types, "lease_seconds": lease_seconds,
            "free_gpus": free_gpus, "wait": self.claim_wait})
        if status == 204 or not data:
            return None
        return Claim(job=_job(data["job"]), fence=data["fence"])

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


def make_remote_agent(server_url: str, token: str, queues: list[str], *, job_types: list[str] | None = None,
                      cache_dir: str | Path | None = None, claim_wait: float = 20.0, **traits: Any) -> Any:
    """An ``Agent`` that works for a server over HTTP (``jupyter launch agent --server URL --token T``)."""
    from ..agent import Agent
    from ..paths import launch_home

    store = HttpStore(server_url, token, claim_wait=claim_wait)
    blobs = HttpBlobs(store.http, BlobStore(Path(cache_dir) if cache_dir else launch_home() / "agent-cache"))
    traits.setdefault("wake_socket", False)
    return Agent(store=store, blobs=blobs, queues=queues, job_types=job_types or [], **traits)


async def run_remote_agent(agent: Any, stop: Any = None) -> None:
    """Run a remote agent until ``stop`` (an asyncio.Event) is set or its token stops working."""
    import asyncio

    stop = stop or asyncio.Event()
    await agent.start()
    task = asyncio.create_task(agent.run())
    stopping = asyncio.create_task(stop.wait())
    try:
        # A refused token ends the agent's loop by itself, with one line saying why.
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        await agent.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        agent.store.close()


# ------------------------------------------------------------------ LaunchClient over HTTP

class ServerStore:
    """The store methods ``LaunchClient`` uses, through the user endpoints of a running server."""

    def __init__(self, http: Http):
        self.http = http
        self.blobs: ServerBlobs | None = None

    def ensure_default_queue(self) -> None:
        """The server makes the default queue itself."""

    def subscribe(self, event_name: str, callback: Callable[..., None]) -> Callable[[], None]:
        return lambda: None  # no in-process events across HTTP; followers poll

    def create_queue(self, config: Any, *, replace: bool = False) -> QueueRecord:
        data = config.model_dump(mode="json", exclude_none=True)
        if replace:
            with contextlib.suppress(NotFound):
                return _queue(self.http.request("PUT", f"queues/{config.queue_name}", data)[1])
        return _queue(self.http.request("POST", "queues", data)[1])

    def list_queues(self) -> list[QueueRecord]:
        return [_queue(q) for q in self.http.request("GET", "queues")[1]["queues"]]

    def get_queue(self, name: str) -> QueueRecord:
        return _queue(self.http.request("GET", f"queues/{urllib.parse.quote(name)}")[1])

    def delete_queue(self, name: str, *, force: bool = False) -> None:
        self.http.request("DELETE", f"queues/{urllib.parse.quote(name)}", params={"force": str(force).lower()})

    def enqueue(self, queue: str, spec: Any, *, artifact: str | None, owner: str | None = None,
                rerun_of: str | None = None) -> JobRecord:
        if artifact and self.blobs is not None:
            self.blobs.sync()
        return _job(self.http.request("POST", "jobs", {"queue": queue, "spec": spec.model_dump(mode="json"),
                                                       "artifact": artifact})[1])

    def get_job(self, job_id: str) -> JobRecord:
        return _job(self.http.request("GET", f"jobs/{job_id}")[1])

    def list_jobs(self, *, queue: str | None = None, state: str | None = None, limit: int = 50,
                  before: int | None = None) -> list[JobRecord]:
        data = self.http.request("GET", "jobs", params={"queue": queue, "state": state, "limit": limit,
                                                        "before": before})[1]
        return [_job(j) for j in data["jobs"]]

    def request_cancel(self, job_id: str) -> JobRecord:
        return _job(self.http.request("POST", f"jobs/{job_id}/cancel")[1])

    def rerun(self, job_id: str, *, owner: str | None = None) -> JobRecord:
        return _job(self.http.request("POST", f"jobs/{job_id}/rerun")[1])

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


def probe(server_url: str, token: str, *, timeout: float = 2.0) -> bool:
    """True when a server with the launch extension answers at ``server_url`` and accepts ``token``."""
    try:
        Http(server_url, token, timeout=timeout).request("GET", "queues", timeout=timeout)
        return True
    except (StoreError, ValueError, OSError):
        return False


def _running_servers() -> list[dict[str, Any]]:
    """The ``jpserver-*.json`` files of live local Jupyter servers, newest first (read directly: importing
    ``jupyter_server.serverapp`` for ``list_running_servers`` takes over a second, on every command)."""
    from jupyter_core.paths import jupyter_runtime_dir
    from jupyter_server.utils import check_pid

    found = []
    for path in Path(jupyter_runtime_dir()).glob("jpserver-*.json"):
        try:
            info = json.loads(path.read_text())
            mtime = path.stat().st_mtime
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and isinstance(info.get("pid"), int) and check_pid(info["pid"]):
            found.append((mtime, info))
    return [info for _, info in sorted(found, key=lambda item: item[0], reverse=True)]


def discover_server() -> tuple[str, str] | None:
    """The newest local running Jupyter server that serves the launch API and takes its own token, as
    ``(url, token)``; in a kernel a server started (``$JPY_PARENT_PID``), that server first."""
    servers = _running_servers()
    parent = os.environ.get("JPY_PARENT_PID")
    servers.sort(key=lambda info: str(info["pid"]) != parent)  # stable: newest first otherwise
    for info in servers:
        url, token = info.get("url"), info.get("token") or ""
        if url and probe(url, token):
            return url, token
    return None


def client_for(server: str | None = None, token: str | None = None, *, discover: bool = True, **kwargs: Any) -> Any:
    """The client a command should use, first match wins:

    1. a server named (``server``, else ``$JUPYTER_LAUNCH_SERVER_URL``): through it, with ``token`` (else
       ``$JUPYTER_LAUNCH_TOKEN``). A named server that does not answer is an error, never a silent fallback;
    2. a store named (``$JUPYTER_LAUNCH_HOME``, ``$JUPYTER_LAUNCH_STORE_URL``, or ``home``/``store_url``/``store``
       given): that store, embedded. Naming a store is asking for it, so a running server is not looked for;
    3. a local running Jupyter server with jupyter-launch (``discover``): through it, with its own token;
    4. else the embedded store under the default launch home.
    """
    from ..client import LaunchClient

    server = server or os.environ.get(SERVER_ENV) or None
    token = token or os.environ.get(TOKEN_ENV) or ""
    if server:
        return connect(server, token, **kwargs)
    store_named = any(os.environ.get(name) for name in STORE_ENVS) or any(
        kwargs.get(name) is not None for name in ("home", "store_url", "store"))
    if discover and not store_named:
        found = discover_server()
        if found:
            return connect(*found, **kwargs)
    return LaunchClient(**kwargs)
