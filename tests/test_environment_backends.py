"""One data notebook (pandas and matplotlib from its own kernel's environment, a CSV beside it, a file written
beside itself, an output, a ``%pip`` line) gives the same results on the local, Docker and Kubernetes queues,
submitted from the CLI, a magic in its kernel and the panel's REST call. Its kernel is ``launch-data-test``
(tests/data_kernel.py), a virtual environment the submitting process cannot import from: what reaches Docker and
Kubernetes is that kernel's lock, built into an image; on the local queue a ``%pip`` in the job leaves that
environment as it was."""

from __future__ import annotations

import asyncio
import json
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest
from data_kernel import KERNEL, data_kernel, freeze
from docker_engine import BASE_IMAGE
from launch_server import ROOT, LaunchServer, isolated_env
from test_kubernetes_backend import HELPER_IMAGE, NAMESPACE, kubeconfig  # noqa: F401,F811  (the session's cluster)

from jupyter_launch.agent import make_local_agent
from jupyter_launch.artifact import load_manifest
from jupyter_launch.client import LaunchClient
from jupyter_launch.spec import QueueConfig

TOKEN = "environment-backends"


def code(source: str) -> dict:
    return {"cell_type": "code", "id": f"c{abs(hash(source)) % 10**8}", "metadata": {}, "execution_count": None,
            "outputs": [], "source": source}


NOTEBOOK = {
    "nbformat": 4, "nbformat_minor": 5,
    "metadata": {"kernelspec": {"name": KERNEL, "display_name": "Python (launch data test)", "language": "python"}},
    "cells": [
        code("%pip install -q tabulate==0.9.0\n"),
        code("import os, shutil\nimport pandas as pd\nimport matplotlib\nmatplotlib.use('Agg')\n"
             "import matplotlib.pyplot as plt\nimport tabulate\nprint('pandas', pd.__version__)\n"),
        code("df = pd.read_csv('data.csv')\nprint('total', int(df['value'].sum()))\n"
             "print(tabulate.tabulate(df.values.tolist(), headers=list(df.columns)))\n"),
        code("ax = df.plot(x='name', y='value', kind='bar')\nplt.savefig('plot.png')\n"
             "with open('summary.txt', 'w') as f:\n    f.write(df.describe().to_csv())\n"
             "out = os.environ['JUPYTER_LAUNCH_OUTPUT_DIR']\n"
             "for name in ('summary.txt', 'plot.png'):\n    shutil.copy(name, out)\n"
             "print('wrote', sorted(os.listdir(out)))\n"),
    ],
}


def stdout_of(executed: dict) -> list[str]:
    """What the cells after the ``%pip`` one printed (pip's own notices differ between a venv and an image)."""
    return ["".join(o.get("text", "")) for c in executed["cells"][1:] if c["cell_type"] == "code"
            for o in c["outputs"] if o.get("output_type") == "stream" and o.get("name") == "stdout"]


