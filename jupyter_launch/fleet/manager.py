"""A queue's manager: the background process ``queue up`` starts (``python -m jupyter_launch.fleet.manager QUEUE``,
the server's URL and the user's token in its environment). At each tick it reads the queue through the client and
keeps its agents between ``min_instances`` and ``max_instances``: one more for each job waiting for an agent, one
fewer for each agent idle longer than ``c.Fleet.idle_seconds``; each agent with a token of its own scoped to the
queue, revoked when the agent is stopped. On SIGTERM (``queue down``) it stops every agent and revokes every token."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
import uuid
from typing import Any

from traitlets import Dict, Float, Integer
from traitlets.config import LoggingConfigurable

from ..store import NotFound, StoreError
from .base import Supervisor, supervisor_classes
from .state import AgentEntry, FleetState

# Waiting reasons a new agent would end: the others wait for something more agents do not give (the queue's cap, a
# job type or GPUs no agent of this queue has, a sweep's max_parallel).
WAITS_FOR_AN_AGENT = {"no_agent_for_queue", "waiting_for_agent", "waiting_in_line", "requeued", "handed_back"}
ACTIVE = "claimed,starting,running"


def token_name(queue: str, agent_id: str) -> str:
    """The name of a managed agent's token: ``queue down`` revokes every active token named for its queue."""
    return f"fleet:{queue}:{agent_id}"


def bounds(config: dict[str, Any]) -> tuple[int, int]:
    """(fewest, most) agents for a queue's config: ``min_instances``, and ``max_instances`` or, unset, at least one."""
    provider = config.get("provider") or {}
    low = provider.get("min_instances") or 0
    high = provider.get("max_instances") or max(low, 1)
    return low, max(low, high)


class Fleet(LoggingConfigurable):
    """The scaling policy of a queue's manager. Configure as ``c.Fleet.*`` (``queue up --Fleet.idle_seconds=60``)."""

    idle_seconds = Float(300.0, config=True, help="How long an agent above min_instances may hold no job before the "
                         "manager stops it.")
    interval = Float(2.0, config=True, help="Seconds between two looks at the queue.")
    stop_margin = Float(15.0, config=True, help="Seconds an agent may take to stop beyond c.Agent.stop_grace before "
                        "it is killed.")
    max_waiting_read = Integer(500, config=True, help="Waiting jobs read per look (more than max_instances is never "
                               "needed).")
    supervisor_classes = Dict(config=True, help="Provider type -> Supervisor class, overriding the built-in ones.")


