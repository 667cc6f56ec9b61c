"""Warm containers: ``min_instances`` idle containers of a queue's image, each used by one job (``exec``) then
replaced, so a job starts without a container create and start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from .config import DockerProvider
from .container import AGENT_LABEL, IDLE, MANAGED_BY, QUEUE_LABEL, WARM_LABEL, isolation, remove


def create_warm(api: Any, queue: str, config: DockerProvider, image: str, agent_id: str) -> str:
    """A warm container: the queue's image, idle, with the job's security settings, labelled with its agent so
    another agent can tell when it was left by one that is gone (blocking)."""
    cid = api.create_container(image=image, command=IDLE, working_dir="/",
                               host_config=api.create_host_config(**isolation(config)),
                               labels={MANAGED_BY: "jupyter-launch", QUEUE_LABEL: queue, WARM_LABEL: "1",
                                       AGENT_LABEL: agent_id})["Id"]
    api.start(cid)
    return cid


class WarmPool:
    """``min_instances`` idle containers of one queue's image, each used by one job then replaced."""

    def __init__(self, api: Any, queue: str, config: DockerProvider, image: str, agent_id: str,
                 log: logging.Logger | logging.LoggerAdapter):
        self.api, self.queue, self.config, self.image, self.agent_id = api, queue, config, image, agent_id
        self.size = config.min_instances
        self.log = log
        self._ready: list[str] = []
        self._spawning = 0
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    def top_up(self) -> None:
        while not self._closed and len(self._ready) + self._spawning < self.size:
            self._spawning += 1
            task = asyncio.get_running_loop().create_task(self._spawn())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _spawn(self) -> None:
        try:
            cid = await asyncio.to_thread(create_warm, self.api, self.queue, self.config, self.image, self.agent_id)
            if self._closed:
                await asyncio.to_thread(remove, self.api, cid)
            else:
                self._ready.append(cid)
        except Exception:
            self.log.warning("queue %s: could not start a warm container of %s", self.queue, self.image,
                             exc_info=True)
        finally:
            self._spawning -= 1

    def take(self) -> str | None:
        cid = self._ready.pop(0) if self._ready else None
        self.top_up()
        return cid

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        for cid in self._ready:
            await asyncio.to_thread(remove, self.api, cid)
        self._ready.clear()
