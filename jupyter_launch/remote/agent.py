"""A remote agent: the same ``Agent`` over the server's HTTP API (``jupyter launch agent --server URL``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..store import BlobStore
from .store import HttpBlobs, HttpStore


def make_remote_agent(server_url: str, token: str, queues: list[str], *, job_types: list[str] | None = None,
                      cache_dir: str | Path | None = None, claim_wait: float = 20.0, **traits: Any) -> Any:
    """An ``Agent`` that works for a server over HTTP (``jupyter launch agent --server URL``)."""
    from ..agent import Agent
    from ..paths import launch_home

    store = HttpStore(server_url, agent_token=token, claim_wait=claim_wait)
    blobs = HttpBlobs(store.agent_http, BlobStore(Path(cache_dir) if cache_dir else launch_home() / "agent-cache"))
    traits.setdefault("wake_socket", False)
    return Agent(store=store, blobs=blobs, queues=queues, job_types=job_types or [], **traits)


async def run_remote_agent(agent: Any, stop: Any = None) -> None:
    """Run a remote agent until ``stop`` (an asyncio.Event) is set or its token stops working, then stop it
    gracefully (``agent.serve``: what it runs is finished or handed back)."""
    import asyncio

    from ..agent import serve

    try:
        await serve(agent, stop or asyncio.Event())
    finally:
        agent.store.close()
