"""Where jupyter-launch keeps its state on this machine: the SQLite store, blobs, work folders, wake sockets."""

from __future__ import annotations

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
