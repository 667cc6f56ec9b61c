"""The ``local`` provider's agents: ``jupyter launch agent --server URL`` processes on this machine, children of the
queue's manager, started again when one dies; each logs to ``fleet/QUEUE/AGENT.log`` under the launch home."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any, ClassVar

from traitlets import Float

from ..remote.http import TOKEN_ENV
from .base import PYTHON, Instance, Supervisor, agent_command
from .state import FleetState, process_alive


class LocalSupervisor(Supervisor):
    """Agent processes of one queue on this machine."""

    provider: ClassVar[str] = "local"
    restart_backoff = Float(60.0, config=True, help="The longest wait before starting again an agent process that "
                            "keeps dying (the wait doubles from 1 s at each death within a minute of its start).")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._procs: dict[str, subprocess.Popen] = {}
        self._started: dict[str, float] = {}
        self._deaths: dict[str, tuple[int, float]] = {}  # agent id -> (quick deaths in a row, when it may start again)

    def _spawn(self, agent_id: str, token: str) -> subprocess.Popen:
        folder = FleetState.folder(self.queue)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        env[TOKEN_ENV] = token
        with open(folder / f"{agent_id}.log", "ab") as log:
            proc = subprocess.Popen(agent_command(PYTHON, self.server_url, self.queue, agent_id, self.words),
                                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self._procs[agent_id] = proc
        self._started[agent_id] = time.time()
        return proc

    def start(self, agent_id: str, token: str) -> str:
        return f"pid {self._spawn(agent_id, token).pid}"

    def keep(self, agent_id: str, token: str) -> None:
        proc = self._procs.get(agent_id)
        if proc is None or proc.poll() is None:
            return
        deaths, not_before = self._deaths.get(agent_id, (0, 0.0))
        now = time.time()
        if now < not_before:
            return
        deaths = deaths + 1 if now - self._started.get(agent_id, 0.0) < 60 else 1
        self.log.warning("agent %s exited with code %s; starting it again", agent_id, proc.returncode)
        self._spawn(agent_id, token)
        self._deaths[agent_id] = (deaths, now + min(self.restart_backoff, 2.0 ** (deaths - 1)))

    def _pid(self, agent_id: str, where: str) -> int | None:
        proc = self._procs.get(agent_id)
        if proc is not None:
            return proc.pid
        return int(where.split()[-1]) if where.startswith("pid ") else None

    def instances(self, known: dict[str, str]) -> list[Instance]:
        found = []
        for agent_id, where in known.items():
            pid = self._pid(agent_id, where)
            alive = process_alive(pid, f"--Agent.agent_id={agent_id}")
            found.append(Instance(agent_id, f"pid {pid}", "running" if alive else "exited"))
        return found

    def stop(self, agent_ids: list[str], known: dict[str, str], grace: float) -> None:
        pids = {a: self._pid(a, known.get(a, "")) for a in agent_ids}
        pids = {a: p for a, p in pids.items() if process_alive(p, f"--Agent.agent_id={a}")}
        for pid in pids.values():
            os.kill(pid, signal.SIGTERM)  # graceful: a running job gets c.Agent.stop_grace, then is handed back
        deadline = time.monotonic() + grace
        for agent_id, pid in pids.items():
            proc = self._procs.get(agent_id)
            while process_alive(pid, f"--Agent.agent_id={agent_id}") and time.monotonic() < deadline:
                if proc is not None and proc.poll() is not None:
                    break
                time.sleep(0.1)
            if process_alive(pid, f"--Agent.agent_id={agent_id}"):
                os.kill(pid, signal.SIGKILL)
            if proc is not None:
                proc.wait()
        for agent_id in agent_ids:
            self._procs.pop(agent_id, None)
            self._started.pop(agent_id, None)
            self._deaths.pop(agent_id, None)
