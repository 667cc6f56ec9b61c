"""Users on one store, with real `jupyter server` processes: who owns a job, and whose agent runs it.

A request with the server's own token acts as the server's user, one owner for every request (jupyter_server makes
up a fresh anonymous identity for each). Two servers on one store stand in for two users' servers: on a private
queue each server's in-process agent runs only its own user's jobs; on a shared queue any agent serving it runs
anyone's. Each case runs on a SQLite file and on PostgreSQL.
"""

from __future__ import annotations

import getpass
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from jupyter_launch.client import LaunchClient

from launch_server import LaunchServer

SHARED, PRIVATE = "team", "mine"  # local queues, one marked shared


def command(code: str = "print('hi')") -> dict[str, Any]:
    return {"kind": "command", "command": [sys.executable, "-c", code]}


def submit(server: LaunchServer, queue: str = "default") -> dict[str, Any]:
    status, job = server.api("POST", "jobs", {"queue": queue, "spec": command()})
    assert status == 201, job
    return job


def wait_done(server: LaunchServer, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not (job := server.api("GET", f"jobs/{job_id}")[1])["done"]:
        assert time.monotonic() < deadline, (job, server.log_tail())
        time.sleep(0.1)
    return job


def agent_of(server: LaunchServer) -> str:
    """The id of the server's in-process agent: the live agent whose process is the server's."""
    agents = server.api("GET", "agents")[1]["agents"]
    ids = [a["id"] for a in agents if (a.get("info") or {}).get("pid") == server.process.pid]
    assert len(ids) == 1, agents
    return ids[0]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The store two servers share: a SQLite file, or a fresh schema on a real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'team.db'}"
        return
    postgres_url = request.getfixturevalue("postgres_url")
    schema = f"t_{secrets.token_hex(4)}"
    admin = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as c:
        c.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{postgres_url}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as c:
            c.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def store_config(url: str, blobs: Path) -> str:
    return f"c.LaunchApp.store_url = {url!r}\nc.LaunchApp.blob_dir = {str(blobs)!r}\n"


def test_every_request_with_the_servers_token_acts_as_the_servers_user(tmp_path):
    """Six submits with the token are one owner, the OS user running the server, as an embedded client here records
    (jupyter_server gives each token request a new anonymous user: six owners, each 32 hex characters)."""
    server = LaunchServer(tmp_path, agent_queues=[]).start()
    try:
        me = getpass.getuser()
        jobs = [submit(server) for _ in range(6)]
        assert {(j["owner"], j["owner_name"]) for j in jobs} == {(me, me)}
        listed = server.api("GET", f"jobs?owner={me}")[1]["jobs"]
        assert {j["id"] for j in listed} == {j["id"] for j in jobs}
        status, rerun = server.api("POST", f"jobs/{jobs[0]['id']}/rerun")
        assert status == 201 and rerun["owner"] == me, rerun
        client = LaunchClient(home=server.home)  # the CLI on this machine, on the server's store
        try:
            assert client.get_job(client.rerun(jobs[1]["id"]).id).owner == me
        finally:
            client.close()
    finally:
        server.stop()


def test_server_user_names_the_owner_the_servers_token_acts_as(tmp_path):
    server = LaunchServer(tmp_path, agent_queues=[], extra_config="c.LaunchApp.server_user = 'alice'\n").start()
    try:
        assert {(j["owner"], j["owner_name"]) for j in (submit(server) for _ in range(3))} == {("alice", "alice")}
    finally:
        server.stop()


def test_two_users_servers_on_one_store_each_run_only_their_own_jobs_on_a_private_queue(tmp_path, store_url):
    """The issue's case: alice's and bob's servers on one store both serve `default` (local: private). Every job
    submitted through alice's server runs on her server's agent, and bob's on his; a shared queue's jobs run on
    whichever agent serves it."""
    blobs = tmp_path / "blobs"
    alice = LaunchServer(tmp_path / "alice", agent_queues=["default"],
                         extra_config=store_config(store_url, blobs) + "c.LaunchApp.server_user = 'alice'\n")
    bob = LaunchServer(tmp_path / "bob", agent_queues=["default", SHARED, PRIVATE], home=alice.home,
                       extra_config=store_config(store_url, blobs) + "c.LaunchApp.server_user = 'bob'\n")
    try:
        alice.start()
        for name, shared in ((SHARED, True), (PRIVATE, False)):
            status, queue = alice.api("POST", "queues", {"queue_name": name, "shared": shared})
            assert status == 201 and queue["shared"] is shared, queue
        assert alice.api("GET", "queues/default")[1]["shared"] is False  # a local queue is private by default
        bob.start()
        agents = {"alice": agent_of(alice), "bob": agent_of(bob)}
        # alice's job on a private queue only bob's agent serves, first in line: it must wait for alice's agent.
        stranded = submit(alice, PRIVATE)
        jobs = []
        for _ in range(6):
            jobs += [("alice", submit(alice)), ("bob", submit(bob))]
        jobs.append(("bob", submit(alice, SHARED)))  # alice's job on the shared queue: bob's agent serves it
        jobs.append(("bob", submit(bob, PRIVATE)))
        for runs_on, job in jobs:
            done = wait_done(alice, job["id"])
            assert done["state"] == "succeeded", (done, alice.log_tail(), bob.log_tail())
            assert done["agent_id"] == agents[runs_on], (runs_on, done)
        assert [j["owner"] for _, j in jobs[:2]] == ["alice", "bob"]
        # bob's later job on that queue ran: had alice's been claimable by bob's agent, it would have gone first.
        stranded = alice.api("GET", f"jobs/{stranded['id']}")[1]
        assert (stranded["state"], stranded["reason"]) == ("queued", "no_agent_for_queue"), stranded
    finally:
        bob.stop()
        alice.stop()
