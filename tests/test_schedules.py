"""Schedules and priorities: the cron parser; the scheduler on a real SQLite store with an injected clock (one job per
time however many schedulers run, missed times, pauses); real agents firing a real notebook; the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from jupyter_launch.client import LaunchClient
from jupyter_launch.cron import Cron, CronError
from jupyter_launch.scheduler import LEASE_NAME, Scheduler
from jupyter_launch.service import LaunchService
from jupyter_launch.spec import JobSpec, QueueConfig
from jupyter_launch.store import BlobStore, SQLStore

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
DAY = 86400


def ts(text: str, tz: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def local(t: float, tz: str = "UTC") -> str:
    return datetime.fromtimestamp(t, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %a")


# ------------------------------------------------------------------ cron

def test_cron_reads_ranges_steps_lists_names_and_macros():
    start = ts("2027-01-01 00:00")  # a Friday
    assert [local(t) for t in Cron("*/20 9-10 * * *").next_times(start, 4)] == [
        "2027-01-01 09:00 Fri", "2027-01-01 09:20 Fri", "2027-01-01 09:40 Fri", "2027-01-01 10:00 Fri"]
    assert [local(t) for t in Cron("5,35 6 * jan-feb MON-wed").next_times(start, 3)] == [
        "2027-01-04 06:05 Mon", "2027-01-04 06:35 Mon", "2027-01-05 06:05 Tue"]
    assert [local(t) for t in Cron("0 0 * * 7").next_times(start, 2)] == [  # 7 is Sunday, as 0
        "2027-01-03 00:00 Sun", "2027-01-10 00:00 Sun"]
    assert [local(t) for t in Cron("10-50/20 0 1 */6 *").next_times(start, 4)] == [
        "2027-01-01 00:10 Fri", "2027-01-01 00:30 Fri", "2027-01-01 00:50 Fri", "2027-07-01 00:10 Thu"]
    assert local(Cron("@monthly").next_after(start)) == "2027-02-01 00:00 Mon"
    assert local(Cron("@hourly").next_after(start + 1)) == "2027-01-01 01:00 Fri"
    assert local(Cron("0 0 29 2 *").next_after(start)) == "2028-02-29 00:00 Tue"


def test_cron_matches_either_day_field_when_both_are_restricted():
    start = ts("2027-01-01 00:00")
    days = [local(t) for t in Cron("0 12 13 * fri").next_times(start, 4)]
    assert days == ["2027-01-01 12:00 Fri", "2027-01-08 12:00 Fri", "2027-01-13 12:00 Wed", "2027-01-15 12:00 Fri"]


def test_cron_in_a_time_zone_across_daylight_saving_changes():
    berlin = "Europe/Berlin"
    # Spring forward (2027-03-28, 02:00 -> 03:00): 02:30 does not exist that day and does not fire.
    times = Cron("30 2 * * *").next_times(ts("2027-03-26 12:00", berlin), 3, berlin)
    assert [local(t, berlin) for t in times] == ["2027-03-27 02:30 Sat", "2027-03-29 02:30 Mon",
                                                 "2027-03-30 02:30 Tue"]
    # Fall back (2027-10-31, 03:00 -> 02:00): 02:30 happens twice and fires once.
    times = Cron("30 2 * * *").next_times(ts("2027-10-30 12:00", berlin), 2, berlin)
    assert [local(t, berlin) for t in times] == ["2027-10-31 02:30 Sun", "2027-11-01 02:30 Mon"]
    assert times[1] - times[0] == DAY + 3600
    # 06:00 in Berlin is 05:00 UTC in winter, 04:00 UTC in summer.
    assert local(Cron("0 6 * * *").next_after(ts("2027-01-10 00:00"), berlin)) == "2027-01-10 05:00 Sun"
    assert local(Cron("0 6 * * *").next_after(ts("2027-07-10 00:00"), berlin)) == "2027-07-10 04:00 Sat"


@pytest.mark.parametrize("expression, message", [
    ("* * * *", "cron: '* * * *' has 4 field(s)"), ("60 * * * *", "cron: minute: 60 is out of range (0-59)"),
    ("* * 0 * *", "cron: day of month: 0 is out of range (1-31)"), ("* * * 13 *", "cron: month: 13 is out of range"),
    ("1,,2 * * * *", "cron: minute: an empty item"), ("*/x * * * *", "cron: minute: the step 'x'"),
    ("* 5-2 * * *", "cron: hour: the range '5-2' runs backwards"),
    ("* * * * sun-funday", "cron: day of week: 'funday'"),
])
def test_a_bad_expression_is_one_line_naming_the_field(expression, message):
    with pytest.raises(CronError) as err:
        Cron(expression)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


# ------------------------------------------------------------------ the scheduler, with a clock of the test's

class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLStore]:
    s = SQLStore(f"sqlite:///{tmp_path / 'launch.db'}")
    s.create_queue(QueueConfig(queue_name="q"))
    yield s
    s.close()


def scheduler_on(tmp_path: Path, clock: Clock, holder: str, **traits: Any) -> Scheduler:
    """A scheduler with a store of its own on the test's database file, as another process would have."""
    store = SQLStore(f"sqlite:///{tmp_path / 'launch.db'}")
    service = LaunchService(store, BlobStore(tmp_path / "blobs"), home=tmp_path)
    return Scheduler(service=service, clock=clock, holder=holder, **traits)


