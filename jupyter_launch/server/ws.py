"""Live log streams: a WebSocket per follower, and server-sent events as the fallback.

Each follower reads from its own byte offset, a bounded page at a time, and only reads again once its page is
written out (``LaunchService.follow``); the store's events just say "job X has more". Followers at the same offset
share the page (``service.SharedPages``: one store read, one copy, a few pages kept per job), and each sends it in
frames of at most ``FRAME_BYTES``, so a follower's own memory is one frame. A slow follower delays no one (the job's
writes go to the store, not to followers) and, past the pages kept, reads the store again itself.
Resuming is by byte offset (``?offset=N``, or SSE's ``Last-Event-ID``): nothing is lost and nothing repeated.

WebSocket frames: binary ``{"offset", "stream", "attempt"}`` JSON header, a newline, then the raw bytes (at most
``FRAME_BYTES`` of them: a long chunk comes in several frames); text frames ``{"event": "state" | "end", ...}``.
SSE events: ``log`` (JSON with utf-8 ``text``; ``id`` is the offset to resume from), ``state`` and ``end``.
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

from ..remote.http import RemoteError
from ..service import LogPage
from ..store import LogChunk, NotFound
from ..store.base import MAX_COUNT
from .handlers import API, JOB_ID, JOBS_RESOURCE, LaunchHandler, bounded_int, job_caller

FALLBACK_POLL = 1.0  # seconds; covers logs written by another server sharing a PostgreSQL store
FRAME_BYTES = 32 * 1024  # log bytes per WebSocket frame at most


async def follow_log(app: Any, job_id: str, offset: int, send: Callable[[list[LogChunk], int], Awaitable[None]],
                     send_state: Callable[[Any], Awaitable[None]]) -> Any:
    """Send the log from ``offset`` page by page until the job has ended and its log is all sent; returns the job.
    The pages and states come from the service's one follow; awaiting each send is the back-pressure."""
    job = None
    async for item in app.service.follow(job_id, offset, poll_min=FALLBACK_POLL, poll_max=FALLBACK_POLL):
        if isinstance(item, LogPage):
            await send(item.chunks, item.next_offset)
        else:
            job = item
            await send_state(job)
    return job


def byte_offset(raw: str, name: str) -> int:
    """A log offset from the query or a header: an integer from 0 to MAX_COUNT (a larger one would overflow the
    store's integers); else 400 naming it."""
    value = bounded_int(raw, 0, MAX_COUNT)
    if value is None:
        raise web.HTTPError(400, f"{name} must be a byte offset, an integer from 0 to {MAX_COUNT}")
    return value


def _state_event(job: Any, offset: int) -> dict[str, Any]:
    return {"event": "state", "state": job.state, "reason": job.reason, "message": job.message,
            "log_size": job.log_size, "offset": offset}


class _FollowerLimit:
    def reserve_follower(self: Any) -> None:
        app = self.settings["launch"]
        if app.service.events.follower_count >= app.max_log_followers:
            self.set_header("Retry-After", str(app.retry_after_seconds))
            raise web.HTTPError(429, f"{app.service.events.follower_count} live log streams are open, the server's limit; "
                                     f"read the log with GET {API}/jobs/ID/logs?offset=N or retry shortly")


class LogSocketHandler(_FollowerLimit, JupyterHandler, websocket.WebSocketHandler):
    """``/launch/api/jobs/ID/logs/ws?offset=N``: the job's log, live, from byte offset N."""

    auth_resource = JOBS_RESOURCE

    async def prepare(self, *, _redirect_to_login: bool = False) -> None:  # type: ignore[override]
        # A WebSocket cannot follow a redirect to the login page: refuse with 403 instead.
        await super().prepare(_redirect_to_login=False)

    async def pre_get(self) -> None:
        user = self.current_user
        if not await ensure_async(self.authorizer.is_authorized(self, user, "read", JOBS_RESOURCE)):
            raise web.HTTPError(403, f"User is not authorized to read on resource: {JOBS_RESOURCE}.")
        self.reserve_follower()
        self.offset = byte_offset(self.get_argument("offset", "0"), "offset")
        app = self.settings["launch"]
        try:
            await app.run_store(app.service.get_job, self.job_id, caller=await job_caller(self, "read"))
        except NotFound as exc:
            raise web.HTTPError(404, str(exc).replace("%", "%%")) from None
        except RemoteError as exc:  # the service's answer, for a server that is its client (LaunchApp.service_url)
            raise web.HTTPError(exc.status or 502, str(exc).replace("%", "%%")) from None

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
                data = memoryview(c.data)
                # A frame is its header and a slice of the chunk: each follower copies at most FRAME_BYTES at a time
                # (the page itself is shared by the job's followers). Awaiting the write is the back-pressure.
                for start in range(0, len(data), FRAME_BYTES):
                    header = json.dumps({"offset": c.offset + start, "stream": c.stream,
                                         "attempt": c.attempt}).encode()
                    await self.write_message(header + b"\n" + data[start:start + FRAME_BYTES], binary=True)

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
        offset = byte_offset(resume, "offset (or Last-Event-ID)")
        await self.job(job_id)
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
