"""The panel's face of [environment] in a real JupyterLab and Chromium: a pandas notebook open on its own kernel
(``launch-data-test``, a venv the server's Python cannot import from) is launched from its toolbar onto a Docker
queue served by a standalone agent. The server packages the live kernel's environment, the agent builds the image
from that lock, and the job prints what it printed on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from data_kernel import KERNEL, data_kernel
from docker_engine import BASE_IMAGE
from playwright.sync_api import expect

from .conftest import ROOT, wait_for_job
from .test_dialog import launch_dialog, opened_job_id, submit

NOTEBOOK = {
    "nbformat": 4, "nbformat_minor": 5,
    "metadata": {"kernelspec": {"name": KERNEL, "display_name": "Python (launch data test)", "language": "python"}},
    "cells": [
        {"cell_type": "code", "id": "c0", "metadata": {}, "execution_count": None, "outputs": [],
         "source": "import pandas as pd\ndf = pd.read_csv('prices.csv')\n"
                   "print('pandas', pd.__version__, 'mean', df['price'].mean())\n"},
    ],
}


@pytest.fixture
def docker_agent(lab):
    """A standalone agent on the lab's store serving the queue ``docker-data``."""
    status, body = lab.api("POST", "queues", {"yaml": f"queue_name: docker-data\nprovider:\n  type: docker\n  "
                                                      f"build:\n    base_image: {BASE_IMAGE}\n"})
    assert status in (200, 201), body
    env = dict(os.environ, JUPYTER_LAUNCH_HOME=str(lab.home),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = lab.home.parent / "docker-agent.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jupyter_launch.cli", "agent", "--queue", "docker-data"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield log
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        lab.api("DELETE", "queues/docker-data?force=true")


def test_a_notebook_on_its_own_kernel_runs_on_docker_with_that_kernels_packages(page, lab, docker_agent):
    python = data_kernel()
    pandas = subprocess.run([str(python), "-c", "import pandas; print(pandas.__version__)"], capture_output=True,
                            text=True, check=True).stdout.strip()
    folder = lab.root / "env-data"
    folder.mkdir(exist_ok=True)
    (folder / "prices.ipynb").write_text(json.dumps(NOTEBOOK))
    (folder / "prices.csv").write_text("price\n1\n2\n6\n")

    page.evaluate("path => window.jupyterapp.commands.execute('docmanager:open', {path, kernel: {name: '%s'}})"
                  % KERNEL, "env-data/prices.ipynb")
    notebook = page.locator(".jp-NotebookPanel").filter(visible=True)
    expect(notebook.locator(".jp-Cell")).to_have_count(1)
    # The live kernel is the data kernel: its status shows in the toolbar once started.
    expect(notebook.locator(".jp-KernelName")).to_contain_text("launch data test", timeout=60_000)
    dialog = launch_dialog(page, notebook)
    dialog.locator("[data-field=queue] select").select_option("docker-data")
    submit(dialog)
    expect(dialog).to_have_count(0)

    job_id = opened_job_id(page)
    job = wait_for_job(lab, job_id, ("succeeded", "failed"), timeout=900)
    status, manifest = lab.api("GET", f"artifacts/blobs/{job['artifact']}")
    assert status == 200, manifest
    assert f"pandas=={pandas}" in manifest["environment"]["packages"]
    assert job["state"] == "succeeded", (job.get("message"), Path(docker_agent).read_text()[-3000:])
    view = page.locator(f"#jp-launch-job-{job_id}")
    expect(view.locator(".jp-LaunchLog-row").filter(has_text=f"pandas {pandas} mean 3.0")).to_have_count(
        1, timeout=30_000)
