"""Where jupyter-launch keeps its state on this machine: the SQLite store, blobs, work folders, wake sockets."""

from __future__ import annotations

import getpass
import os
from pathlib import Path


def launch_home() -> Path:
    """``$JUPYTER_LAUNCH_HOME``, else ``launch/`` under Jupyter's data dir (``~/.local/share/jupyter/launch``)."""
    env = os.environ.get("JUPYTER_LAUNCH_HOME")
    if env:
        return Path(env).expanduser().resolve()
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "launch"


def default_store_url() -> str:
    return os.environ.get("JUPYTER_LAUNCH_STORE_URL") or f"sqlite:///{launch_home() / 'launch.db'}"


def local_user() -> str | None:
    """The user this machine's jupyter-launch acts for when no login says otherwise: the Hub's user name in a
    JupyterHub single-user server (``$JUPYTERHUB_USER``), else the OS user. The owner of what an embedded client
    submits, and of what the server's own token submits, so both are one owner."""
    try:
        return os.environ.get("JUPYTERHUB_USER") or getpass.getuser() or None
    except (KeyError, OSError):  # no login name and no passwd entry (a container run with an arbitrary uid)
        return None
