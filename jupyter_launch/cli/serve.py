"""``jupyter launch serve``: run the team's jupyter-launch server in the foreground, standalone or as a JupyterHub
service (the server itself is made in ``server/serve.py``)."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_serve(args: argparse.Namespace) -> int:
    from ..server.serve import ServeError, make_server
    from .main import UsageError

    try:
        server = make_server(args.config_words, queues=args.queue, store_url=args.store_url, hub=args.hub)
    except ServeError as exc:
        raise UsageError(str(exc)) from None
    server.start()  # until SIGTERM or SIGINT; stopping hands the agent's running jobs back to the queue
    return 0


def add_serve_command(sub: Any) -> None:
    """Add ``serve`` to the CLI's subparsers."""
    s = sub.add_parser(
        "serve", help="run a Jupyter server with jupyter-launch only: the API, the scheduler and an agent for the "
        "queues named, on the store named. Started by JupyterHub as a service ($JUPYTERHUB_SERVICE_NAME and "
        "$JUPYTERHUB_API_TOKEN set), the Hub's users reach it with their Hub tokens or logins at "
        "/services/NAME/, the Hub's admins as jupyter-launch's admins; else a standalone server with "
        "jupyter_server's token. Any --ServerApp.*, --LaunchApp.*, --Agent.* option (--ServerApp.port=8888) "
        "configures it; so does jupyter_server_config.py")
    s.add_argument("--queue", "-q", action="append", default=[],
                   help="a queue the server's agent serves, anyone's jobs on it (repeatable; default: "
                        "c.LaunchApp.agent_queues, ['default'])")
    s.add_argument("--store-url", help="the store (default: $JUPYTER_LAUNCH_STORE_URL, else SQLite under "
                                       "$JUPYTER_LAUNCH_HOME)")
    s.add_argument("--hub", action=argparse.BooleanOptionalAction, default=None,
                   help="serve the Hub's users (default: when started by JupyterHub as a service)")
    s.set_defaults(func=cmd_serve)
