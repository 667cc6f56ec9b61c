"""jupyter-launch under a real JupyterHub (``jupyterhub`` from PyPI and ``configurable-http-proxy`` from npm, both
installed by ci/test.sh) on loopback: in the users' single-user servers, and as the Hub's service.

Hub users (alice and bob; ada, a Hub admin; carol, granted a custom admin scope), each with a Hub API token and a
single-user server the Hub spawns as a local process (SimpleLocalProcessSpawner: no OS users), all on one jupyter-launch
store. Every request goes through the Hub's proxy to the user's own server with the user's own token, as a notebook or
CLI of that user would. The same Hub runs ``jupyter launch serve`` as its managed service ``launch`` (docs/team.md's
config) on a store of its own, which the users reach at ``/services/launch/`` with their Hub tokens, over HTTP and with
the ``jupyter launch`` CLI. Fails, naming what is missing, without jupyterhub or configurable-http-proxy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from launch_server import CHROMIUM, ROOT, free_port, isolated_env, launch_chromium

USERS = ("alice", "bob")
ADMIN = "ada"  # a Hub admin
GRANTED = "carol"  # not a Hub admin: the README's Hub role grants her the scope its servers' config takes for admins
ADMIN_SCOPE = "custom:launch:admin"
EVERYONE = (*USERS, ADMIN, GRANTED)
TEAM_SERVER_USERS = ("alice", ADMIN)
SERVICE = "launch"  # docs/team.md's service
SERVICE_PREFIX = f"/services/{SERVICE}/"
TEAM_SERVER = "team"  # the named server of alice and ada whose jupyter-launch is a client of the service
TEAM_DOC = "docs/team.md"


@dataclass
class Hub:
    url: str  # the proxy's public URL
    tokens: dict[str, str]  # Hub user -> a Hub API token of theirs
    process: subprocess.Popen
    log: Path
    password: str = ""  # every user's password at the Hub's login page (DummyAuthenticator's)

    def call(self, who: str | None, method: str, path: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
        """``path`` under the proxy, with ``who``'s token (None: no token); the status and the JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if who is not None:
            headers["Authorization"] = f"token {self.tokens[who]}"
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            with exc:
                raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")

    def launch(self, who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """jupyter-launch's API on ``who``'s own single-user server, as ``who``."""
        return self.call(who, method, f"/user/{who}/launch/api/{path}", body)

    def team_server(self, who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """jupyter-launch's API on ``who``'s named server ``team`` (a client of the service), as ``who``: what the
        Launch panel in that Lab calls."""
        return self.call(who, method, f"/user/{who}/{TEAM_SERVER}/launch/api/{path}", body)

    def service(self, who: str | None, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """jupyter-launch's API on the Hub's service ``launch`` (``jupyter launch serve``), as ``who``."""
        return self.call(who, method, f"{SERVICE_PREFIX}launch/api/{path}", body)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def readme_block(marker: str, doc: str = "README.md") -> str:
    """The Python block after ``<!-- marker: ... -->`` in ``doc`` (the README's "JupyterHub" section, docs/team.md),
    as written there."""
    after = (ROOT / doc).read_text().split(f"<!-- {marker}:", 1)[1]
    return textwrap.dedent(after.split("```python\n", 1)[1].split("```", 1)[0])


def singleuser_config() -> str:
    """The users' servers' config (from $JUPYTER_CONFIG_DIR): the README's, and a quicker agent."""
    return (readme_block("singleuser-config") + "c.LaunchApp.reap_interval = 0.5\nc.Agent.poll_interval = 0.5\n"
            "c.LabApp.expose_app_in_browser = True\n")  # window.jupyterapp, for the browser test


def missing_hub_parts() -> list[str]:
    missing = []
    if importlib.util.find_spec("jupyterhub") is None:
        missing.append("the jupyterhub package (pip install jupyterhub; it is in jupyter-launch's `test` extra)")
    if shutil.which("configurable-http-proxy") is None:
        missing.append("configurable-http-proxy on PATH (npm install -g configurable-http-proxy; ci/test.sh does)")
    return missing


def service_config() -> str:
    """The service's jupyter_server_config.py: a quicker agent, and root allowed (the Hub's spawner passes the users'
    servers --allow-root the same way)."""
    return "c.LaunchApp.reap_interval = 0.5\nc.Agent.poll_interval = 0.5\nc.ServerApp.allow_root = True\n"


def hub_config(base: Path, ports: dict[str, int], tokens: dict[str, str], store_url: str, password: str) -> str:
    bin_dir = Path(sys.executable).parent
    env = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JUPYTER_LAUNCH_HOME": str(base / "launch-home"), "JUPYTER_LAUNCH_STORE_URL": store_url,
           "JUPYTER_CONFIG_DIR": str(base / "singleuser-config"),
           "JUPYTER_LAUNCH_SERVER_URL": f"http://127.0.0.1:{ports['proxy']}{SERVICE_PREFIX}",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    # The service on a store of its own (the users' servers above share team.db), its own home and Jupyter folders.
    service_env = {"JUPYTER_LAUNCH_STORE_URL": f"sqlite:///{base / 'service.db'}",
                   "JUPYTER_LAUNCH_HOME": str(base / "service-home"),
                   "JUPYTER_CONFIG_DIR": str(base / "service-config"),
                   "JUPYTER_RUNTIME_DIR": str(base / "service-runtime"), "JUPYTER_DATA_DIR": str(base / "service-data")}
    return f"""
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {ports['proxy']}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {ports['hub']}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{ports['proxy_api']}"
c.ConfigurableHTTPProxy.pid_file = {str(base / 'proxy.pid')!r}
c.JupyterHub.db_url = {f"sqlite:///{base / 'hub.sqlite'}"!r}
c.JupyterHub.cookie_secret_file = {str(base / 'cookie_secret')!r}
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {password!r}
c.Authenticator.allowed_users = {{*{USERS!r}, {GRANTED!r}}}
c.Authenticator.admin_users = {{{ADMIN!r}}}
c.JupyterHub.api_tokens = {{token: name for name, token in {tokens!r}.items()}}
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {str(base / 'homes' / '{username}')!r}
c.Spawner.cmd = [{str(bin_dir / 'jupyterhub-singleuser')!r}]
c.Spawner.args = ["--allow-root"]
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 180
""" + readme_block("jupyterhub-config") + readme_block("hub-service-config", TEAM_DOC) + f"""
c.Spawner.environment = {env!r}  # the README's and docs/team.md's, with this test's store and proxy
# Users' default servers on the team's store (the README's setup); their named servers {TEAM_SERVER!r} with only
# docs/team.md's $JUPYTER_LAUNCH_SERVER_URL, which makes their jupyter-launch a client of the service.
c.JupyterHub.allow_named_servers = True
def _by_server(team, default):
    return lambda spawner: team(spawner) if spawner.name == {TEAM_SERVER!r} else default
c.Spawner.environment["JUPYTER_LAUNCH_SERVER_URL"] = _by_server(lambda s: {env["JUPYTER_LAUNCH_SERVER_URL"]!r}, "")
c.Spawner.environment["JUPYTER_LAUNCH_STORE_URL"] = _by_server(lambda s: "", {store_url!r})
c.Spawner.environment["JUPYTER_LAUNCH_HOME"] = _by_server(lambda s: {str(base / 'team-homes')!r} + "/" + s.user.name,
                                                          {env["JUPYTER_LAUNCH_HOME"]!r})
for service in c.JupyterHub.services:  # docs/team.md's service, on this test's port and store
    if service["name"] == {SERVICE!r}:
        service["url"] = "http://127.0.0.1:{ports['service']}"
        service["environment"].update({service_env!r})
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    missing = missing_hub_parts()
    if missing:
        pytest.fail("a real JupyterHub is needed and these are missing: " + "; ".join(missing))
    base = tmp_path_factory.mktemp("hub")
    ports = {name: free_port() for name in ("proxy", "hub", "proxy_api", "service")}
    tokens = {name: secrets.token_hex(16) for name in EVERYONE}
    (base / "singleuser-config").mkdir()
    (base / "singleuser-config" / "jupyter_server_config.py").write_text(singleuser_config())
    (base / "service-config").mkdir()
    (base / "service-config" / "jupyter_server_config.py").write_text(service_config())
    config = base / "jupyterhub_config.py"
    password = secrets.token_hex(8)
    config.write_text(hub_config(base, ports, tokens, f"sqlite:///{base / 'team.db'}", password))
    log = base / "hub.log"
    bin_dir = Path(sys.executable).parent
    env = dict(isolated_env(base), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with log.open("wb") as out:
        process = subprocess.Popen([str(bin_dir / "jupyterhub"), "-f", str(config)], cwd=base, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    hub = Hub(f"http://127.0.0.1:{ports['proxy']}", tokens, process, log, password)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"the Hub exited ({process.returncode}):\n{hub.log_tail()}"
            assert time.monotonic() < deadline, f"the Hub did not answer in 120 s:\n{hub.log_tail()}"
            try:
                if hub.call(ADMIN, "GET", "/hub/api/user", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        servers = [(name, "") for name in EVERYONE] + [(name, TEAM_SERVER) for name in TEAM_SERVER_USERS]
        for name, server in servers:
            status, body = hub.call(name, "POST", f"/hub/api/users/{name}/server" + (f"s/{server}" if server else ""))
            assert status in (201, 202), (name, server, status, body, hub.log_tail())
        deadline = time.monotonic() + 240
        for name, server in servers:
            while not ((hub.call(name, "GET", f"/hub/api/users/{name}")[1].get("servers") or {})
                       .get(server, {}).get("ready")):
                assert time.monotonic() < deadline, f"{name}'s server {server!r} is not ready:\n{hub.log_tail()}"
                time.sleep(0.5)
        while hub.service(ADMIN, "GET", "queues")[0] != 200:  # the service, through the proxy, as a user reaches it
            assert time.monotonic() < deadline, f"the launch service is not up:\n{hub.log_tail()}"
            time.sleep(0.5)
        yield hub
    finally:
        process.terminate()  # the Hub stops the servers it spawned and its proxy as it exits
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


def submit(hub: Hub, who: str, queue: str = "default") -> dict[str, Any]:
    status, job = hub.launch(who, "POST", "jobs", {"queue": queue, "spec": {
        "kind": "command", "command": [sys.executable, "-c", "print('hi')"]}})
    assert status == 201, (who, status, job, hub.log_tail())
    return job


def wait_done(hub: Hub, who: str, job_id: str, timeout: float = 180, *, api: Any = None) -> dict[str, Any]:
    """The job once done, polled through ``api`` (default ``hub.launch``; ``hub.team_server``) as ``who``."""
    api = api or hub.launch
    deadline = time.monotonic() + timeout
    while True:
        status, job = api(who, "GET", f"jobs/{job_id}")
        assert status == 200, (status, job)
        if job["done"]:
            return job
        assert time.monotonic() < deadline, (job, hub.log_tail())
        time.sleep(0.2)


def test_each_hub_user_owns_sees_and_runs_only_their_own_jobs_and_the_hub_admin_sees_all(hub):
    """alice and bob submit through the proxy to their own servers with their own Hub tokens: each job's owner is
    the Hub user, it runs on that user's server's agent (serving as the Hub user), and each lists only their own;
    ada, a Hub admin, lists both from her server."""
    status, agents = hub.launch(ADMIN, "GET", "agents")
    assert status == 200, agents
    by_owner = {}
    for agent in agents["agents"]:
        by_owner.setdefault((agent.get("info") or {}).get("owner"), []).append(agent["id"])
    assert {name: len(by_owner.get(name, [])) for name in EVERYONE} == dict.fromkeys(EVERYONE, 1), \
        agents  # each user's server's in-process agent serves as that Hub user ($JUPYTERHUB_USER)

    jobs = {name: [submit(hub, name) for _ in range(3)] for name in USERS}
    for name, submitted in jobs.items():
        for job in submitted:
            assert (job["owner"], job["owner_name"]) == (name, name), job
            done = wait_done(hub, name, job["id"])
            assert done["state"] == "succeeded", (done, hub.log_tail())
            assert done["agent_id"] == by_owner[name][0], (name, done)  # ran in the user's own server

    ids = {name: {j["id"] for j in submitted} for name, submitted in jobs.items()}
    for name in USERS:
        status, listed = hub.launch(name, "GET", "jobs")
        assert status == 200, listed
        assert {j["id"] for j in listed["jobs"]} == ids[name], (name, listed)
    other = jobs["bob"][0]["id"]
    status, body = hub.launch("alice", "GET", f"jobs/{other}")
    assert status == 404, body  # another user's job is as unknown as no job
    status, body = hub.launch("alice", "POST", f"jobs/{other}/cancel")
    assert status == 404, body

    status, listed = hub.launch(ADMIN, "GET", "jobs")
    assert status == 200, listed
    assert {j["id"] for j in listed["jobs"]} == ids["alice"] | ids["bob"], listed
    assert hub.launch(ADMIN, "GET", f"jobs/{other}")[1]["owner"] == "bob"


def test_only_the_hub_admin_administers_the_teams_queues(hub):
    """The team's queues are on the shared store: a Hub user may read them but not create or change them; a Hub
    admin may, and the README's team queue (Docker: shared) is one every user's server lists and submits to."""
    status, body = hub.launch("alice", "POST", "queues", {"queue_name": "alices"})
    assert status == 403, body
    status, body = hub.launch("bob", "PUT", "queues/default", {"queue_name": "default", "shared": True})
    assert status == 403, body
    status, queue = hub.launch(ADMIN, "POST", "queues", {"queue_name": "gpu", "provider": {
        "type": "docker", "image": "python:3.12"}})  # the README's team queue
    assert status == 201 and queue["shared"] is True, queue
    for name in USERS:
        status, queues = hub.launch(name, "GET", "queues")
        assert status == 200, queues
        assert {q["name"]: q["shared"] for q in queues["queues"]}.get("gpu") is True, queues
        job = submit(hub, name, "gpu")  # no agent of the team serves it here: it waits for one
        assert (job["state"], job["owner"]) == ("queued", name), job


def test_a_hub_admin_is_an_admin_by_the_hubs_admin_flag_and_a_user_by_a_scope_granted_to_her(hub):
    """ada's token here carries only access to her server (as a browser's OAuth token does, no admin:users): the
    admin flag of the user model the Hub gives her server makes her an admin. carol is no Hub admin, but holds the
    custom scope her server's HubAuthorizer.admin_scopes names."""
    status, token = hub.call(ADMIN, "POST", f"/hub/api/users/{ADMIN}/tokens",
                             {"scopes": [f"access:servers!user={ADMIN}"], "note": "like a browser's"})
    assert status == 201, token
    narrow = Hub(hub.url, {ADMIN: token["token"]}, hub.process, hub.log)
    status, me = narrow.call(ADMIN, "GET", "/hub/api/user")
    assert status == 200 and "admin:users" not in me["scopes"] and me["admin"] is True, me

    status, me = hub.call(GRANTED, "GET", "/hub/api/user")
    assert status == 200 and ADMIN_SCOPE in me["scopes"] and me["admin"] is False, me
    status, queue = hub.launch(ADMIN, "POST", "queues", {"queue_name": "held"})  # no agent serves it
    assert status == 201, queue
    alices = submit(hub, "alice", queue="held")
    for who, client in ((ADMIN, narrow), (GRANTED, hub)):
        status, job = client.launch(who, "GET", f"jobs/{alices['id']}")
        assert status == 200 and job["owner"] == "alice", (who, job)
        status, listed = client.launch(who, "GET", "jobs?owner=alice")
        assert alices["id"] in {j["id"] for j in listed["jobs"]}, (who, listed)
    status, body = hub.launch("bob", "GET", f"jobs/{alices['id']}")
    assert status == 404, body
    status, job = hub.launch(GRANTED, "POST", f"jobs/{alices['id']}/cancel")
    assert status == 202 and job["owner"] == "alice", job


def team_queue() -> dict[str, Any]:
    """docs/team.md's GPU queue, on the local backend here: a shared local queue (no cluster in this test), which only
    the service's agent serves."""
    return {"queue_name": "gpu", "provider": {"type": "local"}, "shared": True}


def service_agent(hub: Hub) -> dict[str, Any]:
    """The one agent serving the team's queue on the service's store: the ``jupyter launch serve`` process's own."""
    status, agents = hub.service(ADMIN, "GET", "agents")
    assert status == 200, agents
    serving = [a for a in agents["agents"] if "gpu" in a["queues"]]
    assert len(serving) == 1, agents
    agent = serving[0]
    cmdline = Path(f"/proc/{agent['info']['pid']}/cmdline").read_bytes().split(b"\0")
    assert b"serve" in cmdline and agent["info"]["owner"] is None, (cmdline, agent)  # it serves the team
    return agent


def ensure_team_queue(hub: Hub) -> None:
    status, body = hub.service(ADMIN, "GET", "queues/gpu")
    if status == 404:
        status, body = hub.service(ADMIN, "POST", "queues", team_queue())
        assert status == 201, body
    assert status in (200, 201), body


def wait_service_done(hub: Hub, who: str, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, job = hub.service(who, "GET", f"jobs/{job_id}")
        assert status == 200, (status, job)
        if job["done"]:
            return job
        assert time.monotonic() < deadline, (job, hub.log_tail())
        time.sleep(0.2)


def test_the_launch_service_runs_every_users_jobs_on_its_agent_and_shows_each_only_their_own(hub):
    """docs/team.md: the Hub runs ``jupyter launch serve --queue gpu`` as its service. Only a Hub admin creates the
    team's queue there; alice and bob submit to it with their own Hub tokens at /services/launch/; the service's own
    agent runs both users' jobs, each owned by the Hub user; each lists only their own, ada lists both."""
    status, body = hub.service("alice", "POST", "queues", {"queue_name": "alices"})
    assert status == 403, body
    ensure_team_queue(hub)
    agent = service_agent(hub)

    jobs = {}
    for name in USERS:
        status, job = hub.service(name, "POST", "jobs", {"queue": "gpu", "spec": {
            "kind": "command", "command": [sys.executable, "-c", f"print('hi {name}')"]}})
        assert status == 201, (name, status, job, hub.log_tail())
        assert (job["owner"], job["owner_name"]) == (name, name), job
        jobs[name] = job["id"]
    for name, job_id in jobs.items():
        done = wait_service_done(hub, name, job_id)
        assert done["state"] == "succeeded" and done["agent_id"] == agent["id"], (done, hub.log_tail())

    for name in USERS:
        status, listed = hub.service(name, "GET", "jobs")
        assert status == 200, listed
        assert {j["id"] for j in listed["jobs"]} == {jobs[name]}, (name, listed)
    status, body = hub.service("alice", "GET", f"jobs/{jobs['bob']}")
    assert status == 404, body
    status, listed = hub.service(ADMIN, "GET", "jobs")
    assert status == 200, listed
    assert {j["id"] for j in listed["jobs"]} == set(jobs.values()), listed
    status, log = hub.service("bob", "GET", f"jobs/{jobs['bob']}/logs")
    assert status == 200 and "hi bob" in json.dumps(log), log


def test_the_launch_service_refuses_a_request_without_a_token_or_without_its_access_scope(hub):
    """No token, or alice's token with only access to her own server (no ``access:services!service=launch``): the
    service refuses the request, and shows nothing."""
    status, token = hub.call("alice", "POST", "/hub/api/users/alice/tokens",
                             {"scopes": ["access:servers!user=alice"], "note": "no service access"})
    assert status == 201, token
    narrow = Hub(hub.url, {"alice": token["token"]}, hub.process, hub.log)
    status, me = narrow.call("alice", "GET", "/hub/api/user")
    assert status == 200 and f"access:services!service={SERVICE}" not in me["scopes"], me
    for path in ("jobs", "queues"):
        status, body = narrow.service("alice", "GET", path)
        assert status == 403, (path, status, body)
    status, body = narrow.service("alice", "POST", "jobs", {"queue": "gpu", "spec": {
        "kind": "command", "command": [sys.executable, "-c", "print(1)"]}})
    assert status == 403, body
    status, body = hub.service(None, "GET", "jobs")
    assert status == 403, body


def test_the_cli_in_a_users_server_submits_to_the_service_with_the_servers_own_hub_token(hub, tmp_path):
    """In alice's server, `jupyter launch` reaches the service with $JUPYTER_LAUNCH_SERVER_URL (docs/team.md's
    c.Spawner.environment) and the server's own $JUPYTERHUB_API_TOKEN, whose scopes (c.Spawner.server_token_scopes)
    include the service's access. The Hub's tokens of alice's server carry that scope; the CLI here runs with a token of
    the same scopes and the variables her server has, submits to the team queue, follows the job to its end and lists
    only her jobs."""
    status, tokens = hub.call(ADMIN, "GET", "/hub/api/users/alice/tokens")
    assert status == 200, tokens
    server_tokens = [t for t in tokens["api_tokens"] if (t.get("note") or "").startswith("Server at ")]
    assert server_tokens and all(f"access:services!service={SERVICE}" in t["scopes"] for t in server_tokens), tokens
    status, token = hub.call("alice", "POST", "/hub/api/users/alice/tokens",
                             {"scopes": server_tokens[0]["scopes"], "note": "as alice's server's"})
    assert status == 201, token
    ensure_team_queue(hub)

    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"command": [sys.executable, "-c", "print('from the CLI')"]}))
    bin_dir = Path(sys.executable).parent
    env = dict(isolated_env(tmp_path), JUPYTERHUB_API_TOKEN=token["token"], JUPYTERHUB_BASE_URL="/",
               JUPYTER_LAUNCH_SERVER_URL=f"{hub.url}{SERVICE_PREFIX}", HOME=str(tmp_path))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(bin_dir / "jupyter-launch"), *args], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=240)

    run = cli("submit", "--config", str(job), "--queue", "gpu", "--follow")
    assert run.returncode == 0 and "from the CLI" in run.stdout, (run.stdout, run.stderr, hub.log_tail())
    run = cli("list", "--json")
    assert run.returncode == 0, run.stderr
    listed = json.loads(run.stdout)
    assert listed and {j["owner"] for j in listed} == {"alice"}, listed
    assert any(j["state"] == "succeeded" and j["agent_id"] == service_agent(hub)["id"] for j in listed), listed

    env.pop("JUPYTERHUB_API_TOKEN")  # no token at all: the service's refusal, said in one line
    run = cli("list")
    assert run.returncode == 2 and "refused the token" in run.stderr, (run.stdout, run.stderr)


