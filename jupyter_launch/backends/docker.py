"""The Docker backend: each job attempt is a container on a Docker Engine, driven through the ``docker`` SDK.

The image is the job's (or the queue's) when named, pulled when missing; otherwise one built from the artifact's
environment lock by :mod:`jupyter_launch.images` and reused while its hash holds. The job's folder is bind-mounted
read-only (its output folder read-write) on a local engine, or copied in on a remote one. Logs come from an attach
made before start, read from the raw socket in large chunks. Secrets never enter the container's config: a small
``sh`` wrapper reads them as one line on stdin, exports them and execs the job. Queues with ``min_instances`` keep
idle containers of the queue's image, so a job starts by ``exec`` instead of create and start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import math
import os
import re
import select
import signal
import socket
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from traitlets import Bool, Float, Integer, Unicode

from ..images import PACKAGE_DIR, BuildSettings, ImageBuildError, ImageBuilder, load_environment, package_source, plan_build
from .base import Backend, BackendError, JobContext, Result

LABEL = "jupyter-launch"
JOB_ID_LABEL = f"{LABEL}.job-id"
ATTEMPT_LABEL = f"{LABEL}.attempt"
FENCE_LABEL = f"{LABEL}.fence"
QUEUE_LABEL = f"{LABEL}.queue"
AGENT_LABEL = f"{LABEL}.agent"
WARM_LABEL = f"{LABEL}.warm"
MANAGED_BY = "app.jupyter-launch.managed-by"
WORK_DIR = "/jl/work"
OUTPUT_DIR = f"{WORK_DIR}/.jupyter-launch/outputs"
READ_SIZE = 256 * 1024
EMIT_INTERVAL = 0.005  # seconds the log pump gathers output before handing it to the event loop
PYTHON_NAMES = ("python", "python3")
ACTIVE_STATES = ("claimed", "starting", "running")

# Runs as ``sh -c WRAPPER jupyter-launch ARGV...``. With secrets, the first line on stdin is ``export K='v' ...``
# (values quoted for sh, newlines as $jl_nl), so they reach the job's environment without ever being part of the
# container's config. ``python`` means the image's Python even where only ``python3`` exists (Debian).
WRAPPER = (
    'jl_nl=$(printf "\\nx"); jl_nl=${jl_nl%x}; '
    'if [ "${JUPYTER_LAUNCH_SECRETS_ON_STDIN:-}" = 1 ]; then IFS= read -r jl_line || true; eval "$jl_line"; '
    'unset jl_line JUPYTER_LAUNCH_SECRETS_ON_STDIN; fi; unset jl_nl; '
    'case "$1" in python) command -v python >/dev/null 2>&1 || { shift; set -- python3 "$@"; };; esac; '
    'exec "$@" </dev/null'
)
# The main process of a warm container: idle until a job is exec'd into it; stops at once on SIGTERM.
IDLE = ["sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]
STOP_EXEC = ["sh", "-c", "kill -TERM -1 2>/dev/null; exit 0"]


def container_name(job_id: str, attempt: int) -> str:
    return "jl-" + re.sub(r"[^a-zA-Z0-9_.-]", "-", f"{job_id}-{attempt}")[:120]


def sh_quote(value: str) -> str:
    """One sh word for ``value``, on one line (newlines become ``$jl_nl``, which the wrapper defines)."""
    return "'" + value.replace("'", "'\\''").replace("\n", "'\"$jl_nl\"'") + "'"


def secrets_line(secrets: dict[str, str]) -> bytes:
    return ("export " + " ".join(f"{k}={sh_quote(v)}" for k, v in secrets.items()) + "\n").encode()


def registry_of(image: str) -> str:
    from docker.auth import resolve_repository_name
    from docker.utils import parse_repository_tag

    repo, _ = parse_repository_tag(image)
    try:
        registry, _ = resolve_repository_name(repo)
    except Exception:
        return "docker.io"
    return registry


def auth_from_secret(value: str, registry: str) -> dict[str, str] | None:
    """``user:password``, or a Docker config JSON (``{"auths": {registry: {...}}}``) -> an auth_config."""
    text = value.strip()
    if text.startswith("{"):
        try:
            auths = json.loads(text).get("auths") or {}
        except (ValueError, AttributeError):
            return None
        for key, entry in auths.items():
            host = re.sub(r"^https?://", "", key).split("/")[0]
            if host in (registry, "index.docker.io" if registry == "docker.io" else registry):
                if entry.get("auth"):
                    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                    return {"username": user, "password": password}
                if entry.get("username"):
                    return {"username": entry["username"], "password": entry.get("password", "")}
        return None
    user, sep, password = text.partition(":")
    return {"username": user, "password": password} if sep else None



class Hijacked:
    """A raw connection to the engine after an HTTP upgrade (attach, exec start): the stream, and its first bytes."""

    def __init__(self, sock: socket.socket, first: bytes = b""):
        self.sock, self.first = sock, first

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def hijack(api: Any, path: str, query: dict[str, Any] | None = None, body: dict[str, Any] | None = None) -> Hijacked:
    """POST ``path`` with ``Upgrade: tcp`` on a connection of our own and return it raw.

    docker-py's ``attach_socket`` leaves the socket tied to a pooled response that cannot be closed cleanly; owning
    the connection keeps close (and the socket's lifetime) ours. Unix sockets and plain TCP engines; other
    transports (TLS, ssh) go through docker-py.
    """
    import docker.errors
    from urllib.parse import urlencode, urlsplit

    adapter = getattr(api, "_custom_adapter", None)
    url = urlsplit(api._url(path))
    target = url.path + ("?" + urlencode(query) if query else "")
    if hasattr(adapter, "socket_path"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(adapter.socket_path)
    elif api.base_url.startswith("http://"):
        sock = socket.create_connection((url.hostname, url.port or 2375))
    else:
        raise NotImplementedError(api.base_url)
    data = json.dumps(body).encode() if body is not None else b""
    try:
        sock.sendall((f"POST {target} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                raise docker.errors.APIError(f"the engine closed the connection on {path}")
            head += chunk
        header, _, rest = head.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        if status not in (101, 200):
            try:
                message = json.loads(rest.decode(errors="replace").strip().splitlines()[-1]).get("message", "")
            except (ValueError, IndexError, AttributeError):
                message = rest.decode(errors="replace")
            raise docker.errors.APIError(f"{status}: {message}")
    except BaseException:
        sock.close()
        raise
    return Hijacked(sock, rest)


@dataclass
class DockerHandle:
    api: Any
    container: str
    copy: bool  # the job's folder was copied in: outputs come back with get_archive
    sock: Hijacked | None = None  # the attach (or exec) connection
    exec_id: str | None = None
    warm: bool = False
    stream_ended: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = 0.0
    stopping: bool = False  # the agent asked for the stop (cancel, timeout, lost lease)


class WarmPool:
    """``min_instances`` idle containers of one queue's image, each used by one job then replaced."""

    def __init__(self, backend: DockerBackend, queue: str, config: dict[str, Any], image: str, size: int):
        self.backend, self.queue, self.config, self.image, self.size = backend, queue, config, image, size
        self._ready: list[str] = []
        self._spawning = 0
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    def top_up(self) -> None:
        while not self._closed and len(self._ready) + self._spawning < self.size:
            self._spawning += 1
            task = asyncio.get_running_loop().create_task(self._spawn())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _spawn(self) -> None:
        try:
            cid = await asyncio.to_thread(self.backend._create_warm, self.queue, self.config, self.image)
            if self._closed:
                await asyncio.to_thread(self.backend._remove, self.backend.api_for(self.config), cid)
            else:
                self._ready.append(cid)
        except Exception:
            self.backend.log.warning("queue %s: could not start a warm container of %s", self.queue, self.image,
                                     exc_info=True)
        finally:
            self._spawning -= 1

    def take(self) -> str | None:
        cid = self._ready.pop(0) if self._ready else None
        self.top_up()
        return cid

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        api = self.backend.api_for(self.config)
        for cid in self._ready:
            await asyncio.to_thread(self.backend._remove, api, cid)
        self._ready.clear()


class DockerBackend(Backend):
    """Containers on a Docker Engine. Configure as ``c.DockerBackend.*``; per queue under ``provider:``."""

    name: ClassVar[str] = "docker"
    default_base_image = Unicode("python:3.11-slim", config=True,
                                 help="Base image for builds when the queue's provider.build.base_image is unset.")
    api_timeout = Float(60.0, config=True, help="Seconds an ordinary Docker API call may take.")
    read_size = Integer(READ_SIZE, config=True, help="Bytes read from a container's attach socket at a time.")
    run_as_agent_user = Bool(True, config=True, help=(
        "Run mounted jobs as the agent's uid:gid, so the files they write in the output folder are the agent's."))
    engine_retry_seconds = Float(10.0, config=True, help=(
        "After the connection to the engine breaks mid-job, how long to wait for it to answer again."))
    pull_timeout = Float(60.0, config=True, help=(
        "Seconds an image pull may go without progress from the engine before the job fails with "
        "image_pull_failed (a registry that accepts connections but stops answering)."))

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._apis: dict[str | None, Any] = {}
        self._images: dict[tuple[str, int], str] = {}
        self._build_locks: dict[str, asyncio.Lock] = {}
        self._pools: dict[str, WarmPool] = {}
        # What each build-or-reuse did: {"tag", "cached", "seconds"}, seconds from the start of the image step
        # (base image, hash, cache look-up) to the image being ready (bench, tests).
        self.builds: list[dict[str, Any]] = []

    @classmethod
    def supported_features(cls) -> dict[str, bool]:
        return {"gpus": True, "warm_pool": True, "images": True, "reattach": False}

    # ------------------------------------------------------------ engine

    def api_for(self, config: dict[str, Any]) -> Any:
        """The low-level client for the queue's engine (``provider.base_url``, else ``DOCKER_HOST`` or the socket)."""
        base_url = config.get("base_url")
        if base_url not in self._apis:
            import docker
            from docker.utils import kwargs_from_env

            kwargs = kwargs_from_env()
            if base_url:
                kwargs["base_url"] = base_url
            self._apis[base_url] = docker.APIClient(version="auto", timeout=self.api_timeout, **kwargs)
        return self._apis[base_url]

    async def _api(self, config: dict[str, Any]) -> Any:
        try:
            return await asyncio.to_thread(self.api_for, config)
        except Exception as exc:
            where = config.get("base_url") or os.environ.get("DOCKER_HOST") or "the local socket"
            raise BackendError("docker_unavailable", (
                f"cannot reach the Docker engine at {where}: {exc}. Start it (ci/docker.sh on Debian) or point "
                "the queue's provider.base_url at a running engine")) from None

    def is_remote(self, config: dict[str, Any]) -> bool:
        url = config.get("base_url") or os.environ.get("DOCKER_HOST") or ""
        return bool(url) and not url.startswith(("unix://", "npipe://", "/"))

    def copies(self, config: dict[str, Any]) -> bool:
        mode = config.get("transfer")
        return mode == "copy" if mode else self.is_remote(config)

    @staticmethod
    def _remove(api: Any, cid: str) -> None:
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(cid, force=True, v=True)

    # ------------------------------------------------------------ agent hooks

    async def warm_up(self, queue: str, config: dict[str, Any]) -> None:
        """Called by the agent at start: remove this queue's stale containers, then fill the warm pool."""
        api = await self._api(config)
        await asyncio.to_thread(self.reap_stale, api, queue)
        size = int(config.get("min_instances") or 0)
        image = config.get("image")
        if not size or queue in self._pools:
            return
        if not image:
            self.log.warning("queue %s: min_instances=%d needs provider.image (the image warm containers run); "
                             "no warm containers kept", queue, size)
            return
        try:
            await self._ensure_image(api, image, config, None)
        except BackendError as exc:
            self.log.warning("queue %s: no warm containers: %s", queue, exc.message)
            return
        self._pools[queue] = WarmPool(self, queue, config, image, size)
        self._pools[queue].top_up()

    def reap_stale(self, api: Any, queue: str) -> list[str]:
        """Remove containers of ``queue`` left by agents that are gone: jobs no longer active for their fence, and
        warm containers of agents no longer registered. Returns the removed ids."""
        store = getattr(self.parent, "store", None)
        me = getattr(self.parent, "agent_id", None)
        removed = []
        try:
            containers = api.containers(all=True, filters={"label": [f"{QUEUE_LABEL}={queue}", MANAGED_BY]})
        except Exception:
            self.log.warning("queue %s: cannot list containers to reap", queue, exc_info=True)
            return removed
        live_agents = None
        for c in containers:
            labels = c.get("Labels") or {}
            stale = False
            if labels.get(WARM_LABEL):
                if labels.get(AGENT_LABEL) != me and store is not None and hasattr(store, "list_agents"):
                    if live_agents is None:
                        live_agents = {a.get("id") or a.get("agent_id") for a in store.list_agents()}
                    stale = labels.get(AGENT_LABEL) not in live_agents
            elif labels.get(JOB_ID_LABEL) and store is not None:
                try:
                    job = store.get_job(labels[JOB_ID_LABEL])
                    stale = job.state not in ACTIVE_STATES or str(job.fence) != labels.get(FENCE_LABEL)
                except Exception:
                    stale = True  # the job is gone from the store
            if stale:
                self._remove(api, c["Id"])
                removed.append(c["Id"])
        if removed:
            self.log.info("queue %s: removed %d stale container(s)", queue, len(removed))
        return removed

    async def shutdown(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()
        for api in self._apis.values():
            with contextlib.suppress(Exception):
                api.close()
        self._apis.clear()

    # ------------------------------------------------------------ images

    async def prepare(self, ctx: JobContext) -> None:
        config = ctx.queue_config
        api = await self._api(config)
        image = ctx.spec.image or config.get("image")
        if image:
            await self._ensure_image(api, image, config, ctx)
        else:
            image = await self._build(api, ctx)
        self._images[(ctx.job_id, ctx.attempt)] = image

    async def _ensure_image(self, api: Any, image: str, config: dict[str, Any], ctx: JobContext | None) -> None:
        import docker.errors

        try:
            await asyncio.to_thread(api.inspect_image, image)
            return
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            raise BackendError("docker_unavailable", f"the Docker engine refused to inspect {image}: "
                                                     f"{exc.explanation or exc}") from None
        except Exception as exc:
            raise BackendError("docker_unavailable", f"cannot reach the Docker engine: {exc}") from None
        registry = registry_of(image)
        if ctx is not None:
            ctx.set_reason("pulling_image", f"pulling {image} from {registry}")
            ctx.log("stderr", f"[jupyter-launch] pulling {image} from {registry}\n".encode())
        loop = asyncio.get_running_loop()

        def progress(line: str) -> None:
            if ctx is not None:
                loop.call_soon_threadsafe(ctx.log, "stderr", f"[pull] {line}\n".encode())

        await asyncio.to_thread(self._pull, api, image, registry, config, progress)

    def _pull(self, api: Any, image: str, registry: str, config: dict[str, Any], progress: Any) -> None:
        import docker.errors
        import requests
        import urllib3
        from docker import auth as docker_auth
        from docker.utils import parse_repository_tag

        repo, tag = parse_repository_tag(image)
        auth = None
        secret = config.get("registry_auth")
        if secret:
            value = os.environ.get(secret)
            if value is None:
                raise BackendError("image_pull_failed", (
                    f"cannot pull image {image} from registry {registry}: the queue's provider.registry_auth names "
                    f"the secret {secret!r}, which is not set in the agent's environment"))
            auth = auth_from_secret(value, registry)
        headers = {}
        if auth is not None:
            headers["X-Registry-Auth"] = docker_auth.encode_header(auth)
        else:
            api.reload_config()  # a `docker login` made since the agent started counts, as the failure advises
            header = docker_auth.get_config_header(api, registry)
            if header:
                headers["X-Registry-Auth"] = header
        last: dict[str, str] = {}
        response = None
        try:
            # docker-py's pull() sends its request with no timeout at all, so a registry that stops answering
            # would hold the job in pulling_image forever. The same request with a read timeout fails it instead.
            response = api._post(api._url("/images/create"), params={"fromImage": repo, "tag": tag or "latest"},
                                 headers=headers, stream=True, timeout=self.pull_timeout)
            api._raise_for_status(response)
            for event in api._stream_helper(response, decode=True):
                if "error" in event:
                    raise docker.errors.APIError((event.get("errorDetail") or {}).get("message") or event["error"])
                status, layer = event.get("status", ""), event.get("id", "")
                # Progress ticks ("Downloading" with a bar) would flood the log; each layer's changes are enough.
                if status and last.get(layer) != status and status not in ("Downloading", "Extracting"):
                    last[layer] = status
                    progress(f"{layer}: {status}" if layer else status)
        except Exception as exc:
            if isinstance(exc, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError)):
                detail = (f"the Docker engine reported no progress for {self.pull_timeout:g}s, so {registry} is not "
                          "answering (DockerBackend.pull_timeout sets how long a pull may stall)")
            else:
                detail = (getattr(exc, "explanation", None) or str(exc)).strip()
            how = ("give the agent credentials: set the queue's provider.registry_auth to the name of a secret "
                   "in the agent's environment holding 'user:password' or a Docker config JSON, or run "
                   f"`docker login {registry}` as the agent's user (~/.docker/config.json)")
            raise BackendError("image_pull_failed", (
                f"cannot pull image {image} from registry {registry}: {detail}. Check the name for a typo "
                f"and that the Docker engine can reach {registry}; if the image is private, {how}")) from None
        finally:
            if response is not None:
                response.close()  # its connection, on every path: a half-read stream would hold it

    def _build_lock(self, key: str) -> asyncio.Lock:
        return self._build_locks.setdefault(key, asyncio.Lock())

    async def _build(self, api: Any, ctx: JobContext) -> str:
        config = ctx.queue_config
        builder = ImageBuilder(api)
        t0 = time.monotonic()  # the whole image step, a cache hit's hashing and look-up included
        try:
            settings = BuildSettings.from_config(config.get("build"), self.default_base_image)
            await self._ensure_image(api, settings.base_image, config, ctx)
            base_id = await asyncio.to_thread(builder.image_id, settings.base_image)
            plan = await asyncio.to_thread(plan_build, settings, base_id or "", load_environment(ctx.workdir),
                                           ctx.workdir)
        except ImageBuildError as exc:
            raise BackendError("image_build_failed", str(exc)) from None
        async with self._build_lock(plan.hash):
            if await asyncio.to_thread(builder.cached, plan):
                seconds = time.monotonic() - t0
                self.builds.append({"tag": plan.tag, "cached": True, "seconds": seconds})
                ctx.log("stderr", f"[jupyter-launch] image {plan.tag} is up to date for this environment "
                                  f"(hash {plan.hash[:12]}, checked in {seconds:.2f}s); no build\n".encode())
                return plan.tag
            ctx.set_reason("building_image", f"building image {plan.tag} on {settings.base_image} "
                                             "from the job's environment")
            ctx.log("stderr", f"[jupyter-launch] building image {plan.tag} on {settings.base_image}\n".encode())
            loop = asyncio.get_running_loop()

            def output(text: str) -> None:
                data = "".join(f"[build] {line}\n" for line in text.splitlines() if line.strip()).encode()
                if data:
                    loop.call_soon_threadsafe(ctx.log, "stderr", data)

            try:
                await asyncio.to_thread(builder.build, plan, output)
            except ImageBuildError as exc:
                raise BackendError("image_build_failed", f"{exc} (the build's output is in the job's log)") from None
            seconds = time.monotonic() - t0
            self.builds.append({"tag": plan.tag, "cached": False, "seconds": seconds})
            ctx.log("stderr", f"[jupyter-launch] built {plan.tag} in {seconds:.1f}s\n".encode())
            return plan.tag

    # ------------------------------------------------------------ start

    def job_argv(self, ctx: JobContext) -> list[str]:
        return list(ctx.spec.command or []) if ctx.spec.kind == "command" else list(ctx.runner_command)

    def job_env(self, ctx: JobContext, built: bool) -> dict[str, str]:
        env = dict(ctx.env)
        env["JUPYTER_LAUNCH_OUTPUT_DIR"] = OUTPUT_DIR  # the agent's path means nothing inside the container
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("HOME", "/tmp")
        if ctx.spec.kind != "command" and not built:
            env["PYTHONPATH"] = PACKAGE_DIR  # the runner, from the agent's own install (mounted or copied in)
        if ctx.gpu_ids:
            env["NVIDIA_VISIBLE_DEVICES"] = ",".join(map(str, ctx.gpu_ids))
        if ctx.secrets:
            env["JUPYTER_LAUNCH_SECRETS_ON_STDIN"] = "1"
        return env

    def labels(self, ctx: JobContext) -> dict[str, str]:
        return {MANAGED_BY: "jupyter-launch", JOB_ID_LABEL: ctx.job_id, ATTEMPT_LABEL: str(ctx.attempt),
                FENCE_LABEL: str(ctx.fence), QUEUE_LABEL: ctx.queue,
                AGENT_LABEL: getattr(self.parent, "agent_id", "") or ctx.agent_id}

    def wrapped(self, argv: list[str], ctx: JobContext) -> list[str]:
        """The job's argv behind the sh wrapper when it needs one (secrets, or ``python`` to resolve)."""
        if ctx.secrets or (argv and argv[0] == "python"):
            return ["sh", "-c", WRAPPER, "jupyter-launch", *argv]
        return argv

    def host_config(self, api: Any, ctx: JobContext, binds: dict[str, dict[str, str]] | None) -> dict[str, Any]:
        from docker.types import DeviceRequest

        config = ctx.queue_config
        res = ctx.spec.resources
        network = config.get("network")
        kwargs: dict[str, Any] = {
            "init": True,  # PID 1 forwards SIGTERM to the job, so stop's grace period means something
            "privileged": False,
            "security_opt": ["no-new-privileges"],
            "binds": binds or None,
        }
        if network:
            kwargs["network_mode"] = network
        if config.get("runtime"):
            kwargs["runtime"] = config["runtime"]
        if res.cpu:
            kwargs["nano_cpus"] = int(res.cpu * 1e9)
        if res.memory:
            kwargs["mem_limit"] = res.memory
        if res.gpu:
            kwargs["device_requests"] = [DeviceRequest(driver="nvidia", device_ids=[str(g) for g in ctx.gpu_ids],
                                                       capabilities=[["gpu"]])]
        return api.create_host_config(**kwargs)

    async def start(self, ctx: JobContext) -> DockerHandle:
        config = ctx.queue_config
        api = await self._api(config)
        await asyncio.to_thread(self._remove_earlier_attempts, api, ctx)
        image = self._images.pop((ctx.job_id, ctx.attempt), None) or ctx.spec.image or config.get("image")
        built = image.startswith("jupyter-launch-env:")
        pool = self._pools.get(ctx.queue)
        if pool is not None and pool.image == image and not ctx.spec.resources.gpu:
            cid = pool.take()
            if cid is not None:
                try:
                    return await self._start_exec(api, cid, ctx, built)
                except BackendError:
                    raise
                except Exception:
                    self.log.warning("job %s: warm container %s failed; starting a fresh one", ctx.job_id,
                                     cid[:12], exc_info=True)
                    await asyncio.to_thread(self._remove, api, cid)
        return await self._start_container(api, image, ctx, built)

    def _remove_earlier_attempts(self, api: Any, ctx: JobContext) -> None:
        """A new fencing token means every earlier attempt lost its lease (its agent was killed, its machine lost),
        but a container outlives its agent: remove theirs before this attempt starts, so the job never runs twice
        at once on this engine."""
        for c in api.containers(all=True, filters={"label": [f"{JOB_ID_LABEL}={ctx.job_id}", MANAGED_BY]}):
            if (c.get("Labels") or {}).get(FENCE_LABEL) != str(ctx.fence):
                self.log.info("job %s: removing container %s of an earlier attempt", ctx.job_id, c["Id"][:12])
                self._remove(api, c["Id"])

    def _workdir_tar(self, ctx: JobContext, built: bool) -> bytes:
        """The job's folder as ``jl/work/...`` (and the runner's package when the image lacks it), for put_archive."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(str(ctx.workdir), arcname=WORK_DIR.lstrip("/"))
            if ctx.spec.kind != "command" and not built:
                tar.add(str(package_source()), arcname=f"{PACKAGE_DIR.lstrip('/')}/jupyter_launch",
                        filter=lambda info: None if "__pycache__" in info.name else info)
        return buf.getvalue()

    async def _start_container(self, api: Any, image: str, ctx: JobContext, built: bool) -> DockerHandle:
        import docker.errors

        config = ctx.queue_config
        copy = self.copies(config)
        binds = None
        if not copy:
            binds = {str(ctx.workdir): {"bind": WORK_DIR, "mode": "ro"},
                     str(ctx.output_dir): {"bind": OUTPUT_DIR, "mode": "rw"}}
            if ctx.spec.kind != "command" and not built:
                binds[str(package_source())] = {"bind": f"{PACKAGE_DIR}/jupyter_launch", "mode": "ro"}
        user = f"{os.getuid()}:{os.getgid()}" if (not copy and self.run_as_agent_user and hasattr(os, "getuid")) else None
        host_config = self.host_config(api, ctx, binds)
        name = container_name(ctx.job_id, ctx.attempt)

        def create() -> str:
            spec = api.create_container_config(
                image, self.wrapped(self.job_argv(ctx), ctx), working_dir=WORK_DIR, environment=self.job_env(ctx, built),
                labels=self.labels(ctx), host_config=host_config, stdin_open=bool(ctx.secrets), tty=False, user=user,
                detach=True)
            spec["StdinOnce"] = bool(ctx.secrets)  # the secrets line is the only input: stdin closes after it
            try:
                return api.create_container_from_config(spec, name)["Id"]
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                self._remove(api, name)  # a container left by an earlier run of this same attempt
                return api.create_container_from_config(spec, name)["Id"]

        try:
            cid = await asyncio.to_thread(create)
        except docker.errors.APIError as exc:
            raise BackendError("container_create_failed", f"the Docker engine refused to create the job's "
                                                          f"container from {image}: {exc.explanation or exc}") from None
        handle = DockerHandle(api, cid, copy)
        try:
            if copy:
                await asyncio.to_thread(api.put_archive, cid, "/", self._workdir_tar(ctx, built))
            handle.sock = await asyncio.to_thread(self._attach, api, cid, bool(ctx.secrets))
            await asyncio.to_thread(api.start, cid)
            handle.started_at = time.monotonic()
            if ctx.secrets:
                await asyncio.to_thread(handle.sock.sock.sendall, secrets_line(ctx.secrets))
        except docker.errors.APIError as exc:
            self._close(handle)
            await asyncio.to_thread(self._remove, api, cid)
            raise self._start_error(exc, image, ctx) from None
        except BaseException:
            self._close(handle)
            await asyncio.to_thread(self._remove, api, cid)
            raise
        return handle

    def _start_error(self, exc: Any, image: str, ctx: JobContext) -> BackendError:
        text = str(exc.explanation or exc)
        if ctx.spec.resources.gpu and ("device driver" in text or "nvidia" in text.lower() or "gpu" in text.lower()):
            return BackendError("no_gpu_runtime", (
                f"the job asks for {ctx.spec.resources.gpu} GPU(s), but the Docker engine cannot hand out NVIDIA "
                f"GPUs ({text.strip()}). Install the NVIDIA Container Toolkit on the engine's host and restart "
                "dockerd, or send the job to a queue whose engine has GPUs"))
        if "runtime" in text.lower() and ctx.queue_config.get("runtime"):
            return BackendError("container_start_failed", f"the engine has no runtime "
                                                          f"{ctx.queue_config['runtime']!r}: {text.strip()}")
        return BackendError("container_start_failed", f"the job's container from {image} did not start: "
                                                      f"{text.strip()}")

    def _attach(self, api: Any, cid: str, stdin: bool) -> Hijacked:
        params = {"stdin": int(stdin), "stdout": 1, "stderr": 1, "stream": 1}
        try:
            return hijack(api, f"/containers/{cid}/attach", params)
        except NotImplementedError:
            sock = api.attach_socket(cid, params=params)
            return Hijacked(getattr(sock, "_sock", sock))

    def _exec_start(self, api: Any, exec_id: str) -> Hijacked:
        try:
            return hijack(api, f"/exec/{exec_id}/start", body={"Detach": False, "Tty": False})
        except NotImplementedError:
            sock = api.exec_start(exec_id, socket=True)
            return Hijacked(getattr(sock, "_sock", sock))

    @staticmethod
    def _close(handle: DockerHandle) -> None:
        if handle.sock is not None:
            handle.sock.close()

    def _create_warm(self, queue: str, config: dict[str, Any], image: str) -> str:
        """A warm container: the queue's image, idle, with the job's security settings (blocking)."""
        api = self.api_for(config)
        kwargs: dict[str, Any] = {"init": True, "privileged": False, "security_opt": ["no-new-privileges"]}
        if config.get("network"):
            kwargs["network_mode"] = config["network"]
        if config.get("runtime"):
            kwargs["runtime"] = config["runtime"]
        cid = api.create_container(image=image, command=IDLE, working_dir="/", host_config=api.create_host_config(
            **kwargs), labels={MANAGED_BY: "jupyter-launch", QUEUE_LABEL: queue, WARM_LABEL: "1",
                               AGENT_LABEL: getattr(self.parent, "agent_id", "")})["Id"]
        api.start(cid)
        return cid

    async def _start_exec(self, api: Any, cid: str, ctx: JobContext, built: bool) -> DockerHandle:
        """Run the job in a warm container: copy its folder in, update its limits, exec the job."""
        handle = DockerHandle(api, cid, copy=True, warm=True)
        res = ctx.spec.resources

        def begin() -> None:
            api.put_archive(cid, "/", self._workdir_tar(ctx, built))
            if res.cpu or res.memory:
                api.update_container(cid, nano_cpus=int(res.cpu * 1e9) if res.cpu else None,
                                     mem_limit=res.memory, memswap_limit=-1 if res.memory else None)
            handle.exec_id = api.exec_create(cid, self.wrapped(self.job_argv(ctx), ctx), stdin=bool(ctx.secrets),
                                             stdout=True, stderr=True, environment=self.job_env(ctx, built),
                                             workdir=WORK_DIR)["Id"]
            handle.sock = self._exec_start(api, handle.exec_id)
            handle.started_at = time.monotonic()
            if ctx.secrets:
                handle.sock.sock.sendall(secrets_line(ctx.secrets))

        try:
            await asyncio.to_thread(begin)
        except BaseException:
            self._close(handle)
            raise
        return handle

    # ------------------------------------------------------------ run

    async def stream(self, handle: DockerHandle, ctx: JobContext) -> None:
        loop = asyncio.get_running_loop()
        assert handle.sock is not None
        raw, first = handle.sock.sock, handle.sock.first
        read_size = self.read_size

        def emit(batch: list[tuple[str, bytes]]) -> None:
            for name, data in batch:
                ctx.log(name, data)

        def split(buf: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
            """Demultiplex attach frames (an 8-byte header: stream, size): runs of one stream, and the partial rest."""
            batch: list[tuple[str, bytes]] = []
            run: list[bytes] = []
            run_name = ""
            pos, end = 0, len(buf)
            while end - pos >= 8:
                size = int.from_bytes(buf[pos + 4:pos + 8], "big")
                if end - pos - 8 < size:
                    break
                name = "stderr" if buf[pos] == 2 else "stdout"
                if name != run_name and run:
                    batch.append((run_name, b"".join(run)))
                    run = []
                run_name = name
                run.append(buf[pos + 8:pos + 8 + size])
                pos += 8 + size
            if run:
                batch.append((run_name, b"".join(run)))
            return batch, buf[pos:]

        def pump() -> None:
            """Read in large chunks; hand the loop one batch per EMIT_INTERVAL, not one per read: a job writing a
            line at a time would otherwise cost a loop wake-up per line."""
            pieces: list[bytes] = [first] if first else []
            size = len(first)
            since = time.monotonic()
            rest = b""
            eof = False
            while not eof:
                if pieces:
                    wait = EMIT_INTERVAL - (time.monotonic() - since)
                    readable = wait > 0 and size < read_size and select.select([raw], [], [], wait)[0]
                else:
                    readable = True
                if readable:
                    try:
                        chunk = raw.recv(read_size)
                    except OSError:
                        chunk = b""
                    if chunk:
                        if not pieces:
                            since = time.monotonic()
                        pieces.append(chunk)
                        size += len(chunk)
                        continue
                    eof = True
                if pieces:
                    batch, rest = split(rest + b"".join(pieces))
                    pieces, size = [], 0
                    if batch:
                        loop.call_soon_threadsafe(emit, batch)

        try:
            await asyncio.to_thread(pump)
        finally:
            handle.stream_ended.set()

    async def wait(self, handle: DockerHandle) -> int:
        if handle.exec_id is not None:
            await handle.stream_ended.wait()
            for _ in range(50):
                info = await asyncio.to_thread(handle.api.exec_inspect, handle.exec_id)
                if not info.get("Running") and info.get("ExitCode") is not None:
                    return int(info["ExitCode"])
                await asyncio.sleep(0.02)
            return 137  # the warm container was stopped under the exec
        while True:
            try:
                status = await asyncio.to_thread(handle.api.wait, handle.container, None)
                code = int(status.get("StatusCode", -1))
            except Exception as exc:
                await self._engine_lost(handle, exc)
                continue
            if code in (128 + signal.SIGTERM, 128 + signal.SIGKILL) and not handle.stopping:
                await self._check_engine_after_signal(handle, code)
            return code

    async def _check_engine_after_signal(self, handle: DockerHandle, code: int) -> None:
        """A container killed by a signal the agent did not send: a stopping dockerd does that to every container
        (SIGTERM, then SIGKILL) before it closes its API. Watch the engine a moment: if it goes away, the job was
        lost with the engine, not failed by its own code."""
        deadline = time.monotonic() + min(5.0, self.engine_retry_seconds)
        while time.monotonic() < deadline:
            try:
                await asyncio.wait_for(asyncio.to_thread(handle.api.ping), max(0.1, deadline - time.monotonic()))
            except Exception as exc:
                raise BackendError("docker_engine_lost", (
                    f"the Docker engine went away while the job ran: its container was stopped with it (exit code "
                    f"{code}) and dockerd stopped answering ({type(exc).__name__}). The job is failed rather than "
                    "left running; rerun it")) from None
            await asyncio.sleep(0.1)

    async def _engine_lost(self, handle: DockerHandle, exc: Exception) -> None:
        """The wait broke: if the engine answers again and the container still runs, wait on; otherwise fail."""
        deadline = time.monotonic() + self.engine_retry_seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                # A hung engine answers no faster than a dead one: each look is bounded by what is left.
                info = await asyncio.wait_for(asyncio.to_thread(handle.api.inspect_container, handle.container), left)
                state = info["State"]
            except Exception:
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                continue
            if state.get("Running"):
                return
            break
        raise BackendError("docker_engine_lost", (
            f"lost the Docker engine while the job ran ({type(exc).__name__}: {exc}); dockerd restarted, stopped "
            f"or stopped answering for {self.engine_retry_seconds:g}s, and the job's container can no longer be "
            "followed. The job is failed rather than left running; rerun it"))

    async def stop(self, handle: DockerHandle, grace: float) -> None:
        import docker.errors

        handle.stopping = True
        api = handle.api
        if handle.exec_id is not None:
            with contextlib.suppress(docker.errors.APIError):
                ex = await asyncio.to_thread(api.exec_create, handle.container, STOP_EXEC)
                await asyncio.to_thread(api.exec_start, ex["Id"])
            try:
                await asyncio.wait_for(handle.stream_ended.wait(), grace)
            except asyncio.TimeoutError:
                with contextlib.suppress(docker.errors.APIError):
                    await asyncio.to_thread(api.kill, handle.container)
            return
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            # SIGTERM, then SIGKILL after the grace period: the engine does both.
            await asyncio.to_thread(api.stop, handle.container, max(1, math.ceil(grace)))

    async def collect_outputs(self, handle: DockerHandle, ctx: JobContext) -> None:
        if not handle.copy:
            return  # bind-mounted: the job wrote straight into ctx.output_dir
        await asyncio.to_thread(self._fetch_outputs, handle, ctx.output_dir)

    def _fetch_outputs(self, handle: DockerHandle, output_dir: Path) -> None:
        import docker.errors

        try:
            stream, _ = handle.api.get_archive(handle.container, OUTPUT_DIR)
        except docker.errors.NotFound:
            return
        with tempfile.TemporaryFile() as tmp:
            for chunk in stream:
                tmp.write(chunk)
            tmp.seek(0)
            with tarfile.open(fileobj=tmp) as tar:
                members = []
                for m in tar.getmembers():
                    # The archive's top folder is "outputs/": the files under it are the job's outputs.
                    head, _, rest = m.name.partition("/")
                    if not rest or not (m.isfile() or m.isdir()):
                        continue
                    m.name = rest
                    members.append(m)
                output_dir.mkdir(parents=True, exist_ok=True)
                tar.extractall(output_dir, members=members, filter="data")

    async def cleanup(self, handle: DockerHandle, ctx: JobContext, result: Result) -> None:
        self._close(handle)
        keep = ctx.queue_config.get("keep_on_failure") and result.state == "failed"
        if keep:
            ctx.log("stderr", f"[jupyter-launch] kept the failed job's container {handle.container[:12]} "
                              "(provider.keep_on_failure)\n".encode())
            return
        await asyncio.to_thread(self._remove, handle.api, handle.container)

    def grace_period(self, ctx: JobContext) -> float:
        return float(ctx.queue_config.get("grace_period") or 10.0)

