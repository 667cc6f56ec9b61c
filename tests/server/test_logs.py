"""Live logs over WebSocket and server-sent events: complete, in order, resumable, and a slow follower slows no one."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from typing import Any

from .conftest import command_spec, wait_done

SLOW_JOB = ("import time, sys\n"
            "for i in range(300):\n"
            "    print(f'line {i} ' + 'é' * (i % 3), flush=True)\n"
            "    if i % 50 == 0: time.sleep(0.05)\n")


async def read_ws(ws: Any) -> tuple[bytes, list[dict[str, Any]]]:
    data, events = [], []
    last_end = 0
    while True:
        msg = await ws.read_message()
        if msg is None:
            ws.close()
            return b"".join(data), events
        if isinstance(msg, bytes):
            header, _, body = msg.partition(b"\n")
            meta = json.loads(header)
            if data:  # frames are contiguous byte ranges
                assert meta["offset"] == last_end, (meta, last_end)
            last_end = meta["offset"] + len(body)
            data.append(body)
        else:
            events.append(json.loads(msg))


async def full_log(api: Any, job_id: str) -> bytes:
    out, offset = [], 0
    while True:
        _, page = await api("GET", "jobs", job_id, "logs", params={"encoding": "base64", "offset": offset})
        if not page["chunks"]:
            return b"".join(out)
        out += [base64.b64decode(c["data"]) for c in page["chunks"]]
        offset = page["next_offset"]


async def test_websocket_follows_live_and_resumes_from_an_offset(api, jp_ws_fetch, start_launch):
    await start_launch()
    _, job = await api("POST", "jobs", body={"spec": command_spec(SLOW_JOB)})
    ws = await jp_ws_fetch("launch", "api", "jobs", job["id"], "logs", "ws")
    data, events = await read_ws(ws)
    assert events[-1]["event"] == "end" and events[-1]["state"] == "succeeded"
    assert any(e["event"] == "state" for e in events)
    whole = await full_log(api, job["id"])
    assert data == whole and whole.decode().splitlines()[-1].startswith("line 299")
    # A dropped connection resumes at the last byte it got: no loss, no duplicates.
    cut = len(whole) // 3 + 1  # mid-character on purpose: offsets are bytes
    ws = await jp_ws_fetch("launch", "api", "jobs", job["id"], "logs", "ws", params={"offset": str(cut)})
    rest, _ = await read_ws(ws)
    assert whole[:cut] + rest == whole


async def test_sse_fallback_with_last_event_id(api, jp_fetch, start_launch):
    await start_launch()
    _, job = await api("POST", "jobs", body={"spec": command_spec(SLOW_JOB)})

    async def sse(headers: dict[str, str]) -> list[tuple[str | None, str, dict[str, Any]]]:
        buf: list[bytes] = []
        await jp_fetch("launch", "api", "jobs", job["id"], "logs", "events", headers=headers,
                       streaming_callback=buf.append, request_timeout=60)
        events = []
        for block in b"".join(buf).decode().split("\n\n"):
            if not block.strip():
                continue
            fields = dict(line.split(": ", 1) for line in block.splitlines())
            events.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
        return events

    events = await sse({})
    text = "".join(d["text"] for _, e, d in events if e == "log")
    assert events[-1][1] == "end" and events[-1][2]["state"] == "succeeded"
    whole = (await full_log(api, job["id"])).decode()
    assert text == whole
    logs = [(i, d) for i, e, d in events if e == "log"]
    resume_id, _ = logs[len(logs) // 2]
    again = await sse({"Last-Event-ID": resume_id})
    rest = "".join(d["text"] for _, e, d in again if e == "log")
    assert whole.encode()[:int(resume_id)].decode() + rest == whole


async def test_slow_follower_does_not_slow_the_job_or_others(api, jp_ws_fetch, start_launch, jp_http_port,
                                                            jp_base_url, jp_auth_header):
    await start_launch()
    big = "import sys\nline = 'x' * 199 + '\\n'\nfor i in range(100_000): sys.stdout.write(line)\n"  # 20 MB
    _, job = await api("POST", "jobs", body={"spec": command_spec(big)})
    # A follower that completes the handshake and then never reads.
    stalled = socket.create_connection(("127.0.0.1", jp_http_port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    path = f"{jp_base_url}launch/api/jobs/{job['id']}/logs/ws"
    stalled.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{jp_http_port}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     f"Sec-WebSocket-Version: 13\r\nAuthorization: {jp_auth_header['Authorization']}\r\n\r\n").encode())
    t0 = time.monotonic()
    ws = await jp_ws_fetch("launch", "api", "jobs", job["id"], "logs", "ws", max_message_size=64 * 1024 * 1024)
    data, events = await read_ws(ws)
    elapsed = time.monotonic() - t0
    assert len(data) == 20_000_000 and events[-1]["state"] == "succeeded", (events[-1], events[0], len(data))
    assert elapsed < 30
    done = await wait_done(api, job["id"])
    assert done["state"] == "succeeded"
    stalled.close()




async def test_overload_answers_429_with_retry_after(api, launch_app):
    launch_app.max_inflight_requests = 0
    status, err = await api("GET", "queues")
    assert status == 429 and "retry" in err["message"]
    launch_app.max_inflight_requests = 256
    status, _ = await api("GET", "queues")
    assert status == 200


async def test_429_carries_retry_after_header(jp_fetch, launch_app):
    from tornado.httpclient import HTTPClientError

    launch_app.max_inflight_requests = 0
    try:
        await jp_fetch("launch", "api", "jobs", method="POST", body=json.dumps({"spec": command_spec("1")}))
    except HTTPClientError as exc:
        assert exc.code == 429 and exc.response.headers["Retry-After"] == "1"
    else:
        raise AssertionError("expected 429")
    launch_app.max_inflight_requests = 256
    assert await asyncio.to_thread(launch_app.store.count_jobs) == 0  # refused means nothing was enqueued


async def test_a_large_write_reaches_every_follower_in_bounded_frames(api, jp_ws_fetch, start_launch):
    """A follower's own memory is one frame: a 256 KiB chunk of the store goes out as several contiguous frames of at
    most FRAME_BYTES, the same bytes to each follower."""
    from jupyter_launch.server.ws import FRAME_BYTES

    await start_launch()
    code = "import sys\nsys.stdout.buffer.write(bytes(range(256)) * 4096)\nsys.stdout.flush()\n"  # 1 MiB at once
    _, job = await api("POST", "jobs", body={"spec": command_spec(code)})
    sockets = [await jp_ws_fetch("launch", "api", "jobs", job["id"], "logs", "ws") for _ in range(3)]
    sizes: list[list[int]] = [[] for _ in sockets]

    async def read(ws: Any, seen: list[int]) -> bytes:
        data = []
        while (msg := await ws.read_message()) is not None:
            if isinstance(msg, bytes):
                header, _, body = msg.partition(b"\n")
                assert json.loads(header)["offset"] == sum(seen)  # contiguous
                seen.append(len(body))
                data.append(body)
        ws.close()
        return b"".join(data)

    logs = await asyncio.gather(*(read(ws, seen) for ws, seen in zip(sockets, sizes)))
    assert logs == [bytes(range(256)) * 4096] * 3
    assert all(max(seen) <= FRAME_BYTES for seen in sizes) and all(len(seen) >= 16 for seen in sizes)
