"""Which client a command uses: a named server, a named store, a local running server, or the embedded store."""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path
from typing import Any

from ..store import StoreError
from .client import connect
from .http import SERVER_ENV, TOKEN_ENV, Http

STORE_ENVS = ("JUPYTER_LAUNCH_HOME", "JUPYTER_LAUNCH_STORE_URL")
HUB_TOKEN_ENV, HUB_BASE_ENV = "JUPYTERHUB_API_TOKEN", "JUPYTERHUB_BASE_URL"


def hub_service_token(server_url: str) -> str:
    """In a JupyterHub user's server, the server's own Hub token (``$JUPYTERHUB_API_TOKEN``) for a server URL that is
    one of the Hub's services (its path under ``$JUPYTERHUB_BASE_URL/services/``, as ``jupyter launch serve`` is
    reached); else "". The Hub lets the token through when its scopes include the service's access
    (``c.Spawner.server_token_scopes``)."""
    token, base = os.environ.get(HUB_TOKEN_ENV, ""), os.environ.get(HUB_BASE_ENV)
    if not token or base is None:
        return ""
    path = urllib.parse.urlparse(server_url if "://" in server_url else f"http://{server_url}").path
    services = base.rstrip("/") + "/services/"
    return token if path.startswith(services) and len(path) > len(services) else ""


def probe(server_url: str, token: str, *, timeout: float = 2.0) -> bool:
    """True when a server with the launch extension answers at ``server_url`` and accepts ``token``."""
    try:
        Http(server_url, token, timeout=timeout).request("GET", "queues", timeout=timeout)
        return True
    except (StoreError, ValueError, OSError):
        return False


def _running_servers() -> list[dict[str, Any]]:
    """The ``jpserver-*.json`` files of live local Jupyter servers, newest first (read directly: importing
    ``jupyter_server.serverapp`` for ``list_running_servers`` takes over a second, on every command)."""
    from jupyter_core.paths import jupyter_runtime_dir
    from jupyter_server.utils import check_pid

    found = []
    for path in Path(jupyter_runtime_dir()).glob("jpserver-*.json"):
        try:
            info = json.loads(path.read_text())
            mtime = path.stat().st_mtime
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and isinstance(info.get("pid"), int) and check_pid(info["pid"]):
            found.append((mtime, info))
    return [info for _, info in sorted(found, key=lambda item: item[0], reverse=True)]


def discover_server() -> tuple[str, str] | None:
    """The newest local running Jupyter server that serves the launch API and takes its own token, as
    ``(url, token)``; in a kernel a server started (``$JPY_PARENT_PID``), that server first."""
    servers = _running_servers()
    parent = os.environ.get("JPY_PARENT_PID")
    servers.sort(key=lambda info: str(info["pid"]) != parent)  # stable: newest first otherwise
    for info in servers:
        url, token = info.get("url"), info.get("token") or ""
        if url and probe(url, token):
            return url, token
    return None


def client_for(server: str | None = None, token: str | None = None, *, discover: bool = True, **kwargs: Any) -> Any:
    """The client a command should use, first match wins:

    1. a server named (``server``, else ``$JUPYTER_LAUNCH_SERVER_URL``): through it, with ``token`` (else
       ``$JUPYTER_LAUNCH_TOKEN``, else, for a JupyterHub service's URL in a user's Hub server, the server's Hub token:
       :func:`hub_service_token`). A named server that does not answer is an error, never a silent fallback;
    2. a store named (``$JUPYTER_LAUNCH_HOME``, ``$JUPYTER_LAUNCH_STORE_URL``, or ``home``/``store_url``/``store``
       given): that store, embedded. Naming a store is asking for it, so a running server is not looked for;
    3. a local running Jupyter server with jupyter-launch (``discover``): through it, with its own token;
    4. else the embedded store under the default launch home.
    """
    from ..client import LaunchClient

    server = server or os.environ.get(SERVER_ENV) or None
    token = token or os.environ.get(TOKEN_ENV) or ""
    through = {k: kwargs[k] for k in ("home", "owner") if k in kwargs}  # the rest opens an embedded store
    if server:
        return connect(server, token or hub_service_token(server), **through)
    store_named = any(os.environ.get(name) for name in STORE_ENVS) or any(
        kwargs.get(name) is not None for name in ("home", "store_url", "store"))
    if discover and not store_named:
        found = discover_server()
        if found:
            return connect(*found, **through)
    return LaunchClient(**kwargs)
