"""The cluster objects of one job attempt: a batch/v1 Job, the ConfigMap with its folder and the Secret with its
secrets, as API dicts, with the labels every object of a job carries."""

from __future__ import annotations

import base64
import math
import re
from typing import Any

from ..base import JobContext, job_environment, rank_variables
from .bootstrap import (ARTIFACT_DIR, ARTIFACT_KEY, BUSYBOX, INIT, LAUNCHER, PY_BOOTSTRAP, PY_LAUNCHER, TOOLS_DIR,
                        WORK_DIR)

MANAGED_BY = "app.kubernetes.io/managed-by"
JOB_ID_LABEL = "jupyter-launch/job-id"
QUEUE_LABEL = "jupyter-launch/queue"
ATTEMPT_LABEL = "jupyter-launch/attempt"
RANK_LABEL = "jupyter-launch/rank"  # on the Jobs and pods of a job of several ranks
PROBE_LABEL = "jupyter-launch/probe"  # on the pods that ask an image whether it has a shell and a Python
# Exits 0 when the image has what the fast path needs: a ``sh`` (the container's command) and a Python on its PATH.
PROBE_COMMAND = ["sh", "-c", "command -v python3 >/dev/null || command -v python >/dev/null"]
MASTER_PORT = 29500  # the rendezvous port of rank 0's pod (torch.distributed's default)
CONTAINER = "job"
INIT_CONTAINER = "jl-unpack"


def job_name(job_id: str) -> str:
    """The Job's name (DNS-1123, at most 63): ``jl-<job id>``."""
    return ("jl-" + re.sub(r"[^a-z0-9-]", "-", job_id.lower()))[:63].rstrip("-")


def rank_job_name(job_id: str, rank: int) -> str:
    """The Job of one rank: rank 0's is the job's own (:func:`job_name`), the others' ``jl-<job id>-r<rank>``."""
    if rank == 0:
        return job_name(job_id)
    suffix = f"-r{rank}"
    return job_name(job_id)[:63 - len(suffix)].rstrip("-") + suffix


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
    labels = {str(k): str(v) for k, v in ctx.queue_config.labels.items()}
    labels.update({MANAGED_BY: "jupyter-launch", JOB_ID_LABEL: label_value(ctx.job_id),
                   QUEUE_LABEL: label_value(ctx.queue), ATTEMPT_LABEL: str(ctx.attempt)})
    return labels


