"""What a queue's manager started, on disk under the launch home (``fleet/QUEUE/``): its pid, the server its agents
work for, and each agent's id, token id and where it runs; beside it the manager's and the local agents' logs. Written
by the manager before and after each change, so ``queue status`` and ``queue down`` (other processes) see it, and
``down`` can clean up after a manager that died."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..paths import launch_home


@dataclass
class AgentEntry:
    """One agent the manager started: its id in the store, its token's id, and where it runs (a pid, a container)."""

    agent_id: str
    token_id: str
    where: str = ""
    started_at: float = field(default_factory=time.time)


@dataclass
class FleetState:
    queue: str
    provider: str
    server_url: str
    agent_image: str | None = None
    manager_pid: int | None = None
    ready: bool = False
    agents: dict[str, AgentEntry] = field(default_factory=dict)

    @staticmethod
    def folder(queue: str) -> Path:
        return launch_home() / "fleet" / queue

    @classmethod
    def path(cls, queue: str) -> Path:
        return cls.folder(queue) / "state.json"

    @classmethod
    def load(cls, queue: str) -> FleetState | None:
        try:
            data: dict[str, Any] = json.loads(cls.path(queue).read_text())
        except FileNotFoundError:
            return None
        agents = {k: AgentEntry(**v) for k, v in data.pop("agents", {}).items()}
        return cls(**data, agents=agents)

    def save(self) -> None:
        """Write atomically (a reader never sees half a file), readable by its owner only."""
        folder = self.folder(self.queue)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = folder / f".state.{os.getpid()}.json"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=1)
        os.replace(tmp, self.path(self.queue))

    def remove(self) -> None:
        self.path(self.queue).unlink(missing_ok=True)


def process_alive(pid: int | None, marker: str) -> bool:
    """True when ``pid`` runs and its command line contains ``marker`` (a pid reused by another program is not ours)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: trust the pid
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
        return False  # exited, not yet reaped by its parent
    return marker in cmdline
