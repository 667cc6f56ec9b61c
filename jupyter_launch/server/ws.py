"""Live log streams: a WebSocket per follower, server-sent events as the fallback, and the hub that wakes them.

Followers do not share a buffer. Each reads the store from its own byte offset, a bounded page at a time, and only
reads again once its page is written out; the hub just says "job X has more". So a slow follower delays no one
(the job's writes go to the store, not to followers), and memory per follower is one page whatever the log's size.
Resuming is by byte offset (``?offset=N``, or SSE's ``Last-Event-ID``): nothing is lost and nothing repeated.

WebSocket frames: binary ``{"offset", "stream", "attempt"}`` JSON header, a newline, then the raw bytes; text
frames ``{"event": "state" | "end", ...}``. SSE events: ``log`` (JSON with utf-8 ``text``; ``id`` is the offset to
resume from), ``state`` and ``end``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import ensure_async
from tornado import web, websocket
from tornado.iostream import StreamClosedError

from ..store import FINAL, LogChunk, NotFound
from .handlers import API, AUTH_RESOURCE, JOB_ID, LaunchHandler

PAGE = 1024 * 1024  # bytes read per store call for one follower
FALLBACK_POLL = 1.0  # seconds; covers logs written by another server sharing a PostgreSQL store


class LogHub:
    """Turns the store's in-process ``log``/``state``/``enqueued`` events into asyncio wake-ups for waiters."""

    def __init__(self, store: Any):
        self.store = store
        self._loop: asyncio.AbstractEventLoop | None = None
        self._followers: dict[str, set[asyncio.Event]] = {}
        self._claimers: set[asyncio.Event] = set()
        self._unsubscribe: list[Callable[[], None]] = []

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._unsubscribe = [self.store.subscribe("log", self._on_job), self.store.subscribe("state", self._on_job),
                             self.store.subscribe("enqueued", self._on_enqueued)]

    def stop(self) -> None:
        for unsub in self._unsubscribe:
            unsub()
        self._unsubscribe = []

    # Store events arrive on whatever thread wrote; hop onto the loop before touching asyncio objects.
    def _on_job(self, job_id: str, *_: Any) -> None:
        if self._loop is not None and job_id in self._followers:
            self._loop.call_soon_threadsafe(self._wake_job, job_id)

    def _on_enqueued(self, *_: Any) -> None:
        if self._loop is not None and self._claimers:
            self._loop.call_soon_threadsafe(self._wake_claimers)
        # A finished job frees capacity too; claimers are cheap to wake.

    def _wake_job(self, job_id: str) -> None:
        for event in self._followers.get(job_id, ()):
            event.set()
        if self._claimers:
            self._wake_claimers()

    def _wake_claimers(self) -> None:
        for event in self._claimers:
            event.set()

    def watch(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._followers.setdefault(job_id, set()).add(event)
        return event

    def unwatch(self, job_id: str, event: asyncio.Event) -> None:
        waiters = self._followers.get(job_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._followers[job_id]

    def claim_waiter(self) -> asyncio.Event:
        event = asyncio.Event()
        self._claimers.add(event)
        return event

    def release_claim_waiter(self, event: asyncio.Event) -> None:
        self._claimers.discard(event)

    @property
    def follower_count(self) -> int:
        return sum(len(v) for v in self._followers.values())


async def follow_log(app: Any, job_id: str, offset: int, send: Callable[[list[LogChunk], int], Awaitable[None]],
                     send_state: Callable[[Any], Awaitable[None]]) -> Any:
    """Send the log from ``offset`` page by page until the job has ended and its log is all sent; returns the job."""
    store, hub = app.store, app.hub
    event = hub.watch(job_id)
    last_state = None
    try:
        while True:
            event.clear()
            chunks, nxt = await app.run_store(store.read_log, job_id, offset, limit=PAGE)
            if chunks:
                await send(chunks, nxt)
                offset = nxt
                continue
            job = await app.run_store(store.get_job, job_id)
            if (job.state, job.reason) != last_state:
                last_state = (job.state, job.reason)
                await send_state(job)
            if job.state in FINAL and offset >= job.log_size:
                return job
            try:
                await asyncio.wait_for(event.wait(), FALLBACK_POLL)
            except asyncio.TimeoutError:
                pass
    finally:
        hub.unwatch(job_id, event)


def _state_event(job: Any, offset: int) -> dict[str, Any]:
    return {"event": "state", "state": job.state, "reason": job.reason, "message": job.message,
            "log_size": job.log_size, "offset": offset}


class _FollowerLimit:
    def reserve_follower(self: Any) -> None:
        app = self.settings["launch"]
        if app.hub.follower_count >= app.max_log_followers:
            self.set_header("Retry-After", str(app.retry_after_seconds))
            raise web.HTTPError(429, f"{app.hub.follower_count} live log streams are open, the server's limit; "
                                     f"read the log with GET {API}/jobs/ID/logs?offset=N or retry shortly")


class LogSocketHandler(_FollowerLimit, JupyterHandler, websocket.WebSocketHandler):
    """``/launch/api/jobs/ID/logs/ws?offset=N``: the job's log, live, from byte offset N."""

    auth_resource = AUTH_RESOURCE

    async def prepare(self, *, _redirect_to_login: bool = False) -> None:  # type: ignore[override]
        # A WebSocket cannot follow a redirect to the login page: refuse with 403 instead.
        await super().prepare(_redirect_to_login=False)

    async def pre_get(self) -> None:
        user = self.current_user
        if not await ensure_async(self.authorizer.is_authorized(self, user, "read", AUTH_RESOURCE)):
            raise web.HTTPError(403, f"User is not authorized to read on resource: {AUTH_RESOURCE}.")
        self.reserve_follower()
        try:
            self.offset = max(0, int(self.get_argument("offset", "0")))
        except ValueError:
            raise web.HTTPError(400, "offset must be a byte offset (an integer)") from None
        app = self.settings["launch"]
        try:
            await app.run_store(app.store.get_job, self.job_id)
        except NotFound as exc:
            raise web.HTTPError(404, str(exc).replace("%", "%%")) from None

    @ws_authenticated
    async def get(self, job_id: str) -> None:
        self.job_id = job_id
        await self.pre_get()
        res = super().get(job_id)
        if res is not None:
            await res

    def open(self, job_id: str) -> None:  # type: ignore[override]
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        app = self.settings["launch"]

        async def send(chunks: list[LogChunk], nxt: int) -> None:
            for c in chunks:
                header = json.dumps({"offset": c.offset, "stream": c.stream, "attempt": c.attempt}).encode()
                # Awaiting the write is the back-pressure: a slow reader holds only its own page.
                await self.write_message(header + b"\n" + c.data, binary=True)

        async def send_state(job: Any) -> None:
            await self.write_message(json.dumps(_state_event(job, self.offset)))

        try:
            job = await follow_log(app, self.job_id, self.offset, send, send_state)
            await self.write_message(json.dumps({"event": "end", "state": job.state, "reason": job.reason,
                                                 "message": job.message, "exit_code": job.exit_code,
                                                 "offset": job.log_size}))
            self.close(1000, "the job ended")
        except (websocket.WebSocketClosedError, StreamClosedError, asyncio.CancelledError):
            pass
        except Exception:
            self.log.exception("log stream for job %s failed", self.job_id)
            self.close(1011, "the log stream failed; reconnect with ?offset=N to resume")

    def on_message(self, message: Any) -> None:
        """Followers only listen."""

    def on_close(self) -> None:
        task = getattr(self, "_task", None)
        if task is not None and not task.done():
            task.cancel()


def _utf8_safe_end(data: bytes) -> int:
    """Length of ``data`` without a trailing, incomplete UTF-8 sequence (kept for the next event)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for the lead byte
        if byte & 0x80 == 0:
            return len(data)
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4
        return len(data) if back >= need else len(data) - back
    return len(data)


class LogEventsHandler(_FollowerLimit, LaunchHandler):
    """``/launch/api/jobs/ID/logs/events``: the same stream as server-sent events, resumable with Last-Event-ID."""

    counts_as_inflight = False

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        self.reserve_follower()
        resume = self.request.headers.get("Last-Event-ID") or self.get_argument("offset", "0")
        try:
            offset = max(0, int(resume))
        except ValueError:
            raise web.HTTPError(400, "offset (or Last-Event-ID) must be a byte offset") from None
        await self.store_call(self.launch.store.get_job, job_id)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        pending = b""  # the tail of a UTF-8 character split across chunks
        sent = offset
        stream = "stdout"

        async def send(chunks: list[LogChunk], nxt: int) -> None:
            nonlocal pending, sent, stream
            for c in chunks:
                stream = c.stream
                data = pending + c.data
                start = sent
                cut = _utf8_safe_end(data)
                pending = data[cut:]
                sent = start + cut
                if cut:
                    self.write(_sse("log", {"offset": start, "stream": c.stream, "attempt": c.attempt,
                                            "text": data[:cut].decode("utf-8", "replace")}, event_id=sent))
            await self.flush()

        async def send_state(job: Any) -> None:
            self.write(_sse("state", _state_event(job, sent)))
            await self.flush()

        try:
            job = await follow_log(self.launch, job_id, offset, send, send_state)
            if pending:
                self.write(_sse("log", {"offset": sent, "stream": stream, "attempt": job.attempt,
                                        "text": pending.decode("utf-8", "replace")}, event_id=sent + len(pending)))
            self.write(_sse("end", {"state": job.state, "reason": job.reason, "message": job.message,
                                    "exit_code": job.exit_code, "offset": job.log_size}))
            self.finish()
        except StreamClosedError:
            pass


def _sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


stream_handlers = [
    (rf"{API}/jobs/{JOB_ID}/logs/ws", LogSocketHandler),
    (rf"{API}/jobs/{JOB_ID}/logs/events", LogEventsHandler),
]
