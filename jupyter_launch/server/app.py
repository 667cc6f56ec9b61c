"""``LaunchApp``: the Jupyter server extension. Opens the store, serves the REST API, runs agents in-process; or,
with ``service_url`` (a JupyterHub user's server whose Hub runs the team's ``jupyter launch serve``), serves the same
API as a client of that service: no store and no agent of its own.

Configure it like any extension, in ``jupyter_server_config.py`` or on the command line::

    c.LaunchApp.store_url = "postgresql://launch@db/launch"
    c.LaunchApp.agent_queues = ["default", "gpu"]
    c.Agent.max_jobs = 4              # the in-process agent
    c.LocalBackend.grace_seconds = 5  # backend settings
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from jupyter_server.auth.authorizer import AllowAllAuthorizer, Authorizer
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, DottedObjectName, Float, Integer, List, Type, Unicode, Union, default
from traitlets.utils.importstring import import_item

from ..agent import Agent
from ..scheduler import Scheduler
from ..paths import default_store_url, launch_home, local_user
from ..remote.http import SERVER_ENV, TOKEN_ENV
from ..store import BlobStore, NotFound, SQLStore
from ..store.sql import redact_url
from ..service import LaunchService

T = TypeVar("T")


class LaunchApp(ExtensionApp):
    """Serves ``/launch/api/`` and runs the configured agents in the server's event loop."""

    name = "jupyter_launch"
    load_other_extensions = True

    service_url = Unicode(config=True,
                          help="The team's jupyter-launch service (`jupyter launch serve`; under JupyterHub its URL "
                               "as this server reaches it, https://hub.example.org/services/launch/) to serve this "
                               "server's /launch/api/ from, as its client: jobs, queues, logs and outputs are the "
                               "service's, as the token's user (service_token) sees them; the notebooks it submits "
                               "are packaged here and their blobs uploaded there. This server then opens no store "
                               "and runs no agent or scheduler; agent tokens, artifact uploads and the agent routes "
                               "answer 501 (use the service for them). Default: $JUPYTER_LAUNCH_SERVER_URL, the "
                               "service the CLI and the magics use. Empty: this server's own store and agent.")
    service_token = Unicode(config=True,
                            help="The token sent to service_url. Default: $JUPYTER_LAUNCH_TOKEN, else, in a JupyterHub "
                                 "user's server and for a service_url that is one of the Hub's services, the "
                                 "server's own Hub token ($JUPYTERHUB_API_TOKEN), which needs the service's access "
                                 "scope (c.Spawner.server_token_scopes, docs/team.md).")
    store_url = Unicode(config=True, help="SQLAlchemy URL of the store: sqlite:///path/launch.db (default, under "
                        "$JUPYTER_LAUNCH_HOME) or postgresql://user:pass@host/db to share queues across servers.")
    blob_dir = Unicode(config=True, help="Folder of the content-addressed blobs (artifacts, outputs).")
    agent_queues = List(Unicode(), default_value=["default"], config=True,
                        help="Queues the in-process agent serves; empty runs no agent in the server. It serves as "
                             "server_user: on private queues it runs only that user's jobs, on shared ones anyone's "
                             "(unless agent_serves_team).")
    agent_job_types = List(Unicode(), config=True, help="Job types the in-process agent accepts; empty: any.")
    agent_serves_team = Bool(False, config=True,
                             help="The in-process agent serves the team, not server_user: it claims anyone's jobs on "
                                  "every queue it serves, private ones too, as a standalone agent does. `jupyter "
                                  "launch serve` (the team's server, a JupyterHub service) sets it.")
    agent_class = Type(default_value=Agent, klass=Agent, config=True,
                       help="The agent class run in-process (configure it as c.Agent.* or its own name).")
    lease_seconds = Float(30.0, config=True, help="Lease of a claim held by the in-process agent.")
    max_inflight_requests = Integer(256, config=True,
                                    help="API requests handled at once; past it the API answers 429 with Retry-After.")
    retry_after_seconds = Integer(1, config=True, help="Retry-After sent with a 429.")
    max_log_followers = Integer(1000, config=True, help="Live log streams (WebSocket, SSE) open at once.")
    max_claim_wait = Float(30.0, config=True, help="Longest long-poll of a remote agent's claim, in seconds.")
    max_blob_size = Integer(2 * 1024**3, config=True, help="Largest blob an upload may carry, in bytes.")
    reap_interval = Float(5.0, config=True,
                          help="How often the server requeues jobs whose lease expired (remote agents that died).")
    store_threads = Integer(16, config=True, help="Threads that run store calls for the API.")
    listen_backlog = Integer(2048, config=True,
                             help="Listen backlog set on the server's sockets at start (tornado listens with 128; the "
                             "kernel caps it at net.core.somaxconn). Connections arriving in a burst past it are "
                             "reset by the kernel before the API can answer 429; 0 leaves the server's own.")
    migrate = Bool(True, config=True, help="Bring the store's schema up to date at start.")
    server_user = Unicode(config=True,
                          help="The user the server's own token (and any login under jupyter_server's own token or "
                               "password identity providers) acts as: the owner of what it submits, and the user "
                               "whose jobs the in-process agent runs on private queues. Default: $JUPYTERHUB_USER, "
                               "else the OS user running the server (the owner an embedded client here records).")
    # A dotted name stays a name until a JupyterHub server needs the class: jupyter_server reads every trait of the
    # extension at load, and jupyter_launch.server.hub imports jupyterhub (its ORM, alembic, aiohttp: 31 MB of an
    # idle server's RSS).
    hub_authorizer_class = Union([DottedObjectName(), Type(klass=Authorizer)],
                                 default_value="jupyter_launch.server.hub.HubAuthorizer", allow_none=True, config=True,
                                 help="In a JupyterHub single-user server, or `jupyter launch serve` run as the "
                                      "Hub's service, whose ServerApp.authorizer_class is left at jupyter_server's "
                                      "default (which allows whoever reaches the server everything), the server's "
                                      "authorizer: the Hub's admins are jupyter-launch's admins, other users reach "
                                      "their own jobs (configure it as c.HubAuthorizer.*). None keeps the default.")
    scheduler_class = Type(default_value=Scheduler, klass=Scheduler, config=True,
                           help="The scheduler that fires the store's schedules from this server (configure it as "
                                "c.Scheduler.*).")

    @default("service_url")
    def _default_service_url(self) -> str:
        return os.environ.get(SERVER_ENV, "")

    @default("service_token")
    def _default_service_token(self) -> str:
        from ..remote.discovery import hub_service_token

        return os.environ.get(TOKEN_ENV) or hub_service_token(self.service_url)

    @default("store_url")
    def _default_store_url(self) -> str:
        return default_store_url()

    @default("server_user")
    def _default_server_user(self) -> str:
        return local_user() or "server"

    @default("blob_dir")
    def _default_blob_dir(self) -> str:
        return str(launch_home() / "blobs")

    # ------------------------------------------------------------ extension hooks

    # Set before anything can fail, so stopping works from any state the start left (a damaged store, say).
    store: Any = None  # a SQLStore; an HttpStore with service_url
    service: LaunchService | None = None
    scheduler: Scheduler | None = None
    executor: ThreadPoolExecutor | None = None

    def initialize_settings(self) -> None:
        self.agents: list[Agent] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self.executor = ThreadPoolExecutor(self.store_threads, thread_name_prefix="launch-store")
        self.inflight = 0
        self.settings["launch"] = self
        self._install_hub_authorizer()
        if self.service_url:
            self._use_service()
            return
        self.store = SQLStore(self.store_url, migrate=False)
        if self.migrate:
            self.store.migrate(in_child=True)  # the server lives long: it need not keep alembic loaded
        self.store.ensure_default_queue()
        self.blobs = BlobStore(self.blob_dir)
        self.service = LaunchService(self.store, self.blobs, home=launch_home(), run_blocking=self.run_store)
        self.log.info("jupyter-launch store: %s", redact_url(self.store_url))

    def _use_service(self) -> None:
        """Serve the API through ``service_url``: an ``HttpStore`` with ``service_token``, ``blob_dir`` the cache of
        what is packaged here (and of outputs downloaded for the browser)."""
        from ..remote.service import ServiceClientService
        from ..remote.store import HttpBlobs, HttpStore

        self.store = HttpStore(self.service_url, user_token=self.service_token)
        cache = BlobStore(self.blob_dir)
        self.blobs = HttpBlobs(self.store.user_http, cache, prefix="artifacts/blobs", missing_path="artifacts/missing")
        self.service = ServiceClientService(self.store, cache, self.blobs, home=launch_home(),
                                            run_blocking=self.run_store)
        self.log.info("jupyter-launch: a client of the service at %s (c.LaunchApp.service_url); no store or agent "
                      "here", self.store.server_url)
        if not self.service_token:
            self.log.warning("jupyter-launch: no token for the service at %s: set $%s or c.LaunchApp.service_token "
                             "(under JupyterHub, the server's own token is used for the Hub's services)",
                             self.store.server_url, TOKEN_ENV)

    def initialize_handlers(self) -> None:
        from .handlers import default_handlers, service_only_routes
        from .ws import stream_handlers

        handlers = default_handlers + stream_handlers
        if self.service_url:
            handlers = service_only_routes(handlers)
        self.handlers.extend(handlers)

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        if self.service is None:
            return  # initialize_settings failed, and said why; the server runs without jupyter-launch
        if self.listen_backlog:
            # listen() again on a listening socket only changes its backlog. Tornado keeps no public list of them.
            for sock in getattr(getattr(serverapp, "http_server", None), "_sockets", {}).values():
                sock.listen(self.listen_backlog)
        if self.service_url:
            return  # the service reaps its leases, fires its schedules and runs its agents
        self._tasks.append(asyncio.create_task(self._reap_expired_leases()))
        # Schedules fire from the server with or without an in-process agent (which then runs no scheduler of its
        # own); the store's lease picks one scheduler among every server and agent on the store.
        self.scheduler = self.scheduler_class(parent=self, service=self.service)
        self._tasks.append(asyncio.create_task(self.scheduler.run()))
        if self.agent_queues:
            for name in self.agent_queues:
                try:
                    await self.run_store(self.store.get_queue, name)
                except NotFound as exc:
                    self.log.warning("LaunchApp.agent_queues: %s; the in-process agent will serve it once it "
                                     "exists", exc)
            agent = self.agent_class(parent=self, store=self.store, blobs=self.blobs, queues=list(self.agent_queues),
                                     job_types=list(self.agent_job_types), lease_seconds=self.lease_seconds,
                                     run_schedules=False,
                                     owner=None if self.agent_serves_team else self.server_user)
            await agent.start()
            self.agents.append(agent)
            self._tasks.append(asyncio.create_task(agent.run()))

    async def stop_extension(self) -> None:
        """Hand the in-process agents' jobs back and close the store; from any state the start left, never raising
        (a server whose store failed to open must still stop on SIGTERM)."""
        store, self.store = self.store, None
        agents, self.agents = getattr(self, "agents", []), []
        for agent in agents:
            # Interrupted jobs are queued again with their attempt not counted: a restart loses nothing. A server
            # killed outright gets the same once the leases lapse, as a new attempt.
            try:
                await agent.stop(hand_back=True)
            except Exception:
                self.log.warning("stopping agent %s failed; its jobs are requeued when their leases lapse",
                                 agent.agent_id, exc_info=True)
                if store is not None:
                    with contextlib.suppress(Exception):
                        await self.run_store(store.release_agent_leases, agent.agent_id)
        scheduler, self.scheduler = self.scheduler, None
        if scheduler is not None:
            try:
                await scheduler.stop()  # gives the lease up: another server or agent fires from now on
            except Exception:
                self.log.warning("stopping the scheduler failed; its lease lapses by itself", exc_info=True)
        for task in getattr(self, "_tasks", []):
            task.cancel()
        try:
            if self.service is not None:
                self.service.close()
            if self.executor is not None:
                self.executor.shutdown(wait=False, cancel_futures=True)
            if store is not None:
                store.close()
        except Exception:
            self.log.warning("jupyter-launch: closing the store failed", exc_info=True)

    def _install_hub_authorizer(self) -> None:
        """Under JupyterHub's server extension (``jupyterhub-singleuser``, or ``jupyter launch serve`` as a Hub
        service) with jupyter_server's default authorizer, put ``hub_authorizer_class`` in its place (before the
        server takes requests). A server whose authorizer was configured keeps it."""
        hub = sys.modules.get("jupyterhub.singleuser.extension")
        serverapp = self.serverapp
        if (hub is None or self.hub_authorizer_class is None
                or not isinstance(serverapp.identity_provider, hub.JupyterHubIdentityProvider)
                or type(serverapp.authorizer) is not AllowAllAuthorizer):
            return
        cls = self.hub_authorizer_class
        if isinstance(cls, str):
            cls = import_item(cls)
            if not (isinstance(cls, type) and issubclass(cls, Authorizer)):
                raise TypeError(f"LaunchApp.hub_authorizer_class: {self.hub_authorizer_class} is not an Authorizer")
        authorizer = cls(parent=serverapp, log=serverapp.log, identity_provider=serverapp.identity_provider)
        # The server's settings are updated from this extension's copy of them once initialize_settings returns.
        serverapp.authorizer = self.settings["authorizer"] = authorizer
        self.log.info("jupyter-launch: under JupyterHub; authorizer %s (the Hub's admins are jupyter-launch's admins)",
                      type(authorizer).__name__)

    # ------------------------------------------------------------ helpers for handlers

    async def run_store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store call off the event loop, on the API's own threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    async def _reap_expired_leases(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            try:
                await self.run_store(self.store.requeue_expired)
            except Exception:
                self.log.warning("requeueing expired leases failed; retrying", exc_info=True)
