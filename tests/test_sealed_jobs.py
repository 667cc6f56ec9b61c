"""What a local job sees of its agent, end to end on real processes: only the allow-listed variables of the agent's
environment, its declared secrets (masked in its log and metrics), and a Python environment of its own in which what
it installs stays."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from jupyter_launch.agent import make_local_agent
from jupyter_launch.backends.base import BASE_VARIABLES, JOB_VARIABLES
from jupyter_launch.backends.job_venv import describe_interpreter
from jupyter_launch.client import LaunchClient
from jupyter_launch.masking import MIN_LENGTH, Masker
from jupyter_launch.spec import QueueConfig

DECLARED = "declared-" + hashlib.sha256(b"declared").hexdigest()[:20]
UNDECLARED = "undeclared-" + hashlib.sha256(b"undeclared").hexdigest()[:20]
TOKEN = "jlat_" + hashlib.sha256(b"agent token").hexdigest()[:32]

# Write the job's whole environment as an output, and say whether the declared secret came.
DUMP_ENV = (
    "import json, os, pathlib\n"
    "pathlib.Path(os.environ['JUPYTER_LAUNCH_OUTPUT_DIR'], 'env.json').write_text(json.dumps(dict(os.environ)))\n"
    f"print('declared secret present', os.environ.get('JL_DECLARED') == {DECLARED!r})\n")


async def _run(client: LaunchClient, jobs, queues: list[str], warm_queue: str | None = None, timeout: float = 180):
    agent = make_local_agent(client.store, queues, blobs=client.blobs)
    await agent.start()
    task = None
    try:
        deadline = time.monotonic() + timeout
        if warm_queue:
            backend = agent.backend("local")
            while not backend.warm_runners(warm_queue):
                assert time.monotonic() < deadline, "the queue's warm runner never became ready"
                await asyncio.sleep(0.05)
        jobs = [submit() for submit in jobs]
        task = asyncio.create_task(agent.run())
        while not all(j.refresh().done for j in jobs):
            assert time.monotonic() < deadline, [j.record for j in jobs]
            await asyncio.sleep(0.02)
        return jobs
    finally:
        await agent.stop()
        if task is not None:
            task.cancel()


def run(client, submits, queues=("default",), **kw):
    return asyncio.run(_run(client, submits, list(queues), **kw))


def notebook(folder: Path, name: str, *sources: str) -> Path:
    nb = new_notebook(cells=[new_code_cell(src) for src in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / name)
    return folder / name


def from_agent(name: str, env: dict[str, str]) -> bool:
    """Whether the job's variable ``name`` is the agent's own, passed through."""
    return name in os.environ and env.get(name) == os.environ[name]


# ---------------------------------------------------------------- the allow-list

@pytest.mark.parametrize("kind", ["command", "notebook", "warm notebook"])
def test_a_job_sees_its_declared_secret_and_none_of_the_agents_other_variables(client, tmp_path, monkeypatch, kind):
    monkeypatch.setenv("JL_DECLARED", DECLARED)
    monkeypatch.setenv("JL_UNDECLARED", UNDECLARED)
    monkeypatch.setenv("JUPYTER_LAUNCH_TOKEN", TOKEN)  # a remote agent's own credential
    folder = tmp_path / "src"
    queue = "default"
    if kind == "command":
        folder.mkdir()
        submit = lambda: client.submit(spec={"kind": "command", "command": ["python", "-c", DUMP_ENV],  # noqa: E731
                                             "env": {"GREETING": "hi"}, "secrets": ["JL_DECLARED"]}, root=folder)
    else:
        if kind == "warm notebook":
            queue = "warm"
            client.create_queue(QueueConfig(queue_name=queue, provider={"type": "local", "min_instances": 1}))
        path = notebook(folder, "env.ipynb", DUMP_ENV)
        submit = lambda: client.submit(path, queue=queue, env={"GREETING": "hi"}, secrets=["JL_DECLARED"])  # noqa

    job, = run(client, [submit], [queue], warm_queue=queue if kind == "warm notebook" else None)
    assert job.record.state == "succeeded", (job.record.message, job.logs())
    assert "declared secret present True" in job.logs()
    env = json.loads(client.read_output(job.id, "env.json"))
    assert env["JL_DECLARED"] == DECLARED and env["GREETING"] == "hi"
    assert "JL_UNDECLARED" not in env and "JUPYTER_LAUNCH_TOKEN" not in env
    assert not [k for k, v in env.items() if UNDECLARED in v or TOKEN in v]
    # Of the agent's own variables, only the allow-listed ones came through (PYTHONPATH, JUPYTER_LAUNCH_HOME,
    # the test's JUPYTER_* and PYTEST_* variables did not).
    leaked = sorted(k for k in env if from_agent(k, env) and k not in BASE_VARIABLES and not k.startswith("LC_")
                    and k not in JOB_VARIABLES and k != "JL_DECLARED")
    assert leaked == []
    assert "JUPYTER_LAUNCH_HOME" in os.environ and "JUPYTER_LAUNCH_HOME" not in env


def test_pass_env_lets_more_of_the_agents_variables_through(client, tmp_path, monkeypatch):
    from traitlets.config import Config

    monkeypatch.setenv("JL_PASSED_ONE", "one")
    monkeypatch.setenv("JL_UNDECLARED", UNDECLARED)
    folder = tmp_path / "src"
    folder.mkdir()
    code = "import os; print(os.environ.get('JL_PASSED_ONE'), 'JL_UNDECLARED' in os.environ)"
    submit = lambda: client.submit(spec={"kind": "command", "command": ["python", "-c", code]}, root=folder)  # noqa

    async def scenario():
        config = Config()
        config.LocalBackend.pass_env = ["JL_PASSED_*"]
        agent = make_local_agent(client.store, ["default"], blobs=client.blobs, config=config)
        await agent.start()
        job = submit()
        task = asyncio.create_task(agent.run())
        try:
            deadline = time.monotonic() + 60
            while not job.refresh().done:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            return job
        finally:
            await agent.stop()
            task.cancel()

    job = asyncio.run(scenario())
    assert job.record.state == "succeeded", job.logs()
    assert job.logs() == "one False\n"


# ---------------------------------------------------------------- secrets masked in the log and metrics

def test_declared_secrets_are_masked_in_the_log_and_metrics_before_they_are_stored(client, tmp_path, monkeypatch):
    multi = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\nAQEFAASCBKcwggSjAgEAAoIB\n-----END KEY-----"
    monkeypatch.setenv("JL_TOKEN", DECLARED)
    monkeypatch.setenv("JL_KEY", multi)
    monkeypatch.setenv("JL_PIN", "123")  # shorter than MIN_LENGTH: not masked
    code = (
        "import base64, os, sys, time, jupyter_launch\n"
        "t, key, pin = os.environ['JL_TOKEN'], os.environ['JL_KEY'], os.environ['JL_PIN']\n"
        "print('plain', t)\n"
        "print('b64', base64.b64encode(t.encode()).decode())\n"
        "print('basic', base64.b64encode(('user:' + t).encode()).decode())\n"
        "sys.stdout.write('split ' + t[:7]); sys.stdout.flush(); time.sleep(0.3)\n"  # two chunks, two flushes apart
        "sys.stdout.write(t[7:] + ' joined\\n'); sys.stdout.flush()\n"
        "print('key line', key.splitlines()[1])\n"
        "print(key, file=sys.stderr)\n"
        "print('pin', pin)\n"
        "jupyter_launch.log({'token': t, t: 1.0}, step=0)\n"
        "jupyter_launch.progress(1, 2, 'using ' + t)\n")
    folder = tmp_path / "src"
    folder.mkdir()
    submit = lambda: client.submit(spec={"kind": "command", "command": ["python", "-c", code],  # noqa: E731
                                         "secrets": ["JL_TOKEN", "JL_KEY", "JL_PIN"]}, root=folder)
    job, = run(client, [submit])
    assert job.record.state == "succeeded", job.logs()
    chunks, _ = client.read_log(job.id, 0)
    out = b"".join(c.data for c in chunks if c.stream == "stdout").decode()
    err = b"".join(c.data for c in chunks if c.stream == "stderr").decode()
    assert out.splitlines()[:5] == ["plain ***", "b64 ***", out.splitlines()[2], "split *** joined",
                                    "key line ***"]
    basic = out.splitlines()[2]
    assert "***" in basic and base64.b64encode(("user:" + DECLARED).encode()).decode() not in basic
    assert err == "***\n"  # the whole value, one mask (longest first)
    assert "pin 123" in out
    stored = json.dumps(client.store.get_job(job.id).__dict__, default=str) + json.dumps(job.metrics) + out + err
    for piece in (DECLARED, DECLARED[:12], base64.b64encode(DECLARED.encode()).decode(), "MIIEvQIBADANBgkqhkiG9w0B"):
        assert piece not in stored
    assert job.metrics[0]["data"] == {"token": "***", "***": 1.0}
    assert job.record.progress["description"] == "using ***"


def test_masker_keeps_back_only_what_could_begin_a_secret():
    masker = Masker(["s3cr3t-value", "ab", "line-one\nline-two"])
    assert all(len(p) >= MIN_LENGTH for p in masker.patterns) and b"ab" not in masker.patterns
    stream = masker.stream()
    assert stream.feed(b"loss 0.3\n") == b"loss 0.3\n"  # nothing held: no delay for ordinary output
    assert stream.feed(b"now s3cr") == b"now "  # could be the secret's start: held for the next chunk
    assert stream.feed(b"3t-value! ab line-two") == b"***! ab ***"
    assert stream.feed(b" s3") == b" "
    assert stream.feed(b"?") == b"s3?"  # it was not
    assert stream.feed(b"end s3cr3t") == b"end "
    assert stream.flush() == b"s3cr3t"  # the stream ended on a part of it
    # A value split in one-byte chunks is still caught.
    stream = masker.stream()
    data = b"a s3cr3t-value b " + base64.b64encode(b"s3cr3t-value") + b"\n"
    assert b"".join(stream.feed(data[i:i + 1]) for i in range(len(data))) + stream.flush() == b"a *** b ***\n"


# ---------------------------------------------------------------- a Python environment of its own

def make_wheel(folder: Path, name: str = "jl_tiny", version: str = "1.0") -> Path:
    """A pure-Python wheel, made by hand: nothing to build, no index, no network."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": f"VALUE = 'tiny {version}'\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def digest(text: str) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).decode().rstrip("=")

    record = "".join(f"{path},sha256={digest(text)},{len(text.encode())}\n" for path, text in files.items())
    record += f"{dist}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
        zf.writestr(f"{dist}/RECORD", record)
    return wheel


