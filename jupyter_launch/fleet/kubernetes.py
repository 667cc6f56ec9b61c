"""The ``kubernetes`` provider's agents: in the queue's namespace, one Deployment of one pod per agent from the queue's
``agent_image`` (so scaling down removes the idle agent, not any pod), its token in a Secret of its own, running as a
ServiceAccount whose Role allows only what the backend does there (Jobs, Pods and their logs, ConfigMaps, Secrets,
Events). Removed with the last agent: the Role, its binding and the ServiceAccount."""

from __future__ import annotations

import re
import time
from typing import Any, ClassVar

from traitlets import Bool, Dict, Unicode

from ..remote.http import TOKEN_ENV
from ..spec import QueueConfig
from .base import FleetError, Instance, Supervisor, agent_command

FLEET_LABEL = "jupyter-launch.fleet"
AGENT_LABEL = "jupyter-launch.fleet-agent"
TOKEN_KEY = "token"
TERMINATION_GRACE = 60  # seconds: c.Agent.stop_grace (30) for a running job, then its hand-back

# What the Kubernetes backend calls in its namespace (backends/kubernetes), and nothing else.
ROLE_RULES = [
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "delete", "get", "list", "watch"]},
    {"apiGroups": ["batch"], "resources": ["jobs/status"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "delete"]},  # image probes
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["configmaps", "secrets"],
     "verbs": ["create", "delete", "get", "list", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
]


def dns_name(*parts: str) -> str:
    """A DNS-1123 name (lower case, digits, '-'; at most 63) from ``parts``."""
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return name[:63].rstrip("-")