REPORT = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                        "language": "python"}},
          "cells": [{"cell_type": "code", "id": "c1", "metadata": {}, "execution_count": None, "outputs": [],
                     "source": "print('report of alice')\n"}]}


def follow_over_websocket(hub: Hub, who: str, path: str) -> tuple[bytes, dict[str, Any]]:
    """The log bytes and the ``end`` event of ``/launch/api/{path}`` (a job's ``logs/ws``) on ``who``'s server
    ``team``, as the panel follows a job."""
    import asyncio

    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    async def follow() -> tuple[bytes, dict[str, Any]]:
        url = f"ws{hub.url[4:]}/user/{who}/{TEAM_SERVER}/launch/api/{path}"
        conn = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {hub.tokens[who]}"},
                                                   connect_timeout=30, request_timeout=30))
        data, end = b"", None
        try:
            # Read on past the end event until the server closes the stream (as it does after it), so no socket is
            # left open when the loop goes.
            while (message := await asyncio.wait_for(conn.read_message(), 180)) is not None:
                if isinstance(message, bytes):
                    data += message.partition(b"\n")[2]
                elif json.loads(message)["event"] == "end":
                    end = json.loads(message)
        finally:
            conn.close()
        assert end is not None, f"the stream closed before the job's end:\n{hub.log_tail()}"
        return data, end

    return asyncio.run(follow())


