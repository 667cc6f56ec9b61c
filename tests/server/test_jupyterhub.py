"""jupyter-launch in JupyterHub single-user servers, against a real Hub (``jupyterhub`` from PyPI and
``configurable-http-proxy`` from npm, both installed by ci/test.sh) on loopback.

Hub users (alice and bob; ada, a Hub admin; carol, granted a custom admin scope), each with a Hub API token and a
single-user server the Hub spawns as a local process (SimpleLocalProcessSpawner: no OS users), all on one jupyter-launch
store. Every request goes through the Hub's proxy to the user's own server with the user's own token, as a notebook or
CLI of that user would. Fails, naming what is missing, without jupyterhub or configurable-http-proxy.
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

from launch_server import ROOT, free_port, isolated_env

USERS = ("alice", "bob")
ADMIN = "ada"  # a Hub admin
GRANTED = "carol"  # not a Hub admin: the README's Hub role grants her the scope its servers' config takes for admins
ADMIN_SCOPE = "custom:launch:admin"
EVERYONE = (*USERS, ADMIN, GRANTED)


@dataclass
class Hub:
    url: str  # the proxy's public URL
    tokens: dict[str, str]  # Hub user -> a Hub API token of theirs
    process: subprocess.Popen
    log: Path

    def call(self, who: str, method: str, path: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
        """``path`` under the proxy, with ``who``'s token; the status and the JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={"Authorization": f"token {self.tokens[who]}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")

    def launch(self, who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """jupyter-launch's API on ``who``'s own single-user server, as ``who``."""
        return self.call(who, method, f"/user/{who}/launch/api/{path}", body)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def readme_block(marker: str) -> str:
    """The README's Python block after ``<!-- marker: ... -->`` (its "JupyterHub" section), as written there."""
    after = (ROOT / "README.md").read_text().split(f"<!-- {marker}:", 1)[1]
    return textwrap.dedent(after.split("```python\n", 1)[1].split("```", 1)[0])


def singleuser_config() -> str:
    """The users' servers' config (from $JUPYTER_CONFIG_DIR): the README's, and a quicker agent."""
    return readme_block("singleuser-config") + "c.LaunchApp.reap_interval = 0.5\nc.Agent.poll_interval = 0.5\n"


def missing_hub_parts() -> list[str]:
    missing = []
    if importlib.util.find_spec("jupyterhub") is None:
        missing.append("the jupyterhub package (pip install jupyterhub; it is in jupyter-launch's `test` extra)")
    if shutil.which("configurable-http-proxy") is None:
        missing.append("configurable-http-proxy on PATH (npm install -g configurable-http-proxy; ci/test.sh does)")
    return missing


def hub_config(base: Path, ports: dict[str, int], tokens: dict[str, str], store_url: str) -> str:
    bin_dir = Path(sys.executable).parent
    env = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JUPYTER_LAUNCH_HOME": str(base / "launch-home"), "JUPYTER_LAUNCH_STORE_URL": store_url,
           "JUPYTER_CONFIG_DIR": str(base / "singleuser-config"),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
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
c.DummyAuthenticator.password = {secrets.token_hex(8)!r}
c.Authenticator.allowed_users = {{*{USERS!r}, {GRANTED!r}}}
c.Authenticator.admin_users = {{{ADMIN!r}}}
c.JupyterHub.api_tokens = {{token: name for name, token in {tokens!r}.items()}}
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {str(base / 'homes' / '{username}')!r}
c.Spawner.cmd = [{str(bin_dir / 'jupyterhub-singleuser')!r}]
c.Spawner.args = ["--allow-root"]
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 180
""" + readme_block("jupyterhub-config") + f"""
c.Spawner.environment = {env!r}  # the README's, with this test's store
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    missing = missing_hub_parts()
    if missing:
        pytest.fail("a real JupyterHub is needed and these are missing: " + "; ".join(missing))
    base = tmp_path_factory.mktemp("hub")
    ports = {name: free_port() for name in ("proxy", "hub", "proxy_api")}
    tokens = {name: secrets.token_hex(16) for name in EVERYONE}
    (base / "singleuser-config").mkdir()
    (base / "singleuser-config" / "jupyter_server_config.py").write_text(singleuser_config())
    config = base / "jupyterhub_config.py"
    config.write_text(hub_config(base, ports, tokens, f"sqlite:///{base / 'team.db'}"))
    log = base / "hub.log"
    bin_dir = Path(sys.executable).parent
    env = dict(isolated_env(base), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with log.open("wb") as out:
        process = subprocess.Popen([str(bin_dir / "jupyterhub"), "-f", str(config)], cwd=base, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    hub = Hub(f"http://127.0.0.1:{ports['proxy']}", tokens, process, log)
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
        for name in EVERYONE:
            status, body = hub.call(name, "POST", f"/hub/api/users/{name}/server")
            assert status in (201, 202), (name, status, body, hub.log_tail())
        deadline = time.monotonic() + 240
        for name in EVERYONE:
            while not ((hub.call(name, "GET", f"/hub/api/users/{name}")[1].get("servers") or {})
                       .get("", {}).get("ready")):
                assert time.monotonic() < deadline, f"{name}'s server is not ready:\n{hub.log_tail()}"
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


def wait_done(hub: Hub, who: str, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, job = hub.launch(who, "GET", f"jobs/{job_id}")
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
