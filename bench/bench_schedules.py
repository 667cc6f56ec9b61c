"""What firing schedules costs and how punctual it is, on a real SQLite store.

    python bench/bench_schedules.py [--ticks N] [--schedules N]

(a) one scheduler tick with 1,000 schedules, none due (every tick but one a minute): p50 and p95, goal ≤ 5 ms;
    beside it, the same tick on a store with no schedules;
(b) one tick with all 1,000 due at once (1,000 jobs queued in it), per schedule fired;
(c) punctuality: a real `jupyter launch agent` process on the store, a schedule `* * * * *` running a real notebook;
    for each of ``--ticks`` minutes (10 by default, so this takes about that many minutes), the time from the
    minute to its job being queued (``submitted_at``), goal ≤ 1 s for every tick.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_core import print_table  # bench/ is on the path when a bench script runs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from jupyter_launch.scheduler import Scheduler  # noqa: E402
from jupyter_launch.service import LaunchService  # noqa: E402
from jupyter_launch.spec import JobSpec, QueueConfig  # noqa: E402
from jupyter_launch.store import BlobStore, SQLStore  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def store_with(tmp: Path, name: str, count: int) -> tuple[SQLStore, LaunchService]:
    store = SQLStore(f"sqlite:///{tmp / name / 'launch.db'}")
    store.create_queue(QueueConfig(queue_name="q"))
    spec = JobSpec(kind="command", command=["true"])
    for i in range(count):
        store.create_schedule("q", spec, cron=f"{i % 60} {i % 24} * * *", tz="UTC", artifact=None, name=f"s{i}")
    return store, LaunchService(store, BlobStore(tmp / name / "blobs"), home=tmp / name)


def tick_times(scheduler: Scheduler, ticks: int) -> list[float]:
    times = []
    for _ in range(ticks):
        t0 = time.perf_counter()
        scheduler.tick()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def bench_idle_ticks(tmp: Path, count: int) -> list[list[str]]:
    rows = []
    results = {}
    for name, n in (("empty", 0), ("full", count)):
        store, service = store_with(tmp, name, n)
        # A moment with none due: just before the earliest next time.
        now = store.next_schedule_time() - 30 if n else time.time()
        scheduler = Scheduler(service=service, clock=lambda: now)
        scheduler.tick()  # takes the lease, as the holder has it on every tick but one every few seconds
        results[name] = tick_times(scheduler, 500)
        service.close()
        store.close()
    full, empty = results["full"], results["empty"]
    rows.append([f"(a) tick, {count:,} schedules, none due, p50", f"{statistics.median(full):.2f} ms",
                 f"{statistics.median(empty):.2f} ms", f"{statistics.median(full) / statistics.median(empty):.2f}x",
                 "goal <= 5 ms; baseline: no schedules"])
    rows.append([f"(a) tick, {count:,} schedules, none due, p95", f"{pct(full, 0.95):.2f} ms",
                 f"{pct(empty, 0.95):.2f} ms", "-", "goal <= 5 ms"])
    return rows


def bench_all_due(tmp: Path, count: int) -> list[list[str]]:
    store, service = store_with(tmp, "due", count)
    later = time.time() + 2 * 86400  # every schedule is due
    scheduler = Scheduler(service=service, clock=lambda: later)
    t0 = time.perf_counter()
    fired = scheduler.tick()
    elapsed = (time.perf_counter() - t0) * 1000
    assert len(fired) == count, len(fired)
    again = tick_times(scheduler, 1)[0]
    service.close()
    store.close()
    return [[f"(b) tick firing all {count:,} at once", f"{elapsed:.0f} ms", "-", "-",
             f"{elapsed / count:.2f} ms per job queued; the next tick {again:.2f} ms"]]


def bench_punctuality(tmp: Path, ticks: int) -> list[list[str]]:
    home = tmp / "agent-home"
    env = dict(os.environ, JUPYTER_LAUNCH_HOME=str(home), PYTHONPATH=str(ROOT))
    env.pop("JUPYTER_LAUNCH_STORE_URL", None)
    notebook = ROOT / "tests" / "notebooks" / "trivial.ipynb"
    cli = [sys.executable, "-m", "jupyter_launch.cli"]
    subprocess.run([*cli, "schedule", "create", str(notebook), "--cron", "* * * * *", "--name", "every-minute"],
                   env=env, check=True, capture_output=True)
    agent = subprocess.Popen([*cli, "agent", "--queue", "default"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    store = SQLStore(f"sqlite:///{home / 'launch.db'}")
    try:
        schedule = store.list_schedules()[0]
        deadline = time.time() + 60 * (ticks + 2)
        while len(store.list_jobs(schedule_id=schedule.id, limit=ticks + 5)) < ticks and time.time() < deadline:
            time.sleep(1)
        jobs = sorted(store.list_jobs(schedule_id=schedule.id, limit=ticks + 5), key=lambda j: j.submitted_at)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(60)
    lags = [j.submitted_at - (j.submitted_at // 60) * 60 for j in jobs[:ticks]]
    minutes = [int(j.submitted_at // 60) for j in jobs]
    assert len(set(minutes)) == len(minutes), "two jobs in one minute"
    deadline = time.time() + 120
    while any(not store.get_job(j.id).done for j in jobs) and time.time() < deadline:
        time.sleep(1)
    states = [store.get_job(j.id).state for j in jobs[:ticks]]
    store.close()
    return [[f"(c) minute -> job queued, {len(lags)} ticks, max", f"{max(lags) * 1000:.0f} ms", "-", "-",
             f"goal <= 1000 ms every tick; p50 {statistics.median(lags) * 1000:.0f} ms; one job per minute; "
             f"states: {', '.join(sorted(set(states)))}"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=10, help="real minutes to measure punctuality over (0: skip)")
    parser.add_argument("--schedules", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rows = bench_idle_ticks(tmp, args.schedules) + bench_all_due(tmp, args.schedules)
        if args.ticks:
            rows += bench_punctuality(tmp, args.ticks)
    print_table(rows)


if __name__ == "__main__":
    main()
