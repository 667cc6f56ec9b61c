"""Faults: agents killed with SIGKILL fifty times in a row (local and Docker backends), the server killed with 1,000
jobs queued, dockerd restarted mid-job, the log store's disk filled, PostgreSQL restarted under a team store.
Nothing is lost; nothing runs twice at once."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from docker_engine import BASE_IMAGE

from jupyter_launch.agent import make_local_agent
from jupyter_launch.client import LaunchClient
from jupyter_launch.spec import QueueConfig

from .conftest import ROOT, ledger_code, list_job_ids, read_ledger, record_figure, tmpfs

KILLS = int(os.environ.get('JUPYTER_LAUNCH_TEST_KILLS', 50))  # fewer only to debug


def until(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def agent_process(queue: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "jupyter_launch.cli", "agent", "--queue", queue, "--lease", "1", "--max-jobs", "4"]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def kill_agents_mid_job(client: LaunchClient, queue: str, jobs: list[Any], env: dict[str, str], log: Path,
                        kills: int) -> int:
    """Start an agent, wait until it has started a job it did not run before (a new job id and fencing token in
    state running), kill -9 it; ``kills`` times. Returns the number of kills that landed mid-job."""
    ids = {j.id for j in jobs}
    seen: set[tuple[str, int]] = set()
    mid_job = 0
    for round_ in range(kills):
        agent = agent_process(queue, env, log)
        try:
            def new_running() -> bool:
                running = {(r.id, r.fence) for r in client.store.list_jobs(queue=queue, state="running", limit=500)
                           if r.id in ids}
                fresh = running - seen
                seen.update(running)
                return bool(fresh)

            until(new_running, 90, f"round {round_}: an agent to start a job "
                                   f"({[(j.id, j.refresh().state) for j in jobs]}); agent log:\n{log.read_text()[-3000:]}")
            mid_job += 1
        finally:
            agent.send_signal(signal.SIGKILL)
            agent.wait()
    return mid_job


@contextlib.asynccontextmanager
async def agent_running(client: LaunchClient, queue: str, **traits: Any) -> AsyncIterator[Any]:
    """An in-process agent serving ``queue`` on the client's store for the block's duration."""
    agent = make_local_agent(client.store, [queue], blobs=client.blobs, **traits)
    await agent.start()
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        await agent.stop()
        task.cancel()


def run_to_completion(client: LaunchClient, queue: str, jobs: list[Any], timeout: float = 300) -> list[Any]:
    async def go() -> None:
        async with agent_running(client, queue, lease_seconds=1.0, max_jobs=4):
            deadline = time.monotonic() + timeout
            while not all(j.refresh().done for j in jobs):
                assert time.monotonic() < deadline, [(j.id, j.record.state, j.record.reason) for j in jobs]
                await asyncio.sleep(0.1)

    asyncio.run(go())
    return [j.record for j in jobs]


def check_ledger(ledger: Path, jobs: list[Any]) -> dict[str, int]:
    """Per job: fencing tokens only grow, no copy ever found another running, exactly one `end`, by the last start."""
    entries = read_ledger(ledger)
    interrupted = 0
    for job in jobs:
        events = entries.get(job.id, [])
        assert events, f"job {job.id} never started"
        assert not [e for e in events if e[0] == "overlap"], f"job {job.id} ran twice at once: {events}"
        starts = [e for e in events if e[0] == "start"]
        fences = [fence for _, _, fence in starts]
        assert fences == sorted(set(fences)), f"job {job.id}: fencing tokens went back or repeated: {events}"
        ends = [e for e in events if e[0] == "end"]
        assert len(ends) == 1 and ends[0][2] == fences[-1] and events[-1][0] == "end", (
            f"job {job.id} must end once, in its last attempt: {events}")
        assert job.record.fence >= fences[-1] and job.record.attempt >= starts[-1][1]
        interrupted += len(starts) - 1
    return {"starts": sum(len([e for e in v if e[0] == "start"]) for v in entries.values()),
            "interrupted_attempts": interrupted}


def test_kill_9_the_local_agent_50_times_loses_nothing_and_runs_nothing_twice(client, tmp_path, cli_env):
    queue = "faults-local"
    client.create_queue(QueueConfig(queue_name=queue, provider={"type": "local"}))
    src = tmp_path / "src"
    src.mkdir()
    ledger = tmp_path / "ledger.txt"
    jobs = [client.submit(spec={"kind": "command", "retries": 100,
                                "command": [sys.executable, "-c", ledger_code(ledger, 1.0)]},
                          root=src, queue=queue) for _ in range(8)]
    mid_job = kill_agents_mid_job(client, queue, jobs, cli_env, tmp_path / "agents.log", KILLS)
    records = run_to_completion(client, queue, jobs)

    assert [r.state for r in records] == ["succeeded"] * len(jobs), [(r.id, r.state, r.reason) for r in records]
    counts = check_ledger(ledger, jobs)
    record_figure("kill -9 local agent", kills=KILLS, kills_mid_job=mid_job, jobs=len(jobs),
                  succeeded=len(records), lost=0, ran_twice_at_once=0, **counts)


class ContainerWatch:
    """Samples the engine's running containers per job id every few milliseconds; the most seen at once per job."""

    def __init__(self, api: Any, job_ids: set[str]):
        from jupyter_launch.backends.docker.container import JOB_ID_LABEL

        self.api, self.job_ids, self.label = api, job_ids, JOB_ID_LABEL
        self.most: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            counts: dict[str, int] = {}
            for c in self.api.containers(filters={"label": self.label}):  # running ones only
                job = (c.get("Labels") or {}).get(self.label)
                if job in self.job_ids:
                    counts[job] = counts.get(job, 0) + 1
            for job, n in counts.items():
                self.most[job] = max(self.most.get(job, 0), n)
            self.samples += 1
            self._stop.wait(0.01)

    def __enter__(self) -> ContainerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def test_kill_9_the_docker_agent_50_times_loses_nothing_and_never_runs_a_job_twice_at_once(
        client, tmp_path, cli_env, docker_api):
    api = docker_api
    queue = "faults-docker"
    client.create_queue(QueueConfig(queue_name=queue, provider={"type": "docker", "image": BASE_IMAGE}))
    src = tmp_path / "src"
    src.mkdir()
    # The job's container cannot see the host's ledger: it reports its attempt and fence in its log, and the engine
    # is watched for two containers of one job running at the same time.
    code = ("import os, time\nprint('start', os.environ['JUPYTER_LAUNCH_ATTEMPT'], os.environ['JUPYTER_LAUNCH_FENCE'],"
            " flush=True)\ntime.sleep(1.5)\nprint('end', flush=True)\n")
    jobs = [client.submit(spec={"kind": "command", "retries": 100, "command": ["python3", "-c", code]},
                          root=src, queue=queue) for _ in range(6)]
    try:
        with ContainerWatch(api, {j.id for j in jobs}) as watch:
            mid_job = kill_agents_mid_job(client, queue, jobs, cli_env, tmp_path / "agents.log", KILLS)
            records = run_to_completion(client, queue, jobs)
        assert [r.state for r in records] == ["succeeded"] * len(jobs), [(r.id, r.state, r.reason, r.message)
                                                                         for r in records]
        assert watch.samples > 100 and watch.most, "the engine was not watched"
        assert max(watch.most.values()) == 1, f"a job ran in two containers at once: {watch.most}"
        for job in jobs:
            # Each attempt's output is kept under its attempt number; an attempt killed mid-line is cut anywhere.
            # The last attempt, the one the store holds, printed its own attempt and fencing token and ran to the
            # end. A killed attempt may have got to its end too: when the kill lands after the container exited
            # and before its agent recorded the result, the job is run again (the Docker backend does not adopt a
            # finished container; CI saw this once in 50 kills). What never happens is two at once (above).
            chunks, _ = client.read_log(job.id, 0)
            by_attempt: dict[int, str] = {}
            for c in chunks:
                by_attempt[c.attempt] = by_attempt.get(c.attempt, "") + c.data.decode()
            rec = job.record
            assert by_attempt.pop(rec.attempt) == f"start {rec.attempt} {rec.fence}\nend\n", job.logs()
            # Each killed attempt's output is its own: its first line names that attempt (or is cut before it does).
            assert all(text.startswith(f"start {attempt} ") or f"start {attempt} ".startswith(text)
                       for attempt, text in by_attempt.items()), by_attempt
        record_figure("kill -9 docker agent", kills=KILLS, kills_mid_job=mid_job, jobs=len(jobs),
                      succeeded=len(records), lost=0, ran_twice_at_once=0,
                      attempts=sum(r.attempt for r in records), engine_samples=watch.samples)
    finally:
        remove_job_containers(api, {j.id for j in jobs})