class FleetManager:
    """Keeps one queue's agents; every store operation goes through ``client``."""

    def __init__(self, client: Any, state: FleetState, supervisor: Supervisor, policy: Fleet, stop_grace: float):
        self.client = client
        self.state = state
        self.supervisor = supervisor
        self.policy = policy
        self.grace = stop_grace + policy.stop_margin
        self.tokens: dict[str, str] = {}  # agent id -> its token (only here and in the agent's environment)
        self.idle_since: dict[str, float] = {}
        self.log = policy.log

    def known(self) -> dict[str, str]:
        return {a: e.where for a, e in self.state.agents.items()}

    def start_agent(self) -> None:
        agent_id = f"{self.state.queue}-{uuid.uuid4().hex[:8]}"
        token, record = self.client.create_agent_token(token_name(self.state.queue, agent_id), [self.state.queue])
        self.state.agents[agent_id] = AgentEntry(agent_id, record.id)
        self.state.save()  # before it runs: `queue down` finds it even if this process dies now
        self.tokens[agent_id] = token
        self.state.agents[agent_id].where = self.supervisor.start(agent_id, token)
        self.idle_since[agent_id] = time.time()
        self.state.save()
        self.log.info("started agent %s (%s)", agent_id, self.state.agents[agent_id].where)

    def stop_agents(self, agent_ids: list[str]) -> None:
        if not agent_ids:
            return
        self.supervisor.stop(agent_ids, self.known(), self.grace)
        for agent_id in agent_ids:
            entry = self.state.agents.pop(agent_id)
            self.state.save()
            self.tokens.pop(agent_id, None)
            self.idle_since.pop(agent_id, None)
            try:
                self.client.revoke_agent_token(entry.token_id)
            except StoreError as exc:  # the server is down: `queue down` revokes every active token of the queue
                self.log.warning("stopped agent %s; its token %s is not revoked yet: %s", agent_id, entry.token_id, exc)
            else:
                self.log.info("stopped agent %s and revoked its token %s", agent_id, entry.token_id)

    def tick(self) -> None:
        """One look at the queue, and the agents started or stopped that it calls for."""
        queue = self.client.queue(self.state.queue)
        low, high = bounds(queue.config)
        active = self.client.jobs(queue=queue.name, state=ACTIVE, limit=min(500, high + 100))
        held = {j.agent_id for j in active if j.agent_id}
        waiting = sum(1 for j in self.client.jobs(queue=queue.name, state="queued",
                                                  limit=min(high, self.policy.max_waiting_read))
                      if j.reason in WAITS_FOR_AN_AGENT)
        for instance in self.supervisor.instances(self.known()):
            if instance.health == "gone" and instance.agent_id in self.state.agents:
                self.log.warning("agent %s is gone from %s; replacing it", instance.agent_id, instance.where)
                self.stop_agents([instance.agent_id])
        now = time.time()
        for agent_id in self.state.agents:
            self.supervisor.keep(agent_id, self.tokens[agent_id])
            if agent_id in held:
                self.idle_since.pop(agent_id, None)
            else:
                self.idle_since.setdefault(agent_id, now)
        busy = sum(1 for a in self.state.agents if a in held)
        want = max(low, min(high, busy + waiting))
        while len(self.state.agents) < want:
            self.start_agent()
        surplus = len(self.state.agents) - want
        idle = sorted((since, a) for a, since in self.idle_since.items()
                      if a in self.state.agents and now - since >= self.policy.idle_seconds)
        self.stop_agents([a for _, a in idle[:max(0, surplus)]])

    async def run(self, stop: asyncio.Event) -> None:
        self.state.manager_pid = os.getpid()
        self.state.save()
        try:
            while not stop.is_set():
                try:
                    await asyncio.to_thread(self.tick)
                except Exception as exc:  # a server restarting, an engine hiccup: try again next tick
                    if isinstance(exc, NotFound) or getattr(exc, "status", None) == 404:  # the queue was deleted
                        self.log.warning("queue %s no longer exists; stopping its agents", self.state.queue)
                        return
                    self.log.warning("tick failed: %s: %s", type(exc).__name__, exc)
                if not self.state.ready:
                    self.state.ready = True
                    self.state.save()
                try:
                    await asyncio.wait_for(stop.wait(), self.policy.interval)
                except asyncio.TimeoutError:
                    pass
        finally:
            await asyncio.to_thread(self.stop_agents, list(self.state.agents))
            self.state.manager_pid = None
            self.state.save()


def main(argv: list[str] | None = None) -> int:
    """``python -m jupyter_launch.fleet.manager QUEUE [--Class.trait=value ...]``; the server's URL and the user's
    token come from ``$JUPYTER_LAUNCH_SERVER_URL`` and ``$JUPYTER_LAUNCH_TOKEN``."""
    from ..agent import Agent
    from ..cli.config import LaunchCommand
    from ..remote.client import connect
    from ..remote.http import SERVER_ENV, TOKEN_ENV

    argv = sys.argv[1:] if argv is None else argv
    queue, words = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(levelname)s] %(message)s")
    command = LaunchCommand()
    command.load(words)
    policy = Fleet(config=command.config)
    policy.log = logging.getLogger("jupyter_launch.fleet")
    state = FleetState.load(queue)
    if state is None:
        policy.log.error("no state for queue %s: start it with `jupyter launch queue up FILE`", queue)
        return 2
    client = connect(os.environ[SERVER_ENV], os.environ.get(TOKEN_ENV, ""))
    os.environ.pop(TOKEN_ENV, None)  # the agents get their own tokens, never the user's
    record = client.queue(queue)
    classes = {**supervisor_classes(), **policy.supervisor_classes}
    supervisor = classes[state.provider](queue, record.config, state.server_url, words, config=command.config)
    supervisor.log = policy.log
    stop_grace = float(command.config.get("Agent", {}).get("stop_grace", Agent.stop_grace.default_value))
    manager = FleetManager(client, state, supervisor, policy, stop_grace)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await manager.run(stop)

    asyncio.run(run())
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
