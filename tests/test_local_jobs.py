"""End to end on the embedded default: LaunchClient → SQLite store → agent → local backend → real processes."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from processes import PeakGrowth, running

from jupyter_launch.agent import make_local_agent
from jupyter_launch.client import LaunchClient
from jupyter_launch.spec import QueueConfig

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"


async def run_until_done(client: LaunchClient, jobs, timeout: float = 120, **agent_traits):
    """Run an in-process agent on the jobs' queues until every job has ended."""
    queues = sorted({j.record.queue for j in jobs})
    agent = make_local_agent(client.store, queues, blobs=client.blobs, **agent_traits)
    await agent.start()
    task = asyncio.create_task(agent.run())
    try:
        deadline = time.monotonic() + timeout
        while not all(j.refresh().done for j in jobs):
            assert time.monotonic() < deadline, [j.refresh() for j in jobs]
            await asyncio.sleep(0.02)
    finally:
        await agent.stop()
        task.cancel()
    return [j.record for j in jobs]


def run_jobs(client, jobs, **kw):
    return asyncio.run(run_until_done(client, jobs, **kw))


def command_job(client, tmp_path, code: str, queue: str = "default", **kw):
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    return client.submit(spec={"kind": "command", "command": [sys.executable, "-c", code], **kw}, root=folder,
                         queue=queue)


def test_command_job_runs_with_env_and_outputs(client, tmp_path):
    job = command_job(client, tmp_path, (
        "import os, pathlib\n"
        "print('hello', os.environ['GREETING'])\n"
        "pathlib.Path(os.environ['JUPYTER_LAUNCH_OUTPUT_DIR'], 'out.txt').write_text('result')\n"),
        env={"GREETING": "world"})
    rec, = run_jobs(client, [job])
    assert (rec.state, rec.exit_code, rec.reason) == ("succeeded", 0, "completed")
    assert job.logs() == "hello world\n"
    assert [o.path for o in job.outputs] == ["out.txt"]
    assert client.read_output(job.id, "out.txt") == b"result"


def test_stdout_and_stderr_are_kept_in_order_without_loss(client, tmp_path):
    job = command_job(client, tmp_path, (
        "import sys\n"
        "for i in range(50000):\n"
        "    print(f'out {i}')\n"
        "print('the end', file=sys.stderr)\n"))
    run_jobs(client, [job])
    chunks, _ = client.read_log(job.id, 0)
    out = b"".join(c.data for c in chunks if c.stream == "stdout").decode()
    err = b"".join(c.data for c in chunks if c.stream == "stderr").decode()
    lines = out.splitlines()
    assert lines == [f"out {i}" for i in range(50000)]
    assert err == "the end\n"


def test_exit_code_fails_the_job(client, tmp_path):
    job = command_job(client, tmp_path, "import sys; print('bye'); sys.exit(3)")
    rec, = run_jobs(client, [job])
    assert (rec.state, rec.exit_code, rec.reason) == ("failed", 3, "exit_code")
    assert "exited with code 3" in rec.message


def test_timeout_stops_the_job(client, tmp_path):
    job = command_job(client, tmp_path, "import time; time.sleep(60)", timeout=1)
    t0 = time.monotonic()
    rec, = run_jobs(client, [job])
    assert (rec.state, rec.reason) == ("failed", "timeout")
    assert time.monotonic() - t0 < 30


