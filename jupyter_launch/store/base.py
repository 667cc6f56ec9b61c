"""The store's records, job states and reason codes, shared by every store implementation and its callers."""

from __future__ import annotations

import errno
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import LaunchError

QUEUED, CLAIMED, STARTING, RUNNING = "queued", "claimed", "starting", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
STATES = (QUEUED, CLAIMED, STARTING, RUNNING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (CLAIMED, STARTING, RUNNING)
FINAL = (SUCCEEDED, FAILED, CANCELLED)

# Bounds on the numbers an agent reports: what a store column and JSON both hold exactly (2**53), a lease of at most
# a week (a NaN or infinite lease would never expire), exit codes as any platform reports them.
MAX_COUNT = 2**53
MIN_LEASE_SECONDS, MAX_LEASE_SECONDS = 0.01, 7 * 24 * 3600.0
# An agent unseen this long no longer counts as serving its queues; whoever holds an agent's call open for longer
# (the server's long-polled claim) marks it seen meanwhile.
AGENT_TTL = 15.0
MIN_EXIT_CODE, MAX_EXIT_CODE = -(2**31), 2**32 - 1
MAX_OUTPUT_PATH = 1024  # the outputs table's path column
MAX_PROGRESS_BYTES = 64 * 1024
LOCAL_CLAIM = "@local"  # a claim's token when an agent on the store itself (no agent token) holds it

# Reason codes with the sentence a user sees. Waiting states always carry one.
REASONS: dict[str, str] = {
    "no_agent_for_queue": "no agent is serving this queue; start one with `jupyter launch agent --queue {queue}`",
    "no_agent_for_job_type": "agents serve this queue, but none accepts job type {job_type!r}",
    "waiting_for_capacity": "the queue is at max_instances ({max_instances}); waiting for a running job to finish",
    "sweep_at_max_parallel": "its sweep runs at most {max_parallel} of its jobs at once; waiting for one to end",
    "waiting_in_line": "waiting behind {ahead} job(s) on this queue ({higher} of them at a higher priority)",
    "waiting_for_agent": "an agent serves this queue and will pick this job up next",
    "requeued": "the previous attempt's agent stopped answering; queued again as attempt {attempt}",
    "handed_back": "its agent {agent_id} stopped and handed it back; queued again, not counted as an attempt",
    "claimed": "claimed by agent {agent_id}",
    "preparing": "unpacking the artifact",
    "building_image": "building the job's image",
    "pulling_image": "pulling the job's image",
    "starting_kernel": "starting the kernel",
    "running": "running on agent {agent_id}",
    "completed": "finished with exit code 0",
    "exit_code": "exited with code {exit_code}",
    "cell_error": "a cell raised an error",
    "kernel_died": "the kernel died while running the notebook",
    "timeout": "ran past its timeout",
    "cancelled": "cancelled by a user",
    "sweep_failed_fast": "cancelled: job {failed} of its sweep failed, and the sweep fails fast",
    "lost": "its agent stopped answering and no retries are left",
    "image_pull_failed": "the image could not be pulled",
    "no_gpu_runtime": "the engine has no NVIDIA runtime for a GPU job",
    "insufficient_gpus": "needs {gpus} GPU(s); the agents serving {queue} have at most {have} "
                         "(start an agent on a GPU machine, or resubmit with --gpus 0)",
    "unschedulable": "the cluster cannot schedule the job's pod",
    "backend_error": "the backend failed",
    "secret_missing": "a secret the job names is not set on the agent",
    "artifact_error": "the job's artifact could not be unpacked",
    "invalid_spec": "the job's stored spec is not valid for this agent's version",
    "agent_error": "the agent failed while running the job",
    "log_storage_full": "the store ran out of disk space for the job's log; the job was stopped",
    "log_write_failed": "the job's log could not be written to the store; the job was stopped",
    "log_too_large": "the job's log passed its queue's max_log_size; the job was stopped",
    "output_too_large": "the job's output files together pass its queue's max_output_size",
    "storage_full": "the store ran out of disk space for the job's outputs",
}


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then the errors under it: the driver's own (``orig``), its cause or context, each once."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = getattr(cur, "orig", None) or cur.__cause__ or cur.__context__


def is_disk_full(exc: BaseException) -> bool:
    """Whether a failed write (OSError, or a database driver's error wrapping one) means the disk is full."""
    for cur in _causes(exc):
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(cur).lower()
        if "disk is full" in text or "no space left" in text or getattr(cur, "sqlstate", None) == "53100":
            return True
        if getattr(cur, "status", None) == 507:  # a server's answer: its store is out of disk space
            return True
    return False


# A server's answers that say it cannot serve the call now, not that the call is wrong.
_UNAVAILABLE = (0, 502, 503, 504)  # 0: no answer at all


def is_unreachable(exc: BaseException) -> bool:
    """Whether a failed store call failed because the store could not be reached, or dropped the connection under
    the call (a database server restarting or shutting down, a network cut, a server that did not answer): a call
    worth repeating once it is back, unlike a refusal (a stale claim, a bad value) or a full disk. Such a write
    usually did not happen, but may have (committed, its answer lost with the connection): a write tried again must
    be one the store can recognise as done (``append_logs(..., at=)``)."""
    if is_disk_full(exc):
        return False
    for cur in _causes(exc):
        if getattr(cur, "connection_invalidated", False):  # SQLAlchemy: the driver said the connection is gone
            return True
        # The driver's own error (psycopg's OperationalError covers a refused connection, a server shutting down
        # and an administrator's termination; SQLite's would be a local file's trouble, not an outage).
        names = {klass.__name__ for klass in type(cur).__mro__}
        if type(cur).__module__.startswith("psycopg") and names & {"OperationalError", "InterfaceError"}:
            return True
        if "RemoteError" in names and getattr(cur, "status", None) in _UNAVAILABLE:
            return True
    return False


def describe(reason: str | None, **facts: Any) -> str:
    """The sentence for a reason code, filled with what is known (unknown placeholders stay readable)."""
    if not reason:
        return ""
    template = REASONS.get(reason, reason.replace("_", " "))

    class _Missing(dict):
        def __missing__(self, key: str) -> str:
            return "?"

    try:
        return template.format_map(_Missing(facts))
    except (ValueError, IndexError):
        return template


# Providers whose queues are private unless marked ``shared: true``: a local queue runs jobs as the user whose
# machine (or server) its agent runs on, so another user's job must not run there. Docker, Kubernetes and Slurm queues
# run jobs on the team's machines, as the team's agents do, and are shared unless marked ``shared: false``.
PRIVATE_PROVIDERS = frozenset({"local"})


def queue_is_shared(config: dict[str, Any]) -> bool:
    """Whether a queue (its config as stored: the ``QueueConfig`` as JSON) is shared: any agent serving it may claim
    anyone's jobs. A private queue's jobs are claimed only by agents serving as their owner, or by agents that serve
    as no user (a team's own agents)."""
    shared = config.get("shared")
    if shared is not None:
        return bool(shared)
    return (config.get("provider") or {}).get("type", "local") not in PRIVATE_PROVIDERS


@dataclass
class QueueRecord:
    name: str
    provider: str
    config: dict[str, Any]
    created_at: float
    updated_at: float
    # Filled by list_queues()/get_queue(): counts by state and the agents serving the queue.
    counts: dict[str, int] = field(default_factory=dict)
    agents: list[str] = field(default_factory=list)

    @property
    def max_instances(self) -> int | None:
        return self.config.get("provider", {}).get("max_instances")

    @property
    def min_instances(self) -> int:
        return self.config.get("provider", {}).get("min_instances") or 0

    @property
    def job_types(self) -> list[str]:
        return self.config.get("job_types") or []

    @property
    def shared(self) -> bool:
        """Anyone's jobs may run on any agent serving it; else each user's run only on agents serving as them."""
        return queue_is_shared(self.config)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["max_instances"] = self.max_instances
        d["min_instances"] = self.min_instances
        d["shared"] = self.shared
        return d


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands, as an agent asks when it reaps: its state and current fencing token."""

    state: str
    fence: int

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def done(self) -> bool:
        return self.state in FINAL


@dataclass
class JobRecord:
    id: str
    seq: int
    queue: str
    job_type: str | None
    kind: str
    name: str | None
    state: str
    reason: str | None
    message: str | None
    spec: dict[str, Any]
    artifact: str | None
    owner: str | None
    attempt: int
    retries: int
    fence: int
    agent_id: str | None
    lease_expires: float | None
    cancel_requested: bool
    exit_code: int | None
    gpus: int
    log_size: int
    rerun_of: str | None
    submitted_at: float
    claimed_at: float | None
    started_at: float | None
    finished_at: float | None
    progress: dict[str, Any] | None
    claim_token: str | None = None  # the agent token holding the claim (LOCAL_CLAIM: an agent on the store itself)
    archived_at: float | None = None  # when it was archived (hidden from the history unless asked for)
    owner_name: str | None = None  # the owner's display name (``owner`` is the identity's username)
    priority: int = 0  # claim order within its queue: higher first, then FIFO
    schedule_id: str | None = None  # the schedule whose firing queued it
    parent_id: str | None = None  # the sweep it is a child of

    @property
    def done(self) -> bool:
        return self.state in FINAL

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        import time

        return (self.finished_at or time.time()) - self.started_at

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["done"] = self.done
        d["duration"] = self.duration
        return d


@dataclass
class ScheduleRecord:
    """A recurring job: a cron expression in a time zone over a spec and the artifact packaged at creation."""

    id: str
    name: str
    queue: str
    cron: str
    tz: str
    spec: dict[str, Any]
    artifact: str | None
    owner: str | None
    paused: bool
    next_run_at: float | None  # None while paused
    last_run_at: float | None
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SweepRecord:
    """A parameter sweep: the parent of ``runs`` child jobs (``JobRecord.parent_id``)."""

    id: str
    name: str
    queue: str
    config: dict[str, Any]  # the sweep as given: method, parameters, metric {name, goal}
    runs: int
    max_parallel: int | None
    fail_fast: bool
    owner: str | None
    created_at: float

    @property
    def metric(self) -> str | None:
        return (self.config.get("metric") or {}).get("name")

    @property
    def goal(self) -> str:
        return (self.config.get("metric") or {}).get("goal") or "minimize"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Claim:
    """What an agent gets when it claims a job: the job and the fencing token for every report it makes."""

    job: JobRecord
    fence: int


@dataclass
class Heartbeat:
    ok: bool  # False: the lease is lost (requeued or finished elsewhere); stop the job, report nothing
    cancel_requested: bool = False


@dataclass
class LogChunk:
    offset: int
    stream: str
    attempt: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass
class OutputRecord:
    path: str
    digest: str
    size: int


class StoreError(LaunchError, RuntimeError):
    """A store operation that cannot be done (unknown queue, a job in the wrong state); message for a user."""


class StoreUnusable(StoreError):
    """The store's database cannot be used as it stands (its file damaged, its disk full): one line naming the file
    and the fix. ``orig`` is the driver's own error (``is_disk_full`` looks through it)."""

    def __init__(self, message: str, orig: BaseException | None = None):
        super().__init__(message)
        self.orig = orig


class NotFound(StoreError):
    """No queue, job or agent token by that name."""


class StaleClaim(StoreError):
    """A write for a claim that is no longer current: the job ended, or its lease passed to another attempt (a newer
    fencing token). The agent stops reporting on that job; nothing was written."""


class AgentIdTaken(StoreError):
    """An agent id registered by another agent token (or by the server itself) is not this caller's to use."""


def check_number(name: str, value: Any, minimum: float, maximum: float, *, integer: bool = False) -> Any:
    """``value`` when it is a finite number (an integer with ``integer``) within the bounds; else a ``ValueError``
    naming ``name``. Booleans are not numbers here, and neither are NaN and the infinities JSON parsers accept."""
    kind = "an integer" if integer else "a number"
    ok = (isinstance(value, int) if integer else isinstance(value, (int, float))) and not isinstance(value, bool)
    if ok and not integer:
        ok = math.isfinite(value)
    if not ok or not minimum <= value <= maximum:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise ValueError(f"'{name}' must be {kind} from {minimum:g} to {maximum:g}, not {shown}")
    return value


JOB_SORTS = ("submitted", "name", "state", "queue", "owner", "job_type", "started", "finished")
DEFAULT_JOB_SORT = "-submitted"  # newest first; ``before`` pages through it
MAX_SEARCH = 200  # characters of a name search (a job name is at most 200)
ARCHIVED_CHOICES = {"false": False, "true": True, "all": None}


def check_job_query(*, state: str | None = None, q: str | None = None, sort: str = DEFAULT_JOB_SORT,
                    submitted_after: float | None = None, submitted_before: float | None = None,
                    offset: int = 0) -> tuple[list[str], str, bool]:
    """A job listing's filters checked, each error naming its field: the states asked for, the sort column and
    whether it is descending. ``sort`` is one of ``JOB_SORTS``, ``-`` in front for descending."""
    states = [s for s in (state or "").split(",") if s]
    unknown = [s for s in states if s not in STATES]
    if unknown:
        raise ValueError(f"'state' must be one of {', '.join(STATES)} (commas for several), not {unknown[0][:40]!r}")
    if q is not None and (not isinstance(q, str) or len(q) > MAX_SEARCH):
        raise ValueError(f"'q' must be a text of at most {MAX_SEARCH} characters")
    column = sort[1:] if isinstance(sort, str) and sort.startswith("-") else sort
    if column not in JOB_SORTS:
        raise ValueError(f"'sort' must be one of {', '.join(JOB_SORTS)}, '-' in front for descending, not "
                         f"{str(sort)[:40]!r}")
    for name, value in (("submitted_after", submitted_after), ("submitted_before", submitted_before)):
        if value is not None:
            check_number(name, value, 0, MAX_COUNT)
    check_number("offset", offset, 0, MAX_COUNT, integer=True)
    return states, column, sort.startswith("-")


def check_output_path(path: Any) -> str:
    """An output's path as the agent reports it: relative, inside the job's output folder, printable, bounded; else
    a ``ValueError`` naming the path (the same rules as an artifact's paths, plus no control characters)."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"output path must be a non-empty string, not {path!r}")
    if len(path) > MAX_OUTPUT_PATH:
        raise ValueError(f"output path is {len(path)} characters long; the limit is {MAX_OUTPUT_PATH}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise ValueError(f"output path {path[:80]!r} holds a control character (NUL, newline, escape...)")
    if path.startswith("/") or "\\" in path or any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError(f"output path {path[:80]!r} must be relative, inside the output folder (no '..', no "
                         "leading '/', no empty parts)")
    return path


def check_progress(progress: Any) -> dict[str, Any]:
    """A job's progress as stored: a JSON object of bounded size; else a ``ValueError`` naming ``progress``."""
    if not isinstance(progress, dict):
        raise ValueError(f"'progress' must be an object (value, total, description), not {type(progress).__name__}")
    try:
        size = len(json.dumps(progress, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"'progress' must be plain JSON with finite numbers: {exc}") from None
    if size > MAX_PROGRESS_BYTES:
        raise ValueError(f"'progress' is {size} bytes of JSON; the limit is {MAX_PROGRESS_BYTES}")
    return progress


def check_metric_record(record: Any, now: float) -> dict[str, Any]:
    """``step``, ``time`` (``now`` when absent) and ``data`` of one metric record, checked; else a ``ValueError``
    naming the field. The data must be plain JSON with finite numbers (PostgreSQL's JSON refuses NaN)."""
    if not isinstance(record, dict):
        raise ValueError(f"a metric record must be an object (step, time, data), not {type(record).__name__}")
    step, when, data = record.get("step"), record.get("time", now), record.get("data", {})
    if step is not None:
        check_number("step", step, -MAX_COUNT, MAX_COUNT, integer=True)
    check_number("time", when, 0, MAX_COUNT)
    if not isinstance(data, dict):
        raise ValueError(f"a metric record's 'data' must be an object, not {type(data).__name__}")
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a metric record's 'data' must be plain JSON with finite numbers: {exc}") from None
    return dict(step=step, time=when, data=data)