class KubernetesSupervisor(Supervisor):
    """Agent Deployments of one queue in its namespace."""

    provider: ClassVar[str] = "kubernetes"
    host_network = Bool(False, config=True, help="Run the agent pods on the node's network, so they reach a server on "
                        "the node's loopback (a one-node test cluster); with it, set agent_env to reach the API "
                        "server without kube-proxy (KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT).")
    agent_env = Dict(value_trait=Unicode(), config=True, help="More environment variables of the agent container.")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        from kubernetes import client, config

        provider = self.config_doc.get("provider") or {}
        configuration = client.Configuration()
        try:
            config.load_kube_config(context=provider.get("context"), client_configuration=configuration)
        except (config.ConfigException, OSError):
            config.load_incluster_config(client_configuration=configuration)
        self.api = client.ApiClient(configuration)
        self.apps, self.core, self.rbac = client.AppsV1Api(self.api), client.CoreV1Api(self.api), \
            client.RbacAuthorizationV1Api(self.api)
        self.namespace = provider.get("namespace") or "default"
        self.pull_policy = provider.get("image_pull_policy")
        self.image = self.config_doc.get("agent_image")
        self.account = dns_name("jupyter-launch-agent", self.queue)

    @classmethod
    def check(cls, queue: QueueConfig, source: str | None) -> None:
        if not queue.agent_image:
            raise FleetError("the kubernetes provider starts its agents from agent_image, and the queue names none "
                             "(`jupyter launch agent-image build` makes one; push it where the cluster pulls from)",
                             source=source, field="agent_image")
        if getattr(queue.provider, "kubeconfig", None):
            raise FleetError("the agents `queue up` starts run in the cluster as a ServiceAccount and cannot read a "
                             "kubeconfig of this machine: leave it out (the manager uses $KUBECONFIG and "
                             "provider.context)", source=source, field="provider.kubeconfig")

    def _selector(self, agent_id: str | None = None) -> str:
        return f"{FLEET_LABEL}={self.queue}" + (f",{AGENT_LABEL}={agent_id}" if agent_id else "")

    def _labels(self, agent_id: str | None = None) -> dict[str, str]:
        return {FLEET_LABEL: self.queue, **({AGENT_LABEL: agent_id} if agent_id else {})}

    def _ensure_account(self) -> None:
        from kubernetes.client.exceptions import ApiException

        meta = {"name": self.account, "namespace": self.namespace, "labels": self._labels()}
        objects = [
            (self.core.create_namespaced_service_account, {"metadata": meta}),
            (self.rbac.create_namespaced_role, {"metadata": meta, "rules": ROLE_RULES}),
            (self.rbac.create_namespaced_role_binding, {
                "metadata": meta, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                              "name": self.account},
                "subjects": [{"kind": "ServiceAccount", "name": self.account, "namespace": self.namespace}]}),
        ]
        for create, body in objects:
            try:
                create(self.namespace, body)
            except ApiException as exc:
                if exc.status != 409:  # already there: another agent of this queue made it
                    raise

    def start(self, agent_id: str, token: str) -> str:
        self._ensure_account()
        name = dns_name("jl-agent", agent_id)
        labels = self._labels(agent_id)
        self.core.create_namespaced_secret(self.namespace, {
            "metadata": {"name": name, "labels": labels}, "type": "Opaque", "stringData": {TOKEN_KEY: token}})
        env = [{"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": name, "key": TOKEN_KEY}}},
               {"name": "PYTHONUNBUFFERED", "value": "1"},
               *({"name": k, "value": v} for k, v in self.agent_env.items())]
        container = {"name": "agent", "image": self.image, "env": env,
                     "command": agent_command("python", self.server_url, self.queue, agent_id, self.words)}
        if self.pull_policy:
            container["imagePullPolicy"] = self.pull_policy
        pod: dict[str, Any] = {"serviceAccountName": self.account, "containers": [container],
                               "terminationGracePeriodSeconds": TERMINATION_GRACE}
        if self.host_network:
            pod.update(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet")
        self.apps.create_namespaced_deployment(self.namespace, {
            "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "strategy": {"type": "Recreate"},
                     "template": {"metadata": {"labels": labels}, "spec": pod}}})
        return f"deployment {name} in {self.namespace}"

    def instances(self, known: dict[str, str]) -> list[Instance]:
        restarts: dict[str, int] = {}
        for pod in self.core.list_namespaced_pod(self.namespace, label_selector=self._selector()).items:
            agent_id = (pod.metadata.labels or {}).get(AGENT_LABEL, "")
            restarts[agent_id] = restarts.get(agent_id, 0) + sum(
                s.restart_count for s in (pod.status.container_statuses or []))
        found = []
        for d in self.apps.list_namespaced_deployment(self.namespace, label_selector=self._selector()).items:
            agent_id = (d.metadata.labels or {}).get(AGENT_LABEL, "")
            health = "running" if (d.status.ready_replicas or 0) >= 1 else "starting"
            if restarts.get(agent_id):
                health += f", restarted {restarts[agent_id]} time{'s' if restarts[agent_id] != 1 else ''}"
            found.append(Instance(agent_id, f"deployment {d.metadata.name} in {self.namespace}", health))
        seen = {i.agent_id for i in found}
        return found + [Instance(a, where, "gone") for a, where in known.items() if a not in seen]

    def stop(self, agent_ids: list[str], known: dict[str, str], grace: float) -> None:
        from kubernetes.client.exceptions import ApiException

        for agent_id in agent_ids:
            name = dns_name("jl-agent", agent_id)
            for delete in (self.apps.delete_namespaced_deployment, self.core.delete_namespaced_secret):
                try:
                    delete(name, self.namespace, propagation_policy="Foreground")
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        deadline = time.monotonic() + grace
        if agent_ids:  # their pods stop gracefully (SIGTERM: a running job gets c.Agent.stop_grace), then they go
            selector = f"{self._selector()},{AGENT_LABEL} in ({','.join(agent_ids)})"
            while (self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
                   or self.apps.list_namespaced_deployment(self.namespace, label_selector=selector).items):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        remaining = [d for d in self.apps.list_namespaced_deployment(
            self.namespace, label_selector=self._selector()).items if d.metadata.deletion_timestamp is None]
        if not remaining:  # the last agent is gone: so are its account and role
            for delete in (self.rbac.delete_namespaced_role_binding, self.rbac.delete_namespaced_role,
                           self.core.delete_namespaced_service_account):
                try:
                    delete(self.account, self.namespace)
                except ApiException as exc:
                    if exc.status != 404:
                        raise

    def leftovers(self) -> list[str]:
        return [(d.metadata.labels or {}).get(AGENT_LABEL, "")
                for d in self.apps.list_namespaced_deployment(self.namespace, label_selector=self._selector()).items]
