"""``jupyter launch serve`` outside a Hub: a real server process with jupyter-launch as its only extension, its agent
serving the team (anyone's jobs on the queues named), behind jupyter_server's token; and how it tells a Hub service
apart, and the CLI's Hub token for a Hub service's URL. Under a real Hub: tests/server/test_jupyterhub.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launch_server import LaunchServer

from jupyter_launch.client import LaunchClient
from jupyter_launch.remote.discovery import client_for
from jupyter_launch.server.serve import ServeError, make_server, started_by_hub


class ServedServer(LaunchServer):
    """``jupyter launch serve --queue ...`` in place of ``jupyter server``, with the same config file (found through
    $JUPYTER_CONFIG_DIR: serve reads jupyter_server_config.py as any Jupyter server does)."""

    def __init__(self, base: Path, *, queues: list[str], store_url: str):
        super().__init__(base, agent_queues=queues)
        self.store_url = store_url
        config_dir = base / "config"
        config_dir.mkdir()
        self.config.rename(config_dir / "jupyter_server_config.py")
        self.env["JUPYTER_CONFIG_DIR"] = str(config_dir)

    def start_process(self) -> subprocess.Popen:
        cmd = [str(Path(sys.executable).parent / "jupyter-launch"), "serve", "--store-url", self.store_url,
               *(f"--queue={q}" for q in self.agent_queues), f"--ServerApp.port={self.port}",
               "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.root}"]
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.root)
        return self.process


def test_serve_standalone_runs_only_jupyter_launch_and_its_agent_runs_every_users_jobs(tmp_path):
    """The queue is private (local): an agent serving as one user would leave bob's job waiting. serve's agent serves
    the team, so it runs both the token holder's job and bob's (submitted on the store directly); the server has no
    other extension (no Lab), and refuses a request without its token."""
    store_url = f"sqlite:///{tmp_path / 'team.db'}"
    server = ServedServer(tmp_path / "served", queues=["team"], store_url=store_url)
    server.start()
    try:
        status, queue = server.api("POST", "queues", {"queue_name": "team", "provider": {"type": "local"}})
        assert status == 201 and queue["shared"] is False, queue
        status, agents = server.api("GET", "agents")
        (agent,) = agents["agents"]
        assert agent["info"]["owner"] is None and agent["info"]["pid"] == server.process.pid, agent

        status, mine = server.api("POST", "jobs", {"queue": "team", "spec": {
            "kind": "command", "command": [sys.executable, "-c", "print('mine')"]}})
        assert status == 201, mine
        bobs = LaunchClient(store_url, home=server.home, owner="bob").submit(  # the server's blobs: on this machine
            spec={"kind": "command", "command": [sys.executable, "-c", "print('bob')"]}, root=server.root,
            queue="team")
        deadline = time.monotonic() + 120
        for job_id in (mine["id"], bobs.id):
            while not (job := server.api("GET", f"jobs/{job_id}")[1])["done"]:
                assert time.monotonic() < deadline, (job, server.log_tail())
                time.sleep(0.2)
            assert (job["state"], job["agent_id"]) == ("succeeded", agent["id"]), (job, server.log_tail())
        assert job["owner"] == "bob", job

        assert server.api("GET", "jobs", token="")[0] == 403
        log = server.log.read_text()
        assert "jupyter_launch | extension was successfully loaded" in log and "jupyterlab" not in log, log
    finally:
        server.stop()


def test_serve_is_a_hub_service_only_when_the_hub_started_it(monkeypatch):
    assert started_by_hub({"JUPYTERHUB_SERVICE_NAME": "launch", "JUPYTERHUB_API_TOKEN": "t"})
    # a user's single-user server has a Hub token and a service URL, but is no service
    assert not started_by_hub({"JUPYTERHUB_API_TOKEN": "t", "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:1/"})
    for name in ("JUPYTERHUB_API_TOKEN", "JUPYTERHUB_SERVICE_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ServeError, match=r"\$JUPYTERHUB_API_TOKEN, \$JUPYTERHUB_SERVICE_URL not set"):
        make_server(hub=True)  # --hub where no Hub started it
    monkeypatch.setenv("JUPYTERHUB_SERVICE_NAME", "launch")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "t")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")
    monkeypatch.setitem(sys.modules, "jupyterhub.singleuser.extension", None)  # not installed
    with pytest.raises(ServeError, match="pip install jupyterhub"):
        make_server(hub=True)


def test_the_cli_sends_a_hub_servers_token_only_to_a_hub_services_url(monkeypatch, tmp_path):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "server-token")
    monkeypatch.setenv("JUPYTERHUB_BASE_URL", "/jhub/")
    for name in ("JUPYTER_LAUNCH_TOKEN", "JUPYTER_LAUNCH_SERVER_URL"):
        monkeypatch.delenv(name, raising=False)

    def sent(url: str, token: str | None = None) -> str:
        return client_for(url, token, home=tmp_path).store.user_http.token

    assert sent("https://hub.example.org/jhub/services/launch/") == "server-token"
    assert sent("https://hub.example.org/jhub/services/launch/", "mine") == "mine"
    assert sent("https://hub.example.org/jhub/user/alice/") == ""  # a user's server: its own token, not the Hub's
    assert sent("https://elsewhere.example.org/launch/") == ""
    monkeypatch.delenv("JUPYTERHUB_BASE_URL")  # not in a Hub's server
    assert sent("https://hub.example.org/services/launch/") == ""
    assert os.environ["JUPYTERHUB_API_TOKEN"] == "server-token"
