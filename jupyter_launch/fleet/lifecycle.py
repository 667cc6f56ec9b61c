"""``queue up``, ``queue down`` and ``queue status``: start a queue's manager in the background, stop it and remove
everything it started (agents, their tokens), and report its agents; every store operation through the client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LocatedError
from ..remote.http import SERVER_ENV, TOKEN_ENV
from ..spec import SpecError, field_line, load_queue_config
from .base import FleetError, Instance, supervisor_classes, supervisor_for
from .manager import ACTIVE, token_name
from .state import FleetState, process_alive

MANAGER_MODULE = "jupyter_launch.fleet.manager"


def _placed(exc: LocatedError, path: str) -> LocatedError:
    """``exc`` with the line of its field in ``path`` when it has none (the refusals made after parsing)."""
    if exc.line is not None or not exc.field:
        return exc
    try:
        line = field_line(Path(path).read_text(encoding="utf-8"), exc.field)
    except (OSError, UnicodeDecodeError, SpecError):
        return exc
    return type(exc)(exc.message, source=exc.source or path, line=line, field=exc.field)


def _manager_alive(state: FleetState | None) -> bool:
    return state is not None and process_alive(state.manager_pid, f"{MANAGER_MODULE} {state.queue}")


def _server(client: Any) -> tuple[str, str]:
    url = getattr(client, "server_url", None)
    if not url:
        raise FleetError("queue up starts remote agents, which work for a Jupyter server with jupyter-launch: give "
                         f"--server URL (or ${SERVER_ENV}), or start one here (`jupyter lab`)")
    return url, client.http.token


def up(client: Any, path: str, words: list[str], *, timeout: float = 120.0) -> str:
    """Create or update the queue in ``path`` and start its manager (unless one runs); a line saying what happened."""
    try:
        config = load_queue_config(path)
        supervisor_for(config, path)
    except (SpecError, FleetError) as exc:
        raise _placed(exc, path) from None
    url, token = _server(client)
    name = config.queue_name
    state = FleetState.load(name)
    if _manager_alive(state):
        assert state is not None
        if (state.provider, state.agent_image, state.server_url) != (config.provider.type, config.agent_image, url):
            raise FleetError(f"queue {name} is up with provider {state.provider}, agent_image {state.agent_image} "
                             f"for {state.server_url}; `jupyter launch queue down {name}` first", source=path)
        client.create_queue(config, replace=True)
        return f"queue {name} updated; its manager (pid {state.manager_pid}) follows the new bounds"
    client.create_queue(config, replace=True)
    FleetState(name, config.provider.type, url, config.agent_image).save()
    folder = FleetState.folder(name)
    env = {k: v for k, v in os.environ.items() if k not in (SERVER_ENV, TOKEN_ENV)}
    env.update({SERVER_ENV: url, TOKEN_ENV: token})
    with open(folder / "manager.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", MANAGER_MODULE, name, *words], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # outlives this command and its terminal
    deadline = time.monotonic() + timeout
    while True:
        state = FleetState.load(name)
        if state is not None and state.ready and state.manager_pid == proc.pid:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (folder / "manager.log").read_text(errors="replace").strip().splitlines()[-5:]
            if proc.poll() is None:
                proc.terminate()
            raise FleetError(f"the manager of queue {name} did not start; the end of {folder / 'manager.log'}:\n"
                             + "\n".join(tail))
        time.sleep(0.1)
    return (f"queue {name} up ({config.provider.type}): {len(state.agents)} agent(s) now, between "
            f"{config.min_instances} and {config.max_instances or max(config.min_instances, 1)} with demand; "
            f"manager pid {proc.pid}, logs in {folder}")


@dataclass
class DownReport:
    stopped: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)


def down(client: Any, name: str, words: list[str], *, timeout: float = 120.0) -> DownReport:
    """Stop the queue's manager (which stops its agents and revokes their tokens), then remove whatever it left: a
    manager that died leaves agents running and tokens active. The queue and its jobs stay."""
    report = DownReport()
    prefix = token_name(name, "")
    active = {r.id for r in client.agent_tokens() if r.name.startswith(prefix)}
    state = FleetState.load(name)
    if _manager_alive(state):
        assert state is not None and state.manager_pid is not None
        os.kill(state.manager_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _manager_alive(state) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _manager_alive(state):
            os.kill(state.manager_pid, signal.SIGKILL)
        left = FleetState.load(name)
        report.stopped = sorted(set(state.agents) - set(left.agents if left else ()))
        state = left
    provider = state.provider if state else None
    if provider is None:
        try:
            provider = client.queue(name).provider
        except Exception:
            provider = None
    classes = supervisor_classes()
    if provider in classes:
        try:
            config_doc = client.queue(name).config
        except Exception:
            config_doc = {"agent_image": state.agent_image if state else None, "provider": {"type": provider}}
        supervisor = classes[provider](name, config_doc, state.server_url if state else "", words)
        known = {a: e.where for a, e in (state.agents.items() if state else ())}
        rest = sorted(set(known) | set(supervisor.leftovers()))
        supervisor.stop(rest, known, 30.0)  # also with none left: what the agents shared (a Role) goes with them
        report.stopped += rest
    for record in client.agent_tokens():
        if record.name.startswith(prefix) and not record.revoked:
            client.revoke_agent_token(record.id)
    report.revoked = sorted(active)  # by the manager as it stopped, or just now
    if state is not None:
        state.remove()
    return report


@dataclass
class AgentStatus:
    agent_id: str
    where: str
    health: str
    live: bool  # the server has seen it lately (it serves the queue)
    job: str | None


def status(client: Any, name: str, words: list[str]) -> tuple[FleetState | None, bool, list[AgentStatus]]:
    """The queue's state file, whether its manager runs, and each agent: where, its health there, whether it is
    registered with the server (a live agent) and the job it holds."""
    queue = client.queue(name)
    state = FleetState.load(name)
    if state is None:
        return None, False, []
    supervisor = supervisor_classes()[state.provider](name, queue.config, state.server_url, words)
    known = {a: e.where for a, e in state.agents.items()}
    instances: list[Instance] = supervisor.instances(known)
    held = {j.agent_id: j.id for j in client.jobs(queue=name, state=ACTIVE, limit=500) if j.agent_id}
    live = set(queue.agents)
    rows = [AgentStatus(i.agent_id, i.where, i.health, i.agent_id in live, held.get(i.agent_id))
            for i in sorted(instances, key=lambda i: i.agent_id)]
    return state, _manager_alive(state), rows
