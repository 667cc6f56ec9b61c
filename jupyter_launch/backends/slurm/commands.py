"""Slurm's own commands, run as the agent's user on the login node: ``sbatch``, ``squeue``, ``scontrol``, ``scancel``;
their answers parsed, and what a pending job's reason code means in a sentence.

Nothing here mocks Slurm: each call is the cluster's command, with a timeout, and a failure is a
:class:`~..base.BackendError` that names the command and quotes what it said.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass

from ...spec import format_memory
from ..base import BackendError

# What the backend writes in a Slurm job's comment, so it can find its jobs again (re-attach, reap) from squeue.
COMMENT_PREFIX = "jupyter-launch"
JOB_NAME_PREFIX = "jl-"
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                           "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"})


def job_name(job_id: str) -> str:
    return JOB_NAME_PREFIX + job_id


def comment(queue: str, job_id: str, attempt: int) -> str:
    return f"{COMMENT_PREFIX} queue={queue} job={job_id} attempt={attempt}"


def parse_comment(text: str) -> dict[str, str]:
    """The fields of a comment written by :func:`comment` (``{}`` for anyone else's)."""
    words = text.split()
    if not words or words[0] != COMMENT_PREFIX:
        return {}
    return dict(w.split("=", 1) for w in words[1:] if "=" in w)


async def run(argv: list[str], timeout: float, what: str, env: dict[str, str] | None = None) -> str:
    """Run one Slurm command (in ``env``, else the agent's environment); its stdout. A failure (missing command,
    non-zero exit, no answer in ``timeout``) raises ``BackendError("backend_error", ...)`` naming ``what`` was being
    done."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise BackendError("backend_error", f"cannot {what}: {argv[0]} cannot be run ({exc.strerror}); is this a "
                                            "Slurm login node? (set c.SlurmBackend.bin_dir)") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise BackendError("backend_error", f"cannot {what}: {argv[0]} did not answer in {timeout:g}s (is "
                                            "slurmctld up?)") from None
    if proc.returncode != 0:
        said = (err or out).decode(errors="replace").strip().splitlines()
        raise BackendError("backend_error", f"cannot {what}: {' '.join(argv[:1])} exited {proc.returncode}: "
                                            f"{said[-1] if said else '(no message)'}")
    return out.decode(errors="replace")


def resource_options(cpu: float | None, memory: int | None, gpu: int, timeout: float | None) -> list[str]:
    """A job spec's resources as sbatch options: cpus per task, memory (MiB, rounded up), ``--gres=gpu:N`` and
    ``--time`` (whole minutes, rounded up)."""
    options = []
    if cpu:
        options.append(f"--cpus-per-task={max(1, math.ceil(cpu))}")
    if memory:
        options.append(f"--mem={max(1, math.ceil(memory / 2**20))}M")
    if gpu:
        options.append(f"--gres=gpu:{gpu}")
    if timeout:
        options.append(f"--time={max(1, math.ceil(timeout / 60))}")
    return options


def describe_ask(cpu: float | None, memory: int | None, gpu: int, nodes: int = 1) -> str:
    parts = [f"{nodes} nodes"] if nodes > 1 else []
    if gpu:
        parts.append(f"{gpu} GPU(s)")
    if cpu:
        parts.append(f"{cpu:g} CPU(s)")
    if memory:
        parts.append(format_memory(memory))
    return ", ".join(parts) or "one CPU"


@dataclass
class QueueRow:
    """One Slurm job as ``squeue`` lists it."""

    slurm_id: str
    state: str  # PENDING, RUNNING, ...
    reason: str  # the pending reason code (None while it runs)
    nodes: str
    name: str
    workdir: str
    comment: str

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


SQUEUE_FORMAT = "%i|%T|%r|%N|%j|%Z|%k"


def parse_squeue(text: str) -> list[QueueRow]:
    rows = []
    for line in text.splitlines():
        fields = line.split("|", 6)
        if len(fields) == 7:
            rows.append(QueueRow(*(f.strip() for f in fields)))
    return rows


def parse_scontrol(text: str) -> dict[str, str]:
    """``scontrol show job -o ID``: one line of ``Key=Value`` words (values hold no spaces, except the last
    fields', which are not needed here)."""
    fields: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return fields


def exit_status(fields: dict[str, str]) -> int | None:
    """The exit status Slurm recorded (``ExitCode=N:S``: code N, or signal S as 128 + S, as a shell reports it)."""
    code, _, sig = fields.get("ExitCode", "").partition(":")
    try:
        return 128 + int(sig) if sig and int(sig) else int(code)
    except ValueError:
        return None


# Pending reason codes (squeue's %r), as a reason of ours and a sentence. A code not here is shown as Slurm says it.
PENDING_REASONS: dict[str, tuple[str, str]] = {
    "None": ("pending", "submitted; Slurm's scheduler has not looked at it yet"),
    "Priority": ("pending_priority", "jobs of higher priority are ahead of it in partition {partition}; it runs when "
                                     "they have started"),
    "Resources": ("pending_resources", "waiting for resources: the nodes of partition {partition} are busy with "
                                       "other jobs (it asks for {ask})"),
    "JobHeldUser": ("held", "held in Slurm by its user: `scontrol release {slurm_id}` lets it run"),
    "JobHeldAdmin": ("held", "held in Slurm by an administrator: an administrator's `scontrol release {slurm_id}` "
                             "lets it run"),
    "BeginTime": ("pending_begin_time", "Slurm holds it until its begin time (a requeued job waits a little before "
                                        "it runs again)"),
    "Dependency": ("pending_dependency", "waiting for the jobs it depends on"),
    "PartitionDown": ("partition_down", "partition {partition} is down: it runs when an administrator brings it up"),
    "PartitionInactive": ("partition_down", "partition {partition} is inactive: it runs when an administrator "
                                            "brings it up"),
    "ReqNodeNotAvail": ("pending_nodes", "the nodes it can use are not available (down, drained or reserved)"),
    "NodeDown": ("pending_nodes", "a node it needs is down"),
    "Reservation": ("pending_reservation", "waiting for its advanced reservation to start"),
    "PartitionTimeLimit": ("pending_limit", "its time limit is over partition {partition}'s: it cannot start there; "
                                            "lower the job's timeout or use another partition"),
    "PartitionNodeLimit": ("pending_limit", "it asks for more nodes than partition {partition} allows a job"),
}
# Limits of a QOS or an association (account, user): QOSMaxJobsPerUserLimit, QOSGrpCpuLimit, AssocGrpGRES, ...
LIMIT_PREFIXES = ("QOS", "Assoc", "MaxJobs", "MaxCpu", "MaxNode", "MaxMem", "MaxGRES")


def pending_reason(code: str, slurm_id: str, partition: str, ask: str) -> tuple[str, str]:
    """A pending reason code as (our reason, a sentence that starts with the Slurm job and its code)."""
    head = f"Slurm job {slurm_id} is pending ({code})"
    if code in PENDING_REASONS:
        reason, text = PENDING_REASONS[code]
        return reason, f"{head}: " + text.format(partition=partition, ask=ask, slurm_id=slurm_id)
    if code.startswith(LIMIT_PREFIXES):
        who = "its QOS" if code.startswith("QOS") else "its account's or user's association"
        return "pending_limit", (f"{head}: a limit of {who} holds it back: the jobs already running under it use "
                                 "what the limit allows; it starts when some of them end")
    return "pending", f"{head}: waiting in Slurm's queue"
