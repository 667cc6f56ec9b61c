"""Authorization, resource by resource, on a real `jupyter server` process with a custom ``Authorizer``: queue and
agent-token administration (``launch_queues``) apart from submitting (``launch_jobs``), and each job reached only by
its owner, or by an identity allowed ``launch_admin`` (read: see every job; write: cancel and rerun every job).

Identities come from a custom ``IdentityProvider`` keyed by token: alice and bob submit; audrey may also read every
job; ada administers queues and every job. The server's own token stays allowed everything (as under jupyter_server's
``AllowAllAuthorizer``); the default itself is ``tests/server/test_api.py::test_the_default_authorizer_lets_its_one_
user_do_everything``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from jupyter_launch.server.handlers import ADMIN_RESOURCE, JOBS_RESOURCE, QUEUES_RESOURCE

from launch_server import LaunchServer

from .conftest import record_figure
from .test_security import open_log_socket, request

TOKENS = {name: f"{name}-{secrets.token_hex(8)}" for name in ("alice", "bob", "audrey", "ada")}
READ_WRITE = ["read", "write"]
GRANTS = {  # bob may not read the server's files (jupyter_server's `contents`)
    "alice": {JOBS_RESOURCE: READ_WRITE, "contents": ["read"]},
    "bob": {JOBS_RESOURCE: READ_WRITE},
    "audrey": {JOBS_RESOURCE: READ_WRITE, ADMIN_RESOURCE: ["read"]},
    "ada": {JOBS_RESOURCE: READ_WRITE, QUEUES_RESOURCE: READ_WRITE, ADMIN_RESOURCE: READ_WRITE},
}
HELD = "held"  # a queue no agent serves: its jobs stay queued

AUTHZ_CONFIG = f"""
from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.auth.identity import PasswordIdentityProvider, User

USERS = {{token: name for name, token in {TOKENS!r}.items()}}
GRANTS = {GRANTS!r}


class UsersByToken(PasswordIdentityProvider):
    async def get_user_token(self, handler):
        name = USERS.get(self.get_token(handler))
        if name:
            return User(username=name, name=name)
        return await super().get_user_token(handler)


class ByResource(Authorizer):
    \"\"\"Each user's resources and actions from GRANTS (nothing else); anyone else (the server's own token, agent
    tokens) is allowed everything, as jupyter_server's AllowAllAuthorizer allows.\"\"\"

    def is_authorized(self, handler, user, action, resource):
        grants = GRANTS.get(user.username)
        allowed = grants is None or action in grants.get(resource, [])
        self.log.info("ByResource: %s %s %s on %s", "allowed" if allowed else "refused", user.username, action,
                      resource)
        return allowed