def test_a_users_lab_server_serves_the_panel_from_the_launch_service(hub):
    """docs/team.md: a user's server with $JUPYTER_LAUNCH_SERVER_URL (the Hub's c.Spawner.environment) serves its
    /launch/api/, the Launch panel's, from the service with the server's own Hub token, and keeps no store and runs no
    agent of its own. alice submits a notebook of her server's files to the team queue as the panel does: the
    service's agent runs it, and its log is read and followed through her server; her server lists only her jobs,
    bob's is 404 there, ada's server lists both; what only the service serves answers 501 naming the setting."""
    ensure_team_queue(hub)
    agent = service_agent(hub)
    home = hub.log.parent / "homes" / "alice"
    (home / "team-report.ipynb").write_text(json.dumps(REPORT))

    status, job = hub.team_server("alice", "POST", "jobs", {"queue": "gpu", "notebook": "team-report.ipynb"})
    assert status == 201 and (job["owner"], job["spec"]["notebook"]) == ("alice", "team-report.ipynb"), \
        (status, job, hub.log_tail())
    status, there = hub.service("alice", "GET", f"jobs/{job['id']}")  # the service's own job, its artifact uploaded
    assert status == 200 and there["artifact"] == job["artifact"], there
    log, end = follow_over_websocket(hub, "alice", f"jobs/{job['id']}/logs/ws")
    assert end["state"] == "succeeded" and b"report of" in log, (end, log, hub.log_tail())
    done = wait_done(hub, "alice", job["id"], api=hub.team_server)
    assert done["agent_id"] == agent["id"], done  # run by the service's agent, in `jupyter launch serve`
    status, page = hub.team_server("alice", "GET", f"jobs/{job['id']}/logs")
    assert status == 200 and "report of" in "".join(c["data"] for c in page["chunks"]), page
    status, outputs = hub.team_server("alice", "GET", f"jobs/{job['id']}/outputs")
    assert status == 200 and "team-report.ipynb" in {o["path"] for o in outputs["outputs"]}, outputs
    status, executed = hub.team_server("alice", "GET", f"jobs/{job['id']}/outputs/team-report.ipynb")
    assert status == 200 and "report of alice" in json.dumps(executed["cells"][0]["outputs"]), executed
    team_home = hub.log.parent / "team-homes" / "alice"
    assert not list(team_home.glob("*.db")), list(team_home.iterdir())  # no store of its own
    status, agents = hub.team_server("alice", "GET", "agents")
    assert status == 200 and {a["id"] for a in agents["agents"]} == {a["id"] for a in hub.service(
        ADMIN, "GET", "agents")[1]["agents"]}, agents  # the service's agents, none of its own

    status, bobs = hub.service("bob", "POST", "jobs", {"queue": "gpu", "spec": {
        "kind": "command", "command": [sys.executable, "-c", "print('bob')"]}})
    assert status == 201, bobs
    status, body = hub.team_server("alice", "GET", f"jobs/{bobs['id']}")
    assert status == 404, body
    status, listed = hub.team_server("alice", "GET", "jobs?limit=500")
    assert status == 200, listed
    ids = {j["id"] for j in listed["jobs"]}
    assert job["id"] in ids and bobs["id"] not in ids and {j["owner"] for j in listed["jobs"]} == {"alice"}, listed
    status, listed = hub.team_server(ADMIN, "GET", "jobs?limit=500")
    assert status == 200 and {job["id"], bobs["id"]} <= {j["id"] for j in listed["jobs"]}, listed

    status, body = hub.team_server(ADMIN, "GET", "tokens")
    assert status == 501 and "c.LaunchApp.service_url" in body["message"], body


