"""The Slurm backend on a real single-node Slurm: LaunchClient → SQLite store → agent → sbatch on ci/slurm.sh's
slurmctld and slurmd (munge, a count-only GRES of 2 ``gpu``). Nothing of Slurm is mocked: every job is a real batch
job, read back with squeue and scontrol. When the cluster cannot be started the tests fail, naming what is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jupyter_launch.agent import make_local_agent
from jupyter_launch.client import LaunchClient
from jupyter_launch.spec import JobSpec, QueueConfig, SpecError, parse_queue_config

ROOT = Path(__file__).resolve().parent.parent
NODES = f"{socket.gethostname().split('.')[0]}-[1-2]"  # ci/slurm.sh's two nodes, each a slurmd on this machine
CANARY = "agent-only-" + os.urandom(6).hex()


# ---------------------------------------------------------------- fixtures: a real Slurm

def _slurm_answers() -> bool:
    try:
        out = subprocess.run(["sinfo", "--noheader", "--Node", "--nodes", NODES, "--format", "%T"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and sum(s in ("idle", "mixed", "allocated") for s in out.stdout.split()) == 2


@pytest.fixture(scope="session")
def slurm() -> str:
    """ci/slurm.sh's cluster (started, or checked, once per session): its nodes."""
    proc = subprocess.run(["bash", str(ROOT / "ci" / "slurm.sh")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not _slurm_answers():
        pytest.fail("no Slurm: ci/slurm.sh failed (it installs slurm-wlm and munge with apt and must run as root):\n"
                    + proc.stdout[-2000:] + proc.stderr[-2000:], pytrace=False)
    return NODES


@pytest.fixture
def launch(tmp_path: Path, slurm: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("JUPYTER_LAUNCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AGENT_ONLY_CANARY", CANARY)
    client = LaunchClient(home=tmp_path / "home")
    client.create_queue(QueueConfig(queue_name="hpc", provider={
        "type": "slurm", "partition": "debug", "shared_dir": str(tmp_path / "shared"), "grace_period": 2}))
    yield client
    client.close()
    cancel_slurm_jobs()


def cancel_slurm_jobs() -> None:
    """End whatever a test left in Slurm (this cluster is the tests' own), so the next test starts on an idle node."""
    ids = subprocess.run(["squeue", "--noheader", "--format", "%i"], capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["scancel", *ids], check=False)
        deadline = time.monotonic() + 30
        while subprocess.run(["squeue", "--noheader", "--format", "%i"], capture_output=True,
                             text=True).stdout.split() and time.monotonic() < deadline:
            time.sleep(0.2)


def run_agent(client: LaunchClient, jobs, timeout: float = 120, while_running=None, **traits):
    """Run an in-process agent on the jobs' queues until every job has ended; ``while_running(agent)`` alongside."""

    async def main():
        agent = make_local_agent(client.store, sorted({j.record.queue for j in jobs}), blobs=client.blobs,
                                 home=client.home, lease_seconds=5, **traits)
        await agent.start()
        task = asyncio.create_task(agent.run())
        side = asyncio.create_task(while_running(agent)) if while_running else None
        try:
            deadline = time.monotonic() + timeout
            while not all(j.refresh().done for j in jobs):
                assert time.monotonic() < deadline, [(j.refresh(), j.logs()) for j in jobs]
                if side and side.done() and side.exception():
                    raise side.exception()
                await asyncio.sleep(0.05)
            if side:
                await side
        finally:
            await agent.stop()
            task.cancel()
            if side and not side.done():
                side.cancel()
        return [j.record for j in jobs]

    return asyncio.run(main())


def enqueue(client: LaunchClient, queue: str = "hpc", **spec):
    """A command job straight into the store (it needs no files, so no artifact)."""
    record = client.store.enqueue(queue, JobSpec(kind="command", **spec), artifact=None)
    return client.job(record.id)


def scontrol(slurm_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", slurm_id], capture_output=True, text=True).stdout
    return dict(w.split("=", 1) for w in out.split() if "=" in w)


def slurm_id_of(job) -> str:
    for line in job.logs().splitlines():
        if "submitted as Slurm job" in line:
            return line.split()[-1]
    raise AssertionError(f"no Slurm job id in the log: {job.logs()!r}")


async def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def notebook(folder: Path, name: str, *sources: str) -> Path:
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {"name": "python3", "language": "python",
                                                                          "display_name": "Python 3"}},
          "cells": [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "id": f"c{i}",
                     "source": source} for i, source in enumerate(sources)]}
    path = folder / name
    path.write_text(json.dumps(nb))
    return path


# ---------------------------------------------------------------- the queue's settings

@pytest.mark.parametrize("provider, field, words", [
    ("{type: slurm, shared_dir: relative/dir}", "provider.shared_dir", "not an absolute path"),
    ("{type: slurm}", "provider.shared_dir", "required field is missing"),
    ("{type: slurm, shared_dir: /s, sbatch_options: [--output=x]}", "provider.sbatch_options",
     "--output is set by jupyter-launch"),
    ("{type: slurm, shared_dir: /s, sbatch_options: [-Jname]}", "provider.sbatch_options",
     "-J is set by jupyter-launch"),
    ("{type: slurm, shared_dir: /s, sbatch_options: [constraint=a100]}", "provider.sbatch_options",
     "not an sbatch option"),
])
def test_a_bad_slurm_queue_is_refused_in_one_line_naming_the_field(provider, field, words):
    with pytest.raises(SpecError) as info:
        parse_queue_config(f"queue_name: hpc\nprovider: {provider}\n", "hpc.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"hpc.yaml:2: {field}: ") and words in message, message


# ---------------------------------------------------------------- jobs

def test_a_command_job_runs_in_slurm_with_its_log_streaming_outputs_and_a_sealed_environment(launch, tmp_path,
                                                                                            monkeypatch):
    monkeypatch.setenv("HPC_TOKEN", "s3cret-value")
    job = enqueue(launch, command=["python", "-c", (
        "import os, pathlib, sys, time\n"
        "print('first', flush=True)\n"
        "time.sleep(3)\n"
        "env = dict(os.environ)\n"
        "print('slurm job', env['SLURM_JOB_ID'], 'on', env['SLURMD_NODENAME'])\n"
        "print('token', env['HPC_TOKEN'] == 's3cret-value', 'greeting', env['GREETING'])\n"
        "print('canary', any('agent-only-' in v for v in env.values()))\n"
        "print('python', sys.prefix == os.environ['VIRTUAL_ENV'], 'cwd', os.getcwd())\n"
        "pathlib.Path(os.environ['JUPYTER_LAUNCH_OUTPUT_DIR'], 'result.txt').write_text('42')\n"
        "print('to stderr', file=sys.stderr)\n")], env={"GREETING": "hi"}, secrets=["HPC_TOKEN"])
    seen: dict[str, Any] = {}

    async def watch(agent):
        seen["first_log_while_running"] = await wait_until(
            lambda: "first" in job.logs() and job.refresh().state == "running", 60, "the first line while running")
        slurm_id = slurm_id_of(job)
        seen["slurm_running"] = scontrol(slurm_id).get("JobState")

    rec, = run_agent(launch, [job], while_running=watch)
    logs = job.logs()
    assert (rec.state, rec.exit_code, rec.reason) == ("succeeded", 0, "completed"), (rec, logs)
    assert seen == {"first_log_while_running": True, "slurm_running": "RUNNING"}
    slurm_id = slurm_id_of(job)
    assert f"slurm job {slurm_id} on {scontrol(slurm_id)['BatchHost']}" in logs
    assert "token True greeting hi" in logs and "canary False" in logs and "python True" in logs, logs
    assert "s3cret-value" not in logs
    assert "to stderr" in logs
    assert launch.read_output(job.id, "result.txt") == b"42"
    fields = scontrol(slurm_id)
    assert (fields["JobState"], fields["ExitCode"], fields["JobName"]) == ("COMPLETED", "0:0", f"jl-{job.id}")
    assert fields["Partition"] == "debug"
    assert f"cwd {tmp_path / 'shared' / 'jobs'}" in logs  # it ran in its folder under shared_dir ...
    assert not list((tmp_path / "shared" / "jobs").iterdir())  # ... removed when it ended


def test_a_failing_command_reports_its_exit_code_and_a_timeout_fails_the_job(launch):
    failing = enqueue(launch, command=["sh", "-c", "echo bye; exit 3"])
    slow = enqueue(launch, command=["sh", "-c", "echo start; sleep 120"], timeout=3)
    rec_failing, rec_slow = run_agent(launch, [failing, slow])
    assert (rec_failing.state, rec_failing.exit_code, rec_failing.reason) == ("failed", 3, "exit_code")
    assert "bye" in failing.logs()
    assert (rec_slow.state, rec_slow.reason) == ("failed", "timeout"), rec_slow
    assert scontrol(slurm_id_of(slow))["TimeLimit"] == "00:01:00"  # --time in whole minutes, rounded up


def test_resources_become_sbatch_options_and_a_job_waits_with_slurms_reason(launch, tmp_path):
    # Every GPU taken by a job outside jupyter-launch: ours waits for Resources, then runs with a GPU of its own.
    blocker = subprocess.run(["sbatch", "--parsable", "--nodes=2", "--gres=gpu:2", "--output=/dev/null", "--wrap",
                              "sleep 300"],
                             capture_output=True, text=True, check=True).stdout.strip()
    job = enqueue(launch, command=["sh", "-c", "echo gpus=$CUDA_VISIBLE_DEVICES"],
                  resources={"gpu": 1, "cpu": 2, "memory": "300Mi"}, timeout=150)
    seen: dict[str, Any] = {}

    async def watch(agent):
        rec = await wait_until(lambda: job.refresh().reason == "pending_resources" and job.record, 60,
                               "pending_resources")
        seen["message"] = rec.message
        seen["state"] = rec.state
        fields = await asyncio.to_thread(scontrol, slurm_id_of(job))
        seen["fields"] = {k: fields.get(k) for k in ("TimeLimit", "NumCPUs", "MinMemoryNode", "TresPerNode",
                                                       "JobState", "Reason")}
        # A job held in Slurm says so, and how to let it go. (Submitted now, behind the first, so that one is the
        # job Slurm shows waiting for Resources; a GPU, so it waits too and can be held.)
        held = seen["held_job"] = enqueue(launch, command=["sh", "-c", "echo released"], resources={"gpu": 1})
        held_id = await wait_until(lambda: "submitted as Slurm job" in held.logs() and slurm_id_of(held), 60,
                                   "the second job's sbatch")
        rec = await wait_until(lambda: held.refresh().reason == "pending_priority" and held.record, 30,
                               "pending_priority: behind the first job")
        seen["priority"] = rec.message
        subprocess.run(["scontrol", "hold", held_id], check=True)
        rec = await wait_until(lambda: held.refresh().reason == "held" and held.record, 30, "held")
        seen["held"] = rec.message
        subprocess.run(["scontrol", "release", held_id], check=True)
        subprocess.run(["scancel", blocker], check=True)
        await wait_until(lambda: held.refresh().done, 60, "the held job's end")

    rec, = run_agent(launch, [job], while_running=watch, timeout=180)
    held = seen["held_job"]
    assert (rec.state, rec.exit_code) == ("succeeded", 0), (rec, job.logs())
    assert held.refresh().state == "succeeded" and "released" in held.logs()
    slurm_id = slurm_id_of(job)
    assert seen["state"] == "starting"  # not running while it waits in Slurm's queue
    assert seen["message"] == (f"Slurm job {slurm_id} is pending (Resources): waiting for resources: the nodes of "
                               "partition debug are busy with other jobs (it asks for 1 GPU(s), 2 CPU(s), 300Mi)")
    assert seen["fields"] == {"TimeLimit": "00:03:00", "NumCPUs": "2", "MinMemoryNode": "300M",
                              "TresPerNode": "gres:gpu:1", "JobState": "PENDING", "Reason": "Resources"}
    assert seen["priority"] == (f"Slurm job {slurm_id_of(held)} is pending (Priority): jobs of higher priority are "
                                "ahead of it in partition debug; it runs when they have started")
    assert seen["held"].startswith(f"Slurm job {slurm_id_of(held)} is pending (JobHeld")
    assert f"scontrol release {slurm_id_of(held)}" in seen["held"]
    assert "gpus=0" in job.logs() or "gpus=1" in job.logs(), job.logs()


def test_cancel_is_sigterm_then_sigkill_after_the_grace_period(launch):
    polite = enqueue(launch, command=["bash", "-c", "trap 'echo got TERM; exit 0' TERM; echo ready; "
                                                    "while true; do sleep 0.1; done"])
    stubborn = enqueue(launch, command=["bash", "-c", "trap 'echo ignoring TERM' TERM; echo ready; "
                                                      "while true; do sleep 0.1; done"])

    async def cancel_both(agent):
        for job in (polite, stubborn):
            await wait_until(lambda: "ready" in job.logs(), 60, "ready")
            await asyncio.to_thread(launch.cancel, job.id)
            await wait_until(lambda: job.refresh().done, 60, "cancelled")

    rec_polite, rec_stubborn = run_agent(launch, [polite, stubborn], while_running=cancel_both)
    assert (rec_polite.state, rec_stubborn.state) == ("cancelled", "cancelled")
    assert "got TERM" in polite.logs() and rec_polite.exit_code == 0  # it ended on its own, given the time
    # The other ignored SIGTERM, lived on through the queue's grace period, and was killed (137: SIGKILL).
    assert "ignoring TERM" in stubborn.logs() and rec_stubborn.exit_code == 137, (rec_stubborn, stubborn.logs())
    for job in (polite, stubborn):
        assert scontrol(slurm_id_of(job))["JobState"] in ("CANCELLED", "COMPLETED", "FAILED")
    assert not subprocess.run(["squeue", "--noheader"], capture_output=True, text=True).stdout.strip()


def test_a_notebook_job_runs_in_the_environment_built_once_for_its_lock(launch, tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    notebook(folder, "nb.ipynb", "%pip install nbformat", "import sys, os\nprint('prefix', sys.prefix)",
             "x = 6 * 7\nprint('answer', x)")
    first = launch.submit(folder / "nb.ipynb", queue="hpc", root=folder)
    second = launch.submit(folder / "nb.ipynb", queue="hpc", root=folder)
    rec_first, rec_second = run_agent(launch, [first, second], timeout=240)
    for job, rec in ((first, rec_first), (second, rec_second)):
        assert (rec.state, rec.exit_code) == ("succeeded", 0), (rec, job.logs())
        assert "answer 42" in job.logs()
        assert sorted(o.path for o in job.outputs) == ["nb.html", "nb.ipynb"], (job.outputs, job.logs())
    envs = [p for p in (tmp_path / "shared" / "envs").iterdir() if p.is_dir()]
    assert len(envs) == 1, envs  # one environment for the one lock ...
    built = [j for j in (first, second) if "building the job's environment" in j.logs()]
    assert len(built) == 1, [j.logs() for j in (first, second)]  # ... built once, by pip, for one of the jobs
    assert "pip install nbformat" in built[0].logs()
    executed = json.loads(launch.read_output(first.id, "nb.ipynb"))
    printed = "".join("".join(o["text"]) for c in executed["cells"] for o in c.get("outputs", []) if "text" in o)
    assert "answer 42\n" in printed and f"prefix {tmp_path / 'shared' / 'jobs'}" in printed, printed


def test_a_node_failure_requeues_the_job_within_its_retries_and_fails_it_past_them(launch):
    job = enqueue(launch, command=["sh", "-c", "echo run ${SLURM_RESTART_COUNT:-0}; sleep 4; echo done"], retries=1)
    once = enqueue(launch, command=["sh", "-c", "echo run; sleep 300"])  # no retries: a node failure ends it

    def node(state: str) -> None:  # resume is refused when the node has come back by itself (ReturnToService=2)
        subprocess.run(["scontrol", "update", f"nodename={NODES}", f"state={state}"]
                       + (["reason=jupyter-launch test"] if state == "down" else []), check=state == "down")

    async def fail_the_node(agent):
        await wait_until(lambda: "run 0" in job.logs(), 60, "the first run")
        await wait_until(lambda: "run" in once.logs(), 60, "the second job's run")
        node("down")
        await wait_until(lambda: "Slurm requeued" in job.logs(), 60, "the requeue")
        node("resume")

    try:
        rec, rec_once = run_agent(launch, [job, once], while_running=fail_the_node, timeout=180)
    finally:
        subprocess.run(["scontrol", "update", f"nodename={NODES}", "state=resume"], capture_output=True)
    logs = job.logs()
    assert (rec.state, rec.exit_code, rec.attempt) == ("succeeded", 0, 1), (rec, logs)
    assert "run 0" in logs and "run 1" in logs and "Slurm requeued" in logs and logs.rstrip().endswith("done")
    assert "restart 1 of at most 1" in logs
    assert (rec_once.state, rec_once.reason) == ("failed", "node_failure"), (rec_once, once.logs())


AGENT_SCRIPT = """
import asyncio, sys
from jupyter_launch.agent import make_local_agent
from jupyter_launch.client import LaunchClient
client = LaunchClient(home=sys.argv[1])
async def main():
    agent = make_local_agent(client.store, ["hpc"], blobs=client.blobs, home=client.home, lease_seconds=3,
                             wake_socket=False)
    await agent.start()
    await agent.run()
asyncio.run(main())
"""


def kill_agent_once_job_printed_one(job: Any, home: Path) -> None:
    """Run a real agent process until the job has printed `one`, then kill -9 it: its Slurm job runs on."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    agent = subprocess.Popen([sys.executable, "-c", AGENT_SCRIPT, str(home)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "one" not in job.logs():
            assert time.monotonic() < deadline and agent.poll() is None, (job.refresh(), job.logs())
            time.sleep(0.1)
        agent.send_signal(signal.SIGKILL)
    finally:
        if agent.poll() is None:
            agent.kill()
        agent.wait()


def test_a_restarted_agent_reattaches_to_the_running_slurm_job(launch, tmp_path):
    job = enqueue(launch, command=["sh", "-c", "echo one; sleep 6; echo two"], retries=1)
    kill_agent_once_job_printed_one(job, tmp_path / "home")
    slurm_id = slurm_id_of(job)
    assert scontrol(slurm_id)["JobState"] == "RUNNING"  # the agent is gone; its job is not
    rec, = run_agent(launch, [job])
    logs = job.logs()
    assert (rec.state, rec.exit_code, rec.attempt) == ("succeeded", 0, 2), (rec, logs)
    assert f"re-attached to Slurm job {slurm_id}" in logs and logs.rstrip().endswith("two"), logs
    assert logs.count("submitted as Slurm job") == 1  # nothing was submitted again
    assert scontrol(slurm_id)["JobState"] == "COMPLETED"


def test_the_next_agent_cancels_the_slurm_job_of_a_job_lost_with_its_agent(launch, tmp_path):
    job = enqueue(launch, command=["sh", "-c", "echo one; sleep 300"])  # retries 0: nobody re-attaches
    kill_agent_once_job_printed_one(job, tmp_path / "home")
    slurm_id = slurm_id_of(job)
    deadline = time.monotonic() + 30
    while job.refresh().reason != "lost":  # the lease (3 s) runs out and the store fails the job
        assert time.monotonic() < deadline, job.record
        launch.store.requeue_expired()
        time.sleep(0.2)
    assert scontrol(slurm_id)["JobState"] == "RUNNING"

    async def start_and_stop_an_agent():
        agent = make_local_agent(launch.store, ["hpc"], blobs=launch.blobs, home=launch.home, lease_seconds=5)
        await agent.start()  # its start-up reconciliation cancels what the lost job left
        await agent.stop()

    asyncio.run(start_and_stop_an_agent())
    deadline = time.monotonic() + 30
    while scontrol(slurm_id)["JobState"] not in ("CANCELLED", "COMPLETED", "FAILED"):
        assert time.monotonic() < deadline, scontrol(slurm_id)
        time.sleep(0.2)
    assert not list((tmp_path / "shared" / "jobs").iterdir())


# ---------------------------------------------------------------- distributed jobs: one rank per node, with srun

DISTRIBUTED = Path(__file__).resolve().parent / "distributed"


def test_a_two_node_job_runs_a_rank_on_each_node_which_all_reduce_over_tcp(launch):
    job = launch.submit(spec={"kind": "command", "command": ["python", "allreduce.py"], "resources": {"nodes": 2}},
                        queue="hpc", root=DISTRIBUTED)
    rec, = run_agent(launch, [job])
    logs = job.logs()
    assert (rec.state, rec.exit_code) == ("succeeded", 0), (rec, logs)
    fields = scontrol(slurm_id_of(job))
    assert (fields["NumNodes"], fields["NodeList"]) == ("2", NODES), fields  # both nodes, allocated together
    for rank in range(2):
        assert f"[rank {rank}] rank {rank} of 2 (local rank 0, host " in logs, logs
    assert logs.count("sum [3, 30, 300]") == 2, logs  # each rank got 1+2, 10+20, 100+200
    assert [m["data"] for m in job.metrics] == [{"rank": 0, "sum0": 3}]  # metrics from rank 0 only
    assert [o.path for o in job.outputs] == ["rank-0.json"]  # outputs from rank 0 only


def test_one_rank_failing_fails_the_slurm_job_and_stops_the_other(launch):
    job = launch.submit(spec={"kind": "command", "command": ["python", "rank1_fails.py"], "resources": {"nodes": 2}},
                        queue="hpc", root=DISTRIBUTED)
    rec, = run_agent(launch, [job])  # within the helper's 120 s: rank 0 did not sleep its 600 s
    logs = job.logs()
    assert (rec.state, rec.exit_code, rec.reason) == ("failed", 3, "exit_code"), (rec, logs)
    assert sorted(line for line in logs.splitlines() if line.endswith("] up")) == ["[rank 0] up", "[rank 1] up"]
    assert "task 1: Exited with exit code 3" in logs, logs  # srun's own line, as it wrote it
    assert "[jupyter-launch] rank 1 exited with code 3; srun stopped the other ranks" in logs, logs


def test_a_job_runs_on_through_a_restart_of_slurmctld(launch):
    # Before: the first squeue that failed while slurmctld was away failed the job (backend_error).
    job = enqueue(launch, command=["sh", "-c", "echo one; sleep 8; echo two"])
    state = Path("/var/lib/launch-slurm")

    async def restart_the_controller(agent):
        await wait_until(lambda: "one" in job.logs(), 60, "the first line")
        pid = int((state / "slurmctld.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        try:
            await wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30, "slurmctld to stop")
            await wait_until(lambda: "asking again" in job.logs(), 60, "a failed squeue")
        finally:  # the next tests need it
            await asyncio.to_thread(subprocess.run, ["bash", str(ROOT / "ci" / "slurm.sh")], check=True,
                                    capture_output=True, timeout=300)

    rec, = run_agent(launch, [job], while_running=restart_the_controller, timeout=240)
    logs = job.logs()
    assert (rec.state, rec.exit_code) == ("succeeded", 0), (rec, logs)
    assert "asking again for up to 300s" in logs and "Slurm answers again" in logs, logs
    assert "one\ntwo\n" in logs and logs.count("submitted as Slurm job") == 1


def test_a_job_slurm_refuses_fails_with_sbatchs_message_and_leaves_no_folder(launch, tmp_path):
    launch.create_queue(QueueConfig(queue_name="picky", provider={
        "type": "slurm", "shared_dir": str(tmp_path / "shared"), "sbatch_options": ["--constraint=no-such-feature"]}))
    job = enqueue(launch, "picky", command=["true"])
    rec, = run_agent(launch, [job])
    assert (rec.state, rec.reason) == ("failed", "backend_error"), rec
    assert rec.message.startswith("cannot submit the job to Slurm: sbatch exited 1: sbatch: error: "), rec.message
    assert "\n" not in rec.message
    assert not list((tmp_path / "shared" / "jobs").iterdir())  # before: its folder, variables and all, stayed


def test_a_notebook_runs_on_its_kernels_packages_installed_from_its_lock(launch, tmp_path, monkeypatch):
    """The notebook's kernel (``launch-data-test``: pandas, which the agent's interpreter lacks) is captured as the
    lock; the Slurm environment installs what the queue's interpreter lacks, pinned, and the job's kernel of that
    name runs in the job's own layer over it, not the submitting machine's kernelspec."""
    sys.path.insert(0, str(Path(__file__).parent))
    from data_kernel import KERNEL, data_kernel

    python = data_kernel()
    pandas_version = subprocess.run([str(python), "-c", "import pandas; print(pandas.__version__)"],
                                    capture_output=True, text=True, check=True).stdout.strip()
    folder = tmp_path / "src"
    folder.mkdir()
    path = notebook(folder, "data.ipynb", "import sys, pandas\nprint('pandas', pandas.__version__)\n"
                                          "print('from', pandas.__file__)\nprint('kernel', sys.executable)")
    nb = json.loads(path.read_text())
    nb["metadata"]["kernelspec"] = {"name": KERNEL, "display_name": KERNEL, "language": "python"}
    path.write_text(json.dumps(nb))
    job = launch.submit(path, queue="hpc", root=folder)
    rec, = run_agent(launch, [job], timeout=600)
    assert (rec.state, rec.exit_code) == ("succeeded", 0), (rec, job.logs()[-3000:])
    executed = json.loads(launch.read_output(job.id, "data.ipynb"))
    printed = "".join("".join(o["text"]) for c in executed["cells"] for o in c.get("outputs", []) if "text" in o)
    envs = tmp_path / "shared" / "envs"
    assert f"pandas {pandas_version}\n" in printed, printed
    assert f"from {envs}" in printed, printed  # installed from the lock into the shared environment
    assert f"kernel {tmp_path / 'shared' / 'jobs'}" in printed, printed  # the job's layer, not the data venv
    env, = [p for p in envs.iterdir() if p.is_dir()]
    pins = (env / "lock.txt").read_text().split()
    assert f"pandas=={pandas_version}" in pins, pins
    assert not any(p.startswith(("jupyter-launch==", "pip==")) for p in pins), pins
    assert "pinned distributions of the notebook's kernel" in job.logs()


def test_a_lock_of_another_python_is_refused_in_one_line(tmp_path):
    from jupyter_launch.backends.job_venv import describe_interpreter
    from jupyter_launch.backends.slurm.environment import EnvironmentBuildError, plan_environment

    layer = describe_interpreter(sys.executable)
    (tmp_path / ".jupyter-launch").mkdir()
    (tmp_path / ".jupyter-launch" / "environment.json").write_text(json.dumps(
        {"python": "3.7.1", "packages": ["numpy==1.21.0"], "kernel": "old"}))
    with pytest.raises(EnvironmentBuildError) as err:
        plan_environment(layer, tmp_path, "full", sys.executable)
    assert str(err.value) == (
        f"the notebook's kernel runs Python 3.7.1 and the queue's interpreter {sys.executable} has Python "
        f"{layer.version}: its packages cannot be installed there at their versions. Set the queue's "
        "provider.python to a Python 3.7, or provider.lock: minimal")
    assert plan_environment(layer, tmp_path, "minimal", sys.executable).pins == ()