def remove_job_containers(api: Any, job_ids: set[str]) -> None:
    from jupyter_launch.backends.docker.container import JOB_ID_LABEL

    for c in api.containers(all=True, filters={"label": JOB_ID_LABEL}):
        if (c.get("Labels") or {}).get(JOB_ID_LABEL) in job_ids:
            api.remove_container(c["Id"], force=True)


def test_a_job_whose_stored_spec_this_agent_refuses_fails_with_a_reason_and_the_next_runs(client, tmp_path):
    """A spec stored by another version (here: a name with a terminal escape, refused since names are checked) is
    failed as invalid_spec at once, instead of stopping the agent's claim and waiting out the lease as lost."""
    from sqlalchemy import update

    from jupyter_launch.store import schema

    def command(text: str) -> dict[str, Any]:
        return {"kind": "command", "command": [sys.executable, "-c", f"print({text!r})"]}

    bad = client.submit(spec=command("never"), queue="default")
    with client.store._write() as c:
        stored = dict(client.store.get_job(bad.id).spec, name="evil\x1b]0;owned\x07")
        c.execute(update(schema.jobs).where(schema.jobs.c.id == bad.id).values(spec=stored))
    good = client.submit(spec=command("fine"), queue="default")
    bad_rec, good_rec = run_to_completion(client, "default", [bad, good], timeout=120)
    assert (bad_rec.state, bad_rec.reason, bad_rec.attempt) == ("failed", "invalid_spec", 1), bad_rec
    assert "name" in bad_rec.message and "resubmit" in bad_rec.message, bad_rec.message
    assert good_rec.state == "succeeded", good_rec


