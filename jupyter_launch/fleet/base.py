"""The one interface of the queue manager's supervisors (one per provider: where a queue's agents run and how they
are started, checked and stopped), and their registry: ``c.Fleet.supervisor_classes`` overrides it, as
``c.Agent.backend_classes`` does the backends."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, ClassVar

from traitlets.config import LoggingConfigurable

from ..errors import LocatedError
from ..spec import QueueConfig


class FleetError(LocatedError, ValueError):
    """A queue the manager cannot start agents for, or a provider that refuses: one line naming what to fix."""


@dataclass
class Instance:
    """One agent as its provider sees it: where it runs and its health there."""

    agent_id: str
    where: str
    health: str  # running, restarting, exited (code N), gone


def agent_command(python: str, server_url: str, queue: str, agent_id: str, words: list[str]) -> list[str]:
    """The command line of one managed agent: a remote agent for ``server_url`` taking one job at a time (an agent is
    the unit the fleet scales by), its token in ``$JUPYTER_LAUNCH_TOKEN``, never here."""
    return [python, "-m", "jupyter_launch.cli", "agent", "--server", server_url, "--queue", queue, "--max-jobs", "1",
            f"--Agent.agent_id={agent_id}", *words]


class Supervisor(LoggingConfigurable):
    """Starts, checks and stops one queue's agents where its provider runs. Blocking: call from a thread."""

    provider: ClassVar[str]

    def __init__(self, queue: str, config_doc: dict[str, Any], server_url: str, words: list[str], **kwargs: Any):
        super().__init__(**kwargs)
        self.queue = queue
        self.config_doc = config_doc  # the queue's config as stored (QueueConfig dumped)
        self.server_url = server_url
        self.words = words  # --Class.trait=value words handed on to each agent

    @classmethod
    def check(cls, queue: QueueConfig, source: str | None) -> None:
        """Refuse, before anything starts, a queue this provider cannot start agents for."""

    def start(self, agent_id: str, token: str) -> str:
        """Start one agent; where it runs (``pid 123``, ``container 0a1b2c``)."""
        raise NotImplementedError

    def keep(self, agent_id: str, token: str) -> None:
        """Called by the manager at every tick for each agent it holds: start again one that died, where the
        provider does not do it itself."""

    def instances(self, known: dict[str, str]) -> list[Instance]:
        """The agents of this queue that run here (``known``: agent id -> where, from the manager's state)."""
        raise NotImplementedError

    def stop(self, agent_ids: list[str], known: dict[str, str], grace: float) -> None:
        """Stop these agents (gracefully: what they run gets ``grace`` seconds) and remove what they leave."""
        raise NotImplementedError

    def leftovers(self) -> list[str]:
        """Agents of this queue found running that no state names (a manager killed between start and save)."""
        return []


def supervisor_classes() -> dict[str, type[Supervisor]]:
    from .docker import DockerSupervisor
    from .kubernetes import KubernetesSupervisor
    from .local import LocalSupervisor

    return {"local": LocalSupervisor, "docker": DockerSupervisor, "kubernetes": KubernetesSupervisor}


def supervisor_for(queue: QueueConfig, source: str | None = None,
                   classes: dict[str, type[Supervisor]] | None = None) -> type[Supervisor]:
    """The supervisor class of the queue's provider; cloud providers refused as ``queue create`` refuses them, and a
    provider with a backend but no supervisor (slurm) with what to run instead."""
    queue.check_runnable(source)
    classes = classes or supervisor_classes()
    kind = queue.provider.type
    if kind not in classes:
        raise FleetError(f"the queue manager cannot start agents for provider {kind!r} (it can for "
                         f"{', '.join(classes)}); run `jupyter launch agent --server URL --queue {queue.queue_name}` "
                         "where its jobs should run", source=source, field="provider.type")
    supervisor = classes[kind]
    supervisor.check(queue, source)
    return supervisor


PYTHON = sys.executable
