"""The server's CLI commands: ``jupyter launch token create|list|revoke`` and ``jupyter launch agent --server``.

``cli.py`` registers them with :func:`add_token_commands` and hands ``agent --server URL`` to :func:`cmd_remote_agent`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from ..remote.http import TOKEN_ENV
from .main import _client, agent_traits, run_in_foreground, printable


def cmd_token_create(args: argparse.Namespace) -> int:
    token, record = _client(args).create_agent_token(args.name, args.queue)
    print(printable(f"agent token {record.id} ({record.name}) for queue(s) {', '.join(record.queues)}; shown once:"),
          file=sys.stderr)
    print(token)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    records = _client(args).agent_tokens(include_revoked=args.all)
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
        return 0
    for r in records:
        state = "revoked" if r.revoked else "active"
        print(printable(f"{r.id}  {r.name}  {','.join(r.queues)}  {state}"))
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    record = _client(args).revoke_agent_token(args.token_id)
    print(printable(f"revoked agent token {record.id} ({record.name}); its agent gets no more work from its next "
                    "call"))
    return 0


def add_token_commands(sub: Any) -> None:
    """Add ``token create|list|revoke`` to the CLI's subparsers."""
    tk = sub.add_parser("token", help="agent tokens for remote agents (admin)")
    ts = tk.add_subparsers(dest="token_command", metavar="ACTION")
    c = ts.add_parser("create", help="create a token scoped to queues; printed once")
    c.add_argument("--name", default="remote-agent",
                   help="who or what the agent is (shown in logs and `token list`; default: remote-agent)")
    c.add_argument("--queue", "-q", action="append", required=True, help="a queue it may serve ('*' for all)")
    c.set_defaults(func=cmd_token_create)
    ls = ts.add_parser("list", help="list tokens (never their secrets)")
    ls.add_argument("--all", action="store_true", help="include revoked tokens")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_token_list)
    rv = ts.add_parser("revoke", help="revoke a token by its id")
    rv.add_argument("token_id")
    rv.set_defaults(func=cmd_token_revoke)


def cmd_remote_agent(args: argparse.Namespace) -> int:
    """``jupyter launch agent --server URL --queue Q`` (the agent token in $JUPYTER_LAUNCH_TOKEN or --token-file):
    work for a server over HTTP."""
    from ..remote.agent import make_remote_agent, run_remote_agent

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(levelname)s] %(message)s")
    token = args.token or os.environ.get(TOKEN_ENV, "")  # cli.cmd_agent has checked there is one
    agent = make_remote_agent(args.server, token, args.queue, job_types=args.job_type,
                              config=args.launch_config.config, **agent_traits(args))
    agent.log = logging.getLogger("jupyter_launch.agent")
    run_in_foreground(agent, run_remote_agent)
    return 1 if agent.store.auth_error is not None else 0