def test_a_server_killed_with_1000_queued_jobs_keeps_them_all_and_runs_them(make_server):
    server = make_server(agent_queues=[])  # no agent yet: everything stays queued
    ids = []
    for _ in range(1000):
        status, job = server.api("POST", "jobs", {"queue": "default", "spec": {"kind": "command", "command": ["true"]}})
        assert status == 201, job
        ids.append(job["id"])
    server.kill()

    # The same store, now with an agent in the server.
    server.config.write_text(server.config.read_text().replace("c.LaunchApp.agent_queues = []",
                                                               "c.LaunchApp.agent_queues = ['default']"))
    server.start()
    survived = {job_id for job_id, state in list_job_ids(server, "default")}
    assert survived == set(ids), f"{len(set(ids) - survived)} jobs lost across the kill"
    t0 = time.monotonic()
    until(lambda: [state for _, state in list_job_ids(server, "default")].count("succeeded") == 1000,
          600, "all 1,000 jobs to succeed", interval=1.0)
    record_figure("server kill -9 with queued jobs", queued=1000, survived=len(survived),
                  succeeded_after_restart=1000, seconds_to_run_all=round(time.monotonic() - t0, 1))


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs, unmounted at the end."""
    with tmpfs(tmp_path / "small-disk", "6m") as mount:
        yield mount


def test_a_full_log_disk_fails_the_job_with_a_reason_and_the_server_stays_up(make_server, small_tmpfs):
    server = make_server(agent_queues=["default"], start=False)
    server.env["JUPYTER_LAUNCH_HOME"] = str(small_tmpfs / "home")
    server.start()
    flood = "import sys\nfor i in range(1_000_000):\n    print('x' * 40, i)\n"
    status, job = server.api("POST", "jobs", {"queue": "default",
                                              "spec": {"kind": "command", "command": [sys.executable, "-c", flood]}})
    assert status == 201, job
    until(lambda: server.api("GET", f"jobs/{job['id']}")[1]["done"], 120, "the flooding job to end",
          interval=0.2)
    _, rec = server.api("GET", f"jobs/{job['id']}")
    assert (rec["state"], rec["reason"]) == ("failed", "log_storage_full"), rec
    assert "disk" in rec["message"] and "free space" in rec["message"], rec["message"]
    # The log up to the point the disk filled is kept and readable.
    status, page = server.api("GET", f"jobs/{job['id']}/logs?offset=0")
    assert status == 200 and page["chunks"], str(page)[:300]
    assert page["chunks"][0]["data"].startswith("x" * 40 + " 0\n"), str(page)[:300]

    # The server stays up: reads answer, and a write the full disk refuses says so instead of failing blindly.
    assert server.process.poll() is None
    assert server.api("GET", "queues")[0] == 200
    status, body = server.api("POST", "jobs", {"queue": "default", "spec": {"kind": "command", "command": ["true"]}})
    assert status in (201, 507), (status, body)
    if status == 507:
        assert "disk space" in body["message"]
    record_figure("log disk full", disk_mib=6, state=rec["state"], reason=rec["reason"], server_up=True,
                  next_submit_status=status)


@pytest.fixture
def tmpfs_50m(tmp_path: Path) -> Iterator[Path]:
    """A 50 MiB tmpfs, unmounted at the end."""
    with tmpfs(tmp_path / "disk-50m", "50m") as mount:
        yield mount


def test_outputs_past_the_disk_or_the_limits_end_the_job_with_a_reason_and_leave_nothing_behind(make_server,
                                                                                                  tmpfs_50m):
    """A job writing a 2 GB sparse output with the server's home on a 50 MiB disk used to stay `running` with an
    18 MB `.tmp` blob left behind, and every later submit failed."""
    server = make_server(agent_queues=["default", "small-outputs", "small-logs"], start=False)
    server.env["JUPYTER_LAUNCH_HOME"] = str(tmpfs_50m / "home")
    server.start()

    def run(queue: str, code: str) -> dict[str, Any]:
        status, job = server.api("POST", "jobs", {"queue": queue, "spec": {
            "kind": "command", "command": [sys.executable, "-c", code]}})
        assert status == 201, job
        until(lambda: server.api("GET", f"jobs/{job['id']}")[1]["done"], 120, f"job {job['id']} to end", 0.2)
        return server.api("GET", f"jobs/{job['id']}")[1]

    def write_output(size: int, sparse: bool) -> str:
        return ("import os\n"
                "with open(os.path.join(os.environ['JUPYTER_LAUNCH_OUTPUT_DIR'], 'big.bin'), 'wb') as f:\n"
                + (f"    f.truncate({size})\n" if sparse else f"    f.write(os.urandom({size}))\n"))

    sparse = run("default", write_output(2 * 10**9, sparse=True))
    assert (sparse["state"], sparse["reason"]) == ("failed", "storage_full"), sparse
    assert "disk" in sparse["message"] and "free space" in sparse["message"], sparse["message"]
    assert server.api("GET", f"jobs/{sparse['id']}/outputs")[1]["outputs"] == []
    assert sorted(str(p) for p in tmpfs_50m.rglob("*.tmp")) == []
    after = run("default", write_output(1000, sparse=False))  # the disk has its room back
    assert after["state"] == "succeeded", after

    for name, limit in (("small-outputs", "max_output_size: 1Mi"), ("small-logs", "max_log_size: 64Ki")):
        body = yaml.safe_load(f"queue_name: {name}\n{limit}\n")
        assert server.api("POST", "queues", body)[0] == 201
    too_big = run("small-outputs", write_output(5 * 1024**2, sparse=False))
    assert (too_big["state"], too_big["reason"]) == ("failed", "output_too_large"), too_big
    assert "5.2 MB in 1 file(s), over the queue's max_output_size of 1.0 MB" in too_big["message"]
    assert server.api("GET", f"jobs/{too_big['id']}/outputs")[1]["outputs"] == []
    chatty = run("small-logs", "for i in range(100_000): print('x' * 20, i)")
    assert (chatty["state"], chatty["reason"], chatty["log_size"]) == ("failed", "log_too_large", 64 * 1024), chatty
    assert sorted(str(p) for p in tmpfs_50m.rglob("*.tmp")) == []
    record_figure("outputs past the disk or the limits", disk_mib=50, sparse_output_gb=2,
                  sparse=sparse["reason"], over_output_limit=too_big["reason"], over_log_limit=chatty["reason"],
                  log_kept_bytes=chatty["log_size"], tmp_blobs_left=0, next_job=after["state"])


def test_a_remote_agents_output_past_the_servers_disk_fails_the_job_and_leaves_no_partial_upload(make_server,
                                                                                                   tmpfs_50m, tmp_path):
    server = make_server(agent_queues=[], start=False)
    server.env["JUPYTER_LAUNCH_HOME"] = str(tmpfs_50m / "home")
    server.start()
    assert server.api("POST", "queues", {"queue_name": "remote"})[0] == 201
    token = server.api("POST", "tokens", {"name": "box", "queues": ["remote"]})[1]["token"]
    agent_home = tmp_path / "agent"
    with open(tmp_path / "agent.log", "wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "jupyter_launch.cli", "agent", "--server", server.url, "--queue", "remote"],
            env={**server.env, "JUPYTER_LAUNCH_HOME": str(agent_home), "JUPYTER_LAUNCH_TOKEN": token},
            stdout=out, stderr=subprocess.STDOUT)
    try:
        def run(code: str) -> dict[str, Any]:
            status, job = server.api("POST", "jobs", {"queue": "remote", "spec": {
                "kind": "command", "command": [sys.executable, "-c", code]}})
            assert status == 201, job
            until(lambda: server.api("GET", f"jobs/{job['id']}")[1]["done"], 180, f"job {job['id']} to end", 0.2)
            return server.api("GET", f"jobs/{job['id']}")[1]

        big = run("import os\nwith open(os.path.join(os.environ['JUPYTER_LAUNCH_OUTPUT_DIR'], 'big.bin'), 'wb') as f:\n"
                  "    f.truncate(200 * 1024**2)\n")
        assert (big["state"], big["reason"]) == ("failed", "storage_full"), (big, (tmp_path / "agent.log").read_text())
        uploads = tmpfs_50m / "home" / "blobs" / "tmp"  # where the server streams an upload before checking it
        assert uploads.is_dir() and list(uploads.iterdir()) == []
        small = run("import os\nopen(os.path.join(os.environ['JUPYTER_LAUNCH_OUTPUT_DIR'], 'ok.txt'), 'w').write('ok')")
        assert small["state"] == "succeeded", small
    finally:
        agent.terminate()
        agent.wait(timeout=60)
    record_figure("remote output past the server's disk", disk_mib=50, output_mib=200, state=big["state"],
                  reason=big["reason"], partial_uploads_left=0, next_job=small["state"])


def postgresql() -> tuple[str, list[str]]:
    """A PostgreSQL store's URL, started by ci/postgres.sh, and the `pg_ctlcluster VERSION NAME` that controls it."""
    proc = subprocess.run(["bash", str(ROOT / "ci" / "postgres.sh")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"PostgreSQL could not be started by ci/postgres.sh: {proc.stdout}{proc.stderr}", pytrace=False)
    url = proc.stdout.strip().splitlines()[-1]
    cluster = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True).stdout
    port = url.rsplit(":", 1)[1].split("/")[0]
    version, name = next(line.split()[:2] for line in cluster.splitlines() if line.split()[2] == port)
    return url, ["pg_ctlcluster", version, name]


