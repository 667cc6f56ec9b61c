"""A small keep-alive HTTP client for the launch API: JSON in and out, the server's errors raised as store errors."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import urllib.parse
from dataclasses import fields
from typing import Any

from ..store import JobRecord, NotFound, QueueRecord, StoreError

API = "launch/api"
SERVER_ENV, TOKEN_ENV = "JUPYTER_LAUNCH_SERVER_URL", "JUPYTER_LAUNCH_TOKEN"
STALE_CLAIM = "stale_claim"  # the reason of a 409 refusing a write for a claim that is no longer current
_JOB_FIELDS = [f.name for f in fields(JobRecord)]
_QUEUE_FIELDS = [f.name for f in fields(QueueRecord)]


class RemoteError(StoreError):
    """A server refused or failed a call; the message is the server's own, ``status`` its HTTP status (0: no
    answer), ``reason`` the error's reason code when the server gave one. A store error, like any other store's: a
    caller need not know the store is behind a server."""

    def __init__(self, message: str, status: int, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason


class RemoteBadRequest(RemoteError, ValueError):
    """The server refused a value of the call (400): a ``ValueError`` as the same call on a store in this process
    raises."""


class RemoteAuthError(RemoteError):
    """The token is missing, unknown, revoked or out of scope: no retry can succeed."""


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
        self._aborted = False

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
            if self._aborted:
                raise RemoteError(f"the call to {self.server_url} was interrupted (abort)", 0)
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
                if attempt or self._aborted or (raw is not None and not isinstance(raw, bytes)):
                    raise RemoteError(f"cannot reach the jupyter-launch server at {self.server_url}: {exc}", 0) from None
        ctype = resp.getheader("Content-Type", "")
        parsed = json.loads(payload) if payload and ctype.startswith("application/json") else payload
        if resp.status >= 400:
            message = parsed.get("message") if isinstance(parsed, dict) else None
            message = message or f"HTTP {resp.status} {resp.reason}"
            if resp.status in (401, 403):
                hint = "" if self.token else f"; no token was given (${TOKEN_ENV} or --token-file FILE)"
                raise RemoteAuthError(f"the server at {self.server_url} refused the token: {message}{hint}",
                                      resp.status)
            if resp.status == 404:
                raise NotFound(message)
            reason = parsed.get("reason") if isinstance(parsed, dict) else None
            cls = RemoteBadRequest if resp.status == 400 else RemoteError
            raise cls(message, resp.status, reason if isinstance(reason, str) else None)
        return resp.status, parsed

    def abort(self) -> None:
        """From any thread: end the calls in flight now (their sockets shut down, a blocked read returns) and refuse
        every later one with :class:`RemoteError`. For a long poll nobody waits for any more."""
        self._aborted = True
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close every thread's connection (each thread opens a new one on its next call)."""
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()


def job_record(d: dict[str, Any]) -> JobRecord:
    return JobRecord(**{k: d.get(k) for k in _JOB_FIELDS})


def queue_record(d: dict[str, Any]) -> QueueRecord:
    return QueueRecord(**{k: d[k] for k in _QUEUE_FIELDS if k in d})
