"""The Jupyter server extension: REST API and live log streams under ``/launch/api/``, agents run in-process."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import LaunchApp

    return [{"module": "jupyter_launch.server", "app": LaunchApp}]
