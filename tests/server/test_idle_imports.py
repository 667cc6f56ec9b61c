"""The idle server holds only what it runs: a server with jupyter-launch loaded and started (its store on SQLite, its
in-process agent and scheduler running) imports neither JupyterHub nor PostgreSQL's SQLAlchemy dialect. Checked in a
fresh interpreter: the test process itself may have imported either. ``LaunchApp.hub_authorizer_class`` is therefore a
dotted name until a JupyterHub server needs it (or a class, set from Python)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_server.auth.authorizer import Authorizer
from traitlets import TraitError

from jupyter_launch.server.app import LaunchApp

from .conftest import ROOT

# Load and start the extension the way `jupyter server` does, wait for its agent to run, then list what is imported.
SERVER = r"""
import asyncio, json, sys
from jupyter_server.serverapp import ServerApp

app = ServerApp.instance()
app.initialize(argv=["--no-browser", "--allow-root", "--port=0", "--ServerApp.root_dir=" + sys.argv[1],
                     "--ServerApp.jpserver_extensions={'jupyter_launch': True, 'jupyter_server_terminals': False}",
                     "--Agent.wake_socket=False"])


async def report():
    launch = app.web_app.settings["launch"]
    for _ in range(600):
        if launch.agents and launch.scheduler is not None:
            break
        await asyncio.sleep(0.05)
    print(json.dumps({"agents": len(launch.agents), "modules": sorted(sys.modules)}), flush=True)
    app.stop()


app.io_loop.call_later(0.5, lambda: asyncio.ensure_future(report()))
app.start()
"""

NOT_AT_IDLE = ("jupyterhub", "alembic", "sqlalchemy.dialects.postgresql")


def test_started_extension_imports_neither_jupyterhub_nor_postgresql(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, JUPYTER_LAUNCH_HOME=str(home), JUPYTER_CONFIG_DIR=str(home / "cfg"),
               JUPYTER_RUNTIME_DIR=str(home / "rt"), PYTHONPATH=str(ROOT))
    env.pop("JUPYTER_LAUNCH_STORE_URL", None)
    done = subprocess.run([sys.executable, "-c", SERVER, str(home)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["agents"] == 1, done.stderr[-3000:]  # the check means something only once the agent runs
    modules = report["modules"]
    assert "jupyter_launch.server.app" in modules
    held = [m for m in modules if any(m == name or m.startswith(name + ".") for name in NOT_AT_IDLE)]
    assert held == []


class TeamAuthorizer(Authorizer):
    """A site's own authorizer, set as a class from ``jupyter_server_config.py``."""


def test_hub_authorizer_class_is_a_dotted_name_or_an_authorizer_class() -> None:
    assert LaunchApp().hub_authorizer_class == "jupyter_launch.server.hub.HubAuthorizer"
    assert LaunchApp(hub_authorizer_class=TeamAuthorizer).hub_authorizer_class is TeamAuthorizer
    assert LaunchApp(hub_authorizer_class=None).hub_authorizer_class is None
    for wrong in (dict, "not a dotted name!"):
        with pytest.raises(TraitError):
            LaunchApp(hub_authorizer_class=wrong)
