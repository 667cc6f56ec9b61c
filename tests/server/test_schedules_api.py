"""Schedules and priorities through a real Jupyter server: the server fires schedules (with or without its own
agent), a client through the server packages a schedule's notebook on its side, the panel's way (a notebook path),
move --front, and bad input answered 400 naming the field."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from jupyter_launch.remote.client import connect

from .conftest import command_spec, wait_done

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def jobs_of(api: Any, schedule_id: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        status, page = await api("GET", "jobs", params={"schedule": schedule_id})
        assert status == 200, page
        if len(page["jobs"]) >= count:
            return page["jobs"]
        assert time.monotonic() < deadline, page
        await asyncio.sleep(0.05)


async def test_the_server_fires_a_schedule_and_its_agent_runs_the_job(api, start_launch):
    app = await start_launch()
    assert app.scheduler is not None and app.agents and app.agents[0].scheduler is None  # one scheduler per server
    status, schedule = await api("POST", "schedules", body={"spec": command_spec("print('tick')"),
                                                            "cron": "*/5 * * * *", "name": "five"})
    assert status == 201, schedule
    assert len(schedule["next_runs"]) == 5 and schedule["next_runs"][0] == schedule["next_run_at"]
    app.scheduler.clock = Clock(schedule["next_run_at"] + 0.5)
    app.scheduler._checked_at = None
    [job] = await jobs_of(api, schedule["id"], 1)
    assert (job["name"], job["schedule_id"]) == ("five", schedule["id"])
    job = await wait_done(api, job["id"])
    assert job["state"] == "succeeded", job
    status, again = await api("GET", "schedules", schedule["id"])
    assert again["next_run_at"] == schedule["next_run_at"] + 300 and again["last_run_at"] is not None


@pytest.mark.parametrize("launch_config", [{"agent_queues": []}])
async def test_a_server_without_an_agent_still_fires_schedules(api, start_launch, launch_config):
    app = await start_launch()
    assert not app.agents
    status, schedule = await api("POST", "schedules", body={"spec": command_spec("pass"), "cron": "0 * * * *"})
    assert status == 201, schedule
    app.scheduler.clock = Clock(schedule["next_run_at"])
    [job] = await jobs_of(api, schedule["id"], 1)
    assert job["state"] == "queued" and job["reason"] == "no_agent_for_queue"


async def test_a_client_through_the_server_packages_the_schedule_on_its_side(api, start_launch, server_url,
                                                                             jp_serverapp, tmp_path):
    app = await start_launch()
    client = connect(server_url, jp_serverapp.identity_provider.token, home=tmp_path / "client-home")
    try:
        prepared = client.prepare(NOTEBOOKS / "params.ipynb", parameters={"count": 7})
        schedule, artifact = await asyncio.to_thread(client.create_schedule, prepared, cron="@daily", name="daily")
        assert app.blobs.has(artifact.digest)  # uploaded: the server's agent can unpack it
        listed = await asyncio.to_thread(client.schedules)
        assert [s.id for s in listed] == [schedule.id]
        app.scheduler.clock = Clock(schedule.next_run_at + 1)
        [job] = await jobs_of(api, schedule.id, 1)
        job = await wait_done(api, job["id"], timeout=120)
        assert job["state"] == "succeeded", job
        status, page = await api("GET", "jobs", job["id"], "logs")
        assert "'default' 7 0.5" in "".join(c["data"] for c in page["chunks"])
        runs = await asyncio.to_thread(client.schedule_runs, schedule.id)
        assert [r.id for r in runs] == [job["id"]]
        paused = await asyncio.to_thread(client.pause_schedule, schedule.id)
        assert paused.paused and paused.next_run_at is None
        await asyncio.to_thread(client.delete_schedule, schedule.id)
        assert await asyncio.to_thread(client.schedules) == []
    finally:
        client.close()


async def test_a_schedule_of_a_notebook_path_under_the_root_is_packaged_by_the_server(api, start_launch,
                                                                                      jp_root_dir):
    await start_launch()
    (jp_root_dir / "reports").mkdir()
    (jp_root_dir / "reports" / "trivial.ipynb").write_bytes((NOTEBOOKS / "trivial.ipynb").read_bytes())
    status, schedule = await api("POST", "schedules", body={
        "notebook": "reports/trivial.ipynb", "options": {"priority": 3}, "cron": "30 7 * * *", "tz": "Asia/Tokyo"})
    assert status == 201, schedule
    assert schedule["name"] == "trivial" and schedule["spec"]["priority"] == 3
    assert schedule["artifact"].startswith("sha256:")
    status, err = await api("POST", "schedules", body={"notebook": "../x.ipynb", "cron": "30 7 * * *"})
    assert status == 400 and "must be a path under the Jupyter root" in err["message"]


async def test_priority_and_move_to_the_front_through_the_api(api, start_launch):
    await api("POST", "queues", body={"queue_name": "held"})  # no agent serves it
    ids = []
    for priority in (0, 2, 0):
        status, job = await api("POST", "jobs", body={"queue": "held", "spec": command_spec("pass",
                                                                                           priority=priority)})
        assert status == 201 and job["priority"] == priority, job
        ids.append(job["id"])
    status, job = await api("GET", "jobs", ids[2])
    assert "2 job(s) ahead of it (1 at a higher priority)" in job["message"], job
    status, moved = await api("POST", "jobs", ids[2], "move", body={"front": True})
    assert status == 200 and moved["priority"] == 3, moved
    status, job = await api("GET", "jobs", ids[1])
    assert "1 job(s) ahead of it (1 at a higher priority)" in job["message"], job
    status, err = await api("POST", "jobs", "0000000000000000", "move", body={"front": True})
    assert status == 404, err
    await api("POST", "jobs", ids[0], "cancel")
    status, err = await api("POST", "jobs", ids[0], "move", body={"front": True})
    assert status == 409 and "only a queued job can be moved" in err["message"], err


@pytest.mark.parametrize("body, field", [
    ({"spec": command_spec("pass")}, "cron:"),
    ({"spec": command_spec("pass"), "cron": 5}, "cron:"),
    ({"spec": command_spec("pass"), "cron": "x" * 300}, "cron:"),
    ({"spec": command_spec("pass"), "cron": "0 6 * * * *"}, "cron: '0 6 * * * *' has 6 field(s)"),
    ({"spec": command_spec("pass"), "cron": "0 6 31 2 *"}, "cron: '0 6 31 2 *' names no time"),
    ({"spec": command_spec("pass"), "cron": "0 6 * * *", "tz": "Nowhere/Land"}, "tz: 'Nowhere/Land'"),
    ({"spec": command_spec("pass"), "cron": "0 6 * * *", "tz": ["UTC"]}, "tz:"),
    ({"spec": command_spec("pass"), "cron": "0 6 * * *", "name": "a\nb"}, "a job name cannot hold"),
    ({"spec": command_spec("pass"), "cron": "0 6 * * *", "queue": 3}, "queue:"),
    ({"cron": "0 6 * * *"}, "give the job as 'spec'"),
    ({"spec": command_spec("pass"), "cron": "0 6 * * *", "artifact": "md5:1"}, "artifact:"),
])
async def test_a_bad_schedule_is_400_naming_the_field(api, body, field):
    status, err = await api("POST", "schedules", body=body)
    assert status == 400 and field in err["message"] and "\n" not in err["message"], (status, err)
    status, listed = await api("GET", "schedules")
    assert listed["schedules"] == []


async def test_unknown_queue_and_unknown_schedule_are_404_and_a_bad_priority_is_refused_naming_it(api):
    status, err = await api("POST", "schedules", body={"spec": command_spec("pass"), "cron": "0 6 * * *",
                                                       "queue": "nope"})
    assert status == 404 and "unknown queue 'nope'" in err["message"]
    for method, parts in (("GET", ("schedules", "0000000000000000")), ("DELETE", ("schedules", "0000000000000000")),
                          ("POST", ("schedules", "0000000000000000", "pause"))):
        status, err = await api(method, *parts)
        assert status == 404 and "unknown schedule" in err["message"], err
    status, err = await api("POST", "jobs", body={"spec": command_spec("pass", priority=5000)})
    assert status == 422 and "priority" in err["message"], err


@pytest.mark.parametrize("body, field", [
    ({"spec": command_spec("pass")}, "sweep:"),
    ({"spec": command_spec("pass"), "sweep": {"parameters": {}}}, "parameters"),
    ({"spec": command_spec("pass"), "sweep": {"method": "bayes", "parameters": {"x": {"values": [1]}}}}, "method"),
    ({"spec": command_spec("pass"), "sweep": {"method": "random", "parameters": {"x": {"min": 0, "max": 1,
                                                                                      "distribution": "uniform"}}}},
     "run_cap"),
    ({"spec": command_spec("pass"), "runs": "x"}, "runs:"),
    ({"spec": command_spec("pass"), "runs": [{"x": 1}], "max_parallel": 0}, "max_parallel"),
    ({"spec": command_spec("pass"), "runs": [{"x": 1}], "max_parallel": float("nan")},
     "'max_parallel' must be an integer"),
    ({"spec": command_spec("pass"), "runs": [{"x": 1}], "fail_fast": "yes"}, "fail_fast:"),
    ({"spec": command_spec("pass"), "runs": [{"x": 1}], "name": 5}, "name:"),
    ({"spec": command_spec("pass"), "runs": [{"not a name": 1}]}, "runs: run 1: parameters"),
    ({"spec": command_spec("pass"), "runs": [{"x": 1}] * 1001}, "runs"),
])
async def test_a_bad_sweep_is_400_naming_the_field_and_queues_nothing(api, body, field):
    raw = json.dumps(body).encode()  # NaN as JSON's parsers write it
    status, err = await api("POST", "sweeps", raw=raw, headers={"Content-Type": "application/json"})
    assert status == 400 and field in err["message"] and "\n" not in err["message"], (status, err)
    status, page = await api("GET", "jobs")
    assert page["jobs"] == []


async def test_a_sweep_through_the_server_packages_on_the_clients_side_and_runs_on_its_agent(api, start_launch,
                                                                                             server_url, jp_serverapp,
                                                                                             tmp_path):
    from jupyter_launch.spec import validate
    from jupyter_launch.sweep import SweepConfig

    app = await start_launch()
    client = connect(server_url, jp_serverapp.identity_provider.token, home=tmp_path / "client-home")
    try:
        sweep = validate(SweepConfig, {"parameters": {"lr": {"values": [0.1, 0.2]}}, "metric": {"name": "loss"},
                                       "fail_fast": True, "name": "remote-sweep"})
        prepared = client.prepare(NOTEBOOKS / "sweep.ipynb", parameters={"epochs": 2})
        record, artifact = await asyncio.to_thread(client.create_sweep, prepared, sweep=sweep)
        assert app.blobs.has(artifact.digest) and (record.runs, record.fail_fast) == (2, True)
        deadline = time.monotonic() + 180
        while not all(j.done for j in await asyncio.to_thread(client.sweep_jobs, record.id)):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        children = await asyncio.to_thread(client.sweep_jobs, record.id)
        assert [(j.name, j.state, j.spec["parameters"]) for j in children] == [
            ("remote-sweep-1", "succeeded", {"epochs": 2, "lr": 0.1}),
            ("remote-sweep-2", "succeeded", {"epochs": 2, "lr": 0.2})]
        assert (await asyncio.to_thread(client.sweep, record.id)).metric == "loss"
    finally:
        client.close()
