"""Load: 1,000 concurrent submits against a server with a small in-flight limit (each is accepted or refused with
429 + Retry-After; nothing is lost or doubled), and 100 live WebSocket followers of one job printing 200,000 lines
(every follower gets every line in order, a slow follower holds back no one), then of one printing a log five times
longer: the server's memory follows the number of followers, not the log's size."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from launch_server import LaunchServer

from .conftest import list_job_ids, record_figure, rss_kib

SUBMITS = 1000
INFLIGHT = 64
FOLLOWERS = 100
LINES = 200_000  # `print(i)` for each: ~1.3 MB of log
LONG_LINES = 1_000_000  # a second, ~6.9 MB log: memory must not follow the log's size
# Peak growth of the server's RSS while 100 followers read both logs. Measured on a busy 2-core box: before followers
# shared pages, +50..85 MiB on the 1.3 MB log and +73..91 MiB once the 6.9 MB one was read too (each follower held its
# own 1 MiB page and a frame of up to 256 KiB). Now the followers of a job share its pages (8 kept at most) and each
# copies only the 32 KiB frame it is writing: +9..12 MiB on the 1.3 MB log, +17.6..24.3 MiB with the 6.9 MB one. A
# server that kept or buffered the log per follower would need 100 x 6.9 MB = 690 MB for the second log.
RSS_GROWTH_BOUND_MIB = 50
SLOW_READ = 4096  # the slow follower's receive buffer and read size, bytes
SLOW_PAUSE = 0.02  # seconds between its reads: at most ~200 KiB/s, so 6.5 s or more for the 1.3 MB log


def command_spec(code: str) -> dict[str, Any]:
    return {"kind": "command", "command": [sys.executable, "-c", code]}


# ------------------------------------------------------------------ 1,000 concurrent submits


@dataclass
class Answer:
    code: int  # 0: no HTTP answer at all (connection error, timeout)
    retry_after: str | None
    job_id: str | None
    ms: float
    error: str = ""


async def submit(client: AsyncHTTPClient, server: LaunchServer) -> Answer:
    body = json.dumps({"queue": "default", "spec": command_spec("pass")})
    req = HTTPRequest(f"{server.url}/launch/api/jobs", method="POST", body=body,
                      headers={"Authorization": f"token {server.token}", "Content-Type": "application/json"},
                      connect_timeout=120, request_timeout=120)
    t0 = time.perf_counter()
    try:
        r = await client.fetch(req, raise_error=False)
    except Exception as exc:  # noqa: BLE001 - counted and reported: the test asserts there are none
        return Answer(0, None, None, (time.perf_counter() - t0) * 1000, repr(exc))
    ms = (time.perf_counter() - t0) * 1000
    job_id = json.loads(r.body)["id"] if r.code == 201 else None
    error = "" if r.code in (201, 429) else r.body[:300].decode(errors="replace")
    return Answer(r.code, r.headers.get("Retry-After"), job_id, ms, error)


async def submit_all(server: LaunchServer, n: int) -> list[Answer]:
    client = AsyncHTTPClient(force_instance=True, max_clients=n)
    try:
        return await asyncio.gather(*(submit(client, server) for _ in range(n)))
    finally:
        client.close()


async def retry_until_accepted(server: LaunchServer, refused: list[Answer], deadline: float) -> list[list[Answer]]:
    """Each refused client waits its Retry-After, submits again, and so on until accepted; all at once."""
    client = AsyncHTTPClient(force_instance=True, max_clients=max(1, len(refused)))

    async def one(first: Answer) -> list[Answer]:
        attempts = [first]
        while attempts[-1].code == 429:
            assert time.monotonic() < deadline, f"still refused after {len(attempts)} attempts"
            await asyncio.sleep(float(attempts[-1].retry_after))
            attempts.append(await submit(client, server))
        return attempts

    try:
        return await asyncio.gather(*(one(a) for a in refused))
    finally:
        client.close()


def test_1000_concurrent_submits_are_accepted_or_refused_and_none_is_lost(make_server):
    server = make_server(agent_queues=[], extra_config=f"c.LaunchApp.max_inflight_requests = {INFLIGHT}\n")
    # No agent serves 'default' here: every accepted job stays queued, so the store's count is the submit count.
    answers = asyncio.run(submit_all(server, SUBMITS))

    odd = [(a.code, a.error) for a in answers if a.code not in (201, 429)]
    assert not odd, f"{len(odd)} submits were neither accepted nor refused: {odd[:10]}\n{server.log_tail(30)}"
    accepted = [a for a in answers if a.code == 201]
    refused = [a for a in answers if a.code == 429]
    assert refused, f"no submit was refused with max_inflight_requests={INFLIGHT}; the 429 path went untested"
    assert all(a.retry_after is not None and a.retry_after.isdigit() for a in refused), \
        {a.retry_after for a in refused}
    # Every 201 is in the store once, and a 429 stored nothing.
    stored = list_job_ids(server, "default")
    stored_ids = [i for i, _ in stored]
    assert len(stored_ids) == len(set(stored_ids)) == len(accepted), (len(stored_ids), len(accepted))
    assert set(stored_ids) == {a.job_id for a in accepted}

    lat = sorted(a.ms for a in answers)
    record_figure("submits_1000_concurrent", submits=SUBMITS, max_inflight_requests=INFLIGHT,
                  accepted_first_try=len(accepted), refused_429=len(refused),
                  p50_ms=round(statistics.median(lat)), p99_ms=round(lat[int(len(lat) * 0.99) - 1]))

    retried = asyncio.run(retry_until_accepted(server, refused, time.monotonic() + 120))
    odd = [(a.code, a.error) for attempts in retried for a in attempts if a.code not in (201, 429)]
    assert not odd, f"retries got answers other than 201/429: {odd[:10]}"
    final_ids = [a.job_id for a in accepted] + [attempts[-1].job_id for attempts in retried]
    stored = list_job_ids(server, "default")
    assert len(stored) == SUBMITS and {i for i, _ in stored} == set(final_ids) and len(set(final_ids)) == SUBMITS
    assert {s for _, s in stored} == {"queued"}
    record_figure("submits_1000_retried", refused_then_accepted=len(retried),
                  most_attempts=max((len(a) for a in retried), default=1))


# ------------------------------------------------------------------ 100 followers of 200,000 lines


def numbered_lines(n: int) -> bytes:
    """What ``for i in range(n): print(i)`` writes."""
    return "".join(f"{i}\n" for i in range(n)).encode()


def printer_job(lines: int, go: Path) -> dict[str, Any]:
    """A job that waits for ``go`` to exist, so that every follower is attached while the log is written (they
    follow it live, not from the store afterwards), then prints ``lines`` numbered lines."""
    return command_spec(f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
                        f"for i in range({lines}): print(i)\n")


class LogCheck:
    """One follower's view of a log, checked frame by frame against the expected bytes (nothing is kept): each frame
    must start where the previous one ended and carry exactly the expected bytes there."""

    def __init__(self, who: str, expected: bytes):
        self.who, self.expected = who, memoryview(expected)
        self.received = 0
        self.events: list[dict[str, Any]] = []
        self.done_at = 0.0  # time.time() when the stream ended

    def frame(self, message: bytes | str) -> None:
        if isinstance(message, str):
            self.events.append(json.loads(message))
            return
        header, _, body = message.partition(b"\n")
        offset = json.loads(header)["offset"]
        assert offset == self.received, f"{self.who}: a frame at byte {offset}, expected {self.received}"
        assert self.expected[offset:offset + len(body)] == body, (
            f"{self.who}: the {len(body)} bytes at {offset} are not the numbered lines: {bytes(body[:60])!r}")
        self.received += len(body)

    def end(self) -> None:
        self.done_at = time.time()
        assert self.received == len(self.expected), (
            f"{self.who}: the stream ended after {self.received} of {len(self.expected)} bytes")
        assert self.events and self.events[-1]["event"] == "end" and self.events[-1]["state"] == "succeeded", (
            f"{self.who}: {self.events[-3:]}")


async def connect_follower(server: LaunchServer, job_id: str) -> Any:
    req = HTTPRequest(f"ws://127.0.0.1:{server.port}/launch/api/jobs/{job_id}/logs/ws",
                      headers={"Authorization": f"token {server.token}"}, connect_timeout=60, request_timeout=60)
    return await websocket_connect(req)


async def read_follower(ws: Any, check: LogCheck) -> LogCheck:
    try:
        while (message := await ws.read_message()) is not None:
            check.frame(message)
    finally:
        ws.close()
    check.end()
    return check


class SlowFollower(threading.Thread):
    """A WebSocket follower on a raw socket with a 4 KiB receive buffer that reads 4 KiB at a time and pauses between
    reads. The small buffer means the kernel cannot soak up the log for it: the server really waits on this reader."""

    def __init__(self, server: LaunchServer, job_id: str, check: LogCheck):
        super().__init__(name="slow-follower", daemon=True)
        self.server, self.job_id, self.check = server, job_id, check
        self.error: BaseException | None = None
        self.connected = threading.Event()
        self._sock = socket.socket()
        self._buf = b""

    def _take(self, n: int) -> bytes:
        while len(self._buf) < n:
            block = self._sock.recv(SLOW_READ)
            if not block:
                raise ConnectionError("the server closed the connection mid-frame")
            self._buf += block
            time.sleep(SLOW_PAUSE)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _frame(self) -> tuple[int, bytes]:
        b0, b1 = self._take(2)
        assert b0 & 0x80 and not b1 & 0x80, "expected whole, unmasked frames from the server"
        n = b1 & 0x7F
        if n >= 126:
            n = int.from_bytes(self._take(2 if n == 126 else 8), "big")
        return b0 & 0x0F, self._take(n)

    def run(self) -> None:
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_READ)
            self._sock.settimeout(120)
            self._sock.connect(("127.0.0.1", self.server.port))
            self._sock.sendall(
                f"GET /launch/api/jobs/{self.job_id}/logs/ws HTTP/1.1\r\nHost: 127.0.0.1:{self.server.port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: token {self.server.token}\r\n\r\n".encode())
            while b"\r\n\r\n" not in self._buf:
                self._buf += self._sock.recv(SLOW_READ)
            head, _, self._buf = self._buf.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            self.connected.set()
            while True:
                opcode, payload = self._frame()
                if opcode == 8:
                    self._sock.sendall(b"\x88\x80\x00\x00\x00\x00")  # a masked, empty close frame in reply
                    break
                if opcode in (1, 2):
                    self.check.frame(payload.decode() if opcode == 1 else payload)
            self.check.end()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            self.error = exc
            self.connected.set()
        finally:
            self._sock.close()


class RssSampler(threading.Thread):
    """Samples a process's RSS every 50 ms until stopped; keeps the peak."""

    def __init__(self, pid: int):
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.peak_kib = rss_kib(pid)
        self._stop_sampling = threading.Event()

    def run(self) -> None:
        while not self._stop_sampling.wait(0.05):
            self.peak_kib = max(self.peak_kib, rss_kib(self.pid))

    def stop(self) -> int:
        self._stop_sampling.set()
        self.join()
        return self.peak_kib