def line_printer(lines: int) -> str:
    """A job body printing ``line 0`` to ``line N-1``, one every 10 ms, each flushed: a log still being written."""
    return f"import time\nfor i in range({lines}):\n    print(f'line {{i}}', flush=True)\n    time.sleep(0.01)\n"


def test_postgresql_restarted_under_a_team_store_loses_no_job(tmp_path):
    url, pg_ctl = postgresql()
    client = LaunchClient(url, home=tmp_path / "home")
    queue = f"pg-restart-{int(time.time() * 1000) % 10**8}"
    client.create_queue(QueueConfig(queue_name=queue, provider={"type": "local", "max_instances": 2}))
    src = tmp_path / "src"
    src.mkdir()
    ledger = tmp_path / "ledger.txt"
    first = [client.submit(spec={"kind": "command", "retries": 3,
                                 "command": [sys.executable, "-c", ledger_code(ledger, 0.5)]},
                           root=src, queue=queue) for _ in range(6)]
    restarted = threading.Event()

    async def go() -> list[Any]:
        async with agent_running(client, queue, lease_seconds=5.0):
            deadline = time.monotonic() + 60
            while not any(j.refresh().state == "running" for j in first):
                assert time.monotonic() < deadline, "no job started before the restart"
                await asyncio.sleep(0.05)
            await asyncio.to_thread(subprocess.run, [*pg_ctl, "restart", "-m", "fast"], check=True, timeout=120)
            restarted.set()
            # Submitted after the restart, through a fresh connection of the same pool.
            later = [await asyncio.to_thread(
                client.submit, spec={"kind": "command", "command": [sys.executable, "-c", ledger_code(ledger, 0.1)]},
                root=src, queue=queue) for _ in range(3)]
            jobs = first + later
            deadline = time.monotonic() + 180
            while not all(r.done for r in await asyncio.to_thread(lambda: [j.refresh() for j in jobs])):
                assert time.monotonic() < deadline, [(j.id, j.record.state, j.record.reason) for j in jobs]
                await asyncio.sleep(0.1)
            return jobs

    try:
        jobs = asyncio.run(go())
    finally:
        client.close()
    assert restarted.is_set()
    assert [j.record.state for j in jobs] == ["succeeded"] * len(jobs), [(j.id, j.record.state, j.record.reason,
                                                                          j.record.message) for j in jobs]
    counts = check_ledger(ledger, jobs)
    record_figure("postgresql restart", jobs=len(jobs), succeeded=len(jobs), lost=0, **counts)


