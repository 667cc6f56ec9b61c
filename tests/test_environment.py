"""Environment capture: the lock is what the notebook's own kernel can import (its kernelspec's Python, the magic's
kernel, the panel's live kernel), with the sources of local distributions packaged into the artifact."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import site
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from launch_server import LaunchServer, isolated_env

from jupyter_launch import environment
from jupyter_launch.artifact import build_artifact, load_manifest
from jupyter_launch.environment import SOURCES_DIR, capture
from jupyter_launch.store.blobs import BlobStore


def write(path: Path, data: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    return path


def fake_dist(site_dir: Path, name: str, version: str, direct_url: dict | None = None) -> None:
    info = site_dir / f"{name}-{version}.dist-info"
    write(info / "METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if direct_url is not None:
        write(info / "direct_url.json", json.dumps(direct_url))


def layered_venv(where: Path, name: str) -> Path:
    """A venv whose own site-packages holds ``name==1.0`` and that sees this environment's packages after its own
    (so ipykernel runs in it): a kernel's Python other than the one submitting. Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    own = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip())
    fake_dist(own, name, "1.0")
    (own / "zz_layer.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def kernelspec(data_dir: Path, name: str, python: Path) -> None:
    write(data_dir / "kernels" / name / "kernel.json", json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": name, "language": "python"}))


def notebook(kernel: str) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": kernel, "display_name": kernel, "language": "python"}},
            "cells": [{"cell_type": "code", "id": "c0", "metadata": {}, "execution_count": None, "outputs": [],
                       "source": "import sys\nprint(sys.executable)\n"}]}


@pytest.fixture(scope="module")
def other_kernel(tmp_path_factory: pytest.TempPathFactory):
    """A kernel named ``other-<id>`` whose Python has ``other-only-<id>==1.0``, which this process cannot import."""
    base = tmp_path_factory.mktemp("other-kernel")
    ident = uuid.uuid4().hex[:8]
    python = layered_venv(base / "venv", f"other-only-{ident}")
    kernelspec(base / "data", f"other-{ident}", python)
    return {"name": f"other-{ident}", "dist": f"other-only-{ident}==1.0", "python": python, "data": base / "data"}


# ---------------------------------------------------------------- this interpreter


def test_pins_follow_import_order_and_local_installs_travel_as_source(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch):
    first, later = tmp_path / "site1", tmp_path / "site2"
    project = tmp_path / "myproject"
    write(project / "pyproject.toml", "[project]\nname = 'fake-editable'\nversion = '1.0'\n")
    write(project / "fake_editable" / "__init__.py", "VALUE = 1\n")
    write(project / ".gitignore", "build/\n")
    write(project / "build" / "junk.txt", "left out")
    fake_dist(first, "fake-regular", "2.0")
    fake_dist(first, "fake-editable", "1.0", {"url": project.as_uri(), "dir_info": {"editable": True}})
    fake_dist(first, "fake-gone", "1.0", {"url": "file:///no/such/folder", "dir_info": {}})
    fake_dist(first, "fake-from-index", "3.0", {"url": "https://files.example/x.whl", "archive_info": {}})
    fake_dist(first, "fake-vcs", "0.1", {"url": "https://github.com/example/fake-vcs",
                                         "vcs_info": {"vcs": "git", "commit_id": "abc123"}})
    fake_dist(later, "Fake_Regular", "1.0")  # shadowed: the first on sys.path wins, as for import
    monkeypatch.syspath_prepend(str(later))
    monkeypatch.syspath_prepend(str(first))

    lock, sources = capture()
    assert lock["python"] == platform.python_version() and lock["platform"]
    assert lock["kernel"] is None and lock["pip_installs"] == []
    packages = lock["packages"]
    assert f"pytest=={importlib.metadata.version('pytest')}" in packages
    assert "fake-regular==2.0" in packages and "fake-from-index==3.0" in packages
    assert "fake-vcs @ git+https://github.com/example/fake-vcs@abc123" in packages
    assert not any(p.lower().startswith(("fake-editable", "fake-gone", "fake_regular==1.0", "jupyter-launch"))
                   for p in packages)
    assert lock["local"] == [
        {"name": "fake-editable", "version": "1.0", "source": f"{SOURCES_DIR}/fake-editable"},
        {"name": "fake-gone", "version": "1.0", "missing": "installed from a folder that no longer exists"},
    ]
    assert sources == {f"{SOURCES_DIR}/fake-editable": str(project)}

    job = tmp_path / "job"
    write(job / "run.py", "print(1)\n")
    blobs = BlobStore(tmp_path / "blobs")
    art = build_artifact(job, blobs, environment=lock, sources=sources)
    files = sorted(load_manifest(art.digest, blobs)["files"])
    source = f"{SOURCES_DIR}/fake-editable"
    assert files == [f"{source}/.gitignore", f"{source}/fake_editable/__init__.py", f"{source}/pyproject.toml",
                     "run.py"]


def test_an_install_in_the_kernel_is_seen_by_the_next_capture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    monkeypatch.syspath_prepend(str(site_dir))
    assert not any(p.startswith("fake-late") for p in capture()[0]["packages"])
    fake_dist(site_dir, "fake-late", "1.0")  # what `%pip install` in the kernel does
    os.utime(site_dir, ns=(time.time_ns() + 10**9,) * 2)  # a coarse-mtime file system may not have moved it
    assert "fake-late==1.0" in capture()[0]["packages"]


def test_pip_install_lines_and_kernel_come_from_the_notebook():
    nb = {
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "cells": [
            {"cell_type": "code", "source": ["%pip install numpy scipy\n", "import numpy\n"]},
            {"cell_type": "code", "source": "!pip install -q 'pandas<3'  # for the report\n"},
            {"cell_type": "code", "source": "  !python -m pip install --upgrade torch\n!pip3 install rich"},
            {"cell_type": "code", "source": "!{sys.executable} -m pip install polars \\\n  duckdb\n"},
            {"cell_type": "code", "source": "# %pip install commented-out\nprint('pip install nothing')\n"},
            {"cell_type": "markdown", "source": "%pip install in-markdown\n"},
        ],
    }
    lock, _ = capture(nb)
    assert lock["pip_installs"] == ["numpy scipy", "-q 'pandas<3'", "--upgrade torch", "rich", "polars    duckdb"]
    assert lock["kernel"] == "python3" and lock["python"] == platform.python_version()


def test_a_kernel_that_is_not_python_carries_its_name_and_no_packages(tmp_path, monkeypatch):
    write(tmp_path / "kernels" / "ir-test" / "kernel.json",
          json.dumps({"argv": ["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"],
                      "display_name": "R", "language": "R"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setattr(environment, "_interpreters", {})
    lock, _ = capture(notebook("ir-test"))
    assert (lock["kernel"], lock["packages"], lock["python"]) == ("ir-test", [], None)


# ---------------------------------------------------------------- the kernel's interpreter


def test_a_notebook_file_carries_its_kernelspecs_environment_not_the_submitters(other_kernel, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(other_kernel["data"]))
    lock, _ = capture(notebook(other_kernel["name"]))
    assert lock["kernel"] == other_kernel["name"]
    assert other_kernel["dist"] in lock["packages"]  # only that kernel's Python has it
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version(other_kernel["dist"].split("==")[0])


def test_the_cli_submits_with_the_kernelspecs_environment(other_kernel, tmp_path):
    folder = tmp_path / "project"
    write(folder / "analysis.ipynb", json.dumps(notebook(other_kernel["name"])))
    env = dict(isolated_env(tmp_path), JUPYTER_LAUNCH_HOME=str(tmp_path / "home"),
               JUPYTER_PATH=str(other_kernel["data"]))
    cli = subprocess.run([sys.executable, "-m", "jupyter_launch.cli", "submit", str(folder / "analysis.ipynb"),
                          "-q", "default"], env=env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    from jupyter_launch.client import LaunchClient

    client = LaunchClient(home=tmp_path / "home")
    try:
        job = client.get_job(cli.stdout.split()[-1])
        manifest = load_manifest(job.artifact, client.blobs)
    finally:
        client.close()
    assert manifest["environment"]["kernel"] == other_kernel["name"]
    assert other_kernel["dist"] in manifest["environment"]["packages"]


def test_the_panel_packages_the_live_kernels_environment(other_kernel, tmp_path):
    """The notebook's file still names python3, but its live session runs the other kernel: that one counts."""
    launch = LaunchServer(tmp_path, agent_queues=[], token="env-test",
                          env={"JUPYTER_PATH": str(other_kernel["data"])})
    write(launch.root / "analysis.ipynb", json.dumps(notebook("python3")))
    launch.start()
    try:
        import urllib.request

        req = urllib.request.Request(
            f"{launch.url}/api/sessions", method="POST",
            data=json.dumps({"path": "analysis.ipynb", "type": "notebook", "name": "analysis.ipynb",
                             "kernel": {"name": other_kernel["name"]}}).encode(),
            headers={"Authorization": "token env-test", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 201
        status, job = launch.api("POST", "jobs", {"queue": "default", "notebook": "analysis.ipynb"})
        assert status == 201, job
        status, manifest = launch.api("GET", f"artifacts/blobs/{job['artifact']}")
        assert status == 200, manifest
        assert other_kernel["dist"] in manifest["environment"]["packages"], launch.log_tail()
        # With no live session, the file's kernelspec (python3: the server's own Python) decides.
        write(launch.root / "other.ipynb", json.dumps(notebook("python3")))
        status, job = launch.api("POST", "jobs", {"queue": "default", "notebook": "other.ipynb"})
        status, manifest = launch.api("GET", f"artifacts/blobs/{job['artifact']}")
        assert other_kernel["dist"] not in manifest["environment"]["packages"]
    finally:
        launch.stop()


def test_a_kernel_python_that_fails_is_a_one_line_error_naming_it(tmp_path, monkeypatch):
    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\necho 'no such module' >&2\nexit 3\n")
    broken.chmod(0o755)
    kernelspec(tmp_path, "broken", broken)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setattr(environment, "_interpreters", {})
    with pytest.raises(environment.CaptureError) as err:
        capture(notebook("broken"))
    assert str(err.value).endswith(f"the kernel's Python {broken} failed to list its packages: no such module")
    assert err.value.field == "kernel"


# ---------------------------------------------------------------- what the image build makes of the lock


def test_a_local_distribution_without_its_source_is_named_when_the_image_is_planned(tmp_path):
    from jupyter_launch.images import BuildSettings, ImageBuildError, plan_build

    lock = {"python": "3.11.7", "packages": ["six==1.16.0"],
            "local": [{"name": "mylib", "version": "0.3", "missing": "installed from a folder that no longer exists"}]}
    with pytest.raises(ImageBuildError) as err:
        plan_build(BuildSettings(base_image="launch-python:bookworm", ca_bundle=None), "sha256:x", lock, tmp_path)
    assert "distribution mylib 0.3 cannot be installed" in str(err.value) and "build.lock: minimal" in str(err.value)
    minimal = plan_build(BuildSettings(base_image="launch-python:bookworm", lock="minimal"), "sha256:x", lock,
                         tmp_path)
    assert minimal.pins == [] and minimal.sources == {}


def test_a_lock_from_another_python_minor_version_is_refused_in_one_line(docker_api):
    from jupyter_launch.images import BuildSettings, ImageBuilder, ImageBuildError, plan_build

    builder = ImageBuilder(docker_api)
    settings = BuildSettings(base_image="launch-python:bookworm", pip_cache=None)
    plan = plan_build(settings, builder.image_id("launch-python:bookworm"),
                      {"python": "3.99.1", "packages": ["six==1.16.0"], "kernel": "python3"}, None)
    with pytest.raises(ImageBuildError) as err:
        builder.build(plan, lambda text: None)
    message = str(err.value)
    assert "\n" not in message and "exit code 3" in message
    assert "the notebook's kernel runs Python 3.99.1 and the base image launch-python:bookworm has Python 3.11." \
        in message and "with Python 3.99" in message
