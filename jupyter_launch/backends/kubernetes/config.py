"""A Kubernetes queue's settings: the ``provider:`` block of a queue YAML with ``type: kubernetes``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ...images import BuildConfig
from ...spec import ProviderConfig


class KubernetesProvider(ProviderConfig):
    type: Literal["kubernetes"]
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str = "default"
    service_account: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    image_pull_secrets: list[str] = Field(default_factory=list)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    pod_template: dict[str, Any] = Field(default_factory=dict)
    host_network: bool = False
    image: str | None = None
    # The init container's image for a command job on an image it names: a static busybox at /bin/busybox (the
    # official busybox image is one). It unpacks the job's folder and copies that binary into the pod, so the job's own
    # image needs no shell, tar or Python. null: no init container (the queue's images all have a Python; ~1 s less).
    helper_image: str | None = "busybox:1.36"
    # How a job is given an image when it names none, or when its folder is too big for a ConfigMap.
    build: BuildConfig = Field(default_factory=BuildConfig)
    registry: str | None = None  # where built images are pushed for the nodes to pull; None: the agent's engine
    ttl_seconds_after_finished: int = Field(default=600, ge=0)