c.ServerApp.identity_provider_class = UsersByToken
c.ServerApp.authorizer_class = ByResource
"""


@dataclass
class Split:
    server: LaunchServer
    jobs: dict[str, list[str]]  # owner -> job ids, oldest first
    finished: str  # alice's job that ran on the default queue: it has a log, a metric and an output


def call(server: LaunchServer, who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return server.api(method, path, body, token=TOKENS[who])


def command(code: str) -> dict[str, Any]:
    return {"kind": "command", "command": [sys.executable, "-c", code]}


def submit(server: LaunchServer, who: str, queue: str, code: str = "print('hi')") -> str:
    status, job = call(server, who, "POST", "jobs", {"queue": queue, "spec": command(code)})
    assert status == 201, job
    assert job["owner"] == who, job
    return job["id"]


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    server = LaunchServer(tmp_path_factory.mktemp("authz"), agent_queues=["default"], extra_config=AUTHZ_CONFIG)
    try:
        server.start()
        status, body = call(server, "ada", "POST", "queues", {"queue_name": HELD})
        assert status == 201, body
        # One server, several users: the in-process agent serves as the server's user, so a local queue it runs
        # everyone's jobs on is one its administrator marks shared (else alice's job waits for her own agent).
        status, body = call(server, "ada", "PUT", "queues/default", {"queue_name": "default", "shared": True})
        assert status == 200 and body["shared"] is True, body
        secret_line = "alice's own line"
        finished = submit(server, "alice", "default", (
            "import json, os, pathlib\n"
            f"print({secret_line!r})\n"
            "print('\\x1ejupyter-launch ' + json.dumps({'type': 'metrics', 'step': 1, 'time': 0, "
            "'data': {'loss': 0.5}}), flush=True)\n"
            "pathlib.Path(os.environ['JUPYTER_LAUNCH_OUTPUT_DIR'], 'a.txt').write_text('alice')\n"))
        jobs: dict[str, list[str]] = {"alice": [finished], "bob": []}
        # Interleaved, so a page of alice's jobs filtered after the query would come back short.
        for _ in range(3):
            jobs["alice"].append(submit(server, "alice", HELD))
            jobs["bob"] += [submit(server, "bob", HELD), submit(server, "bob", HELD)]
        deadline = time.monotonic() + 120
        while not (job := call(server, "alice", "GET", f"jobs/{finished}")[1])["done"]:
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["state"] == "succeeded", (job, server.log_tail())
        yield Split(server, jobs, finished)
    finally:
        server.stop()


def refused_on(status: int, body: Any, resource: str) -> bool:
    return status == 403 and resource in (body or {}).get("message", "")


def test_a_submitter_cannot_administer_queues_or_agent_tokens(split: Split):
    server = split.server
    _, token = call(server, "ada", "POST", "tokens", {"name": "box", "queues": [HELD]})
    attempts = [("POST", "queues", {"queue_name": "alices"}),
                ("PUT", "queues/default", {"queue_name": "default", "provider": {"type": "local", "python": "/bin/sh"}}),
                ("DELETE", f"queues/{HELD}?force=true", None),
                ("GET", "tokens", None),
                ("POST", "tokens", {"name": "mine", "queues": ["*"]}),
                ("DELETE", f"tokens/{token['id']}", None)]
    for method, path, body in attempts:
        status, answer = call(server, "alice", method, path, body)
        assert refused_on(status, answer, QUEUES_RESOURCE), (method, path, status, answer)
    # Nothing changed, and what a submitter needs of queues and agents it may read.
    status, queues = call(server, "alice", "GET", "queues")
    assert status == 200 and {q["name"] for q in queues["queues"]} == {"default", HELD}, queues
    assert call(server, "alice", "GET", "queues/default")[1]["config"]["provider"].get("python") != "/bin/sh"
    assert call(server, "alice", "GET", "agents")[0] == 200
    _, tokens = call(server, "ada", "GET", "tokens")
    assert [t["id"] for t in tokens["tokens"]] == [token["id"]], tokens
    # The admin may do each of them.
    assert call(server, "ada", "POST", "queues", {"queue_name": "adas"})[0] == 201
    assert call(server, "ada", "DELETE", "queues/adas")[0] == 204
    assert call(server, "ada", "DELETE", f"tokens/{token['id']}")[0] == 200
    record_figure("queue administration refused to a submitter", attempts=len(attempts), refused=len(attempts))


def test_each_user_lists_only_their_own_jobs_and_an_admin_lists_all(split: Split):
    server, jobs = split.server, split.jobs

    def listed(who: str, query: str = "") -> list[str]:
        status, page = call(server, who, "GET", f"jobs?limit=500{query}")
        assert status == 200, page
        return [j["id"] for j in page["jobs"]]

    assert listed("alice") == jobs["alice"][::-1]
    assert listed("bob") == jobs["bob"][::-1]
    every = set(jobs["alice"] + jobs["bob"])
    for admin in ("audrey", "ada"):
        assert set(listed(admin)) >= every
        assert listed(admin, "&owner=alice") == jobs["alice"][::-1]
    assert listed("bob", "&owner=alice") == []
    # The filter is in the store's query: a full page of alice's own, paging on through hers only.
    status, page = call(server, "alice", "GET", "jobs?limit=2")
    assert [j["id"] for j in page["jobs"]] == jobs["alice"][:-3:-1], page
    status, page = call(server, "alice", "GET", f"jobs?limit=2&before={page['next_before']}")
    assert [j["id"] for j in page["jobs"]] == jobs["alice"][-3::-1], page
    # The server's own token, allowed everything, sees every job as before.
    status, page = server.api("GET", "jobs?limit=500")
    assert status == 200 and {j["id"] for j in page["jobs"]} >= every


def test_another_users_job_is_unknown_to_read_follow_cancel_and_rerun(split: Split):
    server, alice_job, held = split.server, split.finished, split.jobs["alice"][1]
    unknown = "0123456789abcd"
    reads = ["", "/logs", "/metrics", "/outputs", "/outputs/a.txt", "/logs/events"]
    seen = {}
    for suffix in reads:
        for job_id in (alice_job, unknown):
            status, answer = call(server, "bob", "GET", f"jobs/{job_id}{suffix}")
            seen[job_id] = (status, json.dumps(answer).replace(job_id, "ID"))
        # Refused exactly as a job that does not exist: nothing tells bob that alice's job is there.
        assert seen[alice_job] == seen[unknown] and seen[unknown][0] == 404, (suffix, seen)
    headers = {"Authorization": f"token {TOKENS['bob']}"}
    code, frames = asyncio.run(open_log_socket(server, f"/launch/api/jobs/{alice_job}/logs/ws", headers))
    assert (code, frames) == (404, []), (code, frames)
    code, _, body = request(server, "GET", f"/launch/api/jobs/{alice_job}/logs/events", headers=headers)
    assert code == 404 and b"alice's own line" not in body
    before = {j["id"] for j in server.api("GET", "jobs?limit=500")[1]["jobs"]}
    for action, job_id in (("cancel", held), ("rerun", alice_job), ("archive", alice_job)):
        status, answer = call(server, "bob", "POST", f"jobs/{job_id}/{action}")
        assert status == 404 and answer["message"] == f"unknown job {job_id!r}", (action, status, answer)
    status, answer = call(server, "bob", "DELETE", f"jobs/{alice_job}")
    assert status == 404 and answer["message"] == f"unknown job {alice_job!r}", (status, answer)
    assert call(server, "alice", "GET", f"jobs/{held}")[1]["state"] == "queued"
    assert call(server, "alice", "GET", f"jobs/{alice_job}")[1]["archived_at"] is None  # neither archived nor gone
    assert {j["id"] for j in server.api("GET", "jobs?limit=500")[1]["jobs"]} == before  # no rerun was made
    # An identity allowed only `read` on launch_admin sees alice's job but may not act on it.
    code, _, body = request(server, "GET", f"/launch/api/jobs/{alice_job}/outputs/a.txt",
                            headers={"Authorization": f"token {TOKENS['audrey']}"})
    assert (code, body) == (200, b"alice"), (code, body)
    code, frames = asyncio.run(open_log_socket(
        server, f"/launch/api/jobs/{alice_job}/logs/ws", {"Authorization": f"token {TOKENS['audrey']}"}))
    assert code == 101 and any(b"alice's own line" in f for f in frames), (code, frames)
    assert call(server, "audrey", "POST", f"jobs/{held}/cancel")[0] == 404
    assert call(server, "audrey", "DELETE", f"jobs/{alice_job}")[0] == 404
    record_figure("another user's job", reads=len(reads) + 2, actions=4, answered_as_unknown=len(reads) + 6)


def test_an_owner_and_an_admin_act_on_jobs(split: Split):
    server, alice_jobs, bob_jobs = split.server, split.jobs["alice"], split.jobs["bob"]
    status, metrics = call(server, "alice", "GET", f"jobs/{split.finished}/metrics")
    assert status == 200 and metrics["metrics"][0]["data"] == {"loss": 0.5}, metrics
    status, log = call(server, "ada", "GET", f"jobs/{split.finished}/logs")
    assert status == 200 and "alice's own line" in "".join(c["data"] for c in log["chunks"]), log
    status, job = call(server, "alice", "POST", f"jobs/{alice_jobs[2]}/cancel")
    assert status == 202 and job["state"] == "cancelled", job
    status, job = call(server, "ada", "POST", f"jobs/{bob_jobs[0]}/cancel")
    assert status == 202 and job["state"] == "cancelled", job
    status, rerun = call(server, "alice", "POST", f"jobs/{split.finished}/rerun")
    assert status == 201 and rerun["owner"] == "alice" and rerun["rerun_of"] == split.finished, rerun
    status, rerun = call(server, "ada", "POST", f"jobs/{bob_jobs[1]}/rerun")
    assert status == 201 and rerun["owner"] == "ada", rerun  # a rerun belongs to whoever asked for it
    assert call(server, "ada", "POST", f"jobs/{rerun['id']}/cancel")[0] == 202


def test_the_authorizer_was_asked_for_each_resource(split: Split):
    log = split.server.log.read_text(errors="replace")
    for line in ("refused alice write on launch_queues", "refused alice read on launch_queues",
                 "refused bob read on launch_admin", "refused bob write on launch_admin",
                 "allowed audrey read on launch_admin", "refused audrey write on launch_admin",
                 "allowed ada write on launch_admin", "allowed ada write on launch_queues"):
        assert f"ByResource: {line}" in log, line


def test_submitting_a_notebook_by_path_needs_read_on_the_servers_files(split: Split):
    """The server packages a notebook submitted by its path (the panel's way) from its own files, on the caller's
    behalf: a caller the authorizer does not let read `contents` could otherwise take any folder under the root."""
    server = split.server
    (server.root / "private").mkdir()
    (server.root / "private" / "nb.ipynb").write_text(json.dumps(
        {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    body = {"queue": HELD, "notebook": "private/nb.ipynb"}
    status, answer = call(server, "bob", "POST", "jobs", body)
    assert refused_on(status, answer, "contents"), (status, answer)
    status, job = call(server, "alice", "POST", "jobs", body)
    assert status == 201 and job["owner"] == "alice", job
    assert call(server, "alice", "POST", f"jobs/{job['id']}/cancel")[0] == 202
