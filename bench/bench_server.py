"""Figures for the server extension, printed as a table: log throughput to a WebSocket follower vs a plain pipe,
first-line latency, 1,000 concurrent submits, idle RSS with and without the extension, remote-agent claim latency.

    PYTHONPATH=. .venv/bin/python bench/bench_server.py [--mb 200] [--submits 1000]

Each figure runs against a real ``jupyter server`` started here on a temporary launch home.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *, extension: bool = True, agent_queues: str = "default", extra: list[str] | None = None):
        self.home = Path(tempfile.mkdtemp(prefix="launch-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        exts = "{'jupyter_launch': %s, 'jupyter_server_terminals': False}" % extension
        env = dict(os.environ, JUPYTER_LAUNCH_HOME=str(self.home), PYTHONPATH=str(ROOT), JUPYTER_CONFIG_DIR=str(self.home / "cfg"),
                   JUPYTER_RUNTIME_DIR=str(self.home / "rt"))
        args = [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root", f"--port={self.port}",
                f"--IdentityProvider.token={TOKEN}", f"--ServerApp.jpserver_extensions={exts}",
                f"--ServerApp.root_dir={self.home}", f"--LaunchApp.agent_queues={agent_queues}",
                "--Agent.wake_socket=False", "--LaunchApp.max_inflight_requests=256", *(extra or [])]
        self.log_path = self.home / "server.log"
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "wb"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"server did not start:\n{self.log_path.read_text()}")
        time.sleep(0.5)

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 1e6

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def call(method: str, url: str, body: Any = None, token: str = TOKEN) -> tuple[int, Any, dict[str, str]]:
    client = AsyncHTTPClient()
    req = HTTPRequest(url, method=method, body=None if body is None else json.dumps(body),
                      headers={"Authorization": f"token {token}"}, request_timeout=120)
    try:
        r = await client.fetch(req)
    except HTTPClientError as exc:
        r = exc.response
        if r is None:
            raise
    data = json.loads(r.body) if r.body and r.headers.get("Content-Type", "").startswith("application/json") else r.body
    return r.code, data, dict(r.headers)


def spec(code: str) -> dict[str, Any]:
    return {"kind": "command", "command": [sys.executable, "-c", code]}


async def follow_ws(server: Server, job_id: str, on_frame: Any = None) -> int:
    ws = await websocket_connect(HTTPRequest(f"ws://127.0.0.1:{server.port}/launch/api/jobs/{job_id}/logs/ws",
                                             headers={"Authorization": f"token {TOKEN}"}),
                                 max_message_size=64 * 1024 * 1024)
    total = 0
    while (msg := await ws.read_message()) is not None:
        if isinstance(msg, bytes):
            body = msg.partition(b"\n")[2]
            total += len(body)
            if on_frame:
                on_frame(body)
    ws.close()
    return total


def emitter(mb: int) -> str:
    return (f"import sys\nline = b'x' * 199 + b'\\n'\nblock = line * 5000\nout = sys.stdout.buffer\n"
            f"for _ in range({mb} * 1_000_000 // len(block)): out.write(block)\nout.flush()\n")


async def bench_throughput(server: Server, mb: int) -> tuple[float, float]:
    code = emitter(mb)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    got = 0
    while block := proc.stdout.read(1 << 20):  # type: ignore[union-attr]
        got += len(block)
    proc.wait()
    pipe = got / (time.perf_counter() - t0) / 1e6
    _, job, _ = await call("POST", f"{server.url}launch/api/jobs", {"spec": spec(code)})
    t0 = time.perf_counter()
    total = await follow_ws(server, job["id"])
    ws = total / (time.perf_counter() - t0) / 1e6
    assert total == got, (total, got)
    return pipe, ws


PRINTER = "import sys\nw = sys.stdout.write\nfor i in range({n}):\n    w(f'line {{i}}\\n')\n"


async def bench_line_throughput(server: Server, lines: int) -> tuple[float, float]:
    """A job printing lines, as jobs do: lines/s from the first line seen to the last, at a WebSocket follower and
    through a plain pipe from the same program."""
    code = PRINTER.format(n=lines)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    first = None
    got = b""
    while block := proc.stdout.read1(1 << 20):  # type: ignore[union-attr]
        first = first or time.perf_counter()
        got += block
    last = time.perf_counter()
    proc.wait()
    pipe = lines / (last - first)
    _, job, _ = await call("POST", f"{server.url}launch/api/jobs", {"spec": spec(code)})
    seen: list[float] = []
    body = bytearray()

    def on_frame(frame: bytes) -> None:
        seen.append(time.perf_counter())
        body.extend(frame)

    await follow_ws(server, job["id"], on_frame)
    assert bytes(body) == got, (len(body), len(got))
    return pipe, lines / (seen[-1] - seen[0])


async def bench_first_line(server: Server, n: int = 40) -> list[float]:
    code = ("import time, sys\n"
            f"for i in range({n}):\n"
            "    time.sleep(0.1)\n"
            "    sys.stdout.write(f'{time.time()!r}\\n'); sys.stdout.flush()\n")
    _, job, _ = await call("POST", f"{server.url}launch/api/jobs", {"spec": spec(code)})
    lat: list[float] = []
    buf = b""

    def on_frame(body: bytes) -> None:
        nonlocal buf
        now = time.time()
        buf += body
        *lines, buf = buf.split(b"\n")
        lat.extend((now - float(x)) * 1000 for x in lines if x)

    await follow_ws(server, job["id"], on_frame)
    return lat


async def bench_submits(server: Server, n: int) -> dict[str, Any]:
    AsyncHTTPClient.configure(None, max_clients=n)
    url = f"{server.url}launch/api/jobs"

    async def one() -> tuple[int, float]:
        t0 = time.perf_counter()
        try:
            code, _, _ = await call("POST", url, {"queue": "held", "spec": spec("pass")})
        except OSError:
            code = 0  # refused at TCP: the listen backlog (tornado's 128) overflowed; nothing was accepted
        return code, (time.perf_counter() - t0) * 1000

    results = await asyncio.gather(*(one() for _ in range(n)))
    codes = [c for c, _ in results]
    lats = sorted(ms for _, ms in results)
    _, page, _ = await call("GET", f"{server.url}launch/api/jobs?queue=held&limit=500")
    counted = len(page["jobs"])
    before = page["next_before"]
    while before:
        _, page, _ = await call("GET", f"{server.url}launch/api/jobs?queue=held&limit=500&before={before}")
        counted += len(page["jobs"])
        before = page["next_before"]
    return {"accepted": codes.count(201), "429": codes.count(429), "reset": codes.count(0),
            "other": n - codes.count(201) - codes.count(429) - codes.count(0),
            "stored": counted, "p50": lats[len(lats) // 2], "p99": lats[int(len(lats) * 0.99) - 1]}


def bench_claim_latency(server: Server, n: int = 20) -> list[float]:
    sys.path.insert(0, str(ROOT))
    from jupyter_launch.remote.store import HttpStore
    from jupyter_launch.store import SQLStore

    store = SQLStore(f"sqlite:///{server.home / 'launch.db'}")
    token, _ = store.create_agent_token("bench", ["remote"])
    http = HttpStore(server.url, agent_token=token, claim_wait=10)
    http.register_agent("bench-agent", ["remote"], [], host="bench")
    lat = []
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        for _ in range(n):
            fut = pool.submit(http.claim_next_job, "bench-agent", ["remote"])
            time.sleep(0.2)  # the long poll is waiting
            t0 = time.perf_counter()
            asyncio.run(call("POST", f"{server.url}launch/api/jobs", {"queue": "remote", "spec": spec("pass")}))
            claim = fut.result(30)
            lat.append((time.perf_counter() - t0) * 1000)
            assert claim is not None
    http.close()
    store.close()
    return lat


def note(text: str) -> None:
    print(f"... {text}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--submits", type=int, default=1000)
    args = ap.parse_args()
    rows: list[tuple[str, str, str]] = []

    bare = Server(extension=False)
    time.sleep(2)
    rss_bare = bare.rss_mb()
    bare.stop()
    server = Server()
    try:
        time.sleep(2)
        rss_ext = server.rss_mb()
        rows.append(("idle RSS, extension vs without", f"{rss_ext:.0f} MB vs {rss_bare:.0f} MB "
                     f"(+{rss_ext - rss_bare:.0f} MB)", "<= +15 MB"))
        note("throughput")
        pipe_lines, ws_lines = asyncio.run(bench_line_throughput(server, args.lines))
        pipe, ws = asyncio.run(bench_throughput(server, args.mb))
        rows.append((f"log throughput, {args.lines:,} printed lines", f"WebSocket {ws_lines / 1000:.0f}k lines/s vs "
                     f"pipe {pipe_lines / 1000:.0f}k lines/s ({ws_lines / pipe_lines:.2f}x)", ">= 0.8x"))
        rows.append((f"log throughput, {args.mb} MB in 1 MB writes", f"WebSocket {ws:.0f} MB/s vs pipe {pipe:.0f} "
                     f"MB/s ({ws / pipe:.2f}x)", ">= 0.5x; every byte stored, then sent"))
        note("latency")
        lat = asyncio.run(bench_first_line(server))
        rows.append(("log line latency (print -> follower)", f"p50 {statistics.median(lat):.1f} ms, "
                     f"max {max(lat):.1f} ms", "p50 <= 50 ms"))
        asyncio.run(call("POST", f"{server.url}launch/api/queues", {"queue_name": "held"}))
        asyncio.run(call("POST", f"{server.url}launch/api/queues", {"queue_name": "remote"}))
        note("submits")
        sub = asyncio.run(bench_submits(server, args.submits))
        rows.append((f"{args.submits} concurrent submits",
                     f"{sub['accepted']} accepted, {sub['429']} x 429, {sub['reset']} TCP resets, {sub['other']} other; "
                     f"{sub['stored']} stored; "
                     f"p50 {sub['p50']:.0f} ms, p99 {sub['p99']:.0f} ms", "none lost"))
        note("claims")
        claim = bench_claim_latency(server)
        rows.append(("remote claim latency (submit -> claim)", f"p50 {statistics.median(claim):.1f} ms, "
                     f"max {max(claim):.1f} ms", "<= 100 ms"))
    finally:
        server.stop()
    width = max(len(r[0]) for r in rows)
    print(f"{'figure'.ljust(width)}  result  (goal)")
    for name, value, goal in rows:
        print(f"{name.ljust(width)}  {value}  ({goal})")


if __name__ == "__main__":
    main()