def test_postgresql_down_while_jobs_write_and_end_holds_them_back_and_loses_no_line(make_server, tmp_path):
    """The store gone for seconds while jobs write their logs and end: the agent tries their log, and then their end,
    again until it is back (Agent.store_outage_seconds), holding the jobs' output back meanwhile. Every job succeeds
    in its first attempt with every line of its log once, and the agent's slots are free again for the next jobs
    (a store call that failed at a job's end once kept its slot taken for good). A server on the same store answers
    503 meanwhile (its remote agents try again on it), not 500."""
    url, pg_ctl = postgresql()
    server = make_server(agent_queues=[], env={"JUPYTER_LAUNCH_STORE_URL": url})
    client = LaunchClient(url, home=tmp_path / "home")
    queue = f"pg-down-{int(time.time() * 1000) % 10**8}"
    client.create_queue(QueueConfig(queue_name=queue, provider={"type": "local", "max_instances": 2}))
    src = tmp_path / "src"
    src.mkdir()
    lines = 150
    writer = line_printer(lines)
    spec = {"kind": "command", "command": [sys.executable, "-c", writer]}

    async def go() -> tuple[list[Any], float]:
        first = [client.submit(spec=spec, root=src, queue=queue) for _ in range(2)]
        async with agent_running(client, queue, lease_seconds=60.0, max_jobs=2) as agent:
            deadline = time.monotonic() + 60
            while not all(j.refresh().state == "running" and j.record.log_size for j in first):
                assert time.monotonic() < deadline, [(j.id, j.record.state, j.record.reason) for j in first]
                await asyncio.sleep(0.02)
            await asyncio.to_thread(subprocess.run, [*pg_ctl, "stop", "-m", "fast"], check=True, timeout=120)
            down = time.monotonic()
            try:
                status, body = await asyncio.to_thread(server.api, "GET", "queues")
                assert (status, body["message"]) == (503, "the server's store cannot be reached now; try again")
                while any(t for t in agent._running.values() if not t.done()) and time.monotonic() - down < 4:
                    await asyncio.sleep(0.1)  # the jobs' processes end meanwhile; their ends wait for the store
                await asyncio.sleep(1.0)
            finally:
                await asyncio.to_thread(subprocess.run, [*pg_ctl, "start"], check=True, timeout=120)
            outage = time.monotonic() - down
            later = [await asyncio.to_thread(client.submit, spec=spec, root=src, queue=queue) for _ in range(2)]
            jobs = first + later
            deadline = time.monotonic() + 120
            while not all(r.done for r in await asyncio.to_thread(lambda: [j.refresh() for j in jobs])):
                assert time.monotonic() < deadline, [(j.id, j.record.state, j.record.reason) for j in jobs]
                await asyncio.sleep(0.1)
            return jobs, outage

    try:
        jobs, outage = asyncio.run(go())
        expected = "".join(f"line {i}\n" for i in range(lines))
        for job in jobs:
            assert (job.record.state, job.record.attempt) == ("succeeded", 1), (job.id, job.record)
            assert job.logs() == expected, f"job {job.id}: its log lost or repeated lines in the outage"
    finally:
        client.close()
    record_figure("postgresql down while jobs write", outage_s=round(outage, 1), jobs=len(jobs),
                  succeeded=len(jobs), lines_lost=0)


