"""The ``Store`` protocol: every store operation the agent, the server's handlers and the clients use.

Two stores implement it fully, and one contract suite (tests/test_store_contract.py) runs against both:
``SQLStore`` (store/sql.py: SQLite or PostgreSQL, in this process) and ``HttpStore`` (remote/store.py: the same
operations through a running server's REST API). Errors are the store's own: ``NotFound`` for an unknown queue, job
or token, ``StoreError`` for an operation that cannot be done (``HttpStore`` raises them as ``RemoteError``, a
``StoreError`` carrying the HTTP status). Every write an agent makes for a job carries the claim's fencing token: a
claim no longer current (the job ended, or another attempt holds it) is refused with ``StaleClaim`` for logs,
metrics and outputs, and answered ``False`` by the calls that return whether they landed.

Outside the protocol, as optional capabilities a caller checks for with ``isinstance``:

* :class:`LocalEvents` (``subscribe``): in-process events, so an agent or a follower in the same process wakes at
  once. Only a store in this process has them; a store behind a server has none (its agents long-poll their claims
  and clients follow logs over the server's WebSocket), so followers without them poll.
* :class:`DiskReserve` (``ensure_reserve``, ``release_reserve``): the space a SQLite file keeps to record a failure
  once its disk is full. A remote agent's store is the server's disk, which the server looks after itself.

The server itself always holds a ``SQLStore`` and uses a few more of its methods that mean nothing over HTTP:
``migrate``, ``release_agent_leases`` (on shutdown), what a ``Scheduler`` fires schedules with (``take_lease``,
``release_lease``, ``due_schedules``, ``fire_schedule(s)``: remote agents leave firing to the server),
``touch_agent_token`` (an agent registering), the ``token_id``
that binds an agent id to the agent token that registered it (``register_agent``, ``agent_seen``,
``unregister_agent``, ``check_agent_id``), ``hand_back`` (a claim whose answer could not be sent) and the blob grants
that scope an agent token's blob reads to its queues (``grant_blobs``, ``granted_blobs``); the service deleting a
job reads ``artifact_digests`` to keep every blob an artifact lists; tests and benchmarks fill
and count a SQL store directly (``enqueue_many``, ``count_jobs``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .base import (
    Claim, Heartbeat, JobRecord, JobStatus, LogChunk, OutputRecord, QueueRecord, ScheduleRecord, SweepRecord,
)

if TYPE_CHECKING:
    from ..spec import JobSpec, QueueConfig
    from .tokens import AgentToken


@runtime_checkable
class Store(Protocol):
    """Queues, jobs with leases and fencing tokens, agents, logs, metrics, outputs and agent tokens."""

    # ------------------------------------------------------------ queues

    def create_queue(self, config: QueueConfig, *, replace: bool = False) -> QueueRecord:
        """Create a queue (``replace``: or replace its config); ``StoreError`` if it exists and not ``replace``."""

    def ensure_default_queue(self) -> None:
        """Make sure the ``default`` queue exists."""

    def get_queue(self, name: str) -> QueueRecord:
        """The queue with its counts by state and the live agents serving it."""

    def list_queues(self) -> list[QueueRecord]:
        """Every queue, by name."""

    def delete_queue(self, name: str, *, force: bool = False) -> None:
        """Delete a queue; with queued or running jobs only with ``force`` (they are cancelled)."""

    # ------------------------------------------------------------ jobs, as a user sees them

    def enqueue(self, queue: str, spec: JobSpec, *, artifact: str | None, owner: str | None = None,
                owner_name: str | None = None) -> JobRecord:
        """Queue a job (its artifact's blobs already stored); ``owner`` is who submits it, ``owner_name`` how people
        know them (through a server, both come from the caller's identity)."""

    def get_job(self, job_id: str) -> JobRecord:
        """One job; a queued one carries the reason it is waiting, derived now."""

    def list_jobs(self, *, queue: str | None = None, state: str | None = None, limit: int = 50,
                  before: int | None = None, owner: str | None = None, job_type: str | None = None,
                  q: str | None = None, submitted_after: float | None = None,
                  submitted_before: float | None = None, archived: bool | None = False,
                  sort: str = "-submitted", offset: int = 0, schedule_id: str | None = None,
                  parent_id: str | None = None) -> list[JobRecord]:
        """Jobs matching every filter given: ``state`` may list states with commas; ``q`` is found in the name (any
        case) or starts the id; ``submitted_after`` (inclusive) and ``submitted_before`` are epoch seconds;
        ``archived`` False hides archived jobs, True lists only them, None both. ``sort`` is one of ``JOB_SORTS``
        (``-`` in front: descending; jobs without the value last, ties newest first), newest first by default. Page
        with ``before`` = the last ``seq`` (the default sort) or ``offset`` (any sort). Only ``owner``'s jobs when
        given (through a server, a user who is not an admin gets only their own anyway); only the runs of one
        schedule (``schedule_id``) or the children of one sweep (``parent_id``). A bad filter is a ``ValueError``
        naming it."""

    def delete_job(self, job_id: str) -> list[str]:
        """Delete an ended job (``StoreError`` for one not ended) with its log, metrics and outputs; the digests of
        its outputs nothing else in the store names, for the blob store to release (through a server: those it
        released)."""

    def archive_job(self, job_id: str, archived: bool = True) -> JobRecord:
        """Archive an ended job, hiding it from listings unless asked for (``archived=False``: bring it back)."""

    def request_cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job at once, or flag an active one for its agent to stop."""

    def rerun(self, job_id: str, *, owner: str | None = None, owner_name: str | None = None) -> JobRecord:
        """Queue a new job with the same spec and artifact (``rerun_of`` names the old one)."""

    def requeue_expired(self) -> list[tuple[str, str]]:
        """Requeue (or fail as ``lost``) jobs whose lease expired; the ``(job id, new state)`` pairs changed."""

    def move_to_front(self, job_id: str) -> JobRecord:
        """Put a queued job first in its queue's claim order (highest priority, then oldest): its priority becomes
        one above every other queued job's there. ``StoreError`` for a job that is not queued."""

    # ------------------------------------------------------------ sweeps

    def create_sweep(self, queue: str, spec: JobSpec, *, artifact: str | None, runs: list[dict[str, Any]],
                     config: dict[str, Any], max_parallel: int | None = None, fail_fast: bool = False,
                     name: str | None = None, owner: str | None = None) -> SweepRecord:
        """A sweep and its child jobs, one per run (``spec`` with the run's parameters laid over its own, named
        ``NAME-N``), queued together; at most ``max_parallel`` of them are claimed at once, and with ``fail_fast``
        the first to fail cancels the rest. ``config`` is the sweep as given (method, parameters, metric)."""

    def get_sweep(self, sweep_id: str) -> SweepRecord:
        """One sweep; its children are ``list_jobs(parent_id=...)``. ``NotFound`` when there is none."""

    # ------------------------------------------------------------ schedules

    def create_schedule(self, queue: str, spec: JobSpec, *, cron: str, tz: str = "UTC", artifact: str | None,
                        name: str | None = None, owner: str | None = None) -> ScheduleRecord:
        """A recurring job: ``spec`` with ``artifact`` queued on ``queue`` at each time the five-field ``cron``
        names in the time zone ``tz``, named ``name`` (default: the spec's). ``ValueError`` naming the field for a
        bad expression or zone, ``NotFound`` for an unknown queue."""

    def get_schedule(self, schedule_id: str) -> ScheduleRecord:
        """One schedule with its next time; ``NotFound`` when there is none."""

    def list_schedules(self, *, owner: str | None = None) -> list[ScheduleRecord]:
        """Every schedule by name (only ``owner``'s when given)."""

    def pause_schedule(self, schedule_id: str, paused: bool = True) -> ScheduleRecord:
        """Pause a schedule, or resume it (``paused=False``) from its next time after now."""

    def delete_schedule(self, schedule_id: str) -> None:
        """Delete a schedule; the jobs it queued stay."""

    # ------------------------------------------------------------ jobs, as an agent runs them

    def job_statuses(self, queue: str, job_ids: Collection[str]) -> dict[str, JobStatus]:
        """State and current fence of each of ``job_ids`` that is a job of ``queue`` (others left out): what an agent
        reaping what ended jobs left behind needs to tell the live from the ended."""

    def live_agent_ids(self, queue: str) -> list[str]:
        """The ids of the agents serving ``queue`` now."""

    def claim_next_job(self, agent_id: str, queues: list[str], job_types: list[str] | None = None, *,
                       lease_seconds: float = 30.0, free_gpus: int | None = None,
                       owner: str | None = None) -> Claim | None:
        """Take the oldest queued job this agent may run as a lease with a new fence; ``None`` when there is none.
        An agent that serves as a user (``owner``) takes only that user's jobs on private queues, anyone's on shared
        ones; with no ``owner``, anyone's everywhere."""

    def heartbeat(self, job_id: str, fence: int, *, lease_seconds: float = 30.0) -> Heartbeat:
        """Renew the lease; ``ok`` is false when the fence is stale or the job ended."""

    def set_state(self, job_id: str, fence: int, state: str, reason: str | None = None,
                  message: str | None = None, **facts: Any) -> bool:
        """Move an active job to another active state or reason; false when the fence is stale."""

    def set_progress(self, job_id: str, fence: int, progress: dict[str, Any]) -> bool:
        """Record the job's progress (a JSON object); false when the fence is stale or the job ended."""

    def finish(self, job_id: str, fence: int, state: str, *, exit_code: int | None = None,
               reason: str | None = None, message: str | None = None) -> bool:
        """Record the final state; false (and nothing changed) when the fence is stale or the job already ended."""

    def hand_back(self, job_id: str, fence: int) -> bool:
        """A stopping agent gives back a job it claimed: queued again with its attempt not counted (cancelled if a
        cancel was asked for), the fence moved on; false when the fence is stale or the job ended."""

    # ------------------------------------------------------------ agents

    def register_agent(self, agent_id: str, queues: list[str], job_types: list[str], *, host: str,
                       info: dict[str, Any] | None = None) -> None:
        """Announce an agent serving these queues (``info``: its GPU count, pid)."""

    def agent_seen(self, agent_id: str) -> None:
        """The agent is alive; unseen for a while, it no longer counts as serving its queues."""

    def unregister_agent(self, agent_id: str) -> None:
        """The agent stopped."""

    def list_agents(self) -> list[dict[str, Any]]:
        """The live agents: id, host, queues, job types, start and last-seen times, info."""

    # ------------------------------------------------------------ logs, metrics, outputs

    def append_logs(self, job_id: str, fence: int, pieces: list[tuple[str, bytes]], at: int | None = None) -> int:
        """Append ``(stream, data)`` pieces (``data`` bytes or a bytearray) in order under the claim ``fence`` (the
        chunks carry its attempt); the log's new size in bytes. ``StaleClaim`` when the claim is not current.

        ``at``, when given, is the log's size the pieces follow: a call tried again after an answer that never came
        (the write done, its answer lost with the connection) then answers the log's size and writes nothing twice;
        a log of any other size is refused (``StoreError``), nothing written."""

    def read_log(self, job_id: str, offset: int = 0, *, limit: int = 4 * 1024 * 1024) -> tuple[list[LogChunk], int]:
        """Chunks from byte ``offset`` (the first trimmed to start there) and the offset to read from next."""

    def add_metrics(self, job_id: str, fence: int, records: list[dict[str, Any]]) -> None:
        """Append metric records (``step``, ``time``, ``data``) under the claim ``fence``; ``StaleClaim`` when it is
        not current, ``ValueError`` for a record whose fields are not finite numbers and an object."""

    def read_metrics(self, job_id: str, after: int = 0) -> list[dict[str, Any]]:
        """Metric records with an id past ``after``, in order."""

    def add_outputs(self, job_id: str, fence: int, outputs: list[OutputRecord]) -> None:
        """Record output files (their blobs already stored) under the claim ``fence``, replacing those with the same
        path. Paths are relative and printable (``check_output_path``); ``StaleClaim`` when the claim is not
        current."""

    def list_outputs(self, job_id: str) -> list[OutputRecord]:
        """The job's output files, by path."""

    # ------------------------------------------------------------ agent tokens

    def create_agent_token(self, name: str, queues: list[str], *,
                           created_by: str | None = None) -> tuple[str, AgentToken]:
        """A new agent token scoped to ``queues`` (``["*"]``: all) as ``(token, record)``; the token is shown once."""

    def list_agent_tokens(self, *, include_revoked: bool = False) -> list[AgentToken]:
        """Agent tokens, oldest first, never their secrets."""

    def revoke_agent_token(self, token: str) -> AgentToken:
        """Revoke a token by its id (or the whole token); ``StoreError`` if it already was."""

    def verify_agent_token(self, token: str) -> AgentToken | None:
        """The token's record when it is valid and not revoked, else ``None``."""

    def close(self) -> None:
        """Release connections."""


@runtime_checkable
class LocalEvents(Protocol):
    """A store in this process that tells listeners what changed (``enqueued``, ``state``, ``cancel``, ``log``,
    ``progress``, ``metrics``, ``queue``) as it happens."""

    def subscribe(self, event_name: str, callback: Callable[..., None]) -> Callable[[], None]:
        """Call ``callback`` on each such event, from the thread that made it; returns an unsubscribe."""


@runtime_checkable
class DiskReserve(Protocol):
    """A store on this machine's disk that keeps a little space aside, to record failures once the disk is full."""

    def ensure_reserve(self) -> None:
        """Take the reserve back if it is gone and there is room again."""

    def release_reserve(self) -> bool:
        """Free the reserve's space for the store; true when there was one."""
