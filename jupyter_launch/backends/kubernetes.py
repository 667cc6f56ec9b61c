"""The Kubernetes backend: each job attempt is a batch/v1 Job, driven through the official ``kubernetes`` client.

The job's folder travels in a ConfigMap (a gzipped tar, owner-referenced to the Job) or, when it is too big for one,
inside an image built for the job on the agent's Docker engine (pushed to the queue's ``registry`` when it names one);
a job with no image gets one built from its environment by :mod:`jupyter_launch.images`. Its secrets go in a Secret
(``envFrom``, never inline in the Job), and its outputs come back through the pod's own log: after the job's process
exits, a small bootstrap in the pod prints the output folder as base64 lines between ``\\x1ejupyter-launch-outputs``
markers, which this backend takes out of the log. See docs/kubernetes.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import io
import json
import math
import os
import re
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from traitlets import Float, Integer, Unicode

from ..images import (BUILDER_VERSION, HASH_LABEL, BuildSettings, ImageBuildError, ImageBuilder, load_environment,
                      plan_build)
from .base import Backend, BackendError, JobContext, Result

MANAGED_BY = "app.kubernetes.io/managed-by"
JOB_ID_LABEL = "jupyter-launch/job-id"
QUEUE_LABEL = "jupyter-launch/queue"
ATTEMPT_LABEL = "jupyter-launch/attempt"
CONTAINER = "job"
WORK_DIR = "/jl/work"
ARTIFACT_DIR = "/jl/artifact"
ARTIFACT_KEY = "artifact.tar.gz"
OUTPUTS_MARK = b"\x1ejupyter-launch-outputs"
# A ConfigMap holds at most 1 MiB; leave room for its metadata and base64 in the request.
CONFIGMAP_LIMIT = 900 * 1024
READ_SIZE = 64 * 1024
JOB_IMAGE_REPOSITORY = "jupyter-launch-job"
DOCKER_API_TIMEOUT = 300.0  # seconds one Docker API read may take: a build step can be quiet for a while
IMAGE_PULL_FATAL = ("ErrImageNeverPull", "InvalidImageName")
IMAGE_PULL_RETRYING = ("ErrImagePull", "ImagePullBackOff")
CONFIG_ERRORS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")

# Runs in the pod (any Python >= 3.8 in the image): unpack the job's folder from the ConfigMap, run the job,
# forward SIGTERM to it, then print the output folder as base64 lines (each < PIPE_BUF, so a stray writer cannot
# split one) and exit with the job's code. argv: the job's command.
BOOTSTRAP = r'''
import base64, hashlib, io, os, signal, subprocess, sys, tarfile
work, out = os.getcwd(), os.environ["JUPYTER_LAUNCH_OUTPUT_DIR"]
mark = "\x1ejupyter-launch-outputs"
with tarfile.open("/jl/artifact/artifact.tar.gz") as tar:
    for m in tar.getmembers():
        parts = m.name.split("/")
        if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in parts:
            sys.exit("jupyter-launch: refusing unsafe artifact member %r" % m.name)
    if hasattr(tarfile, "data_filter"):
        tar.extractall(work, filter="data")
    else:
        tar.extractall(work)
os.makedirs(out, exist_ok=True)
argv = sys.argv[1:]
if argv[0] in ("python", "python3"):
    argv[0] = sys.executable
try:
    proc = subprocess.Popen(argv)
except OSError as exc:
    print("jupyter-launch: cannot start %r: %s" % (argv[0], exc.strerror), file=sys.stderr, flush=True)
    code = 127
else:
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda n, f: proc.send_signal(n))
    code = proc.wait()
    code = code if code >= 0 else 128 - code
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    for root, dirs, files in os.walk(out):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                tar.add(path, arcname=os.path.relpath(path, out), recursive=False)
data = buf.getvalue()
text = base64.b64encode(data).decode()
sys.stdout.flush()
for i in range(0, len(text), 3000):
    os.write(1, ("%s %s\n" % (mark, text[i:i + 3000])).encode())
os.write(1, ("%s-end %s %d\n" % (mark, hashlib.sha256(data).hexdigest(), len(data))).encode())
sys.exit(code)
'''
# Find a Python in the image (``python3`` first, as Debian has no ``python``), then run the bootstrap.
LAUNCHER = ('p=$(command -v python3 || command -v python) || { echo "jupyter-launch: the image has no python3 '
            'or python; the kubernetes backend needs one to unpack the job" >&2; exit 127; }; exec "$p" -c "$0" "$@"')


def job_name(job_id: str) -> str:
    """The Job's name (DNS-1123, at most 63): ``jl-<job id>``."""
    return ("jl-" + re.sub(r"[^a-z0-9-]", "-", job_id.lower()))[:63].rstrip("-")


def label_value(value: str) -> str:
    """A label value (``[A-Za-z0-9._-]``, at most 63, alphanumeric at both ends)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", value)[:63].strip("._-")


def quantity_cpu(cores: float) -> str:
    millis = math.ceil(cores * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def merge_template(base: Any, override: Any) -> Any:
    """``pod_template`` over the generated pod template: mappings merge, lists of named mappings (containers,
    volumes, env) merge by name, any other value replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge_template(base[key], value) if key in base else value
        return merged
    if (isinstance(base, list) and isinstance(override, list) and override
            and all(isinstance(x, dict) and "name" in x for x in base + override)):
        merged_list = list(base)
        index = {x["name"]: i for i, x in enumerate(merged_list)}
        for item in override:
            if item["name"] in index:
                merged_list[index[item["name"]]] = merge_template(merged_list[index[item["name"]]], item)
            else:
                merged_list.append(item)
        return merged_list
    return override


