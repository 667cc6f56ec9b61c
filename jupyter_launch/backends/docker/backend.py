"""The Docker backend: each job attempt is a container on a Docker Engine, driven through the ``docker`` SDK.

The image is the job's (or the queue's) when named, pulled when missing; otherwise one built from the artifact's
environment lock, both by :class:`~jupyter_launch.images.ImageService`. The job's folder (this attempt's own
unpacked copy) is bind-mounted read-write on a local engine, or copied in on a remote one. Logs come from an attach made before
start, read from the raw socket in large chunks. Secrets never enter the container's config: a small ``sh`` wrapper
reads them as one line on stdin, exports them and execs the job (:mod:`.container`). Queues with ``min_instances``
keep idle containers of the queue's image (:mod:`.warm`), so a job starts by ``exec`` instead of create and start.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import time
from typing import Any, ClassVar

from traitlets import Bool, Enum, Float, Integer, Unicode

from ...images import ImageService
from ..base import Backend, BackendError, JobContext, Liveness, Result, ThreadLog
from . import container as c
from .config import DockerProvider
from .container import (FENCE_LABEL, JOB_ID_LABEL, MANAGED_BY, QUEUE_LABEL, READ_SIZE, STOP_EXEC, WARM_LABEL,
                        AGENT_LABEL, DockerHandle, Hijacked, hijack, remove, secrets_line)
from .warm import WarmPool

BUILT_PREFIX = "jupyter-launch-env:"


class DockerBackend(Backend):
    """Containers on a Docker Engine. Configure as ``c.DockerBackend.*``; per queue under ``provider:``."""

    name: ClassVar[str] = "docker"
    config_model: ClassVar[type[DockerProvider]] = DockerProvider
    default_base_image = Unicode("python:3.11-slim", config=True,
                                 help="Base image for builds when the queue's provider.build.base_image is unset.")
    api_timeout = Float(60.0, config=True, help="Seconds an ordinary Docker API call may take.")
    read_size = Integer(READ_SIZE, config=True, help="Bytes read from a container's attach socket at a time.")
    run_as_agent_user = Bool(True, config=True, help=(
        "Run mounted jobs as the agent's uid:gid, so the files they write in the output folder are the agent's."))
    engine_retry_seconds = Float(10.0, config=True, help=(
        "After the connection to the engine breaks mid-job, how long to wait for it to answer again."))
    transfer = Enum(["mount", "copy"], default_value=None, allow_none=True, config=True, help=(
        "How a job's folder reaches its container when the queue's provider.transfer does not say; unset: mount on a "
        "local engine, copy to a remote one. An agent that runs in a container itself (the queue manager's) copies: "
        "its folders are not on the engine's filesystem."))
    pull_timeout = Float(60.0, config=True, help=(
        "Seconds an image pull may go without progress from the engine before the job fails with "
        "image_pull_failed (a registry that accepts connections but stops answering)."))

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._apis: dict[str | None, Any] = {}
        self._images_of: dict[str | None, ImageService] = {}
        self._images: dict[tuple[str, int], str] = {}
        self._pools: dict[str, WarmPool] = {}
        # What each build-or-reuse did, on every engine (ImageService.builds): bench and tests read it.
        self.builds: list[dict[str, Any]] = []

    @classmethod
    def supported_features(cls) -> dict[str, bool]:
        return {"gpus": True, "warm_pool": True, "images": True, "reattach": False}

    # ------------------------------------------------------------ engine

    def api_for(self, config: DockerProvider) -> Any:
        """The low-level client for the queue's engine (``provider.base_url``, else ``DOCKER_HOST`` or the socket)."""
        base_url = config.base_url
        if base_url not in self._apis:
            import docker
            from docker.utils import kwargs_from_env

            kwargs = kwargs_from_env()
            if base_url:
                kwargs["base_url"] = base_url
            self._apis[base_url] = docker.APIClient(version="auto", timeout=self.api_timeout, **kwargs)
        return self._apis[base_url]

    async def _api(self, config: DockerProvider) -> Any:
        try:
            return await asyncio.to_thread(self.api_for, config)
        except Exception as exc:
            where = config.base_url or os.environ.get("DOCKER_HOST") or "the local socket"
            raise BackendError("docker_unavailable", (
                f"cannot reach the Docker engine at {where}: {exc}. Start it (ci/docker.sh on Debian) or point "
                "the queue's provider.base_url at a running engine")) from None

    def images(self, api: Any, config: DockerProvider) -> ImageService:
        """The image service of the queue's engine."""
        if config.base_url not in self._images_of:
            self._images_of[config.base_url] = ImageService(api, pull_timeout=self.pull_timeout,
                                                            pull_timeout_setting="DockerBackend.pull_timeout",
                                                            builds=self.builds)
        return self._images_of[config.base_url]

    def is_remote(self, config: DockerProvider) -> bool:
        url = config.base_url or os.environ.get("DOCKER_HOST") or ""
        return bool(url) and not url.startswith(("unix://", "npipe://", "/"))

    def copies(self, config: DockerProvider) -> bool:
        transfer = config.transfer or self.transfer
        return transfer == "copy" if transfer else self.is_remote(config)

    # ------------------------------------------------------------ agent hooks

    async def reap(self, queue: str, config: DockerProvider, live: Liveness) -> list[str]:
        """Remove containers of ``queue`` left by agents that are gone: those of jobs that ended or moved on to a
        newer attempt (their fencing token is not the job's), and warm containers of agents no longer serving the
        queue. Containers of jobs the store does not have on this queue are left alone."""
        api = await self._api(config)
        try:
            containers = await asyncio.to_thread(api.containers, all=True,
                                                 filters={"label": [f"{QUEUE_LABEL}={queue}", MANAGED_BY]})
        except Exception:
            self.log.warning("queue %s: cannot list containers to reap", queue, exc_info=True)
            return []
        labels = [(ct["Id"], ct.get("Labels") or {}) for ct in containers]
        job_ids = sorted({lb[JOB_ID_LABEL] for _, lb in labels if lb.get(JOB_ID_LABEL) and not lb.get(WARM_LABEL)})
        jobs = await live.jobs(job_ids) if job_ids else {}
        agents = await live.agents() if any(lb.get(WARM_LABEL) for _, lb in labels) else set()
        removed = []
        for cid, lb in labels:
            if lb.get(WARM_LABEL):
                stale = lb.get(AGENT_LABEL) not in agents
            else:
                status = jobs.get(lb.get(JOB_ID_LABEL, ""))
                stale = status is not None and (not status.active or str(status.fence) != lb.get(FENCE_LABEL))
            if stale:
                await asyncio.to_thread(remove, api, cid)
                removed.append(cid)
        if removed:
            self.log.info("queue %s: removed %d stale container(s)", queue, len(removed))
        return removed

    async def warm_up(self, queue: str, config: DockerProvider, agent_id: str) -> None:
        """Fill the queue's warm pool (``min_instances`` containers of ``provider.image``)."""
        if not config.min_instances or queue in self._pools:
            return
        if not config.image:
            self.log.warning("queue %s: min_instances=%d needs provider.image (the image warm containers run); "
                             "no warm containers kept", queue, config.min_instances)
            return
        api = await self._api(config)
        try:
            await self.images(api, config).ensure(config.image, None, config.registry_auth)
        except BackendError as exc:
            self.log.warning("queue %s: no warm containers: %s", queue, exc.message)
            return
        self._pools[queue] = WarmPool(api, queue, config, config.image, agent_id, self.log)
        self._pools[queue].top_up()

    async def shutdown(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()
        for api in self._apis.values():
            with contextlib.suppress(Exception):
                api.close()
        self._apis.clear()
        self._images_of.clear()

    # ------------------------------------------------------------ images

    async def prepare(self, ctx: JobContext) -> None:
        config = ctx.queue_config
        api = await self._api(config)
        images = self.images(api, config)
        image = ctx.spec.image or config.image
        if image:
            await images.ensure(image, ctx, config.registry_auth)
        else:
            image = await images.environment_image(ctx, config.build, self.default_base_image, config.registry_auth)
        self._images[(ctx.job_id, ctx.attempt)] = image

    # ------------------------------------------------------------ start

    async def start(self, ctx: JobContext) -> DockerHandle:
        config = ctx.queue_config
        api = await self._api(config)
        await asyncio.to_thread(self._remove_earlier_attempts, api, ctx)
        image = self._images.pop((ctx.job_id, ctx.attempt), None) or ctx.spec.image or config.image
        built = image.startswith(BUILT_PREFIX)
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
                    await asyncio.to_thread(remove, api, cid)
        return await self._start_container(api, image, ctx, built)

    def _remove_earlier_attempts(self, api: Any, ctx: JobContext) -> None:
        """A new fencing token means every earlier attempt lost its lease (its agent was killed, its machine lost),
        but a container outlives its agent: remove theirs before this attempt starts, so the job never runs twice
        at once on this engine."""
        for ct in api.containers(all=True, filters={"label": [f"{JOB_ID_LABEL}={ctx.job_id}", MANAGED_BY]}):
            if (ct.get("Labels") or {}).get(FENCE_LABEL) != str(ctx.fence):
                self.log.info("job %s: removing container %s of an earlier attempt", ctx.job_id, ct["Id"][:12])
                remove(api, ct["Id"])

    async def _start_container(self, api: Any, image: str, ctx: JobContext, built: bool) -> DockerHandle:
        import docker.errors

        copy = self.copies(ctx.queue_config)
        binds = None if copy else c.mounts(ctx, built)
        user = f"{os.getuid()}:{os.getgid()}" if (not copy and self.run_as_agent_user and hasattr(os, "getuid")) else None
        host_config = c.host_config(api, ctx, binds)
        name = c.container_name(ctx.job_id, ctx.attempt)

        def create() -> str:
            spec = api.create_container_config(
                image, c.wrapped(c.job_argv(ctx), ctx), working_dir=c.WORK_DIR, environment=c.job_env(ctx, built),
                labels=c.labels(ctx), host_config=host_config, stdin_open=bool(ctx.secrets), tty=False, user=user,
                detach=True)
            spec["StdinOnce"] = bool(ctx.secrets)  # the secrets line is the only input: stdin closes after it
            try:
                return api.create_container_from_config(spec, name)["Id"]
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                remove(api, name)  # a container left by an earlier run of this same attempt
                return api.create_container_from_config(spec, name)["Id"]

        try:
            cid = await asyncio.to_thread(create)
        except docker.errors.APIError as exc:
            raise BackendError("container_create_failed", f"the Docker engine refused to create the job's "
                                                          f"container from {image}: {exc.explanation or exc}") from None
        handle = DockerHandle(api, cid, copy)
        try:
            if copy:
                await asyncio.to_thread(api.put_archive, cid, "/", c.workdir_tar(ctx, built))
            handle.sock = await asyncio.to_thread(self._attach, api, cid, bool(ctx.secrets))
            await asyncio.to_thread(api.start, cid)
            handle.started_at = time.monotonic()
            if ctx.secrets:
                await asyncio.to_thread(handle.sock.sock.sendall, secrets_line(ctx.secrets))
        except docker.errors.APIError as exc:
            self._close(handle)
            await asyncio.to_thread(remove, api, cid)
            raise self._start_error(exc, image, ctx) from None
        except BaseException:
            self._close(handle)
            await asyncio.to_thread(remove, api, cid)
            raise
        return handle

    def _start_error(self, exc: Any, image: str, ctx: JobContext) -> BackendError:
        text = str(exc.explanation or exc)
        if ctx.spec.resources.gpu and ("device driver" in text or "nvidia" in text.lower() or "gpu" in text.lower()):
            return BackendError("no_gpu_runtime", (
                f"the job asks for {ctx.spec.resources.gpu} GPU(s), but the Docker engine cannot hand out NVIDIA "
                f"GPUs ({text.strip()}). Install the NVIDIA Container Toolkit on the engine's host and restart "
                "dockerd, or send the job to a queue whose engine has GPUs"))
        if "runtime" in text.lower() and ctx.queue_config.runtime:
            return BackendError("container_start_failed", f"the engine has no runtime "
                                                          f"{ctx.queue_config.runtime!r}: {text.strip()}")
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
        handle.closed = True
        if handle.sock is not None:
            handle.sock.close()

    async def _start_exec(self, api: Any, cid: str, ctx: JobContext, built: bool) -> DockerHandle:
        """Run the job in a warm container: copy its folder in, update its limits, exec the job."""
        handle = DockerHandle(api, cid, copy=True, warm=True)
        res = ctx.spec.resources

        def begin() -> None:
            api.put_archive(cid, "/", c.workdir_tar(ctx, built))
            if res.cpu or res.memory:
                api.update_container(cid, nano_cpus=int(res.cpu * 1e9) if res.cpu else None,
                                     mem_limit=res.memory, memswap_limit=-1 if res.memory else None)
            handle.exec_id = api.exec_create(cid, c.wrapped(c.job_argv(ctx), ctx), stdin=bool(ctx.secrets),
                                             stdout=True, stderr=True, environment=c.job_env(ctx, built),
                                             workdir=c.WORK_DIR)["Id"]
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
        assert handle.sock is not None
        log = ThreadLog(asyncio.get_running_loop(), ctx.log, ctx.log_room, lambda: handle.closed)
        try:
            await asyncio.to_thread(c.pump, handle.sock, self.read_size, log.write_many)
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
        await asyncio.to_thread(c.fetch_outputs, handle.api, handle.container, ctx.output_dir)

    async def cleanup(self, handle: DockerHandle, ctx: JobContext, result: Result) -> None:
        self._close(handle)
        if ctx.queue_config.keep_on_failure and result.state == "failed":
            ctx.log("stderr", f"[jupyter-launch] kept the failed job's container {handle.container[:12]} "
                              "(provider.keep_on_failure)\n".encode())
            return
        await asyncio.to_thread(remove, handle.api, handle.container)
