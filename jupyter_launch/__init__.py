"""jupyter-launch: send notebooks, cells and commands from Jupyter to queues; agents run them anywhere.

Inside a job: ``jupyter_launch.log({...}, step=...)``, ``jupyter_launch.progress(i, n)``,
``jupyter_launch.output_dir()``. From Python: ``jupyter_launch.LaunchClient().submit(...)``.
"""

from __future__ import annotations

from typing import Any

from .control import log, output_dir, progress

__version__ = "0.1.0"
__all__ = ["LaunchClient", "Job", "log", "progress", "output_dir", "__version__"]


def __getattr__(name: str) -> Any:
    # The client pulls in SQLAlchemy; keep `import jupyter_launch` cheap inside jobs.
    if name in ("LaunchClient", "Job"):
        from . import client

        return getattr(client, name)
    raise AttributeError(name)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .server import _jupyter_server_extension_points as points

    return points()


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "jupyter-launch"}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_launch``: the ``%launch`` and ``%%launch`` magics."""
    from .magics import load_ipython_extension as load

    load(ipython)
