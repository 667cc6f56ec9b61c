"""Remote agents over HTTP: agent tokens (scoped, hashed, revocable), long-poll claims, logs, outputs."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from jupyter_launch.remote.agent import make_remote_agent, run_remote_agent
from jupyter_launch.remote.http import RemoteAuthError
from jupyter_launch.remote.store import HttpStore
from jupyter_launch.store import schema as t

from .conftest import command_spec, wait_done


@pytest.fixture
def launch_config() -> dict[str, Any]:
    return {"agent_queues": []}  # no in-process agent: only the remote one may run jobs


async def test_remote_agent_runs_a_job_end_to_end(api, start_launch, server_url, tmp_path):
    app = await start_launch()
    await api("POST", "queues", body={"queue_name": "remote"})
    token, record = app.store.create_agent_token("box-1", ["remote"])
    with app.store.engine.connect() as c:  # stored hashed: the secret is nowhere in the table
        row = c.execute(t.agent_tokens.select()).one()
    assert token.split("_", 2)[2] not in str(tuple(row)) and row.secret_hash
    agent = make_remote_agent(server_url, token, ["remote"], cache_dir=tmp_path / "cache", claim_wait=2,
                              work_root=str(tmp_path / "work"), poll_interval=0.2, lease_seconds=4)
    stop = asyncio.Event()
    runner = asyncio.create_task(run_remote_agent(agent, stop))
    try:
        code = ("import os, pathlib, sys\n"
                "for i in range(2000): print('line', i)\n"
                "print('oops', file=sys.stderr)\n"
                "pathlib.Path(os.environ['JUPYTER_LAUNCH_OUTPUT_DIR'], 'out.bin').write_bytes(bytes(range(256)))\n")
        status, job = await api("POST", "jobs", body={"queue": "remote", "spec": command_spec(code)})
        assert status == 201
        job = await wait_done(api, job["id"])
        assert (job["state"], job["exit_code"]) == ("succeeded", 0), job
        assert job["agent_id"] == agent.agent_id
        _, page = await api("GET", "jobs", job["id"], "logs", params={"limit": 16 * 1024 * 1024})
        text = "".join(c["data"] for c in page["chunks"] if c["stream"] == "stdout")
        assert text.splitlines() == [f"line {i}" for i in range(2000)]
        assert [c["data"] for c in page["chunks"] if c["stream"] == "stderr"] == ["oops\n"]
        _, body = await api("GET", "jobs", job["id"], "outputs", "out.bin")
        assert body == bytes(range(256))
        _, agents = await api("GET", "agents")
        assert agent.agent_id in [a["id"] for a in agents["agents"]]

        # Revoked: the agent's next call is refused, it gets no more work and stops.
        app.store.revoke_agent_token(record.id)
        _, queued = await api("POST", "jobs", body={"queue": "remote", "spec": command_spec("print(1)")})
        await asyncio.wait_for(runner, 10)
        assert isinstance(agent.store.auth_error, RemoteAuthError)
        _, again = await api("GET", "jobs", queued["id"])
        assert again["state"] == "queued"
    finally:
        stop.set()
        await asyncio.wait_for(runner, 30)


async def test_token_scope_and_kinds_are_enforced(api, start_launch, server_url):
    app = await start_launch()
    await api("POST", "queues", body={"queue_name": "remote"})
    token, _ = app.store.create_agent_token("box-2", ["remote"])
    store = HttpStore(server_url, agent_token=token, claim_wait=0)
    with pytest.raises(RemoteAuthError, match="may not serve queue.*default"):
        await asyncio.to_thread(store.register_agent, "a1", ["default"], [], host="h")
    await asyncio.to_thread(store.register_agent, "a1", ["remote"], [], host="h")
    store.close()
    # A user's token is not an agent token, and an agent token is not a user identity.
    status, err = await api("POST", "agent", "claim", body={"agent_id": "x", "queues": ["remote"]})
    assert status == 403 and "agent token" in err["message"]
    status, _ = await api("GET", "queues", headers={"Authorization": f"Bearer {token}"})
    assert status == 403
    status, err = await api("POST", "agent", "claim", body={"agent_id": "x", "queues": ["remote"]},
                            headers={"Authorization": "Bearer jla_0000_bogus"})
    assert status == 403 and "unknown or revoked" in err["message"]
    status, err = await api("POST", "agent", "claim", body={"agent_id": "x", "queues": ["remote"]},
                            headers={"Authorization": ""})
    assert status in (401, 403)


async def test_long_poll_claim_returns_when_a_job_is_submitted(api, start_launch, server_url):
    app = await start_launch()
    await api("POST", "queues", body={"queue_name": "remote"})
    token, _ = app.store.create_agent_token("box-3", ["remote"])
    store = HttpStore(server_url, agent_token=token, claim_wait=10)
    await asyncio.to_thread(store.register_agent, "poller", ["remote"], [], host="h")
    claiming = asyncio.create_task(asyncio.to_thread(store.claim_next_job, "poller", ["remote"]))
    await asyncio.sleep(0.5)
    assert not claiming.done()
    t0 = time.monotonic()
    _, job = await api("POST", "jobs", body={"queue": "remote", "spec": command_spec("print(1)")})
    claim = await asyncio.wait_for(claiming, 10)
    assert claim is not None and claim.job.id == job["id"] and claim.fence == 1
    assert time.monotonic() - t0 < 1.0
    # Stale fences are ignored; the current one works.
    assert not await asyncio.to_thread(store.set_state, job["id"], 0, "running", "running")
    assert await asyncio.to_thread(store.set_state, job["id"], 1, "running", "running")
    beat = await asyncio.to_thread(store.heartbeat, job["id"], 1)
    assert beat.ok and not beat.cancel_requested
    await api("POST", "jobs", job["id"], "cancel")
    assert (await asyncio.to_thread(store.heartbeat, job["id"], 1)).cancel_requested
    assert await asyncio.to_thread(store.finish, job["id"], 1, "cancelled", reason="cancelled")
    _, done = await api("GET", "jobs", job["id"])
    assert done["state"] == "cancelled"
    store.close()


async def test_an_agent_waiting_in_a_long_poll_longer_than_the_agent_ttl_still_serves_its_queue(
        api, start_launch, server_url, monkeypatch):
    """An idle remote agent spends its time in a claim the server holds (20 s by default), longer than the 15 s an
    agent may go unseen: it used to drop out of the queue's live agents for the end of every poll (the CLI then said
    no agent served the queue). The server marks it seen while it holds the call. Here the TTL is 1.5 s and the
    poll 4 s."""
    from jupyter_launch.store import base as store_base

    monkeypatch.setattr(store_base, "AGENT_TTL", 1.5)
    app = await start_launch()
    await api("POST", "queues", body={"queue_name": "remote"})
    token, _ = app.store.create_agent_token("box-ttl", ["remote"])
    store = HttpStore(server_url, agent_token=token, claim_wait=4)
    await asyncio.to_thread(store.register_agent, "idle", ["remote"], [], host="h")
    claiming = asyncio.create_task(asyncio.to_thread(store.claim_next_job, "idle", ["remote"]))
    live = []
    for _ in range(6):  # 0.5 s to 3 s into the poll
        await asyncio.sleep(0.5)
        live.append(await asyncio.to_thread(app.store.live_agent_ids, "remote"))
    assert not claiming.done()
    assert live == [["idle"]] * 6
    assert await asyncio.wait_for(claiming, 10) is None
    store.close()


async def test_a_stopping_remote_agent_cuts_its_long_poll_short_and_claims_nothing(api, start_launch, server_url,
                                                                                   tmp_path):
    """Stopping an idle remote agent waited for its claim's long poll to end (20 s by default: `queue down` took
    ~17 s). The stop now ends the poll at once; the server, its call gone, claims nothing for it, so a job
    submitted afterwards waits for another agent. The poll here is 120 s: a stop that waited it out fails the
    60 s bound."""
    app = await start_launch()
    app.max_claim_wait = 120.0  # the server's cap on a poll (30 s by default)
    await api("POST", "queues", body={"queue_name": "remote"})
    token, _ = app.store.create_agent_token("box-stop", ["remote"])
    agent = make_remote_agent(server_url, token, ["remote"], cache_dir=tmp_path / "cache", claim_wait=120,
                              work_root=str(tmp_path / "work"), poll_interval=0.2, lease_seconds=4)
    stop = asyncio.Event()
    runner = asyncio.create_task(run_remote_agent(agent, stop))
    while agent.agent_id not in await asyncio.to_thread(app.store.live_agent_ids, "remote"):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # in its long poll now
    stop.set()
    await asyncio.wait_for(runner, 60)
    assert agent.refused is None
    _, job = await api("POST", "jobs", body={"queue": "remote", "spec": command_spec("print(1)")})
    await asyncio.sleep(1.5)  # the server's poll loop would have claimed it within a second
    _, job = await api("GET", "jobs", job["id"])
    assert (job["state"], job["agent_id"]) == ("queued", None), job


async def test_revoked_token_stops_the_agent_with_one_log_line(api, start_launch, server_url, tmp_path, caplog):
    app = await start_launch()
    await api("POST", "queues", body={"queue_name": "remote"})
    token, record = app.store.create_agent_token("box-4", ["remote"])
    # A short lease makes housekeeping call the server too, as often as claiming does.
    agent = make_remote_agent(server_url, token, ["remote"], cache_dir=tmp_path / "cache", claim_wait=0.5,
                              work_root=str(tmp_path / "work"), poll_interval=0.1, lease_seconds=0.4,
                              log=logging.getLogger("jupyter_launch.agent"))
    stop = asyncio.Event()
    runner = asyncio.create_task(run_remote_agent(agent, stop))
    try:
        while True:
            _, agents = await api("GET", "agents")
            if agent.agent_id in [a["id"] for a in agents["agents"]]:
                break
            await asyncio.sleep(0.05)
        with caplog.at_level(logging.INFO, logger="jupyter_launch.agent"):
            app.store.revoke_agent_token(record.id)
            await asyncio.wait_for(runner, 10)  # it stops by itself
    finally:
        stop.set()
        await asyncio.wait_for(runner, 30)
    said = [r for r in caplog.records if r.name == "jupyter_launch.agent"]
    assert [r.levelname for r in said] == ["ERROR"], [r.getMessage() for r in said]
    assert said[0].exc_info is None  # no traceback: nothing went wrong in the agent
    assert "revoked" in said[0].getMessage() and said[0].getMessage().endswith("; stopping")
    assert isinstance(agent.refused, RemoteAuthError)


async def test_a_remote_agent_leaves_other_agents_running_containers_alone(api, start_launch, server_url, tmp_path,
                                                                         docker_api):
    """Its start-up sweep asks the server which jobs are live: the running job of another agent keeps its container,
    the container a finished job left is removed."""
    from docker_engine import BASE_IMAGE

    from jupyter_launch.agent import make_local_agent
    from jupyter_launch.backends.docker.container import JOB_ID_LABEL, MANAGED_BY, QUEUE_LABEL

    app = await start_launch()
    queue = "remote-docker"
    await api("POST", "queues", body={"queue_name": queue, "provider": {"type": "docker", "image": BASE_IMAGE}})
    # The other agent: on the server's own store, as the server's in-process agent is.
    local = make_local_agent(app.store, [queue], blobs=app.blobs, home=str(tmp_path / "local-home"),
                             wake_socket=False, poll_interval=0.1)
    await local.start()
    local_run = asyncio.create_task(local.run())
    spec = {"kind": "command", "command": ["sh", "-c", "echo started; sleep 120"]}
    _, job = await api("POST", "jobs", body={"queue": queue, "spec": spec})
    _, ended = await api("POST", "jobs", body={"queue": queue, "spec": spec})
    stop = asyncio.Event()
    remote_run = None
    try:
        deadline = time.monotonic() + 60
        while True:
            _, now = await api("GET", "jobs", job["id"])
            running = docker_api.containers(filters={"label": f"{JOB_ID_LABEL}={job['id']}"})
            if now["state"] == "running" and running:
                break
            assert time.monotonic() < deadline and not now["done"], now
            await asyncio.sleep(0.1)
        cid = running[0]["Id"]
        await api("POST", "jobs", ended["id"], "cancel")
        await wait_done(api, ended["id"])
        leftover = docker_api.create_container(BASE_IMAGE, ["sleep", "60"], labels={
            MANAGED_BY: "jupyter-launch", QUEUE_LABEL: queue, JOB_ID_LABEL: ended["id"],
            "jupyter-launch.fence": "1"})["Id"]
        docker_api.start(leftover)

        token, _ = app.store.create_agent_token("box-docker", [queue])
        remote = make_remote_agent(server_url, token, [queue], cache_dir=tmp_path / "cache", claim_wait=1,
                                   work_root=str(tmp_path / "remote-work"), poll_interval=0.2)
        remote_run = asyncio.create_task(run_remote_agent(remote, stop))
        deadline = time.monotonic() + 30
        while remote.agent_id not in [a["id"] for a in (await api("GET", "agents"))[1]["agents"]]:
            assert time.monotonic() < deadline and not remote_run.done()
            await asyncio.sleep(0.05)
        while docker_api.containers(all=True, filters={"id": leftover}):  # its start-up sweep removes it
            assert time.monotonic() < deadline and not remote_run.done()
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # the rest of the sweep
        assert docker_api.inspect_container(cid)["State"]["Running"]
        _, now = await api("GET", "jobs", job["id"])
        assert now["state"] == "running", now
        await api("POST", "jobs", job["id"], "cancel")
        done = await wait_done(api, job["id"])
        assert (done["state"], done["reason"]) == ("cancelled", "cancelled"), done
    finally:
        stop.set()
        if remote_run is not None:
            await asyncio.wait_for(remote_run, 30)
        await local.stop()
        local_run.cancel()


async def test_a_remote_agents_job_gets_neither_its_token_nor_a_declared_secret_in_clear(
        api, start_launch, server_url, tmp_path, monkeypatch):
    """The agent's own token in its environment (as `jupyter launch agent` reads it) never reaches its jobs, which
    could claim work with it; a declared secret does, and what the job prints of it is stored as ***."""
    app = await start_launch()
    await api("POST", "queues", body={"queue_name": "remote"})
    token, _ = app.store.create_agent_token("box-sealed", ["remote"])
    assert token.startswith("jla_")
    secret = "sealed-" + "7c1d9e0b4a5f" * 2
    monkeypatch.setenv("JUPYTER_LAUNCH_TOKEN", token)
    monkeypatch.setenv("JL_REMOTE_SECRET", secret)
    agent = make_remote_agent(server_url, token, ["remote"], cache_dir=tmp_path / "cache", claim_wait=2,
                              work_root=str(tmp_path / "work"), poll_interval=0.2)
    stop = asyncio.Event()
    runner = asyncio.create_task(run_remote_agent(agent, stop))
    try:
        code = ("import os\n"  # an agent token is jla_<id>_<secret>
                "print('token seen', any(v.startswith('jla_') for v in os.environ.values()))\n"
                "print('secret', os.environ['JL_REMOTE_SECRET'])\n")
        status, job = await api("POST", "jobs", body={"queue": "remote",
                                                      "spec": command_spec(code, secrets=["JL_REMOTE_SECRET"])})
        assert status == 201, job
        job = await wait_done(api, job["id"])
        assert job["state"] == "succeeded", job
        _, page = await api("GET", "jobs", job["id"], "logs")
        assert "".join(c["data"] for c in page["chunks"]) == "token seen False\nsecret ***\n"
    finally:
        stop.set()
        await asyncio.wait_for(runner, 30)