def test_a_notebook_past_its_timeout_is_told_which_cell_was_running(client, tmp_path):
    """The job's timeout (not a cell's) stops the runner from outside; the reason still names the cell as Jupyter
    shows it: In [n], its place among the code cells, its id."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    folder = tmp_path / "src"
    folder.mkdir()
    cells = [new_markdown_cell("# hangs"), new_code_cell("print('one')"), new_code_cell(""),
             new_code_cell("import time\ntime.sleep(120)", id="sleeper")]
    nbformat.write(new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                      "language": "python"}}), folder / "hang.ipynb")
    job = client.submit(folder / "hang.ipynb", timeout=8)
    rec, = run_jobs(client, [job])
    assert (rec.state, rec.reason) == ("failed", "timeout")
    assert rec.message == "ran past its timeout of 8s while running In [2] (code cell 3, id sleeper)"


def test_cancel_sends_sigterm_then_sigkill_after_grace(client, tmp_path):
    client.create_queue(QueueConfig(queue_name="q", provider={"type": "local", "grace_period": "1s"}))
    folder = tmp_path / "src"
    folder.mkdir()
    # Ignores SIGTERM: only the SIGKILL after the grace period ends it.
    code = ("import signal, time, sys\nsignal.signal(signal.SIGTERM, lambda *a: print('got TERM', flush=True))\n"
            "print('ready', flush=True)\ntime.sleep(120)\n")
    job = client.submit(spec={"kind": "command", "command": [sys.executable, "-c", code]}, root=folder, queue="q")

    async def scenario():
        agent = make_local_agent(client.store, ["q"], blobs=client.blobs)
        await agent.start()
        task = asyncio.create_task(agent.run())
        try:
            while "ready" not in job.logs():
                await asyncio.sleep(0.02)
            t0 = time.monotonic()
            client.cancel(job.id)
            while not job.refresh().done:
                await asyncio.sleep(0.02)
            return time.monotonic() - t0
        finally:
            await agent.stop()
            task.cancel()

    took = asyncio.run(scenario())
    rec = job.record
    assert (rec.state, rec.reason) == ("cancelled", "cancelled")
    assert "got TERM" in job.logs()
    assert 0.9 < took < 15


def test_secrets_reach_the_job_but_never_the_store(client, tmp_path, monkeypatch):
    canary = "canary-7f3a9c1e-secret-value"
    monkeypatch.setenv("API_TOKEN", canary)
    digest = hashlib.sha256(canary.encode()).hexdigest()
    job = command_job(client, tmp_path, (
        "import hashlib, os\n"
        f"print('matches', hashlib.sha256(os.environ['API_TOKEN'].encode()).hexdigest() == {digest!r})\n"),
        secrets=["API_TOKEN"])
    rec, = run_jobs(client, [job])
    assert rec.state == "succeeded", job.logs()
    assert "matches True" in job.logs()
    db = sqlite3.connect(client.home / "launch.db")
    for (table,) in db.execute("select name from sqlite_master where type='table'"):
        for row in db.execute(f"select * from {table}"):
            assert canary not in repr(row), table
    for blob in (client.home / "blobs").rglob("*"):
        if blob.is_file():
            assert canary.encode() not in blob.read_bytes()


def test_missing_secret_fails_with_reason(client, tmp_path, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    job = command_job(client, tmp_path, "print(1)", secrets=["NOT_SET_ANYWHERE"])
    rec, = run_jobs(client, [job])
    assert (rec.state, rec.reason) == ("failed", "secret_missing")
    assert "NOT_SET_ANYWHERE" in rec.message


def test_idle_agent_is_woken_by_submit_not_by_polling(client, tmp_path):
    """The agent's next poll (and housekeeping) is an hour away: only the submit's notification can get the job
    claimed. How fast that is, is a figure: bench/bench_core.py (f)."""
    folder = tmp_path / "src"
    folder.mkdir()

    async def scenario():
        agent = make_local_agent(client.store, ["default"], blobs=client.blobs, poll_interval=3600,
                                 lease_seconds=4 * 3600)
        await agent.start()
        task = asyncio.create_task(agent.run())
        await asyncio.sleep(0.3)  # the agent is idle, waiting an hour for a wake-up
        try:
            # A second client, as another process would be: it wakes the agent through its socket.
            other = LaunchClient()
            job = other.submit(spec={"kind": "command", "command": ["true"]}, root=folder)
            deadline = time.monotonic() + 180
            while job.refresh().state == "queued":
                assert time.monotonic() < deadline, "the idle agent was not woken by the submit"
                await asyncio.sleep(0.01)
            while not job.refresh().done:
                assert time.monotonic() < deadline, job.record
                await asyncio.sleep(0.01)
            return job.record
        finally:
            await agent.stop()
            task.cancel()

    assert asyncio.run(scenario()).state == "succeeded"


async def first_warm_runner(backend, queue: str, timeout: float) -> None:
    """Wait until the local backend has a warm runner ready for ``queue``."""
    deadline = time.monotonic() + timeout
    while not backend.warm_runners(queue):
        assert time.monotonic() < deadline, "the queue's warm runner never became ready"
        await asyncio.sleep(0.05)


def test_min_instances_runs_a_notebook_job_on_a_kernel_started_before_it(client, tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    client.create_queue(QueueConfig(queue_name="warm", provider={"type": "local", "min_instances": 1}))
    folder = tmp_path / "src"
    folder.mkdir()
    nb = new_notebook(cells=[new_code_cell("import os\nprint('runner', os.getppid())")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "pid.ipynb")

    async def scenario():
        agent = make_local_agent(client.store, ["warm"], blobs=client.blobs)
        await agent.start()
        backend = agent.backend("local")
        task = None
        try:
            deadline = time.monotonic() + 120
            await first_warm_runner(backend, "warm", 120)
            warm = backend.warm_runners("warm")
            job = client.submit(folder / "pid.ipynb", queue="warm")
            task = asyncio.create_task(agent.run())
            while not job.refresh().done:
                assert time.monotonic() < deadline, job.record
                await asyncio.sleep(0.02)
            runner = int(job.logs().split("runner ")[1].split()[0])
            while not backend.warm_runners("warm"):  # the pool is kept at min_instances: a new one replaces it
                assert time.monotonic() < deadline, "the warm runner was not replaced"
                await asyncio.sleep(0.05)
            return job, warm, runner, backend.warm_runners("warm")
        finally:
            await agent.stop()
            if task is not None:
                task.cancel()

    job, warm, runner, refill = asyncio.run(scenario())
    assert job.record.state == "succeeded", job.logs()
    # The kernel's parent is the runner the pool started before the job was submitted, not one started for it.
    assert warm == [runner]
    assert refill and runner not in refill


def test_the_warm_pool_grows_with_the_queue_up_to_max_instances_and_shrinks_back(client, tmp_path):
    """min_instances 1, max_instances 3: while three jobs run and three more wait, the pool holds three ready
    runners (all started at once), never more; once the queue is empty it is back to one. The jobs that waited run on
    warm runners (the kernel's parent), none cold."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    client.create_queue(QueueConfig(queue_name="burst", provider={"type": "local", "min_instances": 1,
                                                                  "max_instances": 3}))
    folder = tmp_path / "src"
    folder.mkdir()
    release = tmp_path / "release"
    # The kernel's parent is its runner: a warm one was started with --warm, a cold one with the job's file.
    nb = new_notebook(cells=[new_code_cell(f"import os, time\nwith open(f'/proc/{{os.getppid()}}/cmdline') as f:\n"
                                           f"    print('warm' if '--warm' in f.read().split('\\0') else 'cold')\n"
                                           f"while not os.path.exists({str(release)!r}):\n    time.sleep(0.05)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "hold.ipynb")

    async def scenario():
        agent = make_local_agent(client.store, ["burst"], blobs=client.blobs, max_jobs=6)
        await agent.start()
        backend = agent.backend("local")
        task = None
        try:
            deadline = time.monotonic() + 180
            await first_warm_runner(backend, "burst", 180)
            jobs = [client.submit(folder / "hold.ipynb", queue="burst") for _ in range(6)]
            task = asyncio.create_task(agent.run())
            most = 0
            while len(backend.warm_runners("burst")) < 3:  # three run, three wait: one runner each, up to 3
                assert time.monotonic() < deadline, (backend.warm_runners("burst"), [j.refresh().state for j in jobs])
                most = max(most, len(backend.warm_runners("burst")))
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # it stays at three: none past max_instances
            most = max(most, len(backend.warm_runners("burst")))
            release.touch()
            while not all(j.refresh().done for j in jobs):
                assert time.monotonic() < deadline, [j.refresh() for j in jobs]
                most = max(most, len(backend.warm_runners("burst")))
                await asyncio.sleep(0.02)
            while len(backend.warm_runners("burst")) != 1 or backend._pools["burst"]._spawns:
                assert time.monotonic() < deadline, backend.warm_runners("burst")
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            return jobs, most, backend.warm_runners("burst")
        finally:
            await agent.stop()
            if task is not None:
                task.cancel()

    jobs, most, after = asyncio.run(scenario())
    assert [j.record.state for j in jobs] == ["succeeded"] * 6, [j.logs() for j in jobs]
    assert most == 3
    assert len(after) == 1
    assert [j.logs() for j in jobs] == ["warm\n"] * 6  # past the first, each took a runner started for it, none cold


def test_pipes_drain_delivers_what_the_child_wrote_before_the_call():
    """What makes ending at the result record safe: output already in the pipes reaches the log in the drain call
    itself, with no turn of the event loop in between (stderr is a separate pipe, read on its own turn)."""
    import subprocess

    from jupyter_launch.backends.local import Pipes

    async def scenario():
        pipes = Pipes(read_size=4096)
        out, err = pipes.child_ends
        proc = subprocess.Popen(["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' e >&2; printf out"],
                                stdout=out, stderr=err)
        pipes.started()
        got: list[tuple[str, bytes]] = []
        pipes.attach(lambda stream, data: got.append((stream, data)))
        while True:  # the child blocks once the pipe is full: read (without the loop) until it is done
            pipes.drain()
            if proc.poll() is not None:
                break
        pipes.drain()
        delivered = {name: b"".join(d for n, d in got if n == name) for name in ("stdout", "stderr")}
        await asyncio.wait_for(pipes.ended(), 1)  # both at end of file, found by the drain
        return delivered

    delivered = asyncio.run(scenario())
    assert delivered == {"stdout": b"out", "stderr": b"e" * 100000}


def _slow_exit_notebook(folder: Path, exit_seconds: float) -> Path:
    """A notebook whose kernel takes ``exit_seconds`` to exit, and that writes to fd 2 as its last act."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    folder.mkdir(exist_ok=True)
    nb = new_notebook(cells=[
        new_code_cell(f"import atexit, os, pathlib, time\natexit.register(time.sleep, {exit_seconds})\n"
                      "pathlib.Path(os.environ['JUPYTER_LAUNCH_OUTPUT_DIR'], 'pids').write_text("
                      "f'{os.getppid()} {os.getpid()}')"),
        new_code_cell("import os\nos.write(2, b'e' * 60000 + b'\\nTAIL\\n')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "slow_exit.ipynb")
    return folder / "slow_exit.ipynb"


@pytest.mark.parametrize("linger", [None, 0.5])
def test_a_notebook_job_ends_at_its_result_while_its_runner_is_still_ending(client, tmp_path, linger):
    """The job is done, its log and files complete, once the runner's result record is in; the runner then shuts
    its kernel down behind it (here 3 s of exit handler), or is killed after ``LocalBackend.linger``."""
    from traitlets.config import Config

    job = client.submit(_slow_exit_notebook(tmp_path / "src", 3), queue="default")
    config = Config({"LocalBackend": {"linger": linger}}) if linger else Config()

    async def scenario():
        agent = make_local_agent(client.store, ["default"], blobs=client.blobs, config=config)
        await agent.start()
        task = asyncio.create_task(agent.run())
        try:
            deadline = time.monotonic() + 120
            while not job.refresh().done:
                assert time.monotonic() < deadline, job.record
                await asyncio.sleep(0.02)
            done_at = time.monotonic()
            runner, kernel = map(int, client.read_output(job.id, "pids").split())
            alive_at_done = running(runner), running(kernel)
            while running(runner) or running(kernel):  # the agent ends them, still running
                assert time.monotonic() - done_at < 20, "the runner and its kernel did not end"
                await asyncio.sleep(0.02)
            return alive_at_done, time.monotonic() - done_at
        finally:
            await agent.stop()
            task.cancel()

    alive_at_done, ended_after = asyncio.run(scenario())
    rec = job.record
    assert (rec.state, rec.reason, rec.exit_code) == ("succeeded", "completed", 0), job.logs()
    assert alive_at_done == (True, True), "the job was done before its runner ended"
    chunks, _ = client.read_log(job.id, 0)
    stderr = b"".join(c.data for c in chunks if c.stream == "stderr")
    assert stderr == b"e" * 60000 + b"\nTAIL\n", stderr[60000:]  # written just before the result record: drained, not cut
    assert sorted(o.path for o in job.outputs) == ["pids", "slow_exit.html", "slow_exit.ipynb"]
    if linger:
        assert ended_after < 2.5, "killed after the linger, not left to its 3 s exit"
    else:
        assert ended_after > 1.5, "left to shut its kernel down"


def test_metrics_and_progress_are_recorded_and_removed_from_the_log(client, tmp_path):
    job = command_job(client, tmp_path, (
        "import jupyter_launch\n"
        "for i in range(5):\n"
        "    jupyter_launch.log({'loss': 1 / (i + 1)}, step=i)\n"
        "    jupyter_launch.progress(i + 1, 5, 'epochs')\n"
        "print('trained')\n"))
    rec, = run_jobs(client, [job])
    assert rec.state == "succeeded", job.logs()
    assert job.logs() == "trained\n"
    assert [m["step"] for m in job.metrics] == [0, 1, 2, 3, 4]
    assert job.metrics[-1]["data"] == {"loss": 0.2}
    assert rec.progress["value"] == 5 and rec.progress["total"] == 5


def test_max_instances_holds_while_jobs_run(client, tmp_path):
    client.create_queue(QueueConfig(queue_name="capped", provider={"type": "local", "max_instances": 2}))
    folder = tmp_path / "src"
    folder.mkdir()
    marker = tmp_path / "running"
    marker.mkdir()
    code = ("import os, time, pathlib\n"
            f"d = pathlib.Path({str(marker)!r})\n"
            "me = d / os.environ['JUPYTER_LAUNCH_JOB_ID']\nme.touch()\n"
            "print(len(list(d.iterdir())), flush=True)\ntime.sleep(0.3)\nme.unlink()\n")
    jobs = [client.submit(spec={"kind": "command", "command": [sys.executable, "-c", code]}, root=folder,
                          queue="capped") for _ in range(6)]
    recs = run_jobs(client, jobs, max_jobs=6)
    assert all(r.state == "succeeded" for r in recs)
    assert max(int(j.logs().strip()) for j in jobs) <= 2


def test_rerun_runs_the_same_artifact_again(client, tmp_path):
    job = command_job(client, tmp_path, "print('again')")
    run_jobs(client, [job])
    again = client.rerun(job.id)
    rec, = run_jobs(client, [again])
    assert rec.state == "succeeded" and rec.rerun_of == job.id
    assert again.logs() == "again\n" and rec.artifact == job.record.artifact


def test_kill_9_agent_mid_job_requeues_and_runs_exactly_once(client, tmp_path, cli_env):
    """A real agent process is killed with SIGKILL mid-job: its job dies with it, comes back as attempt 2, runs once."""
    import signal
    import subprocess

    folder = tmp_path / "src"
    folder.mkdir()
    ledger = tmp_path / "ledger.txt"
    code = ("import os, time\n"
            f"with open({str(ledger)!r}, 'a') as f:\n"
            "    f.write(f\"start {os.environ['JUPYTER_LAUNCH_ATTEMPT']} {os.environ['JUPYTER_LAUNCH_FENCE']}\\n\")\n"
            "print('working', flush=True)\n"
            "time.sleep(2)\n"
            f"with open({str(ledger)!r}, 'a') as f:\n"
            "    f.write(f\"end {os.environ['JUPYTER_LAUNCH_ATTEMPT']}\\n\")\n")
    job = client.submit(spec={"kind": "command", "command": [sys.executable, "-c", code], "retries": 1},
                        root=folder)
    agent_cmd = [sys.executable, "-m", "jupyter_launch.cli", "agent", "--queue", "default", "--lease", "1"]
    first = subprocess.Popen(agent_cmd, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not (ledger.exists() and "start 1" in ledger.read_text()):
            assert time.monotonic() < deadline, "the first agent never started the job"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = subprocess.Popen(agent_cmd, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            rec = job.wait(timeout=60)
        finally:
            second.terminate()
            second.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    assert (rec.state, rec.attempt) == ("succeeded", 2)
    lines = ledger.read_text().splitlines()
    assert lines[0].startswith("start 1 ") and lines[1].startswith("start 2 ") and lines[2] == "end 2"
    assert len(lines) == 3, lines  # attempt 1 died with its agent: no "end 1", nothing ran twice
    assert int(lines[1].split()[2]) > int(lines[0].split()[2])  # a newer fencing token


def test_insufficient_gpus_is_explained_while_queued(client, tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    job = client.submit(spec={"kind": "command", "command": ["true"], "resources": {"gpu": 1}}, root=folder)

    async def scenario():
        agent = make_local_agent(client.store, ["default"], blobs=client.blobs, gpus=[])
        await agent.start()
        task = asyncio.create_task(agent.run())
        await asyncio.sleep(0.5)
        rec = job.refresh()
        await agent.stop()
        task.cancel()
        return rec

    rec = asyncio.run(scenario())
    assert (rec.state, rec.reason) == ("queued", "insufficient_gpus")


def test_gpu_slots_are_handed_out_as_cuda_visible_devices(client, tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    job = client.submit(spec={"kind": "command", "resources": {"gpu": 2},
                              "command": [sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"]},
                        root=folder)
    rec, = run_jobs(client, [job], gpus=[0, 1, 2])
    assert rec.state == "succeeded"
    assert job.logs().strip() == "0,1"


# ---------------------------------------------------------------- distributed jobs: ranks on this machine

DISTRIBUTED = Path(__file__).resolve().parent / "distributed"


def test_a_distributed_job_runs_its_ranks_which_all_reduce_over_tcp(client, tmp_path):
    job = client.submit(spec={"kind": "command", "command": ["python", "allreduce.py"],
                              "resources": {"nodes": 3}}, root=DISTRIBUTED)
    rec, = run_jobs(client, [job])
    logs = job.logs()
    assert (rec.state, rec.exit_code) == ("succeeded", 0), (rec, logs)
    for rank in range(3):  # each rank got the sum of all three: 1+2+3, 10+20+30, 100+200+300
        assert f"[rank {rank}] rank {rank} of 3 (local rank {rank}, host " in logs, logs
    assert logs.count("sum [6, 60, 600]") == 3, logs
    assert [m["data"] for m in job.metrics] == [{"rank": 0, "sum0": 6}]  # metrics from rank 0 only
    assert [o.path for o in job.outputs] == ["rank-0.json"]  # outputs from rank 0 only


def test_one_rank_failing_fails_the_job_and_stops_the_others(client, tmp_path):
    job = client.submit(spec={"kind": "command", "command": ["python", "rank1_fails.py"], "resources": {"nodes": 3}},
                        root=DISTRIBUTED)
    rec, = run_jobs(client, [job])  # within the helper's 120 s: ranks 0 and 2 did not sleep their 600 s
    logs = job.logs()
    assert (rec.state, rec.exit_code, rec.reason) == ("failed", 3, "exit_code"), (rec, logs)
    assert "[jupyter-launch] rank 1 exited with code 3; stopping the other 2 rank(s)" in logs, logs
    assert sorted(line for line in logs.splitlines() if line.endswith("up")) == [
        "[rank 0] up", "[rank 1] up", "[rank 2] up"]


def test_an_agent_started_for_a_client_serves_as_its_user_on_a_private_queue(launch_home, tmp_path):
    """Two users on one store: bob's live agent on the private `default` queue never runs alice's job, so alice's
    client starts an agent of its own, serving as alice; an agent serving as no user (the team's) would run it."""
    alice = LaunchClient(owner="alice")
    try:
        alice.store.register_agent("bobs-agent", ["default"], [], host="bobs-box", info={"owner": "bob"})
        assert alice.live_agents("default") == []

        async def submit_and_follow():
            job = command_job(alice, tmp_path, "print('mine')")
            assert await alice.ensure_agent("default")
            try:
                deadline = time.monotonic() + 120
                while not job.refresh().done:
                    assert time.monotonic() < deadline, job.record
                    await asyncio.sleep(0.05)
                agents = {a["id"]: a["info"]["owner"] for a in alice.store.list_agents()}
            finally:
                await alice.stop_agents()
            return job.record, agents

        record, agents = asyncio.run(submit_and_follow())
        assert (record.state, record.owner) == ("succeeded", "alice")
        assert record.agent_id != "bobs-agent" and agents[record.agent_id] == "alice"
        alice.store.register_agent("team-agent", ["default"], [], host="team-box", info={})
        assert alice.live_agents("default") == ["team-agent"]
    finally:
        alice.close()


def test_a_local_agent_with_its_report_renderer_leaves_the_notebook_machinery_to_its_children(tmp_path):
    """The agent process starts runners and a report renderer but never imports nbformat itself: importing it
    (through jupyter_launch.runner, for one helper) cost the agent ~1 s of CPU at start (jsonschema's format
    grammars), paid by the first job. Checked in a fresh interpreter, after a notebook job has run."""
    import subprocess
    import textwrap

    nb = tmp_path / "nb.ipynb"
    nb.write_text('{"cells": [{"cell_type": "code", "execution_count": null, "id": "a", "metadata": {}, '
                  '"outputs": [], "source": "print(1)"}], "metadata": {"kernelspec": {"name": "python3", '
                  '"display_name": "Python 3", "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}')
    code = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from jupyter_launch.agent import make_local_agent
        from jupyter_launch.client import LaunchClient
        from jupyter_launch.spec import QueueConfig

        async def main():
            client = LaunchClient(home=Path({str(tmp_path / 'home')!r}))
            client.create_queue(QueueConfig(queue_name="w", provider={{"type": "local", "min_instances": 1}}))
            agent = make_local_agent(client.store, ["w"], blobs=client.blobs, home=client.home)
            await agent.start()
            task = asyncio.create_task(agent.run())
            job = await asyncio.to_thread(client.submit, Path({str(nb)!r}), queue="w")
            while not (await asyncio.to_thread(job.refresh)).done:
                await asyncio.sleep(0.05)
            outputs = [o.path for o in await asyncio.to_thread(client.outputs, job.id)]
            await agent.stop()
            task.cancel()
            print(job.status, "nb.html" in outputs, sorted(m for m in ("nbformat", "nbclient", "jupyter_launch.runner")
                                                          if m in sys.modules))

        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1:] == ["succeeded True []"], out.stdout + out.stderr


def test_a_job_writing_faster_than_its_store_is_held_back_not_buffered(client, tmp_path, monkeypatch):
    """The agent holds at most about ``LOG_HIGH_WATER`` of a job's output not yet in the store: past it the backend
    stops reading the job's pipe, and the job's writes wait, as on a full pipe. Here the store takes 50 ms more per
    write than it does, and the job writes 256 MiB at once: the agent's process grows by a fraction of it (before,
    by all of it), and the log arrives whole and in order."""
    from jupyter_launch.agent import LOG_HIGH_WATER

    job = command_job(client, tmp_path, blocks_job())
    slow_store(client.store, monkeypatch)
    with PeakGrowth() as grew:
        rec, = run_jobs(client, [job])
    assert (rec.state, rec.exit_code) == ("succeeded", 0), job.logs()[-2000:]
    assert grew.mib < 8 * LOG_HIGH_WATER / 2**20, f"the agent grew by {grew.mib:.0f} MiB for a 256 MiB log"
    check_blocks_log(client, job)


def blocks_job(mib: int = 256) -> str:
    """Python writing ``mib`` MiB to stdout as fast as it can, each MiB telling its number."""
    return f"import sys\nfor i in range({mib}):\n    sys.stdout.buffer.write(b'%08d' % i * 131072)\n"


def slow_store(store, monkeypatch, delay: float = 0.05) -> None:
    """The store takes ``delay`` seconds more for every log write."""
    append = store.append_logs

    def slow_append(*args, **kwargs):
        time.sleep(delay)
        return append(*args, **kwargs)

    monkeypatch.setattr(store, "append_logs", slow_append)


def check_blocks_log(client, job, mib: int = 256) -> None:
    """The job's log is what :func:`blocks_job` wrote, whole and in order."""
    expected, got, offset, size = hashlib.sha256(), hashlib.sha256(), 0, 0
    for i in range(mib):
        expected.update(b"%08d" % i * 131072)
    while True:
        chunks, offset = client.read_log(job.id, offset)
        if not chunks:
            break
        for chunk in chunks:
            got.update(chunk.data)
            size += len(chunk.data)
    assert size == mib * 2**20 and got.hexdigest() == expected.hexdigest()
