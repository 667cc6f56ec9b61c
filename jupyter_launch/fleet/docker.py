"""The ``docker`` provider's agents: containers from the queue's ``agent_image`` on its engine, each with the engine's
socket (its jobs are sibling containers, their folders copied in) and the restart policy ``unless-stopped``, so the
engine starts again one that dies, and one whose engine restarts, without the manager."""

from __future__ import annotations

from typing import Any, ClassVar

from traitlets import Unicode

from ..remote.http import TOKEN_ENV
from ..spec import QueueConfig
from .base import FleetError, Instance, Supervisor, agent_command

FLEET_LABEL = "jupyter-launch.fleet"
AGENT_LABEL = "jupyter-launch.fleet-agent"
IN_IMAGE_PYTHON = "python"  # the image's own: the agent image puts its virtual environment first on PATH


class DockerSupervisor(Supervisor):
    """Agent containers of one queue on its Docker engine."""

    provider: ClassVar[str] = "docker"
    network_mode = Unicode("host", config=True, help="The agent containers' network: host (the default) lets them "
                           "reach a server on the engine host's loopback, as the URL given to `queue up` names it.")
    socket_path = Unicode("/var/run/docker.sock", config=True, help="The engine's socket on its host, mounted into "
                          "each agent container at the same path (the agent runs its jobs on that engine).")
    ca_bundle = Unicode("/etc/ssl/certs/ca-certificates.crt", config=True, help="A CA bundle on the engine's host "
                        "mounted read-only at the same path, so the images an agent builds reach the registries this "
                        "machine trusts; empty for none.")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        import docker

        base_url = (self.config_doc.get("provider") or {}).get("base_url")
        self.api = docker.APIClient(version="auto", timeout=60, **({"base_url": base_url} if base_url else {}))
        self.image = self.config_doc.get("agent_image")

    @classmethod
    def check(cls, queue: QueueConfig, source: str | None) -> None:
        if not queue.agent_image:
            raise FleetError("the docker provider starts its agents from agent_image, and the queue names none "
                             "(`jupyter launch agent-image build` makes one)", source=source, field="agent_image")
        import docker
        import docker.errors

        base_url = getattr(queue.provider, "base_url", None)
        try:
            api = docker.APIClient(version="auto", timeout=30, **({"base_url": base_url} if base_url else {}))
        except docker.errors.DockerException as exc:
            raise FleetError(f"the Docker engine does not answer ({exc})", source=source,
                             field="provider.base_url" if base_url else "provider.type") from None
        try:
            api.inspect_image(queue.agent_image)
        except docker.errors.ImageNotFound:
            raise FleetError(f"image {queue.agent_image} is not on the engine (build it with `jupyter launch "
                             f"agent-image build --tag {queue.agent_image}`, or pull it)", source=source,
                             field="agent_image") from None
        finally:
            api.close()

    def _containers(self) -> list[dict[str, Any]]:
        return self.api.containers(all=True, filters={"label": f"{FLEET_LABEL}={self.queue}"})

    def start(self, agent_id: str, token: str) -> str:
        binds = {self.socket_path: {"bind": self.socket_path, "mode": "rw"}}
        if self.ca_bundle:
            binds[self.ca_bundle] = {"bind": self.ca_bundle, "mode": "ro"}
        host_config = self.api.create_host_config(binds=binds, network_mode=self.network_mode,
                                                  restart_policy={"Name": "unless-stopped"})
        words = [*self.words, "--DockerBackend.transfer=copy"]
        container = self.api.create_container(
            self.image, command=agent_command(IN_IMAGE_PYTHON, self.server_url, self.queue, agent_id, words),
            name=f"jupyter-launch-agent-{agent_id}", environment={TOKEN_ENV: token, "PYTHONUNBUFFERED": "1"},
            labels={FLEET_LABEL: self.queue, AGENT_LABEL: agent_id}, host_config=host_config)["Id"]
        self.api.start(container)
        return f"container {container[:12]}"

    def instances(self, known: dict[str, str]) -> list[Instance]:
        found = []
        for c in self._containers():
            agent_id = (c.get("Labels") or {}).get(AGENT_LABEL, "")
            health = c.get("State", "")
            if health == "exited":
                health = f"exited ({c.get('Status', '')})"
            restarts = self.api.inspect_container(c["Id"]).get("RestartCount", 0)
            if restarts:
                health += f", restarted {restarts} time{'s' if restarts != 1 else ''}"
            found.append(Instance(agent_id, f"container {c['Id'][:12]}", health))
        seen = {i.agent_id for i in found}
        return found + [Instance(a, where, "gone") for a, where in known.items() if a not in seen]

    def stop(self, agent_ids: list[str], known: dict[str, str], grace: float) -> None:
        import docker.errors

        wanted = set(agent_ids)
        for c in self._containers():
            if (c.get("Labels") or {}).get(AGENT_LABEL) in wanted:
                try:  # SIGTERM, then SIGKILL after grace: a running job gets c.Agent.stop_grace, then is handed back
                    self.api.stop(c["Id"], timeout=int(grace))
                    self.api.remove_container(c["Id"], force=True)
                except docker.errors.NotFound:
                    pass

    def leftovers(self) -> list[str]:
        return [(c.get("Labels") or {}).get(AGENT_LABEL, "") for c in self._containers()]