def test_a_server_killed_and_restarted_under_a_remote_agents_running_job_loses_no_line(make_server, tmp_path):
    """The server a remote agent reports to is killed (kill -9, as a crash or an OOM kill would) while the agent's
    job writes, and started again on the same port and store: the agent tries its log, and then the job's end,
    again until the server answers; each log write names the size it follows, so one whose answer was lost is not
    written twice. The job succeeds in its first attempt, with every line once; the agent takes the next job."""
    server = make_server(agent_queues=[])
    assert server.api("POST", "queues", {"queue_name": "remote"})[0] == 201
    token = server.api("POST", "tokens", {"name": "box", "queues": ["remote"]})[1]["token"]
    lines = 300
    writer = line_printer(lines)

    def submit() -> str:
        status, job = server.api("POST", "jobs", {"queue": "remote", "spec": {
            "kind": "command", "command": [sys.executable, "-c", writer]}})
        assert status == 201, job
        return job["id"]

    def log(job_id: str) -> str:
        text, offset = "", 0
        while True:
            page = server.api("GET", f"jobs/{job_id}/logs?offset={offset}")[1]
            if not page["chunks"]:
                return text
            text += "".join(c["data"] for c in page["chunks"])
            offset = page["next_offset"]

    with open(tmp_path / "agent.log", "wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "jupyter_launch.cli", "agent", "--server", server.url, "--queue", "remote"],
            env={**server.env, "JUPYTER_LAUNCH_HOME": str(tmp_path / "agent"), "JUPYTER_LAUNCH_TOKEN": token},
            stdout=out, stderr=subprocess.STDOUT)
    try:
        first = submit()
        until(lambda: server.api("GET", f"jobs/{first}")[1]["log_size"] > 0, 60, "the job to write", 0.02)
        down = time.monotonic()
        server.kill()
        time.sleep(1.0)
        server.start()
        restart = time.monotonic() - down
        second = submit()
        for job_id in (first, second):
            until(lambda: server.api("GET", f"jobs/{job_id}")[1]["done"], 120, f"job {job_id} to end", 0.2)
            rec = server.api("GET", f"jobs/{job_id}")[1]
            assert (rec["state"], rec["attempt"]) == ("succeeded", 1), (rec, (tmp_path / "agent.log").read_text())
            assert log(job_id) == "".join(f"line {i}\n" for i in range(lines)), f"job {job_id}'s log"
    finally:
        agent.terminate()
        agent.wait(timeout=60)
    record_figure("server kill -9 under a remote agent's job", down_s=round(restart, 1),
                  state="succeeded", attempt=1, lines_lost=0)


