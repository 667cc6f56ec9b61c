"""An agent's and a server's life: a remote agent stopped with SIGTERM then SIGINT loses no job, a server whose store
is damaged still stops on SIGTERM, the CLI says in one line which store file is damaged and how to fix it, and an
agent token travels in a file only its owner reads rather than on a command line every local user sees in `ps`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from launch_server import LaunchServer, isolated_env

from .conftest import record_figure, tmpfs


def until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)
    return value


def command(code: str) -> dict[str, Any]:
    return {"kind": "command", "command": [sys.executable, "-c", code], "retries": 0}


def submit(server: LaunchServer, queue: str, code: str) -> str:
    status, job = server.api("POST", "jobs", {"queue": queue, "spec": command(code)})
    assert status == 201, job
    return job["id"]


def job(server: LaunchServer, job_id: str) -> dict[str, Any]:
    return server.api("GET", f"jobs/{job_id}")[1]


def token_file(path: Path, token: str, mode: int = 0o600) -> Path:
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def remote_agent(server: LaunchServer, queue: str, token_path: Path, base: Path, *words: str) -> subprocess.Popen:
    """`jupyter launch agent --server URL --token-file FILE --queue Q` on a machine of its own (its own home)."""
    base.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "jupyter_launch.cli", "agent", "--server", server.url, "--token-file", str(token_path),
           "--queue", queue, "--lease", "2", "--max-jobs", "4", *words]
    with open(base / "agent.log", "ab") as out:
        return subprocess.Popen(cmd, env=dict(isolated_env(base), JUPYTER_LAUNCH_HOME=str(base / "home")),
                                stdout=out, stderr=subprocess.STDOUT)


def test_a_remote_agent_stopped_with_sigterm_then_sigint_loses_no_job(make_server, tmp_path):
    server = make_server(agent_queues=[])  # only the remote agents run jobs
    assert server.api("POST", "queues", {"queue_name": "remote", "provider": {"type": "local"}})[0] == 201
    status, made = server.api("POST", "tokens", {"name": "box", "queues": ["remote"]})
    assert status == 201, made
    secret = token_file(tmp_path / "agent-token", made["token"])

    # Agent A: SIGTERM lets its jobs 600 s to finish; the SIGINT that follows hands back what still runs.
    a = remote_agent(server, "remote", secret, tmp_path / "a", "--Agent.stop_grace=600")
    try:
        until(lambda: "remote" in {q for ag in server.api("GET", "agents")[1]["agents"] for q in ag["queues"]}, 60,
              "agent A to register")
        assert made["token"] not in Path(f"/proc/{a.pid}/cmdline").read_bytes().decode()
        short = submit(server, "remote", "import time; print('short', flush=True); time.sleep(3)")
        marker = tmp_path / "long-started"
        long = submit(server, "remote", (
            "import pathlib, time\n"
            f"m = pathlib.Path({str(marker)!r})\n"
            "first = not m.exists()\n"
            "m.touch()\n"
            "print('first run' if first else 'again', flush=True)\n"
            "time.sleep(3600 if first else 0)\n"))
        until(lambda: job(server, short)["state"] == "running" and job(server, long)["state"] == "running", 90,
              "both jobs to run on agent A")
        a_id = job(server, long)["agent_id"]

        a.send_signal(signal.SIGTERM)
        sigterm_at = time.monotonic()
        time.sleep(2)
        at_2s = submit(server, "remote", "print('submitted 2 s after the SIGTERM')")
        time.sleep(8)
        at_10s = submit(server, "remote", "print('submitted 10 s after the SIGTERM')")
        # The short job finished within the grace period, on agent A; the long one still runs there.
        until(lambda: job(server, short)["state"] == "succeeded", 60, "the short job to finish on agent A")
        assert job(server, short)["agent_id"] == a_id
        assert job(server, long)["state"] == "running" and a.poll() is None
        a.send_signal(signal.SIGINT)
        sigint_at = time.monotonic()
        assert a.wait(timeout=60) == 0
        stopped_at = time.monotonic()
        for job_id in (long, at_2s, at_10s):  # handed back, or never claimed: queued, none lost
            assert job(server, job_id)["state"] == "queued", job(server, job_id)
        time.sleep(3)  # past agent A's 2 s lease: nothing of it is left to expire
        assert [job(server, j)["state"] for j in (long, at_2s, at_10s)] == ["queued"] * 3
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()

    b = remote_agent(server, "remote", secret, tmp_path / "b")
    try:
        ended = [until(lambda j=j: (r := job(server, j))["state"] in ("succeeded", "failed", "cancelled") and r, 120,
                       f"job {j} to end on agent B") for j in (long, at_2s, at_10s)]
    finally:
        b.send_signal(signal.SIGTERM)
        b.wait(timeout=60)
    assert [(r["state"], r["attempt"]) for r in ended] == [("succeeded", 1)] * 3, ended
    assert len({r["agent_id"] for r in ended}) == 1 and ended[0]["agent_id"] != a_id
    log = server.api("GET", f"jobs/{long}/logs")[1]
    assert "first run" in str(log) and "again" in str(log)
    record_figure("remote agent SIGTERM then SIGINT", jobs=5, lost=0, handed_back=2,
                  finished_within_grace=1, sigterm_to_exit_s=round(stopped_at - sigterm_at, 1),
                  sigint_to_exit_s=round(stopped_at - sigint_at, 1))


def test_an_agent_token_in_a_file_others_can_read_is_refused(make_server, tmp_path):
    server = make_server(agent_queues=[], start=False)
    env = dict(isolated_env(tmp_path), JUPYTER_LAUNCH_HOME=str(tmp_path / "home"))
    loose = token_file(tmp_path / "loose", "jla_000000000000_secret", 0o644)
    proc = subprocess.run([sys.executable, "-m", "jupyter_launch.cli", "agent", "--server", server.url,
                           "--token-file", str(loose), "--queue", "q"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"jupyter launch: error: --token-file {loose}: mode 644 lets other users read the token; "
        f"chmod 600 {loose}"], proc.stderr
    both = subprocess.run([sys.executable, "-m", "jupyter_launch.cli", "jobs", "--server", server.url, "--token", "t",
                           "--token-file", str(token_file(tmp_path / "tight", "t"))], env=env, capture_output=True,
                          text=True, timeout=120)
    assert both.returncode == 2 and "give --token or --token-file, not both" in both.stderr


def test_a_server_whose_store_is_damaged_stops_on_sigterm(make_server, tmp_path):
    server = make_server(agent_queues=["default"], start=False)
    store = server.home / "launch.db"
    store.write_bytes(b"this is not a database\n" * 200)
    server.start_process()
    until(lambda: "extension failed" in server.log_tail(200) or server.process.poll() is not None, 90,
          "the server to start without jupyter-launch")
    assert server.process.poll() is None
    assert f"the store {store} is damaged" in server.log_tail(200)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0, server.log_tail()
    assert "Traceback" not in server.log_tail(200).split("received signal 15")[-1], server.log_tail()


def test_the_cli_names_a_damaged_store_and_the_fix_in_one_line(cli_env, launch_home):
    launch_home.mkdir(parents=True, exist_ok=True)
    store = launch_home / "launch.db"
    store.write_bytes(os.urandom(8192))
    proc = subprocess.run([sys.executable, "-m", "jupyter_launch.cli", "jobs"], env=cli_env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"jupyter launch: error: the store {store} is damaged (file is not a database): move it aside "
        f"(mv {store} {store}.damaged) to start an empty store, or put back a backup"], proc.stderr


def test_a_standalone_agent_given_sigterm_hands_back_a_job_past_its_grace(cli_env, launch_home, tmp_path):
    """`jupyter launch agent` on this machine's store: SIGTERM with a job that outlives the grace period hands it
    back (queued, attempt 1 of 1), where it used to be cancelled."""
    from jupyter_launch.client import LaunchClient

    client = LaunchClient()
    folder = tmp_path / "job"
    folder.mkdir()
    job = client.submit(spec=command("import time; print('up', flush=True); time.sleep(3600)"), root=folder)
    with open(tmp_path / "agent.log", "wb") as out:
        agent = subprocess.Popen([sys.executable, "-m", "jupyter_launch.cli", "agent", "--queue", "default",
                                  "--Agent.stop_grace=1"], env=cli_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        until(lambda: job.refresh().state == "running", 90, "the job to run")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=60) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    rec = job.refresh()
    assert (rec.state, rec.attempt, rec.retries, rec.agent_id) == ("queued", 1, 0, None), rec
    assert "handed back" in (tmp_path / "agent.log").read_text()


def test_the_cli_says_in_one_line_that_the_stores_disk_is_full(cli_env, tmp_path):
    with tmpfs(tmp_path / "disk", "4m") as disk:
        env = dict(cli_env, JUPYTER_LAUNCH_HOME=str(disk / "home"))
        subprocess.run([sys.executable, "-m", "jupyter_launch.cli", "jobs"], env=env, check=True, capture_output=True,
                       timeout=120)
        (disk / "home" / "launch.db-reserve").unlink()  # its room goes too: the disk is as full as it gets
        with open(disk / "filler", "wb") as f:
            with contextlib.suppress(OSError):
                while True:
                    f.write(bytes(64 * 1024))
        (tmp_path / "job.yaml").write_text("kind: command\ncommand: [true]\n")
        proc = subprocess.run([sys.executable, "-m", "jupyter_launch.cli", "submit", "--config",
                               str(tmp_path / "job.yaml")], env=env, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"jupyter launch: error: the store {disk / 'home' / 'launch.db'} cannot be written: "
                               "its disk is full"), lines[0]
    assert f"free space in {disk / 'home'} (df -h {disk / 'home'}) and retry" in lines[0]
