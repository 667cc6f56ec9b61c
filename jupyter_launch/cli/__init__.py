"""``jupyter launch ...``: the command line, one face over :class:`~jupyter_launch.client.LaunchClient`."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