def test_alice_launches_a_notebook_from_the_panel_in_her_lab_and_the_service_runs_it(hub):
    """In a browser (Chromium): alice logs in to the Hub, opens her server ``team``'s Lab, launches a notebook there
    from its toolbar to the team's queue; the panel's job view streams its log to "succeeded", and the job is the
    service's, run by its agent."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("Python playwright is not installed: `pip install playwright` (the browser is Debian's Chromium)")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `bash ci/chromium.sh`")
    ensure_team_queue(hub)
    agent = service_agent(hub)
    notebook = {**REPORT, "cells": [{**REPORT["cells"][0], "source": "print('launched from the panel')\n"}]}
    (hub.log.parent / "homes" / "alice" / "panel-report.ipynb").write_text(json.dumps(notebook))
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(f"{hub.url}/hub/login?next=/user/alice/{TEAM_SERVER}/lab")
            page.fill("#username_input", "alice")
            page.fill("#password_input", hub.password)
            page.click("#login_submit")
            page.wait_for_selector(".jp-SideBar [data-id='jupyter-launch-panel']", timeout=120_000)
            page.wait_for_function("() => window.jupyterapp !== undefined && "
                                   "!document.querySelector('#jupyterlab-splash')")
            page.evaluate("path => window.jupyterapp.commands.execute('docmanager:open', {path})",
                          "panel-report.ipynb")
            opened = page.locator(".jp-NotebookPanel").filter(visible=True)
            expect(opened.locator(".jp-Cell")).to_have_count(1)
            opened.locator(".jp-LaunchToolbarButton").click()
            dialog = page.locator(".jp-LaunchSubmitDialog")
            dialog.locator("[data-field=queue] select").select_option("gpu")  # the service's queue, listed here
            dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
            expect(dialog).to_have_count(0)
            view = page.locator(".jp-LaunchJob").filter(visible=True)
            expect(view).to_have_count(1)
            job_id = view.get_attribute("id").removeprefix("jp-launch-job-")
            expect(view.locator(".jp-LaunchLog-row").filter(has_text="launched from the panel")).to_have_count(
                1, timeout=120_000)
            expect(view.locator(".jp-LaunchJob-titleRow .jp-LaunchState")).to_have_text("succeeded")
        finally:
            browser.close()
    status, job = hub.service("alice", "GET", f"jobs/{job_id}")
    assert status == 200 and (job["owner"], job["agent_id"]) == ("alice", agent["id"]), job


def test_a_remote_agent_serves_a_team_queue_of_the_service_through_the_hub_with_an_agent_token(hub, tmp_path):
    """docs/team.md's other way to run a queue's jobs: agents elsewhere (a GPU machine, `queue up`'s), each a remote
    agent for the service that reaches it through the Hub's proxy with an agent token. Only a Hub admin creates the
    token; the agent it runs serves the queue and runs bob's job."""
    status, body = hub.service("alice", "POST", "tokens", {"name": "gpu-box", "queues": ["cpu"]})
    assert status == 403, body
    status, queue = hub.service(ADMIN, "POST", "queues", {"queue_name": "cpu", "provider": {"type": "local"},
                                                          "shared": True})
    assert status == 201, queue
    status, token = hub.service(ADMIN, "POST", "tokens", {"name": "gpu-box", "queues": ["cpu"]})
    assert status == 201, token
    env = dict(isolated_env(tmp_path), JUPYTER_LAUNCH_SERVER_URL=f"{hub.url}{SERVICE_PREFIX}",
               JUPYTER_LAUNCH_TOKEN=token["token"], JUPYTER_LAUNCH_HOME=str(tmp_path / "agent-home"))
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen([str(Path(sys.executable).parent / "jupyter-launch"), "agent", "--queue", "cpu",
                                  "--Agent.poll_interval=0.5"], env=env, cwd=tmp_path, stdout=out,
                                 stderr=subprocess.STDOUT)
    try:
        status, job = hub.service("bob", "POST", "jobs", {"queue": "cpu", "spec": {
            "kind": "command", "command": [sys.executable, "-c", "print('on the box')"]}})
        assert status == 201, job
        done = wait_service_done(hub, "bob", job["id"])
        assert done["state"] == "succeeded", (done, log.read_text(errors="replace"))
        status, agents = hub.service(ADMIN, "GET", "agents")
        (remote,) = [a for a in agents["agents"] if a["id"] == done["agent_id"]]
        assert remote["info"]["pid"] == agent.pid and remote["token_id"] == token["id"], remote
    finally:
        agent.terminate()
        agent.wait(60)


def test_launch_magic_in_a_users_kernel_submits_to_the_service_with_the_servers_own_hub_token(hub, tmp_path):
    """%%launch in a kernel of alice's server (her server's variables: docs/team.md's $JUPYTER_LAUNCH_SERVER_URL and
    a $JUPYTERHUB_API_TOKEN scoped as her server's) sends the cell to the team queue of the service: it runs on the
    service's agent as alice's job, and the cell shows its output."""
    import nbformat
    from nbclient import NotebookClient

    status, tokens = hub.call(ADMIN, "GET", "/hub/api/users/alice/tokens")
    assert status == 200, tokens
    server_tokens = [t for t in tokens["api_tokens"] if (t.get("note") or "").startswith("Server at ")]
    assert server_tokens, tokens
    status, token = hub.call("alice", "POST", "/hub/api/users/alice/tokens",
                             {"scopes": server_tokens[0]["scopes"], "note": "as alice's kernel's"})
    assert status == 201, token
    ensure_team_queue(hub)
    work = tmp_path / "work"
    work.mkdir()
    env = dict(isolated_env(tmp_path), JUPYTERHUB_API_TOKEN=token["token"], JUPYTERHUB_BASE_URL="/",
               JUPYTER_LAUNCH_SERVER_URL=f"{hub.url}{SERVICE_PREFIX}", HOME=str(tmp_path))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    marker = f"cell-{secrets.token_hex(4)}"
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("%load_ext jupyter_launch"),
        nbformat.v4.new_code_cell(f"%%launch --queue gpu --wait\nprint({marker!r})")])
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute(
        env=env)
    shown = json.dumps(nb.cells[1].outputs)
    assert marker in shown, shown
    status, listed = hub.call("alice", "GET", f"{SERVICE_PREFIX}launch/api/jobs?limit=200")
    assert status == 200, listed
    mine = [j for j in listed["jobs"] if j["queue"] == "gpu" and j["kind"] == "cell" and j["state"] == "succeeded"]
    assert mine and {j["owner"] for j in listed["jobs"]} == {"alice"}, listed
    assert any(j["agent_id"] == service_agent(hub)["id"] for j in mine), mine
