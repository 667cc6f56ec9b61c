"""What sealing a local job off from its agent costs, each figure beside a baseline measured in the same run.

    python bench/bench_jobenv.py [--quick]

(a) the per-job Python environment (``backends/job_venv``): making it (pyvenv.cfg, symlinks, the layer's .pth),
    p50 per job; describing the agent's interpreter, once per agent;
(b) a job's interpreter starting and importing jupyter_launch in its own environment vs the agent's interpreter
    itself (what the layer's .pth adds to every process of a job), p50;
(c) the time the per-job environment adds to a job: (a) + (b), goal ≤ 50 ms p50;
(d) a command job submit → completed on the local backend (with its environment) vs the same program run directly;
(e) masking a job's secrets in its log: MB/s through the agent's log path (record splitting + masking) for 200,000
    lines, with two secrets (one of three lines) vs none.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_core import print_table  # bench/ is on the path when a bench script runs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable


def p50(times: list[float]) -> float:
    return statistics.median(times)


def row(name: str, ours: float, base: float | None, unit: str, goal: str) -> list[str]:
    ratio = f"{ours / base:.2f}x" if base else "-"
    return [name, f"{ours:.1f} {unit}", f"{base:.1f} {unit}" if base is not None else "-", ratio, goal]


def bench_environment(tmp: Path, runs: int) -> list[list[str]]:
    from jupyter_launch.backends.job_venv import describe_interpreter, make_job_venv

    t0 = time.perf_counter()
    layer = describe_interpreter(PY)
    describe = time.perf_counter() - t0
    make = []
    for i in range(runs):
        t0 = time.perf_counter()
        make_job_venv(tmp / f"env-{i}", layer)
        make.append(time.perf_counter() - t0)
    code = "import jupyter_launch"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "PYTHONPATH": str(ROOT)}
    ours, base = [], []
    for i in range(runs):  # interleaved, so load on the machine falls on both alike
        t0 = time.perf_counter()
        subprocess.run([str(tmp / f"env-{i}" / "bin" / "python"), "-c", code], env=env, check=True)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        subprocess.run([PY, "-c", code], env=env, check=True)
        base.append(time.perf_counter() - t0)
    added = [m + o - b for m, o, b in zip(make, ours, base)]
    return [
        row("(a) make a job's environment, p50", p50(make) * 1000, None, "ms", ""),
        row("(a) describe the agent's interpreter (once per agent)", describe * 1000, None, "ms", ""),
        row("(b) start + import jupyter_launch: job's env vs agent's", p50(ours) * 1000, p50(base) * 1000, "ms", ""),
        row("(c) time the per-job environment adds to a job, p50", p50(added) * 1000, None, "ms", "≤ 50 ms"),
    ]


async def _run_jobs(client, submits) -> list[float]:
    from jupyter_launch.agent import make_local_agent

    agent = make_local_agent(client.store, ["default"], blobs=client.blobs)
    await agent.start()
    task = asyncio.create_task(agent.run())
    times = []
    try:
        for submit in submits:
            t0 = time.time()
            job = submit()
            while not job.refresh().done:
                await asyncio.sleep(0.005)
            assert job.record.state == "succeeded", job.logs()
            times.append(job.record.finished_at - t0)
    finally:
        await agent.stop()
        task.cancel()
    return times


def bench_command_job(tmp: Path, runs: int) -> list[list[str]]:
    from jupyter_launch.client import LaunchClient

    client = LaunchClient(home=tmp / "home")
    folder = tmp / "src"
    folder.mkdir()
    code = "print('hello')"
    times = asyncio.run(_run_jobs(client, [
        lambda: client.submit(spec={"kind": "command", "command": ["python", "-c", code]}, root=folder)] * runs))
    base = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([PY, "-c", code], check=True, capture_output=True)
        base.append(time.perf_counter() - t0)
    client.close()
    return [row("(d) command job submit→completed vs the program run directly", p50(times) * 1000,
                p50(base) * 1000, "ms", "")]


def bench_masking(lines: int) -> list[list[str]]:
    from jupyter_launch.control import RecordSplitter
    from jupyter_launch.masking import Masker

    data = "".join(f"step {i} loss {1 / (i + 1):.6f} token tok-{i % 97}\n" for i in range(lines)).encode()
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]

    def through(masker: Masker | None) -> float:
        splitter = RecordSplitter()
        stream = masker.stream() if masker else None
        t0 = time.perf_counter()
        for chunk in chunks:
            plain, _ = splitter.feed(chunk)
            if stream is not None:
                stream.feed(plain)
        return len(data) / 1e6 / (time.perf_counter() - t0)

    secrets = ["tok-" + "a1b2c3d4e5f6a7b8c9d0", "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n-----END KEY-----"]
    masked = max(through(Masker(secrets)) for _ in range(3))
    plain = max(through(None) for _ in range(3))
    return [[f"(e) log path, {lines:,} lines, two secrets masked", f"{masked:.0f} MB/s", f"{plain:.0f} MB/s", "-",
             "baseline: no secrets, chunks pass as they are"]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs = 10 if args.quick else 30
    tmp = Path(tempfile.mkdtemp(prefix="bench-jobenv-"))
    rows: list[list[str]] = []
    try:
        rows += bench_environment(tmp, runs)
        rows += bench_command_job(tmp, runs)
        rows += bench_masking(200_000)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(rows)


if __name__ == "__main__":
    main()
