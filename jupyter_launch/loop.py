"""One background event loop per process, for sync callers of async code (a kernel's cell, ``Job.follow``).

A kernel already runs a loop in its main thread, so sync code there cannot ``asyncio.run``; job watchers, an
in-kernel agent and the sync wrappers of the clients' async generators run on this loop's thread instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class BackgroundLoop:
    """One daemon thread per process running an asyncio loop: job watchers and an in-kernel agent live here."""

    _lock = threading.Lock()
    _instance: BackgroundLoop | None = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="jupyter-launch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @classmethod
    def get(cls) -> BackgroundLoop:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        # Scheduled from an empty context, the task does not carry the submitting cell's parent header: ipykernel
        # then sends what it publishes as part of the request running at that moment, as it does for any thread.
        # Otherwise every later update would claim to belong to a cell that has long finished.
        return contextvars.Context().run(asyncio.run_coroutine_threadsafe, coro, self.loop)

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        """Step an async iterator on this loop from a sync caller."""
        try:
            while True:
                try:
                    yield self.submit(agen.__anext__()).result()
                except StopAsyncIteration:
                    return
        finally:
            closing = getattr(agen, "aclose", None)
            if closing is not None:
                self.submit(closing()).result()
