"""The Kubernetes backend: each job attempt is a batch/v1 Job, driven through the official ``kubernetes`` client.

The job's folder travels in a ConfigMap (a gzipped tar, owner-referenced to the Job) or, when it is too big for one,
inside an image built for the job on the agent's Docker engine (pushed to the queue's ``registry`` when it names one);
a job with no image gets one built from its environment, both by :class:`~jupyter_launch.images.ImageService`. Its
secrets go in a Secret (``envFrom``, never inline in the Job), and its outputs come back through the pod's own log
(:mod:`.bootstrap`); the objects themselves are made by :mod:`.manifests`. See docs/kubernetes.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

from traitlets import Bool, Float, Integer, Unicode

from ...images import BuildSettings, ImageService
from ..base import Backend, BackendError, JobContext, Liveness, RankLog, Result
from .bootstrap import JobImagePlan, OutputsSplitter, extract_outputs, pack_workdir, workdir_digest
from .config import KubernetesProvider
from .manifests import (ATTEMPT_LABEL, CONTAINER, JOB_ID_LABEL, MANAGED_BY, MASTER_PORT, PROBE_LABEL, QUEUE_LABEL,
                        RANK_LABEL, build_manifests, job_name, label_value, probe_pod)
from .pods import KubernetesHandle, PodLogs, exit_code, init_failure, never_started, waiting_container

# A ConfigMap holds at most 1 MiB; leave room for its metadata and base64 in the request.
CONFIGMAP_LIMIT = 900 * 1024
DOCKER_API_TIMEOUT = 300.0  # seconds one Docker API read may take: a build step can be quiet for a while
IMAGE_PULL_FATAL = ("ErrImageNeverPull", "InvalidImageName")
IMAGE_PULL_RETRYING = ("ErrImagePull", "ImagePullBackOff")
CONFIG_ERRORS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")


@dataclass
class PreparedImage:
    """What ``prepare`` decided for one attempt: the pod's image and how the job's folder reaches the pod."""

    image: str
    artifact_tar: bytes | None  # None: the image carries the folder
    pull_policy: str | None = None  # overrides the queue's
    unpushed: bool = False  # built on the agent's engine and pushed nowhere: only that engine's node has it
    helper: bool = False  # an image the job names, which may lack Python: an init container unpacks the folder



class KubernetesBackend(Backend):
    """Runs jobs as batch/v1 Jobs. Queue settings: ``provider`` of type ``kubernetes`` (see spec.KubernetesProvider)."""

    name: ClassVar[str] = "kubernetes"
    config_model: ClassVar[type[KubernetesProvider]] = KubernetesProvider
    poll_interval = Float(0.1, config=True, help="Seconds between status polls while a job's pod is starting.")
    running_poll_interval = Float(1.0, config=True, help="Seconds between status polls while its pod runs.")
    log_retry_rate = Float(40.0, config=True, help=(
        "Log requests per second, shared by the pods whose container has not started yet, asking whether it has: "
        "each pod asks at most every 0.05 s and at least every 0.25 s (sooner when a status poll sees it started)."))
    image_pull_grace = Float(30.0, config=True,
                             help="Seconds an image pull may keep failing (ErrImagePull/ImagePullBackOff) "
                                  "before the job fails as image_pull_failed.")
    config_error_grace = Float(30.0, config=True,
                               help="Seconds a container may fail to be created (a missing Secret or "
                                    "ConfigMap) before the job fails.")
    max_artifact_bytes = Integer(CONFIGMAP_LIMIT, config=True,
                                 help="Largest packed job folder shipped in a ConfigMap; a bigger one is built "
                                      "into an image for the job.")
    default_base_image = Unicode("python:3.11-slim", config=True,
                                 help="Base image for builds when the queue's provider.build.base_image is unset.")
    pull_timeout = Float(60.0, config=True, help=(
        "Seconds a pull onto the agent's Docker engine (a base image to build on) may go without progress before "
        "the job fails with image_pull_failed."))
    reap_interval = Float(60.0, config=True, help=(
        "Seconds between sweeps that delete the Jobs (and their ConfigMaps and Secrets) of jobs the store has as "
        "finished, after the one at the agent's start; 0: only at its start."))
    stream_threads = Integer(64, config=True, help="Threads for blocking API calls and log streams.")
    probe_images = Bool(True, config=True, help=(
        "Ask each image a command job names, once per agent, whether it has a shell and a Python (a small pod runs "
        "`command -v python3` in it, beside the first job): later command jobs on an image that has them start "
        "without the init container, about one kubelet status cycle (up to 1 s) sooner. False: every command job on "
        "a named image gets the init container."))


    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._clients: dict[tuple[str | None, str | None], Any] = {}
        self._pool = ThreadPoolExecutor(self.stream_threads, thread_name_prefix="launch-k8s")
        self._client_lock = threading.Lock()
        self._docker: Any = None
        self._images: ImageService | None = None
        self._prepared: dict[tuple[str, int], PreparedImage] = {}
        self._starting: set[str] = set()  # pods whose log follow waits for the container to start
        self._probed: dict[tuple[Any, ...], bool] = {}  # (kubeconfig, context, namespace, image) -> has sh and Python
        self._probing: dict[tuple[Any, ...], asyncio.Task[None]] = {}

    @classmethod
    def supported_features(cls) -> dict[str, bool]:
        return {"gpus": True, "local_gpus": False, "warm_pool": False, "images": True, "reattach": True,
                "ranks": True}


    # ------------------------------------------------------------ plumbing

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A blocking client call on the backend's own threads (long log streams must not starve the agent's)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def api_client(self, cfg: KubernetesProvider) -> Any:
        """One ApiClient per (kubeconfig, context): the queue's kubeconfig, in-cluster config, or the default."""
        key = (cfg.kubeconfig, cfg.context)
        with self._client_lock:
            if key not in self._clients:
                from kubernetes import client, config

                configuration = client.Configuration()
                if not key[0] and os.environ.get("KUBERNETES_SERVICE_HOST"):
                    config.load_incluster_config(client_configuration=configuration)
                else:
                    try:
                        config.load_kube_config(config_file=key[0], context=key[1],
                                                client_configuration=configuration)
                    except (config.ConfigException, OSError) as exc:
                        raise BackendError("backend_error", f"cannot load the kubeconfig "
                                                            f"{key[0] or '(default)'}: {exc}") from None
                configuration.connection_pool_maxsize = self.stream_threads
                self._clients[key] = client.ApiClient(configuration)
            return self._clients[key]

    async def shutdown(self) -> None:
        for task in list(self._probing.values()):
            task.cancel()
        if self._probing:
            await asyncio.gather(*self._probing.values(), return_exceptions=True)
        for api in self._clients.values():
            with contextlib.suppress(Exception):
                api.close()
        self._clients.clear()
        if self._docker is not None:
            with contextlib.suppress(Exception):
                self._docker.close()
            self._docker = None
        self._pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _apis(api: Any) -> tuple[Any, Any]:
        from kubernetes import client

        return client.BatchV1Api(api), client.CoreV1Api(api)

    # ------------------------------------------------------------ agent hooks: reap what finished jobs left

    async def reap(self, queue: str, config: KubernetesProvider, live: Liveness) -> list[str]:
        """Delete the Jobs, pods, ConfigMaps and Secrets of ``queue`` whose job the store has as finished.

        They are left by an agent that died: a job with no retries left is failed as ``lost`` by the store and no
        agent re-attaches to its Job, which would otherwise run on. Objects of jobs the store does not know are left
        alone (the namespace may be shared with other stores); those of queued or running jobs are re-attached to.
        Returns the ids of the jobs whose objects were deleted.
        """
        from kubernetes.client.exceptions import ApiException

        namespace = config.namespace
        selector = f"{MANAGED_BY}=jupyter-launch,{QUEUE_LABEL}={label_value(queue)}"
        try:
            api = await self._call(self.api_client, config)
            batch, core = self._apis(api)
            listings = await asyncio.gather(*(
                self._call(list_fn, namespace, label_selector=selector, _request_timeout=30)
                for list_fn in (batch.list_namespaced_job, core.list_namespaced_pod,
                                core.list_namespaced_config_map, core.list_namespaced_secret)))
        except Exception as exc:  # an unreachable cluster must not stop the agent from starting
            self.log.warning("queue %s: cannot list its Kubernetes objects to reconcile: %s", queue, exc)
            return []
        await self._reap_probes(core, namespace)
        by_job: dict[str, list[tuple[str, Any]]] = {}
        for kind, listing in zip(("job", "pod", "configmap", "secret"), listings):
            for obj in listing.items:
                job_id = (obj.metadata.labels or {}).get(JOB_ID_LABEL)
                if job_id:
                    by_job.setdefault(job_id, []).append((kind, obj))
        if not by_job:
            return []
        grace = max(1, math.ceil(config.grace_period))
        delete = {"job": functools.partial(batch.delete_namespaced_job, propagation_policy="Background"),
                  "configmap": core.delete_namespaced_config_map, "secret": core.delete_namespaced_secret}
        statuses = await live.jobs(sorted(by_job))
        reaped = []
        for job_id, objs in sorted(by_job.items()):
            status = statuses.get(job_id)
            if status is None or not status.done:
                continue
            self.log.info("job %s is %s but its Kubernetes objects remain; deleting %s", job_id, status.state,
                          ", ".join(obj.metadata.name for _, obj in objs))
            for kind, obj in objs:
                if kind == "pod":
                    # Deleted here rather than left to the Job's garbage collection, which a busy control plane
                    # can delay for minutes: SIGTERM and the queue's grace period, or at once if it never started.
                    remove: Any = functools.partial(core.delete_namespaced_pod,
                                                    grace_period_seconds=0 if never_started(obj) else grace)
                else:
                    remove = delete[kind]
                with contextlib.suppress(ApiException):
                    await self._call(remove, obj.metadata.name, namespace)
            reaped.append(job_id)
        return reaped

    async def _reap_probes(self, core: Any, namespace: str) -> None:
        """Delete image probe pods an agent left (it died while one ran): ended, or older than their deadline."""
        from kubernetes.client.exceptions import ApiException

        with contextlib.suppress(ApiException):
            pods = await self._call(core.list_namespaced_pod, namespace,
                                    label_selector=f"{MANAGED_BY}=jupyter-launch,{PROBE_LABEL}", _request_timeout=30)
            now = time.time()
            for pod in pods.items:
                age = now - pod.metadata.creation_timestamp.timestamp()
                if pod.status.phase in ("Succeeded", "Failed") or age > 300:
                    with contextlib.suppress(ApiException):
                        await self._call(core.delete_namespaced_pod, pod.metadata.name, namespace,
                                         grace_period_seconds=0)

    # ------------------------------------------------------------ prepare: the pod's image

    async def prepare(self, ctx: JobContext) -> None:
        """Pack the job's folder and settle the pod's image: the job's or the queue's when the folder fits in a
        ConfigMap; otherwise an image built here (the environment, then the folder on top), pushed to the queue's
        ``registry`` when it names one."""
        api = await self._call(self.api_client, ctx.queue_config)
        if await self._live_jobs(api, ctx.queue_config.namespace, ctx.job_id):
            return  # start() re-attaches to it: nothing to build
        prepared = await self._prepare_image(ctx)
        if not ctx.cancel_requested.is_set():  # else start() never runs to take it
            self._prepared[(ctx.job_id, ctx.attempt)] = prepared

    async def _prepare_image(self, ctx: JobContext) -> PreparedImage:
        cfg = ctx.queue_config
        artifact = await self._call(pack_workdir, ctx.workdir)
        image = ctx.spec.image or cfg.image
        fits = len(artifact) <= self.max_artifact_bytes
        # A notebook or cell job's image has Python (the runner needs it), and so has an image built from the job's
        # environment; a command job's own image may have nothing of ours.
        helper = bool(image) and ctx.spec.kind == "command" and cfg.helper_image is not None
        if helper and self.probe_images and self._has_python(cfg, image):
            helper = False  # asked before: the fast path is safe on this image
        if image and fits:
            return PreparedImage(image, artifact, helper=helper)
        images = await self._call(self.images)
        if not image:
            image = await images.environment_image(ctx, cfg.build, self.default_base_image)
        if not fits:
            ctx.log("stderr", f"[jupyter-launch] the job's folder is {len(artifact) / 2**20:.1f} MiB packed, more "
                              f"than a ConfigMap holds ({self.max_artifact_bytes / 1024:.0f} KiB): building it into "
                              "an image\n".encode())
            base_id = await images.ensure(image, ctx)
            digest = await self._call(workdir_digest, ctx.workdir)
            plan = JobImagePlan(BuildSettings(base_image=image), base_id, digest, artifact)
            image = await images.build(plan, ctx, "this job's folder")
        if cfg.registry:
            return PreparedImage(await images.push(image, cfg.registry, ctx), artifact if fits else None,
                                 helper=helper)
        # Only the agent's engine has it: right for a node on that engine (a single-node or local cluster).
        policy = "Never" if cfg.image_pull_policy == "Never" else "IfNotPresent"
        return PreparedImage(image, artifact if fits else None, policy, unpushed=True, helper=helper)

    def _has_python(self, cfg: KubernetesProvider, image: str) -> bool:
        """Whether ``image`` is known to have a shell and a Python; when it was never asked, a probe pod asks it in
        the background (this job takes the init container, which works on any image)."""
        key = (cfg.kubeconfig, cfg.context, cfg.namespace, image)
        if key in self._probed:
            return self._probed[key]
        if key not in self._probing:
            self._probing[key] = asyncio.get_running_loop().create_task(self._probe(cfg, image, key))
        return False

    async def _probe(self, cfg: KubernetesProvider, image: str, key: tuple[Any, ...]) -> None:
        from kubernetes.client.exceptions import ApiException

        name = f"jl-probe-{hashlib.sha256(image.encode()).hexdigest()[:10]}-{os.urandom(3).hex()}"
        result, why = False, "it did not answer in 150 s"
        core = None
        try:
            _, core = self._apis(await self._call(self.api_client, cfg))
            await self._call(core.create_namespaced_pod, cfg.namespace, probe_pod(cfg, image, name))
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:
                pod = await self._call(core.read_namespaced_pod, name, cfg.namespace)
                waiting, _ = waiting_container(pod)
                if pod.status.phase in ("Succeeded", "Failed"):
                    result, why = pod.status.phase == "Succeeded", "it has no shell or no Python"
                    break
                if waiting is not None and waiting.reason in IMAGE_PULL_FATAL + IMAGE_PULL_RETRYING:
                    why = f"it cannot be pulled ({waiting.reason})"
                    break
                await asyncio.sleep(0.5)
        except Exception as exc:  # the probe is an optimisation: any failure keeps the init container
            why = f"the probe pod failed: {exc}"
        finally:
            if core is not None:
                with contextlib.suppress(ApiException, RuntimeError):
                    await self._call(core.delete_namespaced_pod, name, cfg.namespace, grace_period_seconds=0)
            self._probed[key] = result
            self._probing.pop(key, None)
        self.log.info("image %s %s", image, "has a shell and a Python: its command jobs start without the init "
                      "container" if result else f"keeps the init container for its command jobs: {why}")

    def images(self) -> ImageService:
        """Blocking: the image service of the agent's Docker engine (``DOCKER_HOST`` or the local socket)."""
        with self._client_lock:
            if self._images is None:
                try:
                    import docker
                    from docker.utils import kwargs_from_env

                    self._docker = docker.APIClient(version="auto", timeout=DOCKER_API_TIMEOUT, **kwargs_from_env())
                except Exception as exc:
                    raise BackendError("image_build_failed", (
                        f"the job needs an image built (it names none, or its folder is too big for a ConfigMap), "
                        f"but the agent's Docker engine cannot be reached: {exc}. Start it (ci/docker.sh on Debian), "
                        "or give the job an image and keep its folder under the ConfigMap limit")) from None
                self._images = ImageService(self._docker, pull_timeout=self.pull_timeout,
                                            pull_timeout_setting="KubernetesBackend.pull_timeout")
            return self._images

    # ------------------------------------------------------------ start

    async def start(self, ctx: JobContext) -> KubernetesHandle:
        from kubernetes.client.exceptions import ApiException

        cfg = ctx.queue_config
        api = await self._call(self.api_client, cfg)
        batch, core = self._apis(api)
        handle = KubernetesHandle(job_name(ctx.job_id), cfg.namespace, api, ctx,
                                  asyncio.get_running_loop(), backoff_limit=ctx.spec.retries)
        prepared = self._prepared.pop((ctx.job_id, ctx.attempt), None)
        if await self._adopt(handle, ctx):
            return handle
        if prepared is None:  # prepare saw a Job to re-attach to, and it has gone since
            prepared = await self._prepare_image(ctx)
        handle.image, handle.unpushed, handle.prepared = prepared.image, prepared.unpushed, prepared
        manifests = build_manifests(ctx, prepared.image, prepared.artifact_tar, prepared.pull_policy,
                                    helper=prepared.helper)
        created: list[tuple[Any, str]] = []
        try:
            if "configmap" in manifests:
                await self._call(core.create_namespaced_config_map, handle.namespace, manifests["configmap"])
                created.append((core.delete_namespaced_config_map, manifests["configmap"]["metadata"]["name"]))
            if "secret" in manifests:
                await self._call(core.create_namespaced_secret, handle.namespace, manifests["secret"])
                created.append((core.delete_namespaced_secret, manifests["secret"]["metadata"]["name"]))
            job = await self._call(batch.create_namespaced_job, handle.namespace, manifests["job"])
        except ApiException as exc:
            for delete, name in created:
                with contextlib.suppress(ApiException):
                    await self._call(delete, name, handle.namespace)
            raise BackendError("backend_error", f"the cluster refused the job: {_api_message(exc)}") from None
        handle.uid = job.metadata.uid
        owner = {"metadata": {"ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": handle.name,
                                                   "uid": handle.uid}]}}
        # The ConfigMap and Secret go with the Job (ownerReferences); done off the pod's critical path.
        handle.owning = asyncio.get_running_loop().create_task(self._own(core, handle, created, owner))
        return handle

    async def _own(self, core: Any, handle: KubernetesHandle, created: list[tuple[Any, str]],
                   owner: dict[str, Any]) -> None:
        for delete, name in created:
            patch = (core.patch_namespaced_config_map if delete == core.delete_namespaced_config_map
                     else core.patch_namespaced_secret)
            try:
                await self._call(patch, name, handle.namespace, owner)
            except Exception as exc:  # cleanup deletes them by name anyway
                self.log.warning("could not set the owner of %s/%s: %s", handle.namespace, name, exc)

    async def _jobs_of(self, api: Any, namespace: str, job_id: str) -> list[Any]:
        """The cluster's Jobs for ``job_id``, including ones being deleted."""
        batch, _ = self._apis(api)
        jobs = await self._call(batch.list_namespaced_job, namespace,
                                label_selector=f"{MANAGED_BY}=jupyter-launch,{JOB_ID_LABEL}={label_value(job_id)}")
        return list(jobs.items)

    async def _live_jobs(self, api: Any, namespace: str, job_id: str) -> list[Any]:
        return [j for j in await self._jobs_of(api, namespace, job_id) if not j.metadata.deletion_timestamp]

    async def _adopt(self, handle: KubernetesHandle, ctx: JobContext) -> bool:
        """A Job for this job already there (an earlier attempt's agent went away): follow it (and its other ranks'
        Jobs) instead."""
        from kubernetes.client.exceptions import ApiException

        for _ in range(120):
            jobs = await self._jobs_of(handle.api, handle.namespace, ctx.job_id)
            live = [j for j in jobs if not j.metadata.deletion_timestamp]
            job = next((j for j in live if (j.metadata.labels or {}).get(RANK_LABEL, "0") == "0"), None)
            if job is None and live:
                # Other ranks' Jobs without rank 0's: they cannot rendezvous. Remove them and start afresh.
                batch, _ = self._apis(handle.api)
                for orphan in live:
                    with contextlib.suppress(ApiException):
                        await self._call(batch.delete_namespaced_job, orphan.metadata.name, handle.namespace,
                                         propagation_policy="Background")
            if job is not None:
                handle.name, handle.uid, handle.adopted = job.metadata.name, job.metadata.uid, True
                for peer in live:
                    rank = int((peer.metadata.labels or {}).get(RANK_LABEL, "0"))
                    if rank:
                        handle.peer(rank, peer.metadata.name, peer.metadata.uid)
                if len(handle.peers) == ctx.spec.resources.nodes - 1:
                    handle.peers_started.set()
                handle.backoff_limit = job.spec.backoff_limit or 0
                handle.image = job.spec.template.spec.containers[0].image
                ctx.log("stderr", f"[jupyter-launch] re-attached to Kubernetes Job {handle.namespace}/{handle.name} "
                                  f"(attempt {job.metadata.labels.get(ATTEMPT_LABEL, '?')}); its log is read again "
                                  "from the start\n".encode())
                return True
            if not jobs:
                return False
            await asyncio.sleep(0.5)  # the earlier Job is being deleted: wait for it to go before making ours
        raise BackendError("backend_error", f"Kubernetes Job {handle.name} is still being deleted after 60s")

    # ------------------------------------------------------------ wait: status, reasons, exit code

    async def wait(self, handle: KubernetesHandle) -> int:
        try:
            return await self._watch(handle)
        finally:
            handle.settled = True
            handle.done.set()
            handle.changed.set()

    async def _watch(self, handle: KubernetesHandle) -> int:
        if handle.ctx.spec.resources.nodes > 1:
            return await self._watch_ranks(handle)
        _, core = self._apis(handle.api)
        ctx = handle.ctx
        started = time.monotonic()
        failing: dict[str, float] = {}
        last_events = 0.0
        while True:
            job = await self._job_status(handle)
            if job is None:  # deleted (cancel, or by someone else)
                return handle.exit_code if handle.exit_code is not None else 137
            pods = await self._call(core.list_namespaced_pod, handle.namespace,
                                    label_selector=f"controller-uid={handle.uid}")
            handle.pods = sorted(pods.items, key=lambda p: p.metadata.creation_timestamp)
            handle.changed.set()
            failed_pods = [p for p in handle.pods if p.status.phase == "Failed"]
            for pod in failed_pods:
                if (broken := init_failure(pod)) is not None:  # the job never ran: nothing to retry it for
                    raise BackendError("backend_error", broken)
            for pod in handle.pods:
                code = exit_code(pod)
                if pod.status.phase == "Succeeded":
                    handle.exit_code, handle.final_pod = code or 0, pod.metadata.name
                    return handle.exit_code
            for cond in job.status.conditions or []:
                if cond.type == "Failed" and cond.status == "True":
                    _raise_deadline(cond)
                    last = failed_pods[-1] if failed_pods else None
                    handle.final_pod = last.metadata.name if last else None
                    handle.exit_code = exit_code(last) if last else None
                    return handle.exit_code if handle.exit_code is not None else 1
                if cond.type == "Complete" and cond.status == "True":
                    return 0
            if len(failed_pods) > handle.backoff_limit:
                handle.final_pod = failed_pods[-1].metadata.name
                handle.exit_code = exit_code(failed_pods[-1])
                return handle.exit_code if handle.exit_code is not None else 1
            # Why it waits, from the newest pod (or the Job's events when there is none).
            active = [p for p in handle.pods if p.status.phase in ("Pending", "Running")]
            pod = active[-1] if active else None
            running = False
            now = time.monotonic()
            if pod is None:
                if now - started > 1.0 and now - last_events > 1.0:
                    last_events = now
                    await self._explain_from_events(handle, ctx)
            else:
                running = self._explain_pod(handle, pod, failing)
            handle.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(handle.changed.wait(),
                                       self.running_poll_interval if running and not handle.stream_ended
                                       else self.poll_interval)

    async def _job_status(self, handle: KubernetesHandle) -> Any:
        """The Job's status as the API server has it; None once it is gone."""
        from kubernetes.client.exceptions import ApiException

        try:
            return await self._call(self._apis(handle.api)[0].read_namespaced_job_status, handle.name,
                                    handle.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def _watch_ranks(self, handle: KubernetesHandle) -> int:
        """``wait`` for a job of several ranks: rank 0's Job first; the others' once its pod has an IP (their
        ``MASTER_ADDR``). It succeeds when every rank's pod has; the first rank to fail fails it, and the other
        ranks' Jobs are deleted then (their pods get SIGTERM and the grace period), so none runs on alone."""
        _, core = self._apis(handle.api)
        ctx = handle.ctx
        failing: dict[str, float] = {}
        selector = f"{MANAGED_BY}=jupyter-launch,{JOB_ID_LABEL}={label_value(ctx.job_id)}"
        while True:
            job = await self._job_status(handle)
            if job is None:  # deleted (cancel, or by someone else)
                return handle.exit_code if handle.exit_code is not None else 137
            listing = await self._call(core.list_namespaced_pod, handle.namespace, label_selector=selector)
            for rank in handle.ranks():
                rank.pods = sorted((p for p in listing.items
                                    if (p.metadata.labels or {}).get("controller-uid") == rank.uid),
                                   key=lambda p: p.metadata.creation_timestamp)
            handle.changed.set()
            if not handle.peers_started.is_set():
                address = next((p.status.pod_ip for p in handle.pods if p.status.pod_ip), None)
                if address:
                    await self._start_peers(handle, address)
            for rank in handle.ranks():
                for pod in rank.pods:
                    if (broken := init_failure(pod)) is not None:
                        raise BackendError("backend_error", f"rank {rank.rank}: {broken}")
            for cond in job.status.conditions or []:
                if cond.type == "Failed" and cond.status == "True":
                    _raise_deadline(cond)
            failed = [(rank, pod) for rank in handle.ranks() for pod in rank.pods if pod.status.phase == "Failed"]
            if failed:
                rank, pod = failed[0]
                code = exit_code(pod)
                handle.exit_code = code if code is not None else 1
                handle.final_pod = handle.pods[-1].metadata.name if handle.pods else None
                ctx.log("stderr", f"[jupyter-launch] rank {rank.rank} (pod {pod.metadata.name}) exited with code "
                                  f"{code if code is not None else '(none)'}; stopping the other ranks\n".encode())
                await self._delete_jobs([r for r in handle.ranks() if r is not rank], self.grace_period(ctx))
                return handle.exit_code
            done = [next((p for p in rank.pods if p.status.phase == "Succeeded"), None) for rank in handle.ranks()]
            if handle.peers_started.is_set() and all(done):
                handle.exit_code, handle.final_pod = 0, done[0].metadata.name
                return 0
            # Why it waits: the lowest rank whose pod does not run yet.
            running = handle.peers_started.is_set()
            for rank in handle.ranks():
                pod = next((p for p in reversed(rank.pods) if p.status.phase in ("Pending", "Running")), None)
                if pod is not None and pod.status.phase != "Running":
                    running = self._explain_pod(handle, pod, failing, f"rank {rank.rank}: ")
                    break
            handle.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(handle.changed.wait(),
                                       self.running_poll_interval if running and not handle.stream_ended
                                       else self.poll_interval)

    async def _start_peers(self, handle: KubernetesHandle, master_addr: str) -> None:
        """Create the Jobs of ranks 1..N-1 that do not exist yet, told rank 0's pod IP."""
        from kubernetes.client.exceptions import ApiException

        ctx = handle.ctx
        if handle.prepared is None:  # re-attached to rank 0's Job after an agent restart
            handle.prepared = await self._prepare_image(ctx)
        prepared = handle.prepared
        batch, _ = self._apis(handle.api)
        have = {peer.rank for peer in handle.peers}
        for rank in range(1, ctx.spec.resources.nodes):
            if rank in have:
                continue
            manifest = build_manifests(ctx, prepared.image, prepared.artifact_tar, prepared.pull_policy,
                                       helper=prepared.helper, rank=rank, master_addr=master_addr)["job"]
            try:
                job = await self._call(batch.create_namespaced_job, handle.namespace, manifest)
            except ApiException as exc:
                raise BackendError("backend_error", f"the cluster refused the Job of rank {rank}: "
                                                    f"{_api_message(exc)}") from None
            handle.peer(rank, job.metadata.name, job.metadata.uid)
        handle.peers_started.set()
        handle.ctx.log("stderr", f"[jupyter-launch] {ctx.spec.resources.nodes} ranks: rank 0 listens at "
                                 f"{master_addr}:{MASTER_PORT}\n".encode())

    def _explain_pod(self, handle: KubernetesHandle, pod: Any, failing: dict[str, float], prefix: str = "") -> bool:
        """Report why ``pod`` waits (a reason code and a sentence); raise when it cannot start. Returns whether it
        runs. ``failing``: since when an image pull or a container's creation has been failing, across polls."""
        ctx = handle.ctx
        now = time.monotonic()
        waiting, waiting_image = waiting_container(pod)
        sched = next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)
        if sched is not None and sched.status == "False" and sched.reason == "Unschedulable":
            self._reason(handle, ctx, "unschedulable", f"{prefix}the cluster cannot schedule the job's pod: "
                                                       f"{sched.message}")
        elif waiting is not None and waiting.reason in IMAGE_PULL_FATAL:
            raise BackendError("image_pull_failed", f"{prefix}image {waiting_image or handle.image!r} cannot be used: "
                                                    f"{waiting.reason}: {waiting.message or ''}".strip()
                               + _unpushed_hint(handle))
        elif waiting is not None and waiting.reason in IMAGE_PULL_RETRYING:
            since = failing.setdefault("pull", now)
            message = (f"{prefix}pulling image {waiting_image or handle.image!r} failed ({waiting.reason}: "
                       f"{waiting.message or ''})" + _unpushed_hint(handle))
            if now - since >= self.image_pull_grace:
                raise BackendError("image_pull_failed", message)
            self._reason(handle, ctx, "pulling_image", message + "; retrying")
        elif waiting is not None and waiting.reason in CONFIG_ERRORS:
            since = failing.setdefault("config", now)
            message = f"{prefix}the container cannot be created ({waiting.reason}: {waiting.message or ''})"
            if now - since >= self.config_error_grace:
                raise BackendError("backend_error", message)
            self._reason(handle, ctx, "container_config_error", message)
        else:
            failing.clear()
            if pod.status.phase == "Running":
                self._reason(handle, ctx, "running", f"running in pod {pod.metadata.name} "
                                                     f"on node {pod.spec.node_name}")
                return True
            if waiting is not None and waiting.reason == "ContainerCreating":
                self._reason(handle, ctx, "container_creating",
                             f"{prefix}pod {pod.metadata.name} is scheduled on node {pod.spec.node_name}; "
                             "its container is starting")
        return False

    def _reason(self, handle: KubernetesHandle, ctx: JobContext, reason: str, message: str) -> None:
        if handle.last_reason == (reason, message):
            return
        handle.last_reason = (reason, message)
        if reason != "running":  # the agent already reports running
            ctx.set_reason(reason, message)

    async def _explain_from_events(self, handle: KubernetesHandle, ctx: JobContext) -> None:
        _, core = self._apis(handle.api)
        events = await self._call(core.list_namespaced_event, handle.namespace,
                                  field_selector=f"involvedObject.uid={handle.uid}")
        failed = [e for e in events.items if e.reason == "FailedCreate"]
        if failed:
            message = failed[-1].message or ""
            if "exceeded quota" in message:
                self._reason(handle, ctx, "pending_quota", f"the namespace's ResourceQuota holds the job back: "
                                                           f"{message}")
            else:
                self._reason(handle, ctx, "pod_create_failed", f"the Job cannot create its pod: {message}")

    # ------------------------------------------------------------ stream: the pods' logs

    async def stream(self, handle: KubernetesHandle, ctx: JobContext) -> None:
        if ctx.spec.resources.nodes == 1:
            await self._stream_pods(handle, ctx.log)
            return
        # Every rank's log, each line prefixed with its rank; control records from rank 0 only (RankLog).
        while not handle.peers_started.is_set() and not handle.done.is_set() and not handle.closed.is_set():
            handle.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(handle.changed.wait(), self.poll_interval)

        async def follow_rank(rank: KubernetesHandle) -> None:
            log = RankLog(ctx.log, rank.rank)
            try:
                await self._stream_pods(rank, log.write)
            finally:
                log.flush()

        await asyncio.gather(*(follow_rank(rank) for rank in handle.ranks()))

    async def _stream_pods(self, handle: KubernetesHandle, log: Any) -> None:
        """One Job's pods' logs into ``log``, each pod from its first byte to its container's end."""
        followed: set[str] = set()
        while not handle.closed.is_set():
            pod = next((p for p in handle.pods if p.metadata.name not in followed
                        and (p.spec.node_name or p.status.phase in ("Running", "Succeeded", "Failed"))), None)
            if pod is None:
                if handle.done.is_set() and all(p.metadata.name in followed for p in handle.pods):
                    return
                handle.changed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(handle.changed.wait(), self.poll_interval)
                continue
            if followed:
                log("stderr", f"[jupyter-launch] the Job started a new pod {pod.metadata.name} "
                              "(an earlier one failed)\n".encode())
            await PodLogs(self._call, self._apis(handle.api)[1], self.log, self._starting,
                          self.log_retry_rate).follow(handle, log, pod.metadata.name)
            followed.add(pod.metadata.name)
            handle.stream_ended = True  # its container is ending: poll fast for the exit code
            handle.changed.set()  # wake wait(): the container has likely ended

    # ------------------------------------------------------------ stop, outputs, cleanup

    async def stop(self, handle: KubernetesHandle, grace: float) -> None:
        """Delete the Job (every rank's) in the foreground: its pods get SIGTERM, then SIGKILL after
        terminationGracePeriodSeconds."""
        handle.settled = True
        await self._delete_jobs(list(handle.ranks()), grace)

    async def _delete_jobs(self, handles: list[KubernetesHandle], grace: float) -> None:
        from kubernetes.client.exceptions import ApiException

        if not handles:
            return
        batch, core = self._apis(handles[0].api)
        namespace = handles[0].namespace
        for handle in handles:
            with contextlib.suppress(ApiException):
                await self._call(batch.delete_namespaced_job, handle.name, namespace, propagation_policy="Foreground")
        deadline = time.monotonic() + grace + 15
        left = list(handles)
        while left and time.monotonic() < deadline:
            for handle in list(left):
                try:
                    await self._call(batch.read_namespaced_job, handle.name, namespace)
                except ApiException as exc:
                    if exc.status == 404:
                        left.remove(handle)
            if left:
                await asyncio.sleep(0.2)
        # Still there: a kubelet that does not answer. Force the pods away so the Jobs can go.
        for handle in left:
            for pod in handle.pods:
                with contextlib.suppress(ApiException):
                    await self._call(core.delete_namespaced_pod, pod.metadata.name, namespace,
                                     grace_period_seconds=0)

    async def collect_outputs(self, handle: KubernetesHandle, ctx: JobContext) -> None:
        splitter = handle.splitters.get(handle.final_pod or "")
        if handle.final_pod and (splitter is None or splitter.outputs is None):
            # The live stream missed them (it was cut, or ended early): read the finished pod's log once more.
            from kubernetes.client.exceptions import ApiException

            _, core = self._apis(handle.api)
            splitter = OutputsSplitter()
            with contextlib.suppress(ApiException):
                log = await self._call(core.read_namespaced_pod_log, handle.final_pod, handle.namespace,
                                       container=CONTAINER, _preload_content=False)

                def feed() -> None:  # a piece at a time: the log may be large, and only its end is wanted
                    try:
                        while chunk := log.read(1 << 20):
                            splitter.feed(chunk)
                    finally:
                        log.release_conn()

                await self._call(feed)
                splitter.feed(b"\n")
        if splitter is None or splitter.outputs is None:
            why = splitter.error if splitter and splitter.error else "no outputs record in the pod's log"
            ctx.log("stderr", f"[jupyter-launch] the job's outputs did not come back from the pod: {why}\n".encode())
            return
        if splitter.outputs:
            await asyncio.to_thread(extract_outputs, splitter.outputs, ctx.output_dir)

    async def cleanup(self, handle: KubernetesHandle, ctx: JobContext, result: Result) -> None:
        handle.closed.set()
        if not handle.settled and result.reason == "agent_error":
            return  # interrupted, not finished: leave the Job for the next attempt to re-attach to
        from kubernetes.client.exceptions import ApiException

        batch, core = self._apis(handle.api)
        for rank in handle.ranks():
            with contextlib.suppress(ApiException):
                await self._call(batch.delete_namespaced_job, rank.name, handle.namespace,
                                 propagation_policy="Background")
            for pod in rank.pods:
                if never_started(pod):
                    # Nothing ran in it; a kubelet can take a minute to let go of a pod stuck on its image.
                    with contextlib.suppress(ApiException):
                        await self._call(core.delete_namespaced_pod, pod.metadata.name, handle.namespace,
                                         grace_period_seconds=0)
        for delete, name in ((core.delete_namespaced_config_map, f"{handle.name}-artifact"),
                             (core.delete_namespaced_secret, f"{handle.name}-secrets")):
            with contextlib.suppress(ApiException):
                await self._call(delete, name, handle.namespace)


def _raise_deadline(cond: Any) -> None:
    if cond.reason == "DeadlineExceeded":
        raise BackendError("timeout", f"ran past its timeout (the Job's activeDeadlineSeconds): "
                                      f"{cond.message or ''}".strip())


def _unpushed_hint(handle: KubernetesHandle) -> str:
    if not handle.unpushed:
        return ""
    return ("; it was built on the agent's Docker engine and pushed nowhere, so only a node on that engine has it: "
            "set the queue's provider.registry to push it where the nodes can pull")


def _api_message(exc: Any) -> str:
    import json

    try:
        return json.loads(exc.body).get("message") or str(exc.reason)
    except (TypeError, ValueError):
        return f"{exc.status} {exc.reason}"