def build_manifests(ctx: JobContext, image: str, artifact_tar: bytes | None,
                    image_pull_policy: str | None = None, *, helper: bool = False, rank: int = 0,
                    master_addr: str | None = None) -> dict[str, dict[str, Any]]:
    """The Job, the ConfigMap with the job's folder, and (when the job has secrets) the Secret, as API dicts. The
    pod of a command job on an image it names gets an init container (the queue's ``helper_image``).

    ``artifact_tar`` None: the image carries the folder (a job image), so there is no ConfigMap. Secrets appear only
    in the Secret's ``stringData``; the Job refers to it with ``envFrom``. ``image_pull_policy`` overrides the
    queue's (a built image that only exists on the agent's engine must not be pulled). ``helper``: the image may
    lack Python (a command job's own image), so the folder is unpacked by an init container and the job's container
    runs the busybox it lends; else the image's Python unpacks it (no init container: the pod starts about 1 s sooner).

    A job of several ranks (``resources.nodes`` > 1) is one Job per rank, each told its ``RANK`` and where rank 0
    listens: rank 0's own pod IP (the downward API) for rank 0, ``master_addr`` (that IP, once its pod has one) for
    the others. Pod IPs need no cluster DNS or kube-proxy, and reach across nodes on any conformant cluster network.
    Only rank 0's manifests carry the ConfigMap and the Secret; every rank's pod mounts the same ones. A rank is not
    retried alone (``backoffLimit`` 0): it could not rejoin the others.
    """
    cfg = ctx.queue_config
    world = ctx.spec.resources.nodes
    name = rank_job_name(ctx.job_id, rank)
    shared = job_name(ctx.job_id)  # the ConfigMap and Secret every rank's pod mounts
    namespace = cfg.namespace
    labels = job_labels(ctx)
    if world > 1:
        labels[RANK_LABEL] = str(rank)
    meta = {"name": name, "namespace": namespace, "labels": labels}
    spec = ctx.spec
    grace = float(cfg.grace_period)
    argv = list(spec.command or []) if spec.kind == "command" else ctx.runner_command
    env = job_environment(ctx, secrets=False)  # over the image's own; the secrets come from the Secret
    env["JUPYTER_LAUNCH_OUTPUT_DIR"] = f"{WORK_DIR}/.jupyter-launch/outputs"
    if world > 1:
        env.update(rank_variables(rank, world, 0, master_addr or "", MASTER_PORT))
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
        "command": ([BUSYBOX, "sh", "-c", LAUNCHER, "jupyter-launch", *argv] if helper
                    else ["sh", "-c", PY_LAUNCHER, PY_BOOTSTRAP, *argv]),
        "workingDir": WORK_DIR,
        "env": [{"name": k, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                if world > 1 and rank == 0 and k == "MASTER_ADDR" else {"name": k, "value": v}
                for k, v in sorted(env.items())],
        "resources": resources,
        "volumeMounts": [{"name": "jl-work", "mountPath": WORK_DIR}]
                        + ([{"name": "jl-tools", "mountPath": TOOLS_DIR}] if helper else []),
    }
    volumes: list[dict[str, Any]] = [{"name": "jl-work", "emptyDir": {}}]
    init: dict[str, Any] | None = None
    if helper:
        # The init container: the queue's helper image copies its static busybox into the pod and unpacks the
        # folder, so the job's own image needs nothing of ours (a CUDA runtime, busybox, a distroless image).
        init = {
            "name": INIT_CONTAINER, "image": cfg.helper_image,
            "command": ["/bin/busybox", "sh", "-c", INIT],
            "workingDir": WORK_DIR,
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
            "volumeMounts": [{"name": "jl-work", "mountPath": WORK_DIR}, {"name": "jl-tools", "mountPath": TOOLS_DIR}],
            # A pinned tag: pulled once per node, whatever the queue does for its jobs' images (Never stays never).
            "imagePullPolicy": "Never" if cfg.image_pull_policy == "Never" else "IfNotPresent",
        }
        volumes.append({"name": "jl-tools", "emptyDir": {}})
    if artifact_tar is not None:  # else the image has it at the same path
        (init or container)["volumeMounts"].insert(0, {"name": "jl-artifact", "mountPath": ARTIFACT_DIR,
                                                       "readOnly": True})
        volumes.insert(0, {"name": "jl-artifact", "configMap": {"name": f"{shared}-artifact"}})
    if image_pull_policy or cfg.image_pull_policy:
        container["imagePullPolicy"] = image_pull_policy or cfg.image_pull_policy
    secret_name = f"{shared}-secrets"
    if ctx.secrets:
        container["envFrom"] = [{"secretRef": {"name": secret_name}}]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": max(1, math.ceil(grace)),
        "enableServiceLinks": False,
        **({"initContainers": [init]} if init else {}),
        "containers": [container],
        "volumes": volumes,
    }
    if cfg.service_account:
        pod_spec["serviceAccountName"] = cfg.service_account
    else:
        pod_spec["automountServiceAccountToken"] = False  # a job needs no API access unless the queue says so
    pod_spec.update(placement(cfg))
    if cfg.host_network:
        pod_spec["hostNetwork"] = True
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    template = {"metadata": {"labels": dict(labels)}, "spec": pod_spec}
    if cfg.pod_template:
        template = merge_template(template, cfg.pod_template)
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.retries if world == 1 else 0,
        "ttlSecondsAfterFinished": cfg.ttl_seconds_after_finished,
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
    if rank:
        return manifests
    if artifact_tar is not None:
        manifests["configmap"] = {"apiVersion": "v1", "kind": "ConfigMap",
                                  "metadata": {**meta, "name": f"{shared}-artifact"},
                                  "binaryData": {ARTIFACT_KEY: base64.b64encode(artifact_tar).decode()}}
    if ctx.secrets:
        manifests["secret"] = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                               "metadata": {**meta, "name": secret_name}, "stringData": dict(ctx.secrets)}
    return manifests



def placement(cfg: Any) -> dict[str, Any]:
    """Where the queue's pods go and how their images are pulled: its node selector, tolerations and pull
    secrets, as pod spec fields."""
    fields: dict[str, Any] = {}
    if cfg.node_selector:
        fields["nodeSelector"] = dict(cfg.node_selector)
    if cfg.tolerations:
        fields["tolerations"] = list(cfg.tolerations)
    if cfg.image_pull_secrets:
        fields["imagePullSecrets"] = [{"name": s} for s in cfg.image_pull_secrets]
    return fields


def probe_pod(cfg: Any, image: str, name: str) -> dict[str, Any]:
    """A pod that runs :data:`PROBE_COMMAND` in ``image``, placed and pulled as the queue's jobs are (its node
    selector, tolerations, pull policy and secrets), with a deadline and tiny requests."""
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": 120,
        "terminationGracePeriodSeconds": 0,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "containers": [{"name": "probe", "image": image, "command": PROBE_COMMAND,
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                                      "limits": {"cpu": "100m", "memory": "64Mi"}},
                        **({"imagePullPolicy": cfg.image_pull_policy} if cfg.image_pull_policy else {})}],
    }
    pod_spec.update(placement(cfg))
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": cfg.namespace,
                         "labels": {MANAGED_BY: "jupyter-launch", PROBE_LABEL: "python"}},
            "spec": pod_spec}
