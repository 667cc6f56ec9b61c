"""The Kubernetes backend: each job attempt is a batch/v1 Job, driven through the official ``kubernetes`` client.

The job's folder travels in a ConfigMap (a gzipped tar, owner-referenced to the Job), its secrets in a Secret
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

from traitlets import Float, Integer

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


def build_manifests(ctx: JobContext, image: str, artifact_tar: bytes | None = None) -> dict[str, dict[str, Any]]:
    """The Job, the ConfigMap with the job's folder, and (when the job has secrets) the Secret, as API dicts.

    Secrets appear only in the Secret's ``stringData``; the Job refers to it with ``envFrom``.
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
        "volumeMounts": [{"name": "jl-artifact", "mountPath": ARTIFACT_DIR, "readOnly": True},
                         {"name": "jl-work", "mountPath": WORK_DIR}],
    }
    if cfg.get("image_pull_policy"):
        container["imagePullPolicy"] = cfg["image_pull_policy"]
    secret_name = f"{name}-secrets"
    if ctx.secrets:
        container["envFrom"] = [{"secretRef": {"name": secret_name}}]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": max(1, math.ceil(grace)),
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": [{"name": "jl-artifact", "configMap": {"name": f"{name}-artifact"}},
                    {"name": "jl-work", "emptyDir": {}}],
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
        "configmap": {"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {**meta, "name": f"{name}-artifact"},
                      "binaryData": {ARTIFACT_KEY: base64.b64encode(artifact_tar or b"").decode()}},
    }
    if ctx.secrets:
        manifests["secret"] = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                               "metadata": {**meta, "name": secret_name}, "stringData": dict(ctx.secrets)}
    return manifests


def pack_workdir(workdir: Path) -> bytes:
    """The job's unpacked folder (minus its outputs) as a gzipped tar of plain files and folders."""
    outputs = workdir / ".jupyter-launch" / "outputs"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for path in sorted(workdir.rglob("*")):
            if path == outputs or outputs in path.parents or path.is_symlink():
                continue
            if path.is_file() or path.is_dir():
                tar.add(path, arcname=path.relative_to(workdir).as_posix(), recursive=False)
    return buf.getvalue()


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
                                 help="Largest packed job folder shipped in a ConfigMap.")
    stream_threads = Integer(64, config=True, help="Threads for blocking API calls and log streams.")

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._clients: dict[tuple[str | None, str | None], Any] = {}
        self._pool = ThreadPoolExecutor(self.stream_threads, thread_name_prefix="launch-k8s")
        self._client_lock = threading.Lock()

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
        for api in self._clients.values():
            with contextlib.suppress(Exception):
                api.close()
        self._clients.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _apis(api: Any) -> tuple[Any, Any]:
        from kubernetes import client

        return client.BatchV1Api(api), client.CoreV1Api(api)

    # ------------------------------------------------------------ start

    def image_for(self, ctx: JobContext) -> str:
        image = ctx.spec.image or ctx.queue_config.get("image")
        if not image:
            raise BackendError("no_image", "the kubernetes backend needs an image: set `image` in the job spec "
                                           "or the queue's provider.image (building one from the job's "
                                           "environment is not wired to this backend yet)")
        return image

    async def start(self, ctx: JobContext) -> KubernetesHandle:
        from kubernetes.client.exceptions import ApiException

        cfg = ctx.queue_config
        api = await self._call(self.api_client, cfg)
        batch, core = self._apis(api)
        handle = KubernetesHandle(job_name(ctx.job_id), cfg.get("namespace") or "default", api, ctx,
                                  asyncio.get_running_loop(), backoff_limit=ctx.spec.retries)
        if await self._adopt(handle, ctx):
            return handle
        handle.image = self.image_for(ctx)
        artifact = await self._call(pack_workdir, ctx.workdir)
        if len(artifact) > self.max_artifact_bytes:
            raise BackendError("artifact_too_large", (
                f"the job's folder is {len(artifact) / 1024:.0f} KiB packed; the kubernetes backend ships at most "
                f"{self.max_artifact_bytes / 1024:.0f} KiB in a ConfigMap. Put large files in the image or a volume "
                "(provider.pod_template), or leave them out with .launchignore"))
        manifests = build_manifests(ctx, handle.image, artifact)
        created: list[tuple[Any, str]] = []
        try:
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

    async def _adopt(self, handle: KubernetesHandle, ctx: JobContext) -> bool:
        """A Job for this job already there (an earlier attempt's agent went away): follow it instead."""
        batch, _ = self._apis(handle.api)
        for _ in range(120):
            jobs = await self._call(batch.list_namespaced_job, handle.namespace,
                                    label_selector=f"{MANAGED_BY}=jupyter-launch,{JOB_ID_LABEL}={label_value(ctx.job_id)}")
            live = [j for j in jobs.items if not j.metadata.deletion_timestamp]
            if live:
                job = live[0]
                handle.name, handle.uid, handle.adopted = job.metadata.name, job.metadata.uid, True
                handle.backoff_limit = job.spec.backoff_limit or 0
                handle.image = job.spec.template.spec.containers[0].image
                ctx.log("stderr", f"[jupyter-launch] re-attached to Kubernetes Job {handle.namespace}/{handle.name} "
                                  f"(attempt {job.metadata.labels.get(ATTEMPT_LABEL, '?')}); its log is read again "
                                  "from the start\n".encode())
                return True
            if not jobs.items:
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
                                                            f"{waiting.reason}: {waiting.message or ''}".strip())
                elif waiting is not None and waiting.reason in IMAGE_PULL_RETRYING:
                    pull_failing_since = pull_failing_since or now
                    message = f"pulling image {handle.image!r} failed ({waiting.reason}: {waiting.message or ''})"
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