def close(*schedulers: Scheduler) -> None:
    for s in schedulers:
        s.service.close()
        s.store.close()


def command() -> JobSpec:
    return JobSpec(kind="command", command=["true"])


def test_each_time_queues_one_job_named_after_its_schedule_with_the_artifact_packaged_at_create(tmp_path, launch_home):
    client = LaunchClient()
    prepared = client.prepare(NOTEBOOKS / "trivial.ipynb", parameters={"a": 2})
    schedule, artifact = client.create_schedule(prepared, queue="default", cron="*/2 * * * *", name="every-other")
    assert schedule.artifact == artifact.digest and client.blobs.has(artifact.digest)
    clock = Clock(schedule.next_run_at - 30)
    scheduler = Scheduler(service=client.service, clock=clock)
    fired = []
    for _ in range(6 * 60 // 5):  # six minutes, a tick every 5 seconds
        fired += scheduler.tick()
        clock.now += 5
    assert len(fired) == 3
    assert [j.submitted_at > 0 for j in fired] == [True] * 3
    assert {(j.name, j.artifact, j.schedule_id, j.queue, j.kind) for j in fired} == {
        ("every-other", artifact.digest, schedule.id, "default", "notebook")}
    assert fired[0].spec["parameters"] == {"a": 2}
    runs = client.schedule_runs(schedule.id)
    assert [j.id for j in runs] == [j.id for j in reversed(fired)]
    after = client.schedule(schedule.id)
    assert after.last_run_at is not None and after.next_run_at == schedule.next_run_at + 3 * 120
    client.close()


def test_two_schedulers_on_one_store_queue_each_time_once_and_the_second_takes_over_when_the_first_stops(
        tmp_path, store):
    schedule = store.create_schedule("q", command(), cron="* * * * *", artifact=None, name="minutely")
    clock = Clock(schedule.next_run_at - 1)
    a, b = scheduler_on(tmp_path, clock, "a"), scheduler_on(tmp_path, clock, "b")
    by: dict[str, int] = {"a": 0, "b": 0}
    for step in range(30 * 4):  # thirty minutes, both ticking every 15 seconds, in turn
        for s in (a, b) if step % 2 else (b, a):
            by[s.holder] += len(s.tick())
        clock.now += 15
    assert by["a"] + by["b"] == 30 and 0 in by.values()  # one of them holds the lease and fires every time
    holder, other = (a, b) if by["a"] else (b, a)
    # Both believing they hold the lease (a holder stalled past its lease, say): each time still fires once.
    other.holds, other._checked_at = True, clock.now
    for _ in range(4 * 4):
        barrier = threading.Barrier(2)
        results: list[int] = []

        def tick(s: Scheduler) -> None:
            barrier.wait()
            results.append(len(s.tick()))

        threads = [threading.Thread(target=tick, args=(s,)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        clock.now += 15
        other.holds, other._checked_at = True, clock.now
    assert len(store.list_jobs(schedule_id=schedule.id, limit=100)) == 34
    # The holder stops ticking (its process died): the other takes the lease once it lapses, and fires.
    other.holds, other._checked_at = False, None
    fired_by_other = []
    for _ in range(4 * 3):
        fired_by_other += other.tick()
        clock.now += 15
    assert len(fired_by_other) == 3
    assert len(store.list_jobs(schedule_id=schedule.id, limit=100)) == 37  # 37 minutes, 37 jobs
    last_tick = clock.now - 15
    assert store.take_lease(LEASE_NAME, holder.holder, 10, now=last_tick) is False  # the other holds it now
    close(a, b)


def test_a_stopped_scheduler_gives_the_lease_up_at_once(tmp_path, store):
    import asyncio

    clock = Clock(time.time())
    a, b = scheduler_on(tmp_path, clock, "a"), scheduler_on(tmp_path, clock, "b")
    a.tick()
    assert a.holds and not b._hold(clock.now)
    asyncio.run(a.stop())
    b._checked_at = None
    assert b._hold(clock.now)
    close(a, b)


def test_a_scheduler_stopped_before_its_first_tick_does_not_tick(tmp_path, store):
    """An agent stopped right after its start stops its scheduler before the scheduler's task has run once."""
    import asyncio

    scheduler = scheduler_on(tmp_path, Clock(time.time()), "a")

    async def start_then_stop() -> None:
        task = asyncio.create_task(scheduler.run())
        await scheduler.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(start_then_stop())
    assert not scheduler.holds
    close(scheduler)


@pytest.mark.parametrize("policy, jobs", [("once", 1), ("skip", 0)])
def test_times_missed_while_nothing_ran_fire_once_on_return_or_not_at_all(tmp_path, store, policy, jobs):
    schedule = store.create_schedule("q", command(), cron="*/10 * * * *", artifact=None, name="tenly")
    clock = Clock(schedule.next_run_at + 3 * 3600 + 5)  # everything was down for three hours: 18 times missed
    scheduler = scheduler_on(tmp_path, clock, "s", missed=policy)
    assert len(scheduler.tick()) == jobs
    after = store.get_schedule(schedule.id)
    assert clock.now < after.next_run_at <= clock.now + 600  # the next time after now, not the first missed one
    assert len(scheduler.tick()) == 0
    clock.now = after.next_run_at + 2  # on time again (within grace): fires under either policy
    assert len(scheduler.tick()) == 1
    assert len(store.list_jobs(schedule_id=schedule.id)) == jobs + 1
    close(scheduler)


def test_a_paused_schedule_does_not_fire_and_resumes_from_its_next_time(tmp_path, store):
    schedule = store.create_schedule("q", command(), cron="* * * * *", artifact=None, name="minutely")
    store.pause_schedule(schedule.id)
    clock = Clock(schedule.next_run_at + 1)
    scheduler = scheduler_on(tmp_path, clock, "s")
    for _ in range(10):
        assert scheduler.tick() == []
        clock.now += 60
    resumed = store.pause_schedule(schedule.id, False)
    clock.now = resumed.next_run_at + 1
    assert [j.schedule_id for j in scheduler.tick()] == [schedule.id]
    close(scheduler)


def test_a_schedule_whose_queue_is_gone_moves_on_and_the_others_still_fire(tmp_path, store):
    store.create_queue(QueueConfig(queue_name="gone"))
    lost = store.create_schedule("gone", command(), cron="* * * * *", artifact=None, name="lost")
    kept = store.create_schedule("q", command(), cron="* * * * *", artifact=None, name="kept")
    store.delete_queue("gone")
    clock = Clock(kept.next_run_at + 1)
    scheduler = scheduler_on(tmp_path, clock, "s")
    assert [j.name for j in scheduler.tick()] == ["kept"]
    assert store.get_schedule(lost.id).next_run_at > clock.now  # moved on: not retried every second
    close(scheduler)


# ------------------------------------------------------------------ real agents, a real notebook

def test_two_real_agents_on_one_store_run_a_notebook_schedule_once_a_minute(cli, cli_env, launch_home):
    created = cli("schedule", "create", str(NOTEBOOKS / "params.ipynb"), "--cron", "* * * * *", "--name", "minutely",
                  "-p", "count", "41", check=True)
    schedule_id = created.stdout.strip()
    agents = [subprocess.Popen([sys.executable, "-m", "jupyter_launch.cli", "agent", "--queue", "default"],
                               env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    store = SQLStore(f"sqlite:///{launch_home / 'launch.db'}")
    try:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline:
            jobs = store.list_jobs(schedule_id=schedule_id)
            if len(jobs) >= 2 and all(j.done for j in jobs):
                break
            time.sleep(0.5)
    finally:
        for agent in agents:
            agent.send_signal(signal.SIGTERM)
        for agent in agents:
            agent.communicate(timeout=60)
    jobs = store.list_jobs(schedule_id=schedule_id)
    store.close()
    assert len(jobs) >= 2, [j.state for j in jobs]
    minutes = [int(j.submitted_at // 60) for j in jobs]
    assert len(set(minutes)) == len(minutes), "two jobs queued for one minute"
    assert {(j.name, j.state) for j in jobs} == {("minutely", "succeeded")}
    log = cli("logs", jobs[-1].id, check=True).stdout
    assert "'default' 41 0.5 False" in log, log
    shown = json.loads(cli("schedule", "show", schedule_id, "--json", check=True).stdout)
    assert [r["id"] for r in shown["runs"]] == [j.id for j in jobs]
    assert len(shown["next_runs"]) == 5


# ------------------------------------------------------------------ the CLI

def test_schedule_commands_create_list_show_pause_resume_delete(cli, launch_home):
    proc = cli("schedule", "create", str(NOTEBOOKS / "trivial.ipynb"), "--cron", "0 6 * * mon-fri", "--tz",
               "Europe/Berlin", "--name", "morning", "-p", "a=3")
    assert proc.returncode == 0, proc.stderr
    schedule_id = proc.stdout.strip()
    assert "packaged" in proc.stderr and "CET" in proc.stderr and "next run" in proc.stderr
    listing = cli("schedule", "list", check=True).stdout
    assert schedule_id in listing and "morning" in listing and "0 6 * * mon-fri" in listing
    shown = cli("schedule", "show", schedule_id, check=True).stdout
    assert shown.count(" 06:00 CET") == 5 and "last runs  none yet" in shown
    data = json.loads(cli("schedule", "show", schedule_id, "--json", check=True).stdout)
    assert data["spec"]["parameters"] == {"a": 3} and data["artifact"].startswith("sha256:")
    assert all(datetime.fromtimestamp(t, ZoneInfo("Europe/Berlin")).isoweekday() <= 5 for t in data["next_runs"])
    assert "paused" in cli("schedule", "pause", schedule_id, check=True).stdout
    assert "paused" in cli("schedule", "list", check=True).stdout
    assert "resumed; next run" in cli("schedule", "resume", schedule_id, check=True).stdout
    assert "deleted" in cli("schedule", "delete", schedule_id, check=True).stdout
    gone = cli("schedule", "show", schedule_id)
    assert gone.returncode == 2 and "unknown schedule" in gone.stderr


@pytest.mark.parametrize("args, message", [
    (["--cron", "0 6 * *"], "cron: '0 6 * *' has 4 field(s)"),
    (["--cron", "0 6 * * *", "--tz", "Mars/Olympus"], "tz: 'Mars/Olympus' is not a time zone"),
    (["--cron", "0 6 * * *", "--queue", "nope"], "unknown queue 'nope'"),
])
def test_a_bad_schedule_is_one_line_with_exit_code_2_and_nothing_packaged(cli, launch_home, args, message):
    proc = cli("schedule", "create", str(NOTEBOOKS / "trivial.ipynb"), *args)
    assert proc.returncode == 2, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("jupyter launch: error:")]
    assert len(error) == 1 and message in error[0], proc.stderr
    assert not (launch_home / "blobs").exists() or not any((launch_home / "blobs").rglob("*.json"))


def test_priorities_and_move_front_decide_the_order_jobs_run_in(cli, cli_env, launch_home):
    ids = {}
    for name, priority in (("low", "-1"), ("plain", "0"), ("urgent", "5"), ("later", "0")):
        proc = cli("submit", str(NOTEBOOKS / "trivial.ipynb"), "--name", name, "--priority", priority, check=True)
        ids[name] = proc.stdout.strip()
    reason = json.loads(cli("show", ids["later"], "--json", check=True).stdout)["message"]
    assert reason.startswith("no agent is serving this queue")
    assert "; 2 job(s) ahead of it (1 at a higher priority)" in reason
    moved = cli("move", ids["later"], "--front", check=True).stdout
    assert "first on queue default (priority 6)" in moved
    agent = subprocess.Popen([sys.executable, "-m", "jupyter_launch.cli", "agent", "--queue", "default",
                              "--max-jobs", "1"], env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = SQLStore(f"sqlite:///{launch_home / 'launch.db'}")
    try:
        deadline = time.monotonic() + 180
        while not all(store.get_job(i).done for i in ids.values()):
            assert time.monotonic() < deadline, [store.get_job(i).state for i in ids.values()]
            time.sleep(0.2)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(60)
    jobs = {name: store.get_job(i) for name, i in ids.items()}
    store.close()
    assert {j.state for j in jobs.values()} == {"succeeded"}
    assert sorted(jobs, key=lambda n: jobs[n].claimed_at) == ["later", "urgent", "plain", "low"]
    refused = cli("move", ids["low"], "--front")
    assert refused.returncode == 2 and "only a queued job can be moved" in refused.stderr



def test_a_schedule_of_a_job_file_and_a_priority_from_the_python_api(cli, launch_home, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("kind: command\ncommand: [python, -c, 'print(1)']\nname: nightly-report\npriority: 2\n")
    proc = cli("schedule", "create", "--config", str(job), "--cron", "@daily", check=True)
    shown = json.loads(cli("schedule", "show", proc.stdout.strip(), "--json", check=True).stdout)
    assert (shown["name"], shown["spec"]["kind"], shown["spec"]["priority"]) == ("nightly-report", "command", 2)
    assert [datetime.fromtimestamp(t, ZoneInfo("UTC")).strftime("%H:%M") for t in shown["next_runs"]] == ["00:00"] * 5
    client = LaunchClient()
    job_handle = client.submit(NOTEBOOKS / "trivial.ipynb", priority=7)
    assert (job_handle.record.priority, job_handle.record.spec["priority"]) == (7, 7)
    client.close()


def test_an_agents_scheduler_is_configured_as_c_scheduler_and_gives_its_lease_up_when_it_stops(tmp_path, store):
    import asyncio

    from traitlets.config import Config

    from jupyter_launch.agent import make_local_agent

    config = Config({"Scheduler": {"missed": "skip", "grace": 5.0}})
    agent = make_local_agent(store, ["q"], home=tmp_path, wake_socket=False, gpus=[], config=config)

    async def run() -> tuple[Any, bool]:
        await agent.start()
        scheduler = agent.scheduler
        await asyncio.sleep(0.1)  # its first tick takes the lease
        held = store.take_lease(LEASE_NAME, "someone-else", 10) is False
        await agent.stop()
        return scheduler, held

    scheduler, held = asyncio.run(run())
    assert (scheduler.missed, scheduler.grace, scheduler.holder) == ("skip", 5.0, agent.agent_id)
    assert held and agent.scheduler is None
    assert store.take_lease(LEASE_NAME, "someone-else", 10)  # given up at the stop
