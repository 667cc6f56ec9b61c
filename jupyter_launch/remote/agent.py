"""A remote agent: the same ``Agent`` over the server's HTTP API (``jupyter launch agent --server URL``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from ..store import BlobStore
from .store import HttpBlobs, HttpStore


def make_remote_agent(server_url: str, token: str, queues: list[str], *, job_types: list[str] | None = None,
                      cache_dir: str | Path | None = None, claim_wait: float = 20.0, **traits: Any) -> Any:
    """An ``Agent`` that works for a server over HTTP (``jupyter launch agent --server URL --token T``)."""
    from ..agent import Agent
    from ..paths import launch_home

    store = HttpStore(server_url, agent_token=token, claim_wait=claim_wait)
    blobs = HttpBlobs(store.agent_http, BlobStore(Path(cache_dir) if cache_dir else launch_home() / "agent-cache"))
    traits.setdefault("wake_socket", False)
    return Agent(store=store, blobs=blobs, queues=queues, job_types=job_types or [], **traits)


async def run_remote_agent(agent: Any, stop: Any = None) -> None:
    """Run a remote agent until ``stop`` (an asyncio.Event) is set or its token stops working."""
    import asyncio

    stop = stop or asyncio.Event()
    await agent.start()
    task = asyncio.create_task(agent.run())
    stopping = asyncio.create_task(stop.wait())
    try:
        # A refused token ends the agent's loop by itself, with one line saying why.
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        await agent.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        agent.store.close()