def agent_freeze() -> str:
    return subprocess.run([sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True,
                          check=True).stdout


def test_pip_install_in_a_job_changes_that_job_only(client, tmp_path):
    folder = tmp_path / "src"
    wheel = make_wheel(folder)
    before = agent_freeze()
    nb = notebook(folder, "pip.ipynb", f"%pip install --no-index {wheel.name}",
                  "import jl_tiny\nprint('notebook sees', jl_tiny.VALUE)")
    shell = ["sh", "-c", f"pip install --no-index {wheel.name} && python -c "
                         "'import jl_tiny, sys; print(\"command sees\", jl_tiny.VALUE, sys.prefix)'"]
    later = "import importlib.util; print('later job sees jl_tiny', importlib.util.find_spec('jl_tiny') is not None)"
    nb_job, cmd_job = run(client, [lambda: client.submit(nb),
                                   lambda: client.submit(spec={"kind": "command", "command": shell}, root=folder)])
    assert nb_job.record.state == "succeeded", (nb_job.record.message, nb_job.logs())
    assert cmd_job.record.state == "succeeded", cmd_job.logs()
    executed = json.loads(client.read_output(nb_job.id, "pip.ipynb"))
    assert "notebook sees tiny 1.0" in "".join(executed["cells"][1]["outputs"][0]["text"])
    assert "command sees tiny 1.0" in cmd_job.logs()
    assert cmd_job.logs().split("command sees tiny 1.0 ")[1].split()[0].endswith("/.jupyter-launch/env")
    # The agent's environment is as it was, and a later job starts without the package.
    assert agent_freeze() == before
    later_job, = run(client, [lambda: client.submit(spec={"kind": "command", "command": ["python", "-c", later]},
                                                    root=tmp_path / "src")])
    assert later_job.logs() == "later job sees jl_tiny False\n"


def test_a_job_environment_shadows_the_agents_version_of_a_package_without_touching_it(client, tmp_path,
                                                                                      monkeypatch):
    """A job installing another version of a package the agent has: the job's wins in the job, the agent's stays."""
    folder = tmp_path / "src"
    make_wheel(folder / "v1", version="1.0")
    make_wheel(folder / "v2", version="2.0")
    agent_site = tmp_path / "agent-site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--target", str(agent_site),
                    str(folder / "v1" / "jl_tiny-1.0-py3-none-any.whl")], check=True, capture_output=True)
    code = ("import subprocess, sys\n"
            "subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-index', "
            "'v2/jl_tiny-2.0-py3-none-any.whl'], check=True)\n"
            "import jl_tiny; print('job has', jl_tiny.VALUE)\n")
    # The agent's environment has v1 (on its PYTHONPATH, which the layer beneath a job keeps).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(agent_site), os.environ.get("PYTHONPATH"))
                                                     if p))
    describe_interpreter.cache_clear()
    try:
        job, = run(client, [lambda: client.submit(spec={"kind": "command", "command": ["python", "-c", code]},
                                                  root=folder)])
    finally:
        describe_interpreter.cache_clear()
    assert job.record.state == "succeeded", job.logs()
    assert "job has tiny 2.0" in job.logs()
    assert (agent_site / "jl_tiny.py").read_text() == "VALUE = 'tiny 1.0'\n"