@pytest.fixture
def collect_garbage_last() -> Iterator[None]:
    """Torn down after every other fixture of the test (ask for it first): sockets docker-py left unclosed while the
    engine refused connections are collected, and reported, here, under the test's own warning filter, not in a
    later test that happens to trigger the collection."""
    yield
    for _ in range(3):
        gc.collect()


# docker-py's unix transport leaves a socket unclosed when connect() is refused (the engine is gone): not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_dockerd_restarted_mid_job_fails_the_job_with_a_reason_within_the_lease(collect_garbage_last, client, tmp_path,
                                                                                docker_api):
    api = docker_api
    queue = "faults-dockerd"
    client.create_queue(QueueConfig(queue_name=queue, provider={"type": "docker", "image": BASE_IMAGE}))
    src = tmp_path / "src"
    src.mkdir()
    job = client.submit(spec={"kind": "command", "command": ["python3", "-c",
                                                             "import time\nprint('ready', flush=True)\ntime.sleep(300)"]},
                        root=src, queue=queue)
    lease = 10.0

    async def go() -> float:
        async with agent_running(client, queue, lease_seconds=lease):
            deadline = time.monotonic() + 60
            while "ready" not in job.logs():
                assert time.monotonic() < deadline, f"the job never started: {job.refresh()}"
                await asyncio.sleep(0.05)
            t0 = time.monotonic()
            await asyncio.to_thread(restart_dockerd)
            while not job.refresh().done:
                assert time.monotonic() - t0 < 120, f"the job outlived the engine restart: {job.record}"
                await asyncio.sleep(0.1)
            return time.monotonic() - t0

    try:
        seconds = asyncio.run(go())
    finally:
        remove_job_containers(api, {job.id})  # the agent could not: the engine was down when the job ended
    rec = job.record
    assert (rec.state, rec.reason) == ("failed", "docker_engine_lost"), (rec.state, rec.reason, rec.message)
    assert "rather than left running" in rec.message
    assert seconds <= lease, f"the job took {seconds:.1f}s to fail, more than its {lease:g}s lease"
    record_figure("dockerd restart mid-job", state=rec.state, reason=rec.reason, seconds_to_fail=round(seconds, 1),
                  lease_seconds=lease)


def restart_dockerd() -> None:
    """Stop the engine the way a service manager does (SIGTERM, wait), then start it with the project's script."""
    pids = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True).stdout.split()
    assert pids, "dockerd is not running"
    for pid in pids:
        subprocess.run(["kill", "-TERM", pid], check=False)
    deadline = time.monotonic() + 60
    while subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "dockerd did not stop within 60 s"
        time.sleep(0.1)
    subprocess.run(["bash", str(ROOT / "ci" / "docker.sh")], check=True, capture_output=True, timeout=120)
