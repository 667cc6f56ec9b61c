"""`jupyter launch ...` as a user runs it: real processes, the examples as written, one-line errors with exit code 2."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"


def job_count(home: Path) -> int:
    db = home / "launch.db"
    if not db.exists():
        return 0
    return sqlite3.connect(db).execute("select count(*) from jobs").fetchone()[0]


def test_main_job_hello_notebook_follows_with_an_in_process_agent(cli, launch_home, tmp_path):
    proc = cli("submit", str(EXAMPLES / "hello.ipynb"), "--follow")
    assert proc.returncode == 0, proc.stderr
    assert "hello, world!" in proc.stdout
    assert "running one in this process" in proc.stderr
    job_id = proc.stderr.split("submitted job ")[1].split()[0]
    # It says how to fetch what it wrote, not a path in its folder, which goes when the job ends.
    assert f"wrote greeting.txt, an output: jupyter launch outputs {job_id} --to DIR\n" in proc.stdout
    assert proc.stderr.rstrip().splitlines()[-1] == f"outputs: jupyter launch outputs {job_id} --to DIR"
    show = cli("show", job_id, "--json", check=True)
    rec = json.loads(show.stdout)
    assert (rec["state"], rec["exit_code"], rec["reason"]) == ("succeeded", 0, "completed")
    outs = cli("outputs", job_id, check=True).stdout
    for name in ("hello.ipynb", "hello.html", "greeting.txt"):
        assert name in outs
    cli("outputs", job_id, "--to", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / "greeting.txt").read_text() == "hello, world!\n"
    executed = json.loads((tmp_path / "out" / "hello.ipynb").read_text())
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"]) is False
    metrics = [json.loads(line) for line in cli("metrics", job_id, check=True).stdout.splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2]


def test_parameters_from_the_command_line(cli, launch_home, tmp_path):
    proc = cli("submit", str(EXAMPLES / "hello.ipynb"), "-p", "name", "launch", "-p", "greeting", "'; import os #",
               "--follow")
    assert proc.returncode == 0, proc.stderr
    assert "'; import os #, launch!" in proc.stdout


def test_failing_cell_fails_the_job_with_the_cell_and_traceback(cli, launch_home):
    proc = cli("submit", str(NOTEBOOKS / "failing.ipynb"), "--follow")
    assert proc.returncode == 1
    job_id = proc.stderr.split("submitted job ")[1].split()[0]
    rec = json.loads(cli("show", job_id, "--json", check=True).stdout)
    assert (rec["state"], rec["reason"]) == ("failed", "cell_error")
    assert "ZeroDivisionError" in rec["message"] and "cell" in rec["message"]
    assert "ZeroDivisionError" in cli("logs", job_id, check=True).stderr


def test_seed_queue_and_job_as_written(cli, launch_home):
    refused = cli("queue", "create", str(EXAMPLES / "my_queue.yaml"))
    assert refused.returncode == 2
    err = refused.stderr.strip()
    assert len(err.splitlines()) == 1
    assert "my_queue.yaml" in err and "provider.type" in err and "local, docker, kubernetes" in err
    cli("queue", "create", str(EXAMPLES / "my_queue.local.yaml"), check=True)
    listing = cli("queue", "list", check=True).stdout
    assert "gpu-training-queue" in listing and "default" in listing
    # The seed's job as written asks for a GPU; this machine's agents have none, so run it with --gpus 0.
    proc = cli("submit", "--config", str(EXAMPLES / "my_training_job.yaml"), "--queue", "gpu-training-queue",
               "--job-type", "train-model", "--gpus", "0", "--follow")
    assert proc.returncode == 0, proc.stderr
    assert "image wandb/deeplearning:latest is not used" in proc.stderr
    assert "API key set: yes" in proc.stdout and "done" in proc.stdout
    job_id = proc.stderr.split("submitted job ")[1].split()[0]
    assert "weights.npy" in cli("outputs", job_id, check=True).stdout
    assert len(cli("metrics", job_id, check=True).stdout.splitlines()) == 100


def test_seed_job_with_its_gpu_waits_with_a_reason(cli, launch_home):
    cli("queue", "create", str(EXAMPLES / "my_queue.local.yaml"), check=True)
    job_id = cli("submit", "--config", str(EXAMPLES / "my_training_job.yaml"), "--queue", "gpu-training-queue",
                 "--job-type", "train-model", check=True).stdout.strip()
    rec = json.loads(cli("show", job_id, "--json", check=True).stdout)
    assert (rec["state"], rec["reason"]) == ("queued", "no_agent_for_queue")
    cli("cancel", job_id, check=True)
    assert json.loads(cli("show", job_id, "--json", check=True).stdout)["state"] == "cancelled"


@pytest.mark.parametrize("args,expect", [
    (["submit", "missing.ipynb"], "missing.ipynb: no such notebook"),
    (["submit", "{dir}/bad.ipynb"], "bad.ipynb:1: not a notebook: invalid JSON"),
    (["submit", "{dir}/v3.ipynb"], "nbformat: unsupported nbformat 3"),
    (["submit", "--config", "{dir}/bad.yaml"], "bad.yaml:3: resources.memory: expected a memory size"),
    (["submit", "--config", "{dir}/unknown.yaml"], "unknown.yaml:2: comand: unknown field"),
    (["submit", "--config", "{dir}/malformed.yaml"], "malformed.yaml:2: malformed YAML"),
    (["submit", "--config", "{dir}/ok.yaml", "--queue", "nope"], "unknown queue 'nope'"),
    (["submit", "--config", "{dir}/ok.yaml", "--memory", "lots"], "resources.memory: expected a memory size"),
    (["submit", "--config", "{dir}/ok.yaml", "--cpus", "2 cores"], "resources.cpu: expected a CPU count"),
    (["submit", "--config", "{dir}/ok.yaml", "--timeout", "soon"], "timeout: expected a duration"),
    (["queue", "create", "{dir}/badqueue.yaml"], "badqueue.yaml:4: provider.max_instances"),
    (["show", "0000"], "unknown job '0000'"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_is_written(cli, launch_home, tmp_path, args, expect):
    d = tmp_path / "inputs"
    d.mkdir()
    (d / "bad.ipynb").write_text("{not json")
    (d / "v3.ipynb").write_text(json.dumps({"nbformat": 3, "cells": []}))
    (d / "bad.yaml").write_text("command: [echo]\nresources:\n  memory: 8Gx\n")
    (d / "unknown.yaml").write_text("command: [echo]\ncomand: [typo]\n")
    (d / "malformed.yaml").write_text("command: [echo\nenv: {\n")
    (d / "ok.yaml").write_text("command: [echo, hi]\n")
    (d / "badqueue.yaml").write_text("queue_name: q\nprovider:\n  type: local\n  max_instances: 0\n")
    proc = cli(*[a.replace("{dir}", str(d)) for a in args], cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert expect in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert job_count(launch_home) == 0


def test_logs_resume_from_an_offset(cli, launch_home, tmp_path):
    (tmp_path / "job.yaml").write_text("command: [python, -c, \"print('a' * 9); print('b' * 9)\"]\n")
    proc = cli("submit", "--config", str(tmp_path / "job.yaml"), "--follow")
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stderr.split("submitted job ")[1].split()[0]
    assert cli("logs", job_id, check=True).stdout == "a" * 9 + "\n" + "b" * 9 + "\n"
    assert cli("logs", job_id, "--offset", "10", check=True).stdout == "b" * 9 + "\n"
    assert cli("logs", job_id, "-f", "--offset", "15", check=True).stdout == "bbbb\n"


def test_jobs_listing_and_rerun(cli, launch_home, tmp_path):
    (tmp_path / "job.yaml").write_text("name: echo-job\ncommand: [echo, hi]\n")
    first = cli("submit", "--config", str(tmp_path / "job.yaml"), "--follow")
    job_id = first.stderr.split("submitted job ")[1].split()[0]
    again = cli("rerun", job_id, "--follow")
    assert again.returncode == 0 and "hi" in again.stdout
    listing = cli("jobs", check=True).stdout
    assert listing.count("echo-job") == 2 and "succeeded" in listing
    assert cli("jobs", "--status", "queued", check=True).stdout.count("\n") == 1  # header only


def test_jobs_are_filtered_and_sorted_by_the_store_and_deleted_with_the_blobs_no_one_else_uses(cli, launch_home,
                                                                                                 tmp_path):
    (tmp_path / "data.txt").write_text("an input another job still has\n")
    script = ("import os, shutil; out = os.environ['JUPYTER_LAUNCH_OUTPUT_DIR']; "
              "shutil.copy('data.txt', os.path.join(out, 'copy.txt')); "
              "open(os.path.join(out, 'own.txt'), 'w').write(os.environ['JUPYTER_LAUNCH_JOB_ID'])")
    ids = {}
    for name in ("alpha-train", "beta-eval", "Alpha-sweep"):
        (tmp_path / "job.yaml").write_text(json.dumps({"name": name, "command": ["python", "-c", script]}))
        proc = cli("submit", "--config", str(tmp_path / "job.yaml"), "--follow")
        assert proc.returncode == 0, proc.stderr
        ids[name] = proc.stderr.split("submitted job ")[1].split()[0]

    def listed(*args: str) -> list[str]:
        return [j["name"] for j in json.loads(cli("list", "--json", *args, check=True).stdout)]

    assert listed("--search", "ALPHA", "--sort", "name") == ["Alpha-sweep", "alpha-train"]
    assert listed("--since", "1h", "--status", "succeeded", "--sort=-name", "--limit", "2") == \
        ["beta-eval", "alpha-train"]
    assert listed("--until", "2000-01-01") == []
    bad = cli("list", "--since", "yesterday")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "jupyter launch: error: --since: 'yesterday' is not a date (2026-12-01), a date and time "
        "(2026-12-01T14:30) or a span ago (90m, 2d, 1w)"]
    bad = cli("list", "--sort", "colour")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "'sort' must be one of" in bad.stderr

    outputs = dict(sqlite3.connect(launch_home / "launch.db").execute(
        "select path, digest from outputs where job_id = ?", (ids["beta-eval"],)).fetchall())
    blob = launch_home / "blobs" / "sha256" / outputs["own.txt"][7:9] / outputs["own.txt"][9:]
    copy = launch_home / "blobs" / "sha256" / outputs["copy.txt"][7:9] / outputs["copy.txt"][9:]
    assert blob.exists() and copy.exists()
    deleted = cli("delete", ids["beta-eval"], check=True).stdout
    assert "1 output blob released" in deleted, deleted
    assert not blob.exists() and copy.exists()  # copy.txt is data.txt, a file the other jobs' artifact lists
    assert "unknown job" in cli("show", ids["beta-eval"]).stderr
    shown = cli("show", ids["alpha-train"], check=True).stdout
    assert any(line.startswith("owner      ") and line.split()[1] for line in shown.splitlines()), shown

    cli("archive", ids["alpha-train"], check=True)
    assert listed() == ["Alpha-sweep"] and listed("--archived", "only") == ["alpha-train"]
    cli("archive", "--undo", ids["alpha-train"], check=True)
    assert listed() == ["Alpha-sweep", "alpha-train"]


def test_size_limit_lists_the_largest_files(cli, launch_home, tmp_path):
    src = tmp_path / "big"
    src.mkdir()
    shutil.copy(EXAMPLES / "hello.ipynb", src)
    (src / "data.bin").write_bytes(b"\0" * 300_000)
    proc = cli("submit", str(src / "hello.ipynb"), "--max-size", "100000")
    assert proc.returncode == 2
    assert "data.bin" in proc.stderr and ".launchignore" in proc.stderr
    assert job_count(launch_home) == 0


def test_agent_serves_a_job_type_only(cli, cli_env, launch_home, tmp_path):
    import subprocess
    import sys
    import time

    (tmp_path / "a.yaml").write_text("job_type: train-model\ncommand: [echo, trained]\n")
    (tmp_path / "b.yaml").write_text("job_type: inference\ncommand: [echo, inferred]\n")
    a = cli("submit", "--config", str(tmp_path / "a.yaml"), check=True).stdout.strip()
    b = cli("submit", "--config", str(tmp_path / "b.yaml"), check=True).stdout.strip()
    agent = subprocess.Popen([sys.executable, "-m", "jupyter_launch.cli", "agent", "--queue", "default",
                              "--job-type", "train-model"], env=cli_env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while json.loads(cli("show", a, "--json", check=True).stdout)["state"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        rec_b = json.loads(cli("show", b, "--json", check=True).stdout)
        assert (rec_b["state"], rec_b["reason"]) == ("queued", "no_agent_for_job_type")
    finally:
        agent.terminate()
        agent.wait(30)


def test_queue_show_prints_the_config_and_what_waits(cli, launch_home, tmp_path):
    cli("queue", "create", str(EXAMPLES / "my_queue.local.yaml"), check=True)
    (tmp_path / "job.yaml").write_text("job_type: train-model\ncommand: [echo, hi]\n")
    cli("submit", "--config", str(tmp_path / "job.yaml"), "--queue", "gpu-training-queue", check=True)
    shown = cli("queue", "show", "gpu-training-queue", check=True).stdout
    import yaml

    config = yaml.safe_load(shown)  # the summary line is a YAML comment: the output reads back as the config
    assert config["queue_name"] == "gpu-training-queue" and config["job_types"] == ["train-model"]
    assert config["provider"]["type"] == "local" and config["provider"]["max_instances"] == 5
    assert shown.rstrip().splitlines()[-1] == "# queued 1, running 0, agents: none"
    rec = json.loads(cli("queue", "show", "gpu-training-queue", "--json", check=True).stdout)
    assert (rec["name"], rec["provider"], rec["max_instances"], rec["counts"]) == (
        "gpu-training-queue", "local", 5, {"queued": 1})
    missing = cli("queue", "show", "nope")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "unknown queue 'nope' (queues: default, gpu-training-queue)" in missing.stderr


def test_queue_delete_needs_force_while_it_has_jobs(cli, launch_home, tmp_path):
    (tmp_path / "empty.yaml").write_text("queue_name: empty\n")
    (tmp_path / "busy.yaml").write_text("queue_name: busy\n")
    cli("queue", "create", str(tmp_path / "empty.yaml"), check=True)
    cli("queue", "create", str(tmp_path / "busy.yaml"), check=True)
    assert cli("queue", "delete", "empty", check=True).stdout.strip() == "queue empty deleted"
    (tmp_path / "job.yaml").write_text("command: [echo, hi]\n")
    job_id = cli("submit", "--config", str(tmp_path / "job.yaml"), "--queue", "busy", check=True).stdout.strip()

    refused = cli("queue", "delete", "busy")
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("jupyter launch: error: queue 'busy' has 1 queued or running job(s); "
                                      "cancel them or use --force")
    assert json.loads(cli("show", job_id, "--json", check=True).stdout)["state"] == "queued"
    assert "busy" in cli("queue", "list", check=True).stdout

    assert cli("queue", "delete", "busy", "--force", check=True).stdout.strip() == "queue busy deleted"
    rec = json.loads(cli("show", job_id, "--json", check=True).stdout)
    assert (rec["state"], rec["message"]) == ("cancelled", "its queue was deleted")
    names = [q["name"] for q in json.loads(cli("queue", "list", "--json", check=True).stdout)]
    assert names == ["default"]


def test_agent_with_two_queue_flags_serves_both(cli, cli_env, launch_home, tmp_path):
    import subprocess
    import sys
    import time

    for name in ("first", "second"):
        (tmp_path / f"{name}.yaml").write_text(f"queue_name: {name}\n")
        cli("queue", "create", str(tmp_path / f"{name}.yaml"), check=True)
    (tmp_path / "job.yaml").write_text("command: [python, -c, \"import os; print(os.environ['JUPYTER_LAUNCH_QUEUE'])\"]\n")
    jobs = {name: cli("submit", "--config", str(tmp_path / "job.yaml"), "--queue", name, check=True).stdout.strip()
            for name in ("first", "second")}
    log = tmp_path / "agent.log"
    with open(log, "w") as err:
        agent = subprocess.Popen([sys.executable, "-m", "jupyter_launch.cli", "agent", "--queue", "first",
                                  "--queue", "second"], env=cli_env, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while not all(json.loads(cli("show", j, "--json", check=True).stdout)["state"] == "succeeded"
                      for j in jobs.values()):
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        agents = json.loads(cli("queue", "list", "--json", check=True).stdout)
    finally:
        agent.terminate()
        agent.wait(30)
    recs = {name: json.loads(cli("show", j, "--json", check=True).stdout) for name, j in jobs.items()}
    assert recs["first"]["agent_id"] == recs["second"]["agent_id"] is not None  # one agent ran both
    for name, j in jobs.items():
        assert cli("logs", j, check=True).stdout == f"{name}\n"
    by_name = {q["name"]: q["agents"] for q in agents}
    assert by_name["first"] == by_name["second"] == [recs["first"]["agent_id"]]
    assert by_name["default"] == []
    assert "serving first, second" in log.read_text()


def test_submit_reports_the_artifact_size_and_what_was_already_stored(cli, launch_home, tmp_path):
    src = tmp_path / "project"
    src.mkdir()
    shutil.copy(EXAMPLES / "hello.ipynb", src)
    (src / "data.bin").write_bytes(b"\1" * 3000)

    def report(proc) -> str:
        assert proc.returncode == 0, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith("packaged ")]
        assert len(lines) == 1, proc.stderr
        return lines[0]

    size = sum(p.stat().st_size for p in src.iterdir())
    first = report(cli("submit", str(src / "hello.ipynb")))
    assert first.startswith(f"packaged 2 files, {size / 1000:.1f} kB (largest: data.bin 3.0 kB, hello.ipynb ")
    assert first.endswith(f"; 2 new ({size / 1000:.1f} kB), 0 already stored")
    assert report(cli("submit", str(src / "hello.ipynb"))).endswith("; 0 new, 2 already stored")
    (src / "notes.txt").write_text("x" * 10)
    assert report(cli("submit", str(src / "hello.ipynb"))).endswith("; 1 new (10 B), 2 already stored")


def test_training_notebook_example_runs(cli, launch_home, tmp_path):
    """examples/train.ipynb as the README shows it: numpy is a dependency of the package, not only of the tests."""
    proc = cli("submit", str(EXAMPLES / "train.ipynb"), "--follow", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "epoch  59" in proc.stdout
    accuracy = float(proc.stdout.split("final accuracy")[1].split()[0])
    assert accuracy > 0.9
    job_id = proc.stderr.split("submitted job ")[1].split()[0]
    rec = json.loads(cli("show", job_id, "--json", check=True).stdout)
    assert rec["state"] == "succeeded"
    metrics = [json.loads(line) for line in cli("metrics", job_id, check=True).stdout.splitlines()]
    assert [m["step"] for m in metrics] == list(range(60)) and round(metrics[-1]["accuracy"], 3) == accuracy
    cli("outputs", job_id, "--to", str(tmp_path / "out"), check=True)
    assert {"train.ipynb", "train.html", "weights.npy"} <= {p.name for p in (tmp_path / "out").iterdir()}


def test_parameters_take_both_forms_and_keep_the_exact_text_typed(cli, launch_home):
    # Read as YAML, ' #1' was a comment and the newline a space; NAME=VALUE is the magics' form, taken here too.
    proc = cli("submit", str(EXAMPLES / "hello.ipynb"), "-p", "greeting", "hi #1\nthere", "-p", "name=launch",
               "--follow")
    assert proc.returncode == 0, proc.stderr
    assert "hi #1\nthere, launch!" in proc.stdout


def _manifest(launch_home: Path, job: dict) -> dict:
    from jupyter_launch.artifact import load_manifest
    from jupyter_launch.store.blobs import BlobStore

    return load_manifest(job["artifact"], BlobStore(launch_home / "blobs"))


def test_the_cli_and_the_python_api_package_the_same_notebook_into_the_same_artifact(cli, client, launch_home,
                                                                                     tmp_path):
    src = tmp_path / "nb"
    src.mkdir()
    nb = json.loads((EXAMPLES / "hello.ipynb").read_text())
    nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb["cells"].insert(1, {"cell_type": "code", "execution_count": None, "id": "pip", "metadata": {}, "outputs": [],
                           "source": ["%pip install tabulate==0.9.0\n"]})
    (src / "nb.ipynb").write_text(json.dumps(nb))
    (src / "data.csv").write_text("a,b\n1,2\n")
    by_cli = json.loads(cli("show", cli("submit", str(src / "nb.ipynb"), check=True).stdout.strip(), "--json",
                            check=True).stdout)
    by_api = client.submit(src / "nb.ipynb").record.to_dict()
    assert by_cli["artifact"] == by_api["artifact"]
    environment = _manifest(launch_home, by_cli)["environment"]
    assert environment["kernel"] == "python3"
    assert environment["pip_installs"] == ["tabulate==0.9.0"]


def test_jupyter_config_reaches_the_standalone_agent(cli, cli_env, launch_home, tmp_path):
    import subprocess
    import sys
    import time

    config_dir = tmp_path / "jupyter-config"
    config_dir.mkdir()
    (config_dir / "jupyter_launch_config.py").write_text("c.Agent.agent_id = 'from-the-config-file'\n")
    env = {**cli_env, "JUPYTER_CONFIG_DIR": str(config_dir)}
    agents = []
    try:
        for extra in ([], ["--Agent.agent_id=from-the-command-line", "--queue", "second"]):
            if extra:
                cli("queue", "create", str(_queue_file(tmp_path, "second")), check=True)
            agents.append(subprocess.Popen([sys.executable, "-m", "jupyter_launch.cli", "agent", "--queue", "default",
                                            *extra], env=env, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while True:
            shown = {q["name"]: q["agents"] for q in json.loads(cli("queue", "list", "--json", check=True).stdout)}
            if "from-the-command-line" in shown.get("second", []) and "from-the-config-file" in shown["default"]:
                break
            assert time.monotonic() < deadline, shown
            time.sleep(0.2)
    finally:
        for agent in agents:
            agent.terminate()
            agent.wait(30)


def _queue_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"queue_name: {name}\nprovider:\n  type: local\n")
    return path


def test_a_broken_config_file_is_one_line_naming_it(cli_env, tmp_path):
    config_dir = tmp_path / "jupyter-config"
    config_dir.mkdir()
    (config_dir / "jupyter_launch_config.py").write_text("c.Agent.max_jobs = many\n")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "jupyter_launch.cli", "jobs"], capture_output=True, text=True,
                          env={**cli_env, "JUPYTER_CONFIG_DIR": str(config_dir)}, timeout=120)
    assert proc.returncode == 2
    assert "jupyter_launch_config.py" in proc.stderr and "'many' is not defined" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_agent_help_all_lists_the_backends_options(cli):
    proc = cli("agent", "--help-all", check=True)
    for option in ("--Agent.max_jobs", "--LocalBackend.", "--DockerBackend.", "--KubernetesBackend."):
        assert option in proc.stdout


def test_nodes_runs_a_distributed_job_of_that_many_ranks(cli, launch_home, tmp_path):
    folder = tmp_path / "dist"
    shutil.copytree(Path(__file__).resolve().parent / "distributed", folder)
    (folder / "job.yaml").write_text("kind: command\ncommand: [python, allreduce.py]\n")
    proc = cli("submit", "--config", str(folder / "job.yaml"), "--nodes", "2", "--follow")
    assert proc.returncode == 0, proc.stderr
    assert "[rank 0] rank 0 of 2" in proc.stdout and "[rank 1] rank 1 of 2" in proc.stdout, proc.stdout
    job_id = proc.stderr.split("submitted job ")[1].split()[0]
    assert json.loads(cli("show", job_id, "--json", check=True).stdout)["spec"]["resources"]["nodes"] == 2
    bad = cli("submit", "--config", str(folder / "job.yaml"), "--nodes", "0")
    assert bad.returncode == 2 and bad.stderr.strip().endswith("resources.nodes: Input should be greater than or "
                                                               "equal to 1"), bad.stderr