def job_labels(ctx: JobContext) -> dict[str, str]:
    labels = {str(k): str(v) for k, v in (ctx.queue_config.get("labels") or {}).items()}
    labels.update({MANAGED_BY: "jupyter-launch", JOB_ID_LABEL: label_value(ctx.job_id),
                   QUEUE_LABEL: label_value(ctx.queue), ATTEMPT_LABEL: str(ctx.attempt)})
    return labels


def build_manifests(ctx: JobContext, image: str, artifact_tar: bytes | None,
                    image_pull_policy: str | None = None) -> dict[str, dict[str, Any]]:
    """The Job, the ConfigMap with the job's folder, and (when the job has secrets) the Secret, as API dicts.

    ``artifact_tar`` None: the image carries the folder (a job image), so there is no ConfigMap. Secrets appear only
    in the Secret's ``stringData``; the Job refers to it with ``envFrom``. ``image_pull_policy`` overrides the
    queue's (a built image that only exists on the agent's engine must not be pulled).
    """
    cfg = ctx.queue_config
    name = job_name(ctx.job_id)
    namespace = cfg.get("namespace") or "default"
    labels = job_labels(ctx)
    meta = {"name": name, "namespace": namespace, "labels": labels}
    spec = ctx.spec
    grace = float(cfg.get("grace_period") or 10.0)
    argv = list(spec.command or []) if spec.kind == "command" else ctx.runner_command
    env = {k: v for k, v in ctx.env.items()}
    env.update({"JUPYTER_LAUNCH_OUTPUT_DIR": f"{WORK_DIR}/.jupyter-launch/outputs", "PYTHONUNBUFFERED": "1"})
    resources: dict[str, dict[str, str]] = {}
    if spec.resources.cpu:
        resources.setdefault("requests", {})["cpu"] = quantity_cpu(spec.resources.cpu)
        resources.setdefault("limits", {})["cpu"] = quantity_cpu(spec.resources.cpu)
    if spec.resources.memory:
        resources.setdefault("requests", {})["memory"] = str(spec.resources.memory)
        resources.setdefault("limits", {})["memory"] = str(spec.resources.memory)
    if spec.resources.gpu:
        resources.setdefault("limits", {})["nvidia.com/gpu"] = str(spec.resources.gpu)
    container: dict[str, Any] = {
        "name": CONTAINER, "image": image,
        "command": ["sh", "-c", LAUNCHER, BOOTSTRAP, *argv],
        "workingDir": WORK_DIR,
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "resources": resources,
        "volumeMounts": [{"name": "jl-work", "mountPath": WORK_DIR}],
    }
    volumes: list[dict[str, Any]] = [{"name": "jl-work", "emptyDir": {}}]
    if artifact_tar is not None:  # else the image has it at the same path
        container["volumeMounts"].insert(0, {"name": "jl-artifact", "mountPath": ARTIFACT_DIR, "readOnly": True})
        volumes.insert(0, {"name": "jl-artifact", "configMap": {"name": f"{name}-artifact"}})
    if image_pull_policy or cfg.get("image_pull_policy"):
        container["imagePullPolicy"] = image_pull_policy or cfg["image_pull_policy"]
    secret_name = f"{name}-secrets"
    if ctx.secrets:
        container["envFrom"] = [{"secretRef": {"name": secret_name}}]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": max(1, math.ceil(grace)),
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": volumes,
    }
    if cfg.get("service_account"):
        pod_spec["serviceAccountName"] = cfg["service_account"]
    else:
        pod_spec["automountServiceAccountToken"] = False  # a job needs no API access unless the queue says so
    if cfg.get("node_selector"):
        pod_spec["nodeSelector"] = dict(cfg["node_selector"])
    if cfg.get("tolerations"):
        pod_spec["tolerations"] = list(cfg["tolerations"])
    if cfg.get("image_pull_secrets"):
        pod_spec["imagePullSecrets"] = [{"name": s} for s in cfg["image_pull_secrets"]]
    if cfg.get("host_network"):
        pod_spec["hostNetwork"] = True
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    template = {"metadata": {"labels": dict(labels)}, "spec": pod_spec}
    if cfg.get("pod_template"):
        template = merge_template(template, cfg["pod_template"])
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.retries,
        "ttlSecondsAfterFinished": int(cfg.get("ttl_seconds_after_finished", 600)),
        "template": template,
    }
    if spec.timeout:
        job_spec["activeDeadlineSeconds"] = max(1, math.ceil(spec.timeout))
    annotations = {"jupyter-launch/agent": ctx.agent_id}
    if ctx.artifact:
        annotations["jupyter-launch/artifact"] = ctx.artifact
    manifests: dict[str, dict[str, Any]] = {
        "job": {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {**meta, "annotations": annotations}, "spec": job_spec},
    }
    if artifact_tar is not None:
        manifests["configmap"] = {"apiVersion": "v1", "kind": "ConfigMap",
                                  "metadata": {**meta, "name": f"{name}-artifact"},
                                  "binaryData": {ARTIFACT_KEY: base64.b64encode(artifact_tar).decode()}}
    if ctx.secrets:
        manifests["secret"] = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                               "metadata": {**meta, "name": secret_name}, "stringData": dict(ctx.secrets)}
    return manifests


