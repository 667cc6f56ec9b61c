"""The queue manager's commands: ``jupyter launch queue up FILE | down NAME | status NAME`` and ``jupyter launch
agent-image build``. ``cli.main`` registers them with :func:`add_fleet_commands`; the work is in :mod:`..fleet`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from .main import _client, _table, printable


def cmd_queue_up(args: argparse.Namespace) -> int:
    from ..fleet.lifecycle import up

    print(printable(up(_client(args), args.file, args.config_words)))
    return 0


def cmd_queue_down(args: argparse.Namespace) -> int:
    from ..fleet.lifecycle import down

    report = down(_client(args), args.name, args.config_words)
    print(printable(f"queue {args.name} down: {len(report.stopped)} agent(s) stopped, {len(report.revoked)} "
                    "token(s) revoked (the queue and its jobs stay)"))
    return 0


def cmd_queue_status(args: argparse.Namespace) -> int:
    from ..fleet.lifecycle import status

    client = _client(args)
    state, running, rows = status(client, args.name, args.config_words)
    if args.json:
        print(json.dumps(None if state is None else {
            "queue": state.queue, "provider": state.provider, "server_url": state.server_url,
            "manager_pid": state.manager_pid if running else None,
            "agents": [dataclasses.asdict(r) for r in rows]}, indent=1))
        return 0
    if state is None:
        print(f"queue {args.name} is not up here (`jupyter launch queue up FILE` starts its agents)")
        return 0
    queue = client.queue(args.name)
    manager = f"manager pid {state.manager_pid}" if running else "manager NOT running (`queue down` cleans up)"
    print(printable(f"queue {state.queue} ({state.provider}) for {state.server_url}: {manager}; "
                    f"{len(rows)} agent(s), min {queue.min_instances}, max "
                    f"{queue.max_instances or max(queue.min_instances, 1)}; {queue.counts.get('queued', 0)} queued"))
    if rows:
        print(_table([[r.agent_id, r.where, r.health, "yes" if r.live else "no", r.job or "-"] for r in rows],
                     ["AGENT", "WHERE", "HEALTH", "LIVE", "JOB"]))
    return 0


def cmd_agent_image_build(args: argparse.Namespace) -> int:
    import docker

    from ..fleet.image import AgentImageBuilder

    api = docker.APIClient(version="auto", timeout=600)
    try:
        out = sys.stderr if not args.verbose else sys.stdout
        tag = AgentImageBuilder(api, base_image=args.base).build(
            args.tag, on_output=lambda text: (out.write(text), out.flush()) if args.verbose else None)
    finally:
        api.close()
    print(tag)
    return 0


def add_fleet_commands(queue_actions: Any, server_options: argparse.ArgumentParser, sub: Any) -> None:
    """Add ``queue up|down|status`` to the ``queue`` actions and ``agent-image build`` to the commands."""
    up = queue_actions.add_parser("up", help="create or update a queue from a YAML file and start its agents where its "
                                  "provider runs (local processes, Docker containers from agent_image), between "
                                  "min_instances and max_instances with demand; --Fleet.idle_seconds=S sets how long "
                                  "an extra agent may idle", parents=[server_options])
    up.add_argument("file")
    up.set_defaults(func=cmd_queue_up)
    dn = queue_actions.add_parser("down", help="stop and remove the agents `queue up` started and revoke their tokens "
                                  "(the queue and its jobs stay)", parents=[server_options])
    dn.add_argument("name")
    dn.set_defaults(func=cmd_queue_down)
    st = queue_actions.add_parser("status", help="the agents `queue up` started: where they run, their health, the "
                                  "job each holds", parents=[server_options])
    st.add_argument("name")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_queue_status)

    ai = sub.add_parser("agent-image", help="the image a queue's agent_image names")
    ais = ai.add_subparsers(dest="agent_image_command", metavar="ACTION")
    b = ais.add_parser("build", help="build an image with this jupyter-launch installed, from a local base image")
    b.add_argument("--tag", help="also tag it T (default tag: jupyter-launch-agent:<hash of its contents>)")
    b.add_argument("--base", default="launch-python:bookworm", help="the base image, with Python 3 and venv "
                   "(default launch-python:bookworm, from ci/python-base.sh)")
    b.add_argument("--verbose", "-v", action="store_true", help="print the build's output")
    b.set_defaults(func=cmd_agent_image_build)