async def follow_live(server: LaunchServer, job_id: str, go: Path, checks: list[LogCheck],
                      slow: SlowFollower | None = None) -> tuple[float, int]:
    """Attach a follower per check (and the slow one), start the job, read to the end. Returns when the job was
    started and how far the slow follower had read once all the others were done."""
    sockets = await asyncio.gather(*(connect_follower(server, job_id) for _ in checks))
    if slow is not None:
        slow.start()
        assert await asyncio.to_thread(slow.connected.wait, 60), "the slow follower did not connect"
    go_at = time.time()
    go.touch()
    await asyncio.gather(*(read_follower(ws, check) for ws, check in zip(sockets, checks)))
    return go_at, slow.check.received if slow is not None else 0


def test_100_followers_get_every_line_in_order_and_server_memory_stays_bounded(make_server, tmp_path: Path):
    server = make_server(agent_queues=["default"])
    expected, long_expected = numbered_lines(LINES), numbered_lines(LONG_LINES)
    jobs = []
    for name, lines in (("go", LINES), ("go-long", LONG_LINES)):
        status, job = server.api("POST", "jobs", {"queue": "default", "spec": printer_job(lines, tmp_path / name)})
        assert status == 201, job
        jobs.append(job["id"])
    pid = server.process.pid
    time.sleep(1)  # let the server settle after the submits and the agent's claims
    rss_before = rss_kib(pid)
    sampler = RssSampler(pid)
    sampler.start()
    try:
        # 99 fast followers and a slow one on the 200,000 lines.
        fast = [LogCheck(f"follower {i}", expected) for i in range(FOLLOWERS - 1)]
        slow = SlowFollower(server, jobs[0], LogCheck("the slow follower", expected))
        go_at, slow_received_when_fast_done = asyncio.run(follow_live(server, jobs[0], tmp_path / "go", fast, slow))
        slow.join(120)
        assert not slow.is_alive(), f"the slow follower is still reading after 120 s ({slow.check.received} bytes)"
        if slow.error is not None:
            raise slow.error
        peak_short = sampler.peak_kib
        # 100 followers on a log five times longer: the server's memory must not follow the log's size.
        long_checks = [LogCheck(f"long-log follower {i}", long_expected) for i in range(FOLLOWERS)]
        long_go_at, _ = asyncio.run(follow_live(server, jobs[1], tmp_path / "go-long", long_checks))
        long_done_s = max(c.done_at for c in long_checks) - long_go_at
    finally:
        peak = sampler.stop()

    status, done = server.api("GET", f"jobs/{jobs[0]}")
    assert status == 200 and done["state"] == "succeeded", done
    job_s = done["finished_at"] - go_at
    fast_done_s = max(c.done_at for c in fast) - go_at
    slow_done_s = slow.check.done_at - go_at
    record_figure("log_followers_100", followers=FOLLOWERS, lines=LINES, log_bytes=len(expected),
                  job_s=round(job_s, 2), fast_followers_done_s=round(fast_done_s, 2),
                  slow_follower_done_s=round(slow_done_s, 2),
                  slow_follower_bytes_when_fast_done=slow_received_when_fast_done,
                  rss_before_mib=round(rss_before / 1024, 1), rss_peak_mib=round(peak_short / 1024, 1))
    record_figure("log_followers_100_long_log", followers=FOLLOWERS, lines=LONG_LINES, log_bytes=len(long_expected),
                  followers_done_s=round(long_done_s, 2), rss_before_mib=round(rss_before / 1024, 1),
                  rss_peak_mib=round(peak / 1024, 1), rss_growth_mib=round((peak - rss_before) / 1024, 1))
    # A slow follower slows neither the job nor the others: both are done while it is still reading.
    assert job_s < 60, f"the job took {job_s:.1f} s to print {LINES} lines"
    assert done["finished_at"] < slow.check.done_at
    assert slow_received_when_fast_done < len(expected), (
        f"the fast followers finished {fast_done_s:.1f} s after the go, the slow one {slow_done_s:.1f} s: "
        f"the fast ones were held back to the slow one's pace")
    growth_mib = (peak - rss_before) / 1024
    assert growth_mib < RSS_GROWTH_BOUND_MIB, (
        f"the server grew by {growth_mib:.0f} MiB ({rss_before // 1024} -> {peak // 1024} MiB) serving "
        f"{FOLLOWERS} followers a {len(long_expected) / 1e6:.1f} MB log")
