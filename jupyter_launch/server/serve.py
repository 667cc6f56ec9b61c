"""``jupyter launch serve``: a Jupyter server running jupyter-launch alone, the team's server that owns the store and
its agents: a JupyterHub service when the Hub starts it, else a standalone server with jupyter_server's token.

Under a Hub (the Hub gives a service it starts ``$JUPYTERHUB_SERVICE_NAME`` and ``$JUPYTERHUB_API_TOKEN``), JupyterHub's
own server extension (the one ``jupyterhub-singleuser`` runs, as JupyterHub's "shared notebook server as a service"
example does) takes the address (``$JUPYTERHUB_SERVICE_URL``, ``$JUPYTERHUB_SERVICE_PREFIX``) and authenticates the
Hub's users: their API tokens and their browsers' OAuth logins, each needing the service's access scope
(``access:services!service=NAME``). jupyter-launch then puts its ``HubAuthorizer`` in the server: the Hub's admins see
and administer everyone's jobs and the team's queues, the other users their own jobs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from traitlets.config import Config

from ..errors import LaunchError

HUB_SERVICE_ENVS = ("JUPYTERHUB_SERVICE_NAME", "JUPYTERHUB_API_TOKEN")
HUB_SERVER_ENVS = ("JUPYTERHUB_API_TOKEN", "JUPYTERHUB_SERVICE_URL")  # what JupyterHub's extension cannot do without
HUB_EXTENSION = "jupyterhub"  # the module whose server extension point is JupyterHubSingleUser


class ServeError(LaunchError):
    """``serve`` cannot start as asked (a Hub service without the jupyterhub package)."""


def started_by_hub(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is a JupyterHub service: the Hub named it and gave it its API token."""
    return all(env.get(name) for name in HUB_SERVICE_ENVS)


def serve_config(*, queues: Sequence[str], store_url: str | None, hub: bool) -> Config:
    """The server's settings that ``serve`` fixes (they win over the config files, as command-line options do; a
    ``--Class.trait=value`` word wins over them)."""
    # The team's server owns the store: never a client of another service ($JUPYTER_LAUNCH_SERVER_URL, which the
    # users' servers get, is LaunchApp.service_url's default).
    launch: dict[str, Any] = {"agent_serves_team": True, "service_url": ""}
    if queues:
        launch["agent_queues"] = list(queues)
    if store_url:
        launch["store_url"] = store_url
    server: dict[str, Any] = {"open_browser": False, "default_url": "/launch/api/openapi.json"}
    if hub:
        # The Hub's users reach this server through the Hub's proxy, from any address (JupyterHub's extension allows
        # remote access for the same reason); who they are is the Hub's to say.
        server["allow_remote_access"] = True
    return Config({"ServerApp": server, "LaunchApp": launch})


def make_server(argv: Sequence[str] = (), *, queues: Sequence[str] = (), store_url: str | None = None,
                hub: bool | None = None) -> Any:
    """An initialized ``ServerApp`` with jupyter-launch as its only extension (and JupyterHub's under a Hub, ``hub``
    None: when :func:`started_by_hub`); ``argv``: ``--Class.trait=value`` words. Start it with ``.start()``."""
    from jupyter_server.serverapp import ServerApp

    hub = started_by_hub() if hub is None else hub
    extensions = {"jupyter_launch": True}
    if hub:
        missing = [f"${name}" for name in HUB_SERVER_ENVS if not os.environ.get(name)]
        if missing:
            raise ServeError(f"serving a Hub's users needs the variables JupyterHub gives the services it starts; "
                             f"{', '.join(missing)} not set: run it from c.JupyterHub.services, or without --hub")
        try:
            import jupyterhub.singleuser.extension  # noqa: F401  (fails here, with its reason, not in the server)
        except ImportError as exc:
            raise ServeError(f"this is a JupyterHub service ($JUPYTERHUB_SERVICE_NAME="
                             f"{os.environ.get('JUPYTERHUB_SERVICE_NAME')}), and serving the Hub's users needs the "
                             f"jupyterhub package beside jupyter-launch (pip install jupyterhub): {exc}") from None
        extensions[HUB_EXTENSION] = True
    server = ServerApp.instance(config=serve_config(queues=queues, store_url=store_url, hub=hub),
                                jpserver_extensions=extensions)
    # Only these extensions: the service is jupyter-launch's API, not a notebook server (no Lab, no kernels' UI).
    server.initialize(argv=list(argv), find_extensions=False)
    return server