def _workdir_entries(workdir: Path) -> list[Path]:
    """The job's folder minus its outputs: plain files and folders, sorted."""
    outputs = workdir / ".jupyter-launch" / "outputs"
    return [path for path in sorted(workdir.rglob("*"))
            if path != outputs and outputs not in path.parents and not path.is_symlink()
            and (path.is_file() or path.is_dir())]


def pack_workdir(workdir: Path) -> bytes:
    """The job's unpacked folder (minus its outputs) as a gzipped tar of plain files and folders."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for path in _workdir_entries(workdir):
            tar.add(path, arcname=path.relative_to(workdir).as_posix(), recursive=False)
    return buf.getvalue()


def workdir_digest(workdir: Path) -> str:
    """A hash of what :func:`pack_workdir` packs (names and contents, not times), so a job image is content-addressed."""
    h = hashlib.sha256()
    for path in _workdir_entries(workdir):
        h.update(path.relative_to(workdir).as_posix().encode() + (b"/" if path.is_dir() else b"") + b"\0")
        if path.is_file():
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            h.update(b"\0")
    return h.hexdigest()


@dataclass
class JobImagePlan:
    """An image for one job folder: its environment image plus the packed folder where the pod's bootstrap reads it
    (``/jl/artifact/artifact.tar.gz``). It has what :class:`~jupyter_launch.images.ImageBuilder` needs of a plan:
    ``settings.base_image``, ``hash``, ``tag`` and ``context_tar()``."""

    settings: BuildSettings  # base_image: the environment image
    base_id: str
    folder_digest: str
    artifact_tar: bytes

    @property
    def hash(self) -> str:
        doc = {"v": BUILDER_VERSION, "kind": "job", "base": self.settings.base_image, "base_id": self.base_id,
               "folder": self.folder_digest}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    @property
    def tag(self) -> str:
        return f"{JOB_IMAGE_REPOSITORY}:{self.hash[:12]}"

    def dockerfile(self) -> str:
        return (f"FROM {self.settings.base_image}\n"
                f"COPY {ARTIFACT_KEY} {ARTIFACT_DIR}/{ARTIFACT_KEY}\n"
                f"LABEL {HASH_LABEL}={self.hash}\n")

    def context_tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in (("Dockerfile", self.dockerfile().encode()), (ARTIFACT_KEY, self.artifact_tar)):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()


@dataclass
class PreparedImage:
    """What ``prepare`` decided for one attempt: the pod's image and how the job's folder reaches the pod."""

    image: str
    artifact_tar: bytes | None  # None: the image carries the folder
    pull_policy: str | None = None  # overrides the queue's
    unpushed: bool = False  # built on the agent's engine and pushed nowhere: only that engine's node has it


def _safe_extract(data: bytes, dest: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")


class OutputsSplitter:
    """Takes the outputs marker lines out of a pod's log stream and keeps their payload."""

    def __init__(self) -> None:
        self._carry = b""
        self._chunks: list[bytes] = []
        self.outputs: bytes | None = None  # the tar.gz, once its end marker arrived and checked
        self.error: str | None = None

    def reset(self) -> None:
        self._carry, self._chunks, self.outputs, self.error = b"", [], None, None

    def feed(self, data: bytes) -> bytes:
        if self._carry:
            data, self._carry = self._carry + data, b""
        if b"\x1e" not in data:
            return data
        plain: list[bytes] = []
        pos = 0
        start = data.find(OUTPUTS_MARK)
        while start >= 0:
            end = data.find(b"\n", start)
            if end < 0:
                self._carry = data[start:]
                plain.append(data[pos:start])
                return b"".join(plain)
            plain.append(data[pos:start])
            self._take(data[start + len(OUTPUTS_MARK):end])
            pos = end + 1
            start = data.find(OUTPUTS_MARK, pos)
        rest = data[pos:]
        tail = rest.rfind(b"\x1e")
        if tail >= 0 and OUTPUTS_MARK.startswith(rest[tail:]):
            self._carry, rest = rest[tail:], rest[:tail]
        plain.append(rest)
        return b"".join(plain)

    def flush(self) -> bytes:
        data, self._carry = self._carry, b""
        return data

    def _take(self, line: bytes) -> None:
        if line.startswith(b" "):
            self._chunks.append(line[1:])
        elif line.startswith(b"-end "):
            try:
                digest, size = line[5:].split()
                data = base64.b64decode(b"".join(self._chunks), validate=True)
            except ValueError:
                self.error = "the outputs' record is malformed"
                return
            if hashlib.sha256(data).hexdigest().encode() != digest or len(data) != int(size):
                self.error = "the outputs' checksum does not match"
                return
            self.outputs = data
            self._chunks = []


