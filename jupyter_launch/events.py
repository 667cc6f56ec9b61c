"""Store events as asyncio wake-ups: followers of a job's log and remote agents waiting to claim, on any event loop.

The store calls back on whatever thread wrote (an agent's store thread, a request's); each waiter is woken on its own
loop with ``call_soon_threadsafe``, so one hub serves the server's loop, a CLI's ``asyncio.run`` and a kernel's
background loop alike. Waiting is cheap: a dict lookup per log event, whatever the number of followers.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any


class StoreEvents:
    """Turns the store's in-process ``log``/``state``/``enqueued`` events into asyncio wake-ups for waiters."""

    def __init__(self, store: Any):
        self.store = store
        self._lock = threading.Lock()
        self._followers: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._claimers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._unsubscribe: list[Callable[[], None]] = []

    def _subscribe(self) -> None:
        # Lazily, once: a store without in-process events (over HTTP) leaves waiters to their poll.
        if not self._unsubscribe and hasattr(self.store, "subscribe"):
            self._unsubscribe = [self.store.subscribe("log", self._on_job),
                                 self.store.subscribe("state", self._on_job),
                                 self.store.subscribe("enqueued", self._on_enqueued)]

    def close(self) -> None:
        with self._lock:
            unsubscribe, self._unsubscribe = self._unsubscribe, []
        for unsub in unsubscribe:
            unsub()

    @staticmethod
    def _set(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]) -> None:
        for loop, event in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    def _on_job(self, job_id: str, *_: Any) -> None:
        with self._lock:  # a snapshot: waiters come and go on other threads
            # A finished job frees capacity too: claimers are cheap to wake.
            waiters = [*self._followers.get(job_id, ()), *self._claimers]
        self._set(waiters)

    def _on_enqueued(self, *_: Any) -> None:
        with self._lock:
            waiters = list(self._claimers)
        self._set(waiters)

    def watch(self, job_id: str) -> asyncio.Event:
        """An event set whenever the job's log grows or its state changes (on the calling loop)."""
        event = asyncio.Event()
        with self._lock:
            self._subscribe()
            self._followers.setdefault(job_id, set()).add((asyncio.get_running_loop(), event))
        return event

    def unwatch(self, job_id: str, event: asyncio.Event) -> None:
        with self._lock:
            waiters = self._followers.get(job_id)
            if waiters is not None:
                waiters.difference_update({w for w in waiters if w[1] is event})
                if not waiters:
                    del self._followers[job_id]

    def claim_waiter(self) -> asyncio.Event:
        """An event set when a job is enqueued or capacity frees up."""
        event = asyncio.Event()
        with self._lock:
            self._subscribe()
            self._claimers.add((asyncio.get_running_loop(), event))
        return event

    def release_claim_waiter(self, event: asyncio.Event) -> None:
        with self._lock:
            self._claimers.difference_update({w for w in self._claimers if w[1] is event})

    @property
    def follower_count(self) -> int:
        return sum(len(v) for v in list(self._followers.values()))
