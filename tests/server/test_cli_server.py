"""`jupyter launch` through a running server: real `jupyter server` processes with the extension, the CLI as real
subprocesses. A named server (--server/--token), a remote agent with an agent token (downloads the artifact, uploads
outputs, stops once its token is revoked), one-line errors, discovery of a local server, and the embedded fallback.

Every process gets its own Jupyter runtime dir and data dir under tmp, so no server of the person running the tests
is ever discovered and no state lands in their home.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from launch_server import LaunchServer, free_port, isolated_env as base_env

from jupyter_launch.store import BlobStore

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = ROOT / "tests" / "notebooks"
USER_TOKEN = "launch-cli-test"


def run_cli(env: dict[str, str], *args: str, check: bool = False, timeout: float = 180) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "jupyter_launch.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"jupyter launch {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def through(server: LaunchServer, env: dict[str, str]) -> Any:
    """``cli(*args)``: `jupyter launch --server URL --token T *args`."""

    def cli(*args: str, **kw: Any) -> subprocess.CompletedProcess:
        return run_cli(env, "--server", server.url, "--token", USER_TOKEN, *args, **kw)

    return cli


def submitted_id(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.split("submitted job ")[1].split()[0]


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jupyter launch: error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LaunchServer]:
    """One server for the named-server tests; queue `remote` is served by no agent of its own."""
    s = LaunchServer(tmp_path_factory.mktemp("named"), agent_queues=["default", "gpu-training-queue"],
                     token=USER_TOKEN).start()
    yield s
    s.stop()


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """A user on another machine: their own (empty) launch home, the server named in the environment."""
    return dict(base_env(tmp_path), JUPYTER_LAUNCH_HOME=str(tmp_path / "user-home"))


def test_user_commands_go_through_the_named_server(server, user_env, tmp_path):
    cli = through(server, user_env)
    created = cli("queue", "create", str(EXAMPLES / "my_queue.local.yaml"), check=True)
    assert "queue gpu-training-queue created" in created.stdout
    assert "gpu-training-queue" in cli("queue", "list", check=True).stdout

    proc = cli("submit", str(EXAMPLES / "hello.ipynb"), "--queue", "gpu-training-queue", "--job-type", "train-model",
               "--follow")
    assert proc.returncode == 0, proc.stderr
    assert "hello, world!" in proc.stdout
    assert "running one in this process" not in proc.stderr  # the server's own agent ran it
    job_id = submitted_id(proc)

    assert job_id in cli("jobs", check=True).stdout
    shown = json.loads(cli("show", job_id, "--json", check=True).stdout)
    assert (shown["state"], shown["queue"], shown["exit_code"]) == ("succeeded", "gpu-training-queue", 0)
    assert "hello, world!" in cli("logs", job_id, check=True).stdout
    assert len(cli("metrics", job_id, check=True).stdout.splitlines()) == 3
    written = cli("outputs", job_id, "--to", str(tmp_path / "out"), check=True).stdout
    assert "greeting.txt" in written
    assert (tmp_path / "out" / "greeting.txt").read_text() == "hello, world!\n"
    # The options also go after the command, and the environment names the server as well as the flags do.
    env = dict(user_env, JUPYTER_LAUNCH_SERVER_URL=server.url, JUPYTER_LAUNCH_TOKEN=USER_TOKEN)
    rerun = run_cli(env, "rerun", job_id, "--follow")
    assert rerun.returncode == 0 and "hello, world!" in rerun.stdout, rerun.stderr
    listed = run_cli(dict(user_env), "jobs", "--server", server.url, "--token", USER_TOKEN, "--json", check=True)
    assert len(json.loads(listed.stdout)) >= 2

    # It all happened in the server's store: the user's own launch home has no store at all.
    assert server.api("GET", f"jobs/{job_id}")[1]["state"] == "succeeded"
    assert not (tmp_path / "user-home" / "launch.db").exists()


def test_remote_agent_downloads_the_artifact_uploads_outputs_and_stops_when_revoked(server, user_env, tmp_path):
    cli = through(server, user_env)
    (tmp_path / "remote.yaml").write_text("queue_name: remote\nprovider:\n  type: local\n")
    cli("queue", "create", str(tmp_path / "remote.yaml"), check=True)
    # The admin, on the server's machine, works on the server's store.
    admin_env = dict(base_env(tmp_path), JUPYTER_LAUNCH_HOME=str(server.home))
    created = run_cli(admin_env, "token", "create", "--name", "box-1", "--queue", "remote", check=True)
    agent_token = created.stdout.strip()
    assert agent_token.startswith("jla_") and len(created.stdout.splitlines()) == 1
    token_id = agent_token.split("_")[1]
    assert f"{token_id}  box-1  remote  active" in run_cli(admin_env, "token", "list", check=True).stdout
    # The server's own hint for a refused agent token reads `token create --queue Q`: that works as written.
    unnamed = run_cli(admin_env, "token", "create", "--queue", "remote", check=True).stdout.strip()
    assert f"{unnamed.split('_')[1]}  remote-agent  remote  active" in run_cli(admin_env, "token", "list").stdout

    agent_home = tmp_path / "agent-home"
    agent_log = tmp_path / "agent.log"
    with open(agent_log, "wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "jupyter_launch.cli", "agent", "--server", server.url, "--token", agent_token,
             "--queue", "remote"],
            env=dict(base_env(tmp_path), JUPYTER_LAUNCH_HOME=str(agent_home)), stdout=out, stderr=subprocess.STDOUT)
    try:
        project = tmp_path / "project"
        project.mkdir()
        (project / "data.txt").write_text("from the artifact\n")
        (project / "reader.ipynb").write_text(json.dumps({
            "cells": [{"cell_type": "code", "execution_count": None, "id": "c0", "metadata": {}, "outputs": [],
                       "source": "import pathlib, jupyter_launch\n"
                                 "text = pathlib.Path('data.txt').read_text()\n"
                                 "print('read:', text.strip())\n"
                                 "(jupyter_launch.output_dir() / 'copy.txt').write_text(text.upper())"}],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}))
        proc = cli("submit", str(project / "reader.ipynb"), "--queue", "remote", "--follow")
        assert proc.returncode == 0, f"{proc.stderr}\n{agent_log.read_text()}"
        assert "read: from the artifact" in proc.stdout
        job_id = submitted_id(proc)
        shown = json.loads(cli("show", job_id, "--json", check=True).stdout)
        assert shown["agent_id"] and shown["agent_id"] in agent_log.read_text()  # the remote agent, not the server's
        # The remote agent fetched the artifact into its own cache, and uploaded the outputs to the server.
        assert BlobStore(agent_home / "agent-cache").has(shown["artifact"])
        cli("outputs", job_id, "--to", str(tmp_path / "out"), check=True)
        assert (tmp_path / "out" / "copy.txt").read_text() == "FROM THE ARTIFACT\n"
        assert (tmp_path / "out" / "reader.ipynb").exists()

        revoked = run_cli(admin_env, "token", "revoke", token_id, check=True)
        assert "revoked agent token" in revoked.stdout
        second = submitted_id(cli("submit", str(project / "reader.ipynb"), "--queue", "remote", check=True))
        assert agent.wait(timeout=60) == 1, agent_log.read_text()
        assert "revoked" in agent_log.read_text()
        still = json.loads(cli("show", second, "--json", check=True).stdout)
        assert (still["state"], still["agent_id"]) == ("queued", None), still
    finally:
        if agent.poll() is None:
            agent.terminate()
            agent.wait(timeout=30)


def test_refused_tokens_unreachable_servers_and_misused_options_are_one_line_exit_2(server, user_env, tmp_path):
    err = one_line_error(run_cli(user_env, "--server", server.url, "--token", "wrong", "jobs"))
    assert "refused the token" in err and server.url in err
    err = one_line_error(run_cli(user_env, "--server", server.url, "jobs"))
    assert "no token was given" in err
    err = one_line_error(run_cli(user_env, "--server", f"http://127.0.0.1:{free_port()}", "--token", "t", "jobs"))
    assert "cannot reach the jupyter-launch server" in err
    err = one_line_error(run_cli(user_env, "agent", "--server", server.url, "--token", "jla_000000000000_bogus",
                                 "--queue", "remote"))
    assert "unknown or revoked" in err
    err = one_line_error(run_cli(user_env, "agent", "--server", server.url, "--queue", "remote"))
    assert "needs an agent token" in err
    assert "--token goes with --server" in one_line_error(run_cli(user_env, "--token", "t", "jobs"))
    # Agent tokens go through a named server as every other command does (its token routes), not to a local store.
    via = ("--server", server.url, "--token", USER_TOKEN)
    made = run_cli(user_env, *via, "token", "create", "--name", "via-server", "--queue", "remote", check=True)
    secret = made.stdout.strip()
    token_id = secret.split("_")[1]
    listed = server.api("GET", "tokens")[1]["tokens"]
    assert secret.startswith("jla_") and [t["name"] for t in listed if t["id"] == token_id] == ["via-server"]
    assert f"{token_id}  via-server  remote  active" in run_cli(user_env, *via, "token", "list").stdout
    run_cli(user_env, *via, "token", "revoke", token_id, check=True)
    assert token_id not in [t["id"] for t in server.api("GET", "tokens")[1]["tokens"]]
    assert not (tmp_path / "user-home" / "launch.db").exists()  # a named server never falls back to the local store


def test_discovery_uses_the_local_running_server_unless_a_store_is_named(tmp_path):
    server = LaunchServer(tmp_path, agent_queues=["default"], token=USER_TOKEN).start()
    try:
        env = base_env(tmp_path)  # the server's runtime dir; no server, token or store named
        proc = run_cli(env, "submit", str(NOTEBOOKS / "trivial.ipynb"), "--follow")
        assert proc.returncode == 0, proc.stderr
        assert "hello 3" in proc.stdout and "running one in this process" not in proc.stderr
        job_id = submitted_id(proc)
        assert server.api("GET", f"jobs/{job_id}")[0] == 200
        assert not (tmp_path / "data" / "launch" / "launch.db").exists()  # the default embedded store was not used

        named = dict(env, JUPYTER_LAUNCH_HOME=str(tmp_path / "named-home"))
        assert json.loads(run_cli(named, "jobs", "--json", check=True).stdout) == []
        assert (tmp_path / "named-home" / "launch.db").exists()
    finally:
        server.stop()


def test_without_a_server_the_cli_uses_the_embedded_store(tmp_path):
    env = base_env(tmp_path)  # nothing named, and no server running in this runtime dir
    proc = run_cli(env, "submit", str(NOTEBOOKS / "trivial.ipynb"), "--follow")
    assert proc.returncode == 0, proc.stderr
    assert "hello 3" in proc.stdout and "running one in this process" in proc.stderr
    db = tmp_path / "data" / "launch" / "launch.db"
    ids = [row[0] for row in sqlite3.connect(db).execute("select id from jobs")]
    assert ids == [submitted_id(proc)]
