"""``Scheduler``: fires the store's schedules, in whatever agent or Jupyter server runs on that store.

Every agent on a store in this process and every server starts one; the ``scheduler`` lease in the store decides
which of them fires, and the store moves a schedule's next time in the transaction that queues its job
(``SQLStore.fire_schedule``), so each time fires once however many schedulers run, even two that both believe
they hold the lease. A scheduler ticks at each whole second; a time passed while nothing ran (everything was down)
fires once when a scheduler comes back (``missed = "once"``) or not at all (``"skip"``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from typing import Any, Protocol, runtime_checkable

from traitlets import Any as AnyTrait
from traitlets import Callable, Enum, Float, Unicode, default
from traitlets.config import LoggingConfigurable

from .cron import Cron
from .store import JobRecord, ScheduleRecord

LEASE_NAME = "scheduler"
DUE_BATCH = 500  # due schedules read per query


@runtime_checkable
class ScheduleFiring(Protocol):
    """A store a scheduler can fire from: one in this process (``SQLStore``). A remote agent's store (over HTTP)
    has none of this: the server it talks to fires the schedules."""

    def take_lease(self, name: str, holder: str, seconds: float, *, now: float | None = None) -> bool: ...

    def release_lease(self, name: str, holder: str) -> None: ...

    def due_schedules(self, now: float, *, limit: int = 500) -> list[ScheduleRecord]: ...

    def fire_schedule(self, schedule_id: str, due_at: float, next_run_at: float | None, *, run: bool,
                      now: float | None = None) -> JobRecord | None: ...

    def fire_schedules(self, fires: list[tuple[str, float, float | None, bool]], *,
                       now: float | None = None) -> list[JobRecord | None]: ...


class Scheduler(LoggingConfigurable):
    """Fires due schedules through a ``LaunchService`` while it holds the store's ``scheduler`` lease. Configure as
    ``c.Scheduler.*`` (in the server's config or `jupyter launch agent`'s)."""

    missed = Enum(["once", "skip"], default_value="once", config=True,
                  help="A schedule's time that passed while no scheduler ran (more than `grace` seconds late): "
                       "'once' queues one job for all the times missed, 'skip' queues none and waits for the next.")
    grace = Float(60.0, config=True, help="Seconds late a time may fire and not count as missed.")
    lease_seconds = Float(10.0, config=True,
                          help="How long the scheduler lease holds; its holder renews it every third of this. When "
                               "the holder stops answering, another scheduler takes over within 4/3 of this (a "
                               "holder that stops cleanly gives it up at once).")
    tick_interval = Float(1.0, config=True, help="Seconds between looks at the due schedules (at whole seconds).")
    holder = Unicode(config=True, help="This scheduler's name in the lease.")
    clock = Callable(default_value=time.time, help="The time source (Unix seconds); tests inject their own.")
    service = AnyTrait(help="The LaunchService jobs are queued through.")

    @default("holder")
    def _default_holder(self) -> str:
        return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.holds = False
        self._checked_at: float | None = None
        self._stopping = asyncio.Event()

    @property
    def store(self) -> Any:
        return self.service.store

    def _hold(self, now: float) -> bool:
        """Whether this scheduler holds the lease: asked of the store once every third of the lease (taking it when
        free or lapsed, renewing it when held)."""
        if self._checked_at is None or not 0 <= now - self._checked_at < self.lease_seconds / 3:
            self.holds = self.store.take_lease(LEASE_NAME, self.holder, self.lease_seconds, now=now)
            self._checked_at = now
        return self.holds

    def tick(self) -> list[JobRecord]:
        """Fire what is due now, when this scheduler holds the lease; the jobs queued."""
        now = self.clock()
        if not self._hold(now):
            return []
        fired: list[JobRecord] = []
        for batch in self._due(now):
            fires = []
            for schedule in batch:
                run = self.missed == "once" or now - schedule.next_run_at <= self.grace
                fires.append((schedule, Cron(schedule.cron).next_after(now, schedule.tz), run))
            try:
                jobs = self.service.fire_schedules(fires, now=now)
            except Exception:  # one of them cannot queue its job (its queue deleted, say): each on its own
                jobs = [self._fire_one(*fire, now=now) for fire in fires]
            for (schedule, _, run), job in zip(fires, jobs):
                if job is not None:
                    fired.append(job)
                    self.log.info("schedule %s (%s) queued job %s on %s", schedule.id, schedule.name, job.id,
                                  job.queue)
                elif not run:
                    self.log.info("schedule %s (%s): its time %.0fs ago was missed; skipped (c.Scheduler.missed)",
                                  schedule.id, schedule.name, now - schedule.next_run_at)
        return fired

    def _fire_one(self, schedule: ScheduleRecord, next_run: float | None, run: bool, *, now: float) -> Any:
        try:
            return self.service.fire_schedule(schedule, next_run, run=run, now=now)
        except Exception as exc:  # this time passes; the other schedules still fire
            self.log.warning("schedule %s (%s) could not queue its job: %s", schedule.id, schedule.name, exc)
            self.service.fire_schedule(schedule, next_run, run=False, now=now)
            return None

    def _due(self, now: float) -> Any:
        """The due schedules, a batch at a time (each fired one moves past ``now``, so the next batch is new ones);
        a schedule that could not be moved on is not asked about twice."""
        seen: set[str] = set()
        while True:
            batch = [s for s in self.store.due_schedules(now, limit=DUE_BATCH) if s.id not in seen]
            if not batch:
                return
            seen.update(s.id for s in batch)
            yield batch

    async def run(self) -> None:
        """Tick at each whole second (``tick_interval``) until :meth:`stop`, also one that came before the first tick
        (an agent stopped as soon as it started)."""
        while not self._stopping.is_set():
            try:
                await asyncio.to_thread(self.tick)
            except Exception:
                self.log.warning("the scheduler's tick failed; retrying", exc_info=True)
            now = self.clock()
            wait = self.tick_interval - (now % self.tick_interval) + 0.002  # just past the next whole second
            try:
                await asyncio.wait_for(self._stopping.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def stop(self) -> None:
        """Stop ticking and give the lease up, so another scheduler takes over at once."""
        self._stopping.set()
        if self.holds:
            self.holds = False
            try:
                await asyncio.to_thread(self.store.release_lease, LEASE_NAME, self.holder)
            except Exception:  # it lapses by itself
                self.log.warning("could not release the scheduler lease", exc_info=True)
