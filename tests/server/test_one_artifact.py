"""One notebook and its folder make one artifact, whichever face submits it: the CLI, the Python API, the magic in a
kernel, the panel's REST call (a notebook path the server packages) and the embedded client all agree on the digest."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from launch_server import LaunchServer, isolated_env

TOKEN = "one-artifact-test"

NOTEBOOK = {
    "nbformat": 4, "nbformat_minor": 5,
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "cells": [
        {"cell_type": "code", "id": "c0", "metadata": {}, "execution_count": None, "outputs": [],
         "source": "%pip install tabulate==0.9.0\n"},
        {"cell_type": "code", "id": "c1", "metadata": {}, "execution_count": None, "outputs": [],
         "source": "import csv\nrows = list(csv.reader(open('data.csv')))\nprint(rows)\n"},
    ],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    launch = LaunchServer(tmp_path_factory.mktemp("one-artifact"), agent_queues=[], token=TOKEN)
    project = launch.root / "project"
    (project / "scratch").mkdir(parents=True)
    (project / "analysis.ipynb").write_text(json.dumps(NOTEBOOK))
    (project / "data.csv").write_text("a,b\n1,2\n")
    (project / "scratch" / "big.tmp").write_bytes(b"x" * 4096)
    (project / ".launchignore").write_text("scratch/\n")
    launch.start()
    try:
        yield launch
    finally:
        launch.stop()


def artifact_of(server: LaunchServer, job_id: str) -> str:
    status, job = server.api("GET", f"jobs/{job_id}")
    assert status == 200, job
    return job["artifact"]


def test_every_face_packages_one_notebook_into_one_artifact(server, tmp_path):
    from jupyter_client.manager import start_new_kernel

    from jupyter_launch.client import LaunchClient
    from jupyter_launch.remote.client import connect

    notebook = server.root / "project" / "analysis.ipynb"
    env = dict(isolated_env(tmp_path), JUPYTER_LAUNCH_HOME=str(tmp_path / "user-home"))
    digests: dict[str, str] = {}

    # The panel: the notebook's path under the Jupyter root, packaged by the server.
    status, job = server.api("POST", "jobs", {"queue": "default", "notebook": "project/analysis.ipynb",
                                              "options": {"parameters": {"n": 3}, "resources": {"cpu": 1}}})
    assert status == 201, job
    digests["panel"] = job["artifact"]
    assert job["spec"]["notebook"] == "analysis.ipynb" and job["spec"]["parameters"] == {"n": 3}

    # The CLI, through the server.
    cli = subprocess.run([sys.executable, "-m", "jupyter_launch.cli", "--server", server.url, "--token", TOKEN,
                          "submit", str(notebook), "-q", "default", "-p", "n", "3"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    digests["cli"] = artifact_of(server, cli.stdout.split()[-1])

    # The Python API, through the server and embedded.
    client = connect(server.url, TOKEN, home=tmp_path / "api-home")
    try:
        digests["api"] = client.submit(notebook, queue="default").record.artifact
    finally:
        client.close()
    embedded = LaunchClient(home=tmp_path / "embedded-home")
    try:
        digests["embedded"] = embedded.submit(notebook, queue="default").record.artifact
    finally:
        embedded.close()

    # The line magic, in a kernel whose jobs go through the server.
    kernel_env = dict(env, JUPYTER_LAUNCH_SERVER_URL=server.url, JUPYTER_LAUNCH_TOKEN=TOKEN)
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(server.root), env=kernel_env)
    out: list[str] = []
    try:
        reply = kc.execute_interactive(
            "%load_ext jupyter_launch\njob = get_ipython().run_line_magic('launch', "
            "'project/analysis.ipynb --queue default')\nprint('JOB', job.id)\n",
            timeout=120, output_hook=lambda msg: out.append(msg["content"].get("text", "")))
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    job_id = next(line.split()[1] for line in "".join(out).splitlines() if line.startswith("JOB "))
    digests["magic"] = artifact_of(server, job_id)

    assert len(set(digests.values())) == 1, digests
    status, manifest = server.api("GET", f"artifacts/blobs/{digests['panel']}")
    assert status == 200, manifest
    assert sorted(manifest["files"]) == [".launchignore", "analysis.ipynb", "data.csv"]
    assert manifest["environment"]["kernel"] == "python3"
    assert manifest["environment"]["pip_installs"] == ["tabulate==0.9.0"]


@pytest.mark.parametrize("path, status, says", [
    ("../outside.ipynb", 400, "without '..'"),
    ("/etc/passwd", 400, "under the Jupyter root"),
    ("project/missing.ipynb", 404, "no notebook at"),
    ("project/data.csv", 404, "no notebook at"),
    ("escape/analysis.ipynb", 400, "leads outside the Jupyter root"),
])
def test_a_notebook_path_is_refused_unless_it_is_a_notebook_under_the_root(server, path, status, says):
    escape = server.root / "escape"
    if not escape.exists():
        escape.symlink_to(server.base)  # a link inside the root to a folder outside it
        (server.base / "analysis.ipynb").write_text(json.dumps(NOTEBOOK))
    got, body = server.api("POST", "jobs", {"queue": "default", "notebook": path})
    assert got == status and says in body["message"], body


def test_options_that_would_change_the_target_are_refused_by_name(server):
    got, body = server.api("POST", "jobs", {"queue": "default", "notebook": "project/analysis.ipynb",
                                            "options": {"command": ["sh", "-c", "id"]}})
    assert got == 400 and "'command'" in body["message"], body
    got, body = server.api("POST", "jobs", {"queue": "default", "notebook": "project/analysis.ipynb",
                                            "options": {"resources": {"memory": "lots"}}})
    assert got == 422 and body["message"].startswith("project/analysis.ipynb: resources.memory: "), body
