"""Users on one store, with real `jupyter server` processes: who owns a job.

A request with the server's own token acts as the server's user, one owner for every request (jupyter_server makes
up a fresh anonymous identity for each).
"""

from __future__ import annotations

import getpass
import sys
from typing import Any

from jupyter_launch.client import LaunchClient

from launch_server import LaunchServer


def command(code: str = "print('hi')") -> dict[str, Any]:
    return {"kind": "command", "command": [sys.executable, "-c", code]}


def submit(server: LaunchServer, queue: str = "default") -> dict[str, Any]:
    status, job = server.api("POST", "jobs", {"queue": queue, "spec": command()})
    assert status == 201, job
    return job


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