def magic_kernel(base: Path, python: Path) -> Path:
    """A kernel's Python with the data kernel's packages first and this venv's (jupyter-launch and what it needs)
    after: a data scientist's kernel with jupyter-launch installed in it. Its kernelspec is written under ``base``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(base / "venv")], check=True, timeout=120)
    own = base / "venv" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    data_site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                               capture_output=True, text=True, check=True).stdout.strip()
    (own / "zz_layers.pth").write_text("\n".join([data_site, *site.getsitepackages()]) + "\n")
    spec = base / "data" / "kernels" / "launch-magic-test" / "kernel.json"
    spec.parent.mkdir(parents=True)
    spec.write_text(json.dumps({"argv": [str(base / "venv" / "bin" / "python"), "-m", "ipykernel_launcher", "-f",
                                         "{connection_file}"], "display_name": "magic", "language": "python"}))
    return base / "data"


def run_magic(notebook: Path, queue: str, env: dict[str, str]) -> str:
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="launch-magic-test", cwd=str(notebook.parent), env=env)
    out: list[str] = []
    try:
        reply = kc.execute_interactive(
            f"%load_ext jupyter_launch\n"
            f"job = get_ipython().run_line_magic('launch', '{notebook.name} --queue {queue}')\n"
            "print('JOB', job.id)\n", timeout=180,
            output_hook=lambda msg: out.append(msg["content"].get("text") or ""))
        assert reply["content"]["status"] == "ok", (reply["content"], out)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return next(line.split()[1] for line in "".join(out).splitlines() if line.startswith("JOB "))


def test_a_data_notebook_gives_equal_results_on_every_backend_from_every_face(tmp_path, kubeconfig,  # noqa: F811
                                                                              monkeypatch: pytest.MonkeyPatch):
    python = data_kernel()
    before = freeze(python)
    server = LaunchServer(tmp_path, agent_queues=[], token=TOKEN)
    project = server.root / "project"
    project.mkdir()
    notebook = project / "data.ipynb"
    notebook.write_text(json.dumps(NOTEBOOK))
    (project / "data.csv").write_text("name,value\na,1\nb,2\nc,3\n")
    magic_path = magic_kernel(tmp_path / "magic", python)
    monkeypatch.setenv("JUPYTER_LAUNCH_HOME", str(server.home))
    client = LaunchClient(home=server.home)
    build = {"base_image": BASE_IMAGE}  # lock: full, the default
    client.create_queue(QueueConfig(queue_name="local", provider={"type": "local"}))
    client.create_queue(QueueConfig(queue_name="docker", provider={"type": "docker", "build": build}))
    client.create_queue(QueueConfig(queue_name="k8s", provider={
        "type": "kubernetes", "helper_image": HELPER_IMAGE, "kubeconfig": kubeconfig, "namespace": NAMESPACE, "image_pull_policy": "Never",
        "grace_period": 2, "build": build}))
    jobs: dict[str, str] = {}

    def submit_from_every_face() -> None:
        server.start()
        try:
            env = dict(isolated_env(tmp_path), JUPYTER_LAUNCH_HOME=str(server.home))
            for queue in ("local", "docker", "k8s"):
                cli = subprocess.run([sys.executable, "-m", "jupyter_launch.cli", "submit", str(notebook), "-q",
                                      queue], env=env, capture_output=True, text=True, timeout=120, cwd=project)
                assert cli.returncode == 0, cli.stderr
                jobs[f"cli/{queue}"] = cli.stdout.split()[-1]
            status, job = server.api("POST", "jobs", {"queue": "docker", "notebook": "project/data.ipynb"})
            assert status == 201, job
            jobs["panel/docker"] = job["id"]
            kernel_env = dict(env, JUPYTER_PATH=str(magic_path), JPY_SESSION_NAME=str(notebook),
                              PYTHONPATH=str(ROOT))
            jobs["magic/local"] = run_magic(notebook, "local", kernel_env)
        finally:
            server.stop()

    async def run_agent():
        # The agent serves the queues before anything is submitted, so the magic's kernel starts none of its own.
        agent = make_local_agent(client.store, ["local", "docker", "k8s"], blobs=client.blobs, home=client.home,
                                 lease_seconds=10, max_jobs=5)
        await agent.start()
        task = asyncio.create_task(agent.run())
        try:
            await asyncio.to_thread(submit_from_every_face)
            deadline = time.monotonic() + 900
            while not all(client.get_job(j).state in ("succeeded", "failed", "cancelled") for j in jobs.values()):
                assert time.monotonic() < deadline, {f: client.get_job(j) for f, j in jobs.items()}
                await asyncio.sleep(0.2)
        finally:
            await agent.stop()
            task.cancel()

    monkeypatch.setenv("JUPYTER_PATH", str(magic_path))  # where this process finds the magic's kernel
    try:
        asyncio.run(run_agent())

        # The CLI and the panel packaged the kernelspec's environment; the magic its own kernel's (pandas and
        # jupyter-launch's dependencies both).
        records = {face: client.get_job(job_id) for face, job_id in jobs.items()}
        locks = {face: load_manifest(r.artifact, client.blobs)["environment"] for face, r in records.items()}
        pandas = next(p for p in locks["cli/local"]["packages"] if p.startswith("pandas=="))
        assert all(pandas in lock["packages"] for lock in locks.values()), locks
        assert not any(p.startswith("pydantic==") for p in locks["cli/local"]["packages"])
        assert any(p.startswith("pydantic==") for p in locks["magic/local"]["packages"])
        assert records["cli/docker"].artifact == records["panel/docker"].artifact

        results = {}
        for face, job_id in jobs.items():
            record = client.get_job(job_id)
            logs = client.job(job_id).logs()
            assert record.state == "succeeded", (face, record.reason, record.message, logs[-3000:])
            executed = json.loads(client.read_output(job_id, "data.ipynb"))
            outputs = sorted(o.path for o in client.job(job_id).outputs)
            results[face] = (stdout_of(executed), outputs, client.read_output(job_id, "summary.txt"))
            assert client.read_output(job_id, "plot.png").startswith(b"\x89PNG")
        first = results["cli/local"]
        assert first[0][0] == f"pandas {pandas.split('==')[1]}\n" and first[0][1].startswith("total 6\n")
        assert first[1] == ["data.html", "data.ipynb", "plot.png", "summary.txt"]
        for face, result in results.items():
            assert result == first, (face, result, first)
        # `%pip` in the local jobs installed into the job, not into the kernel's environment.
        assert freeze(python) == before
        assert "tabulate" not in before
    finally:
        client.close()
