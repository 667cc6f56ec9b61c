"""Shared fixtures: every test gets its own launch home (store, blobs, wake sockets) under tmp_path."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_engine import engine_client

pytest_plugins = ("pytest_jupyter.jupyter_server",)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"


@pytest.fixture(autouse=True)
def collect_garbage_after_the_test() -> Iterator[None]:
    """Collect garbage once the test's other fixtures are torn down (autouse: set up first, torn down last), so that
    a socket or file a test left to the garbage collector is reported as that test's failure, not in whichever later
    test happens to set off a collection. (CI's Kubernetes manifest test failed twice so, on a Docker client's unix
    socket, while it parsed a large schema.)"""
    yield
    gc.collect()


@pytest.fixture
def docker_api() -> Iterator[Any]:
    """The Docker engine's low-level API for one test, closed after it (``docker_engine.engine_client``); the test
    fails, naming the script to run, when the engine or the base image is missing."""
    with engine_client() as api:
        yield api


@pytest.fixture
def launch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("JUPYTER_LAUNCH_HOME", str(home))
    monkeypatch.delenv("JUPYTER_LAUNCH_STORE_URL", raising=False)
    return home


@pytest.fixture
def client(launch_home: Path):
    from jupyter_launch.client import LaunchClient

    c = LaunchClient()
    yield c
    c.close()


@pytest.fixture
def cli_env(launch_home: Path) -> dict[str, str]:
    """Environment for running `python -m jupyter_launch.cli` as a real subprocess against this test's home."""
    env = dict(os.environ)
    env["JUPYTER_LAUNCH_HOME"] = str(launch_home)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def cli(cli_env: dict[str, str]):
    import subprocess

    def run(*args: str, timeout: float = 120, check: bool = False, **kw):
        proc = subprocess.run([sys.executable, "-m", "jupyter_launch.cli", *args], env=cli_env,
                              capture_output=True, text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"jupyter launch {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
        return proc

    return run