@dataclass
class KubernetesHandle:
    name: str
    namespace: str
    api: Any
    ctx: JobContext
    loop: asyncio.AbstractEventLoop
    uid: str = ""
    image: str = ""
    unpushed: bool = False  # the image was built on the agent's engine and pushed nowhere
    backoff_limit: int = 0
    adopted: bool = False
    pods: list[Any] = field(default_factory=list)  # the Job's pods, oldest first, from the last poll
    exit_code: int | None = None
    final_pod: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)  # wait() has its exit code
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # new pod list, or a stream ended
    closed: threading.Event = field(default_factory=threading.Event)  # cleanup ran: stop every stream
    splitters: dict[str, OutputsSplitter] = field(default_factory=dict)  # per pod
    settled: bool = False  # the Job ended or was stopped by us: cleanup may delete it
    last_reason: tuple[str, str] | None = None
    owning: asyncio.Task[None] | None = None
    stream_ended: bool = False


class KubernetesBackend(Backend):
    """Runs jobs as batch/v1 Jobs. Queue settings: ``provider`` of type ``kubernetes`` (see spec.KubernetesProvider)."""

    name: ClassVar[str] = "kubernetes"
    poll_interval = Float(0.1, config=True, help="Seconds between status polls while a job's pod is starting.")
    running_poll_interval = Float(1.0, config=True, help="Seconds between status polls while its pod runs.")
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
    reconcile_interval = Float(60.0, config=True,
                               help="Seconds between sweeps that delete the Jobs (and their ConfigMaps and Secrets) "
                                    "of jobs the store has as finished; 0: only when the agent starts.")
    stream_threads = Integer(64, config=True, help="Threads for blocking API calls and log streams.")

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._clients: dict[tuple[str | None, str | None], Any] = {}
        self._pool = ThreadPoolExecutor(self.stream_threads, thread_name_prefix="launch-k8s")
        self._client_lock = threading.Lock()
        self._docker: Any = None
        self._build_locks: dict[str, asyncio.Lock] = {}
        self._pushed: set[str] = set()
        self._prepared: dict[tuple[str, int], PreparedImage] = {}
        self._reconcilers: dict[str, asyncio.Task[None]] = {}

    @classmethod
    def supported_features(cls) -> dict[str, bool]:
        return {"gpus": True, "local_gpus": False, "warm_pool": False, "images": True, "reattach": True}

    # ------------------------------------------------------------ plumbing

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A blocking client call on the backend's own threads (long log streams must not starve the agent's)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def api_client(self, cfg: dict[str, Any]) -> Any:
        """One ApiClient per (kubeconfig, context): the queue's kubeconfig, in-cluster config, or the default."""
        key = (cfg.get("kubeconfig"), cfg.get("context"))
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
        for task in self._reconcilers.values():
            task.cancel()
        self._reconcilers.clear()
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

    # ------------------------------------------------------------ agent hooks: reconcile what finished jobs left

    async def warm_up(self, queue: str, config: dict[str, Any]) -> None:
        """Called by the agent at start: delete what finished jobs of ``queue`` left on the cluster, now and every
        ``reconcile_interval`` seconds after."""
        await self.reap_finished(queue, config)
        if self.reconcile_interval > 0 and queue not in self._reconcilers:
            self._reconcilers[queue] = asyncio.get_running_loop().create_task(self._reconcile(queue, config))

    async def _reconcile(self, queue: str, config: dict[str, Any]) -> None:
        while True:
            await asyncio.sleep(self.reconcile_interval)
            try:
                await self.reap_finished(queue, config)
            except Exception:
                self.log.warning("queue %s: reconciling its Kubernetes Jobs failed; trying again later", queue,
                                 exc_info=True)

    async def reap_finished(self, queue: str, config: dict[str, Any]) -> list[str]:
        """Delete the Jobs, pods, ConfigMaps and Secrets of ``queue`` whose job the store has as finished.

        They are left by an agent that died: a job with no retries left is failed as ``lost`` by the store and no
        agent re-attaches to its Job, which would otherwise run on. Objects of jobs the store does not know are left
        alone (the namespace may be shared with other stores); those of queued or running jobs are re-attached to.
        Returns the ids of the jobs whose objects were deleted.
        """
        from kubernetes.client.exceptions import ApiException

        store = getattr(self.parent, "store", None)
        if store is None:
            return []
        namespace = config.get("namespace") or "default"
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
        by_job: dict[str, list[tuple[str, Any]]] = {}
        for kind, listing in zip(("job", "pod", "configmap", "secret"), listings):
            for obj in listing.items:
                job_id = (obj.metadata.labels or {}).get(JOB_ID_LABEL)
                if job_id:
                    by_job.setdefault(job_id, []).append((kind, obj))
        delete = {"job": functools.partial(batch.delete_namespaced_job, propagation_policy="Background"),
                  # The Job's deletion takes its pods with it; one that never started is removed at once.
                  "pod": functools.partial(core.delete_namespaced_pod, grace_period_seconds=0),
                  "configmap": core.delete_namespaced_config_map, "secret": core.delete_namespaced_secret}
        reaped = []
        for job_id, objs in sorted(by_job.items()):
            try:
                record = await asyncio.to_thread(store.get_job, job_id)
            except Exception:
                continue  # not this store's job
            if not record.done:
                continue
            self.log.info("job %s is %s (%s) but its Kubernetes objects remain; deleting %s", job_id, record.state,
                          record.reason, ", ".join(obj.metadata.name for _, obj in objs))
            for kind, obj in objs:
                if kind == "pod" and not _never_started(obj):
                    continue
                with contextlib.suppress(ApiException):
                    await self._call(delete[kind], obj.metadata.name, namespace)
            reaped.append(job_id)
        return reaped

    # ------------------------------------------------------------ prepare: the pod's image

    async def prepare(self, ctx: JobContext) -> None:
        """Pack the job's folder and settle the pod's image: the job's or the queue's when the folder fits in a
        ConfigMap; otherwise an image built here (the environment, then the folder on top), pushed to the queue's
        ``registry`` when it names one."""
        api = await self._call(self.api_client, ctx.queue_config)
        namespace = ctx.queue_config.get("namespace") or "default"
        if await self._live_jobs(api, namespace, ctx.job_id):
            return  # start() re-attaches to it: nothing to build
        prepared = await self._prepare_image(ctx)
        if not ctx.cancel_requested.is_set():  # else start() never runs to take it
            self._prepared[(ctx.job_id, ctx.attempt)] = prepared

    async def _prepare_image(self, ctx: JobContext) -> PreparedImage:
        cfg = ctx.queue_config
        artifact = await self._call(pack_workdir, ctx.workdir)
        image = ctx.spec.image or cfg.get("image")
        fits = len(artifact) <= self.max_artifact_bytes
        if image and fits:
            return PreparedImage(image, artifact)
        engine = await self._call(self.docker_api)
        if not image:
            image = await self._environment_image(engine, ctx)
        if not fits:
            ctx.log("stderr", f"[jupyter-launch] the job's folder is {len(artifact) / 2**20:.1f} MiB packed, more "
                              f"than a ConfigMap holds ({self.max_artifact_bytes / 1024:.0f} KiB): building it into "
                              "an image\n".encode())
            image = await self._job_image(engine, ctx, image, artifact)
        if cfg.get("registry"):
            return PreparedImage(await self._push(engine, image, ctx), artifact if fits else None)
        # Only the agent's engine has it: right for a node on that engine (a single-node or local cluster).
        policy = "Never" if cfg.get("image_pull_policy") == "Never" else "IfNotPresent"
        return PreparedImage(image, artifact if fits else None, policy, unpushed=True)

    def docker_api(self) -> Any:
        """Blocking: the client for the agent's Docker engine (``DOCKER_HOST`` or the local socket), which builds."""
        with self._client_lock:
            if self._docker is None:
                try:
                    import docker
                    from docker.utils import kwargs_from_env

                    self._docker = docker.APIClient(version="auto", timeout=DOCKER_API_TIMEOUT, **kwargs_from_env())
                except Exception as exc:
                    raise BackendError("image_build_failed", (
                        f"the job needs an image built (it names none, or its folder is too big for a ConfigMap), "
                        f"but the agent's Docker engine cannot be reached: {exc}. Start it (ci/docker.sh on Debian), "
                        "or give the job an image and keep its folder under the ConfigMap limit")) from None
            return self._docker

    async def _local_image_id(self, engine: Any, image: str, ctx: JobContext) -> str:
        """The image's id on the agent's engine, pulling it first when it is not there."""
        builder = ImageBuilder(engine)
        try:
            image_id = await self._call(builder.image_id, image)
            if image_id is None:
                ctx.set_reason("pulling_image", f"pulling {image} onto the agent's engine to build on it")
                await self._call(self._pull_blocking, engine, image)
                image_id = await self._call(builder.image_id, image)
        except ImageBuildError as exc:
            raise BackendError("image_pull_failed", str(exc)) from None
        except Exception as exc:
            raise BackendError("image_build_failed", f"the agent's Docker engine failed on {image}: {exc}") from None
        return image_id or ""

    @staticmethod
    def _pull_blocking(engine: Any, image: str) -> None:
        from docker.utils import parse_repository_tag

        repo, tag = parse_repository_tag(image)
        for event in engine.pull(repo, tag=tag or "latest", stream=True, decode=True):
            if "error" in event:
                raise ImageBuildError(f"cannot pull {image} onto the agent's engine to build on it: "
                                      f"{(event.get('errorDetail') or {}).get('message') or event['error']}")

    async def _environment_image(self, engine: Any, ctx: JobContext) -> str:
        """``jupyter-launch-env:<hash>``: the queue's ``build`` base image with the job's environment (as the Docker
        backend builds it), reused while its hash holds."""
        try:
            settings = BuildSettings.from_config(ctx.queue_config.get("build"), self.default_base_image)
            base_id = await self._local_image_id(engine, settings.base_image, ctx)
            plan = await self._call(plan_build, settings, base_id, load_environment(ctx.workdir), ctx.workdir)
        except ImageBuildError as exc:
            raise BackendError("image_build_failed", str(exc)) from None
        return await self._build(ImageBuilder(engine), plan, ctx, f"the job's environment on {settings.base_image}")

    async def _job_image(self, engine: Any, ctx: JobContext, environment: str, artifact: bytes) -> str:
        """``jupyter-launch-job:<hash>``: the environment image plus the job's packed folder."""
        base_id = await self._local_image_id(engine, environment, ctx)
        digest = await self._call(workdir_digest, ctx.workdir)
        plan = JobImagePlan(BuildSettings(base_image=environment), base_id, digest, artifact)
        return await self._build(ImageBuilder(engine), plan, ctx, f"the job's folder on {environment}")

    async def _build(self, builder: ImageBuilder, plan: Any, ctx: JobContext, what: str) -> str:
        lock = self._build_locks.setdefault(plan.hash, asyncio.Lock())
        async with lock:
            try:
                cached = await self._call(builder.cached, plan)
            except Exception as exc:
                raise BackendError("image_build_failed", f"the agent's Docker engine failed: {exc}") from None
            if cached:
                ctx.log("stderr", f"[jupyter-launch] image {plan.tag} ({what}) is up to date; no build\n".encode())
                return plan.tag
            ctx.set_reason("building_image", f"building image {plan.tag}: {what}")
            ctx.log("stderr", f"[jupyter-launch] building image {plan.tag}: {what}\n".encode())
            loop = asyncio.get_running_loop()

            def output(text: str) -> None:
                data = "".join(f"[build] {line}\n" for line in text.splitlines() if line.strip()).encode()
                if data:
                    loop.call_soon_threadsafe(ctx.log, "stderr", data)

            t0 = time.monotonic()
            try:
                await self._call(builder.build, plan, output)
            except ImageBuildError as exc:
                raise BackendError("image_build_failed", f"{exc} (the build's output is in the job's log)") from None
            ctx.log("stderr", f"[jupyter-launch] built {plan.tag} in {time.monotonic() - t0:.1f}s\n".encode())
            return plan.tag

    async def _push(self, engine: Any, image: str, ctx: JobContext) -> str:
        """Tag ``image`` into the queue's registry and push it; returns the name the nodes pull."""
        registry = ctx.queue_config["registry"].rstrip("/")
        repository, _, tag = image.rpartition(":")
        remote = f"{registry}/{repository}"
        ref = f"{remote}:{tag}"
        if ref in self._pushed:
            return ref
        ctx.set_reason("pushing_image", f"pushing {ref}")
        ctx.log("stderr", f"[jupyter-launch] pushing {ref}\n".encode())

        def push() -> None:
            engine.tag(image, remote, tag)
            for event in engine.push(remote, tag=tag, stream=True, decode=True):
                if "error" in event:
                    raise ImageBuildError((event.get("errorDetail") or {}).get("message") or event["error"])

        try:
            await self._call(push)
        except Exception as exc:
            raise BackendError("image_push_failed", (
                f"cannot push {ref} to the queue's registry: {exc}. Log the agent's Docker engine in to it "
                f"(`docker login {registry.split('/')[0]}` as the agent's user) and give the nodes pull access "
                "(provider.image_pull_secrets)")) from None
        self._pushed.add(ref)
        return ref

    # ------------------------------------------------------------ start

    async def start(self, ctx: JobContext) -> KubernetesHandle:
        from kubernetes.client.exceptions import ApiException

        cfg = ctx.queue_config
        api = await self._call(self.api_client, cfg)
        batch, core = self._apis(api)
        handle = KubernetesHandle(job_name(ctx.job_id), cfg.get("namespace") or "default", api, ctx,
                                  asyncio.get_running_loop(), backoff_limit=ctx.spec.retries)
        prepared = self._prepared.pop((ctx.job_id, ctx.attempt), None)
        if await self._adopt(handle, ctx):
            return handle
        if prepared is None:  # prepare saw a Job to re-attach to, and it has gone since
            prepared = await self._prepare_image(ctx)
        handle.image, handle.unpushed = prepared.image, prepared.unpushed
        manifests = build_manifests(ctx, prepared.image, prepared.artifact_tar, prepared.pull_policy)
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
        """A Job for this job already there (an earlier attempt's agent went away): follow it instead."""
        for _ in range(120):
            jobs = await self._jobs_of(handle.api, handle.namespace, ctx.job_id)
            live = [j for j in jobs if not j.metadata.deletion_timestamp]
            if live:
                job = live[0]
                handle.name, handle.uid, handle.adopted = job.metadata.name, job.metadata.uid, True
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
        from kubernetes.client.exceptions import ApiException

        batch, core = self._apis(handle.api)
        ctx = handle.ctx
        started = time.monotonic()
        pull_failing_since: float | None = None
        config_failing_since: float | None = None
        last_events = 0.0
        while True:
            try:
                job = await self._call(batch.read_namespaced_job_status, handle.name, handle.namespace)
            except ApiException as exc:
                if exc.status == 404:  # deleted (cancel, or by someone else)
                    return handle.exit_code if handle.exit_code is not None else 137
                raise
            pods = await self._call(core.list_namespaced_pod, handle.namespace,
                                    label_selector=f"controller-uid={handle.uid}")
            handle.pods = sorted(pods.items, key=lambda p: p.metadata.creation_timestamp)
            handle.changed.set()
            failed_pods = [p for p in handle.pods if p.status.phase == "Failed"]
            for pod in handle.pods:
                code = _exit_code(pod)
                if pod.status.phase == "Succeeded":
                    handle.exit_code, handle.final_pod = code or 0, pod.metadata.name
                    return handle.exit_code
            for cond in job.status.conditions or []:
                if cond.type == "Failed" and cond.status == "True":
                    if cond.reason == "DeadlineExceeded":
                        raise BackendError("timeout", f"ran past its timeout (the Job's activeDeadlineSeconds): "
                                                      f"{cond.message or ''}".strip())
                    last = failed_pods[-1] if failed_pods else None
                    handle.final_pod = last.metadata.name if last else None
                    handle.exit_code = _exit_code(last) if last else None
                    return handle.exit_code if handle.exit_code is not None else 1
                if cond.type == "Complete" and cond.status == "True":
                    return 0
            if len(failed_pods) > handle.backoff_limit:
                handle.final_pod = failed_pods[-1].metadata.name
                handle.exit_code = _exit_code(failed_pods[-1])
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
                waiting = _waiting(pod)
                sched = next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)
                if sched is not None and sched.status == "False" and sched.reason == "Unschedulable":
                    self._reason(handle, ctx, "unschedulable", f"the cluster cannot schedule the job's pod: "
                                                               f"{sched.message}")
                elif waiting is not None and waiting.reason in IMAGE_PULL_FATAL:
                    raise BackendError("image_pull_failed", f"image {handle.image!r} cannot be used: "
                                                            f"{waiting.reason}: {waiting.message or ''}".strip()
                                       + _unpushed_hint(handle))
                elif waiting is not None and waiting.reason in IMAGE_PULL_RETRYING:
                    pull_failing_since = pull_failing_since or now
                    message = (f"pulling image {handle.image!r} failed ({waiting.reason}: {waiting.message or ''})"
                               + _unpushed_hint(handle))
                    if now - pull_failing_since >= self.image_pull_grace:
                        raise BackendError("image_pull_failed", message)
                    self._reason(handle, ctx, "pulling_image", message + "; retrying")
                elif waiting is not None and waiting.reason in CONFIG_ERRORS:
                    config_failing_since = config_failing_since or now
                    message = f"the container cannot be created ({waiting.reason}: {waiting.message or ''})"
                    if now - config_failing_since >= self.config_error_grace:
                        raise BackendError("backend_error", message)
                    self._reason(handle, ctx, "container_config_error", message)
                else:
                    pull_failing_since = config_failing_since = None
                    if pod.status.phase == "Running":
                        running = True
                        self._reason(handle, ctx, "running", f"running in pod {pod.metadata.name} "
                                                             f"on node {pod.spec.node_name}")
                    elif waiting is not None and waiting.reason == "ContainerCreating":
                        self._reason(handle, ctx, "container_creating",
                                     f"pod {pod.metadata.name} is scheduled on node {pod.spec.node_name}; "
                                     "its container is starting")
            handle.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(handle.changed.wait(),
                                       self.running_poll_interval if running and not handle.stream_ended
                                       else self.poll_interval)

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
                ctx.log("stderr", f"[jupyter-launch] the Job started a new pod {pod.metadata.name} "
                                  "(an earlier one failed)\n".encode())
            await self._follow(handle, ctx, pod.metadata.name)
            followed.add(pod.metadata.name)
            handle.stream_ended = True  # its container is ending: poll fast for the exit code
            handle.changed.set()  # wake wait(): the container has likely ended

    async def _follow(self, handle: KubernetesHandle, ctx: JobContext, pod: str) -> None:
        """Follow one pod's log from its first byte to its container's end, across reconnects and restarts."""
        from kubernetes.client.exceptions import ApiException

        _, core = self._apis(handle.api)
        splitter = handle.splitters.setdefault(pod, OutputsSplitter())
        container_seen = -1  # restartCount of the container whose log we read
        skip = 0  # bytes of this container's log already passed on (a reconnect reads it from the start)
        delay = 0.05
        while not handle.closed.is_set():
            try:
                resp = await self._call(core.read_namespaced_pod_log, pod, handle.namespace, container=CONTAINER,
                                        follow=True, _preload_content=False)
            except ApiException as exc:
                if exc.status == 404:
                    return
                if exc.status != 400:
                    raise
                # 400 "ContainerCreating"/"PodInitializing": not started yet. Give up once the pod ended unstarted.
                info = await self._pod_state(core, handle, pod)
                if info is None or (info[0] in ("Failed", "Succeeded") and info[1] is None):
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 0.5)
                continue
            restarts = await self._call(self._restart_count_blocking, core, handle, pod)
            if restarts != container_seen:
                container_seen, skip = restarts, 0
                splitter.reset()
            got = await self._call(self._pump, resp, handle, ctx, splitter, skip)
            fresh, skip = got > skip, max(skip, got)
            info = await self._pod_state(core, handle, pod)
            if info is None or info[1] is not None and info[2] == container_seen:
                break  # this container ended and its stream with it
            if not fresh:
                await asyncio.sleep(0.1)  # the container's status lags its end: look again shortly
        rest = splitter.flush()
        if rest:
            ctx.log("stdout", rest)

    def _pump(self, resp: Any, handle: KubernetesHandle, ctx: JobContext, splitter: OutputsSplitter,
              skip: int) -> int:
        """Blocking: read one log stream to its end; returns the bytes read (including the ``skip`` ones)."""
        loop = handle.loop
        seen = 0
        try:
            while not handle.closed.is_set():
                chunk = resp.read1(READ_SIZE) if hasattr(resp, "read1") else resp.read(READ_SIZE)
                if not chunk:
                    break
                if seen + len(chunk) <= skip:
                    seen += len(chunk)
                    continue
                fresh = chunk[max(0, skip - seen):]
                seen += len(chunk)
                plain = splitter.feed(fresh)
                if plain:
                    loop.call_soon_threadsafe(ctx.log, "stdout", plain)
        except Exception as exc:  # a dropped connection: the caller reconnects and skips what it has
            self.log.debug("log stream of %s ended: %s", handle.name, exc)
        finally:
            resp.release_conn()
        return seen

    def _restart_count_blocking(self, core: Any, handle: KubernetesHandle, pod: str) -> int:
        from kubernetes.client.exceptions import ApiException

        try:
            p = core.read_namespaced_pod(pod, handle.namespace)
        except ApiException:
            return 0
        status = next((s for s in p.status.container_statuses or [] if s.name == CONTAINER), None)
        return status.restart_count if status else 0

    async def _pod_state(self, core: Any, handle: KubernetesHandle, pod: str) -> tuple[str, Any, int] | None:
        """(phase, the container's terminated state or None, restartCount); None when the pod is gone."""
        from kubernetes.client.exceptions import ApiException

        try:
            p = await self._call(core.read_namespaced_pod, pod, handle.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        status = next((s for s in p.status.container_statuses or [] if s.name == CONTAINER), None)
        terminated = status.state.terminated if status and status.state else None
        return p.status.phase, terminated, status.restart_count if status else 0

    # ------------------------------------------------------------ stop, outputs, cleanup

    async def stop(self, handle: KubernetesHandle, grace: float) -> None:
        """Delete the Job in the foreground: its pods get SIGTERM, then SIGKILL after terminationGracePeriodSeconds."""
        from kubernetes.client.exceptions import ApiException

        batch, core = self._apis(handle.api)
        handle.settled = True
        with contextlib.suppress(ApiException):
            await self._call(batch.delete_namespaced_job, handle.name, handle.namespace,
                             propagation_policy="Foreground")
        deadline = time.monotonic() + grace + 15
        while time.monotonic() < deadline:
            try:
                await self._call(batch.read_namespaced_job, handle.name, handle.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return
            await asyncio.sleep(0.2)
        # Still there: a kubelet that does not answer. Force the pods away so the Job can go.
        for pod in handle.pods:
            with contextlib.suppress(ApiException):
                await self._call(core.delete_namespaced_pod, pod.metadata.name, handle.namespace,
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
                splitter.feed(await self._call(log.read))
                splitter.feed(b"\n")
        if splitter is None or splitter.outputs is None:
            why = splitter.error if splitter and splitter.error else "no outputs record in the pod's log"
            ctx.log("stderr", f"[jupyter-launch] the job's outputs did not come back from the pod: {why}\n".encode())
            return
        if splitter.outputs:
            await asyncio.to_thread(_safe_extract, splitter.outputs, ctx.output_dir)

    async def cleanup(self, handle: KubernetesHandle, ctx: JobContext, result: Result) -> None:
        handle.closed.set()
        if not handle.settled and result.reason == "agent_error":
            return  # interrupted, not finished: leave the Job for the next attempt to re-attach to
        from kubernetes.client.exceptions import ApiException

        batch, core = self._apis(handle.api)
        with contextlib.suppress(ApiException):
            await self._call(batch.delete_namespaced_job, handle.name, handle.namespace,
                             propagation_policy="Background")
        for pod in handle.pods:
            if _never_started(pod):
                # Nothing ran in it; a kubelet can take a minute to let go of a pod stuck on its image.
                with contextlib.suppress(ApiException):
                    await self._call(core.delete_namespaced_pod, pod.metadata.name, handle.namespace,
                                     grace_period_seconds=0)
        for delete, name in ((core.delete_namespaced_config_map, f"{handle.name}-artifact"),
                             (core.delete_namespaced_secret, f"{handle.name}-secrets")):
            with contextlib.suppress(ApiException):
                await self._call(delete, name, handle.namespace)


def _unpushed_hint(handle: KubernetesHandle) -> str:
    if not handle.unpushed:
        return ""
    return ("; it was built on the agent's Docker engine and pushed nowhere, so only a node on that engine has it: "
            "set the queue's provider.registry to push it where the nodes can pull")


def _exit_code(pod: Any) -> int | None:
    status = next((s for s in pod.status.container_statuses or [] if s.name == CONTAINER), None)
    if status and status.state and status.state.terminated:
        return status.state.terminated.exit_code
    return None


def _never_started(pod: Any) -> bool:
    if pod.status.phase in ("Succeeded", "Failed"):
        return False
    status = next((s for s in pod.status.container_statuses or [] if s.name == CONTAINER), None)
    return not (status and status.state and (status.state.running or status.state.terminated))


def _waiting(pod: Any) -> Any:
    status = next((s for s in pod.status.container_statuses or [] if s.name == CONTAINER), None)
    return status.state.waiting if status and status.state and status.state.waiting else None


def _api_message(exc: Any) -> str:
    import json

    try:
        return json.loads(exc.body).get("message") or str(exc.reason)
    except (TypeError, ValueError):
        return f"{exc.status} {exc.reason}"
