"""The Slurm backend: each job attempt is a Slurm batch job, submitted with ``sbatch`` from the agent's login node.

The job's folder is copied under the queue's ``shared_dir`` (``jobs/JOB-ATTEMPT``), which every node sees; its
Python environment is the one built for its lock on that filesystem (:mod:`.environment`) with a layer of the job's
own; its variables (secrets included) are in a file only the user can read, which the batch script
(:data:`BATCH_SCRIPT`) hands to the job with nothing else of the node's environment but Slurm's own variables and
the GPUs Slurm gave it. Output goes to two files in the job's folder, read as they grow; the state and a pending
job's reason come from ``squeue``; the exit status from the file the script writes (or ``scontrol``). Cancel is
``scancel --signal=TERM``, then ``scancel --signal=KILL`` after the grace period. A job finds its Slurm job again
after an agent restart by its name and comment (``jl-JOB``, ``jupyter-launch queue=Q job=JOB attempt=N``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from traitlets import Float, List, Unicode

from ...control import OUTPUT_DIR_ENV
from ...environment import CaptureError
from ..base import Backend, BackendError, JobContext, Liveness, RankLog, Result, base_variables, job_environment
from ..job_venv import JobEnvironmentError, Layer, describe_interpreter, make_job_venv, venv_variables
from . import commands
from .commands import SQUEUE_FORMAT, QueueRow, describe_ask, parse_comment, parse_scontrol, parse_squeue
from .config import SlurmProvider
from .environment import EnvironmentBuildError, ensure_environment, plan_environment, register_kernel

CONTROL = ".jupyter-launch/slurm"  # in the job's folder: the batch script's inputs, the job's output, its exit status
PYTHON_NAMES = ("python", "python3")

# The batch script. sbatch runs it (no argument) on the job's first node, in the job's folder (--chdir); for a
# distributed job it starts the ranks with srun, one per node, each running this script again (argument "rank").
# Of a node's environment a job keeps only Slurm's variables and the GPUs Slurm assigned; its own come from the env
# file, its command from the argv file (both NUL-separated, so no value is ever parsed by a shell). The exit status
# is recorded per (re)start, because Slurm forgets a finished job after MinJobAge. scancel --signal=TERM --full
# reaches every process of the job, this script too: it waits on, so the job has its grace period and its status is
# recorded. (A background command's stdin is /dev/null, as sbatch's is.)
BATCH_SCRIPT = r"""#!/bin/bash
control=.jupyter-launch/slurm
keep=()
while IFS= read -r -d '' kv; do
  case "$kv" in SLURM_*|SLURMD_*|CUDA_VISIBLE_DEVICES=*|GPU_DEVICE_ORDINAL=*|ROCR_VISIBLE_DEVICES=*) keep+=("$kv");; esac
done < <(env -0)
mapfile -d '' vars < "$control/env"
mapfile -d '' argv < "$control/argv"
if [ "${1:-}" = rank ]; then
  rank=(RANK="$SLURM_PROCID" WORLD_SIZE="$SLURM_NTASKS" LOCAL_RANK="$SLURM_LOCALID"
        MASTER_ADDR="$JUPYTER_LAUNCH_MASTER_ADDR" MASTER_PORT="$JUPYTER_LAUNCH_MASTER_PORT")
  if [ "$SLURM_PROCID" != 0 ]; then  # the job's outputs are rank 0's
    mkdir -p ".jupyter-launch/ranks/$SLURM_PROCID/outputs"
    rank+=(@OUTPUT_DIR_ENV@="$PWD/.jupyter-launch/ranks/$SLURM_PROCID/outputs")
  fi
  env -i "${keep[@]}" "${vars[@]}" "${rank[@]}" "${argv[@]}"
  code=$?
  [ "$code" = 0 ] || echo "$code" > "$control/rank-$SLURM_PROCID.exit-${SLURM_RESTART_COUNT:-0}"
  exit $code
fi
restart=${SLURM_RESTART_COUNT:-0}
if [ "$restart" -gt 0 ]; then
  echo "[jupyter-launch] Slurm started the job again on $(hostname) (restart $restart)" >&2
fi
trap : TERM
if [ "${SLURM_NNODES:-1}" -gt 1 ]; then
  # Rank 0 runs on this node, the first of the allocation: it is the rendezvous.
  export JUPYTER_LAUNCH_MASTER_ADDR=$(hostname) JUPYTER_LAUNCH_MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
  srun --export=ALL --label --kill-on-bad-exit=1 --ntasks="$SLURM_NNODES" --ntasks-per-node=1 \
    bash "$control/job.sh" rank &
else
  env -i "${keep[@]}" "${vars[@]}" "${argv[@]}" &
fi
child=$!
# Polled, not waited on: a wait that SIGTERM interrupts can lose the child's status (bash then answered -1).
while kill -0 "$child" 2>/dev/null; do sleep 0.2; done
wait "$child"
code=$?
# srun answers for the ranks it stopped; the job's status is the rank's that failed first.
for failed in $(ls -tr "$control"/rank-*.exit-"$restart" 2>/dev/null); do
  code=$(cat "$failed")
  failed=${failed##*/rank-}
  echo "[jupyter-launch] rank ${failed%%.*} exited with code $code; srun stopped the other ranks" >&2
  break
done
echo "$code" > "$control/exit-$restart"
exit $code
""".replace("@OUTPUT_DIR_ENV@", OUTPUT_DIR_ENV)
# srun --label's prefix of each line a rank writes: its rank, padded to the width of the largest.
RANK_LABEL = re.compile(rb"^ *(\d+): ")


@dataclass
class SlurmHandle:
    slurm_id: str
    jobdir: Path
    ctx: JobContext
    adopted: bool = False
    state: str = "PENDING"
    reason_code: str = ""  # squeue's pending reason last seen
    restarts: int = 0
    running_reported: bool = False
    stopping: bool = False  # we asked Slurm to end it (cancel, timeout)
    settled: bool = False  # it ended, or we stopped it: nothing is left to re-attach to
    last_reason: tuple[str, str] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class SlurmBackend(Backend):
    """Runs jobs as Slurm batch jobs. Queue settings: ``provider`` of type ``slurm`` (see :class:`.SlurmProvider`)."""

    name: ClassVar[str] = "slurm"
    config_model: ClassVar[type[SlurmProvider]] = SlurmProvider
    bin_dir = Unicode("", config=True, help="Folder holding sbatch, squeue, scontrol and scancel; empty: PATH.")
    poll_interval = Float(0.25, config=True, help="Seconds between squeue polls of a job's state.")
    log_poll_interval = Float(0.05, config=True, help="Seconds between reads of a running job's output files.")
    command_timeout = Float(60.0, config=True, help="Seconds one Slurm command may take to answer.")
    unanswered_grace = Float(300.0, config=True, help=(
        "Seconds squeue may keep failing (slurmctld restarting) while a job runs before the job fails as "
        "slurm_unreachable."))
    pass_env = List(Unicode(), config=True, help=(
        "More variables of the agent's environment that its jobs get, by name or glob. Always passed: PATH, HOME, "
        "USER, LOGNAME, SHELL, LANG, LANGUAGE, LC_*, TZ, TMPDIR, TERM, LD_LIBRARY_PATH; and Slurm's own SLURM_* "
        "variables and the GPUs it assigned (CUDA_VISIBLE_DEVICES) from the node."))
    reap_interval = Float(60.0, config=True, help=(
        "Seconds between sweeps that cancel the Slurm jobs (and remove the folders) of jobs the store has as "
        "finished, after the one at the agent's start; 0: only at its start."))

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._prepared: dict[tuple[str, int], Path] = {}

    @classmethod
    def supported_features(cls) -> dict[str, bool]:
        return {"gpus": True, "local_gpus": False, "warm_pool": False, "images": False, "reattach": True, "ranks": True}

    # ------------------------------------------------------------ Slurm's commands

    def _bin(self, name: str) -> str:
        return os.path.join(self.bin_dir, name) if self.bin_dir else name

    async def _slurm(self, name: str, args: list[str], what: str, env: dict[str, str] | None = None) -> str:
        return await commands.run([self._bin(name), *args], self.command_timeout, what, env)

    async def _squeue(self, args: list[str], what: str) -> list[QueueRow]:
        return parse_squeue(await self._slurm("squeue", ["--noheader", "--format", SQUEUE_FORMAT, *args], what))

    async def _jobs_of(self, job_id: str, queue: str) -> list[QueueRow]:
        """The active Slurm jobs of this job (any attempt) on this queue."""
        rows = await self._squeue(["--name", commands.job_name(job_id)], f"list the Slurm jobs of job {job_id}")
        return [r for r in rows if r.active and parse_comment(r.comment).get("job") == job_id
                and parse_comment(r.comment).get("queue") == queue]

    async def _scontrol(self, slurm_id: str) -> dict[str, str]:
        try:
            return parse_scontrol(await self._slurm("scontrol", ["show", "job", "-o", slurm_id],
                                                    f"read Slurm job {slurm_id}"))
        except BackendError:
            return {}  # forgotten already (past MinJobAge)

    # ------------------------------------------------------------ agent hooks: reap what finished jobs left

    async def reap(self, queue: str, config: SlurmProvider, live: Liveness) -> list[str]:
        """Cancel the Slurm jobs of ``queue`` whose job the store has as finished, and remove the job folders under
        ``shared_dir`` of finished jobs. Slurm jobs of jobs the store does not know (another store's, on a shared
        cluster account) are left alone, as are those of live jobs: the next attempt re-attaches to them."""
        try:
            rows = await self._squeue(["--user", str(os.getuid())], f"list queue {queue}'s Slurm jobs")
        except BackendError as exc:  # a cluster that does not answer must not stop the agent from starting
            self.log.warning("queue %s: cannot list its Slurm jobs to reconcile: %s", queue, exc.message)
            return []
        slurm_jobs: dict[str, list[QueueRow]] = {}
        for row in rows:
            fields = parse_comment(row.comment)
            if row.active and fields.get("queue") == queue and fields.get("job"):
                slurm_jobs.setdefault(fields["job"], []).append(row)
        jobs_root = Path(config.shared_dir) / "jobs"
        folders: dict[str, list[Path]] = {}
        with contextlib.suppress(OSError):
            for folder in jobs_root.iterdir():
                job_id, sep, attempt = folder.name.rpartition("-")
                if sep and attempt.isdigit():
                    folders.setdefault(job_id, []).append(folder)
        if not slurm_jobs and not folders:
            return []
        statuses = await live.jobs(sorted(set(slurm_jobs) | set(folders)))
        reaped = []
        for job_id in sorted(set(slurm_jobs) | set(folders)):
            status = statuses.get(job_id)
            if status is None or not status.done:
                continue
            for row in slurm_jobs.get(job_id, []):
                self.log.info("job %s is %s but its Slurm job %s is %s; cancelling it", job_id, status.state,
                              row.slurm_id, row.state)
                with contextlib.suppress(BackendError):
                    await self._slurm("scancel", [row.slurm_id], f"cancel Slurm job {row.slurm_id}")
            for folder in folders.get(job_id, []):
                await asyncio.to_thread(shutil.rmtree, folder, True)
            reaped.append(job_id)
        return reaped

    # ------------------------------------------------------------ prepare: the job's folder and environment

    async def prepare(self, ctx: JobContext) -> None:
        """Build (or reuse) the environment of the job's lock on the shared filesystem and copy the job's folder
        there, with the batch script's inputs. Nothing is done for a job whose Slurm job still runs: start()
        re-attaches to it."""
        if await self._jobs_of(ctx.job_id, ctx.queue):
            return
        jobdir = await self._prepare_folder(ctx)
        if not ctx.cancel_requested.is_set():  # else start() never runs to take it
            self._prepared[(ctx.job_id, ctx.attempt)] = jobdir

    async def _prepare_folder(self, ctx: JobContext) -> Path:
        cfg: SlurmProvider = ctx.queue_config
        shared = Path(cfg.shared_dir)
        loop = asyncio.get_running_loop()

        def log(data: bytes) -> None:  # from the building thread
            loop.call_soon_threadsafe(ctx.log, "stderr", data)

        try:
            python = cfg.python or sys.executable
            layer = await asyncio.to_thread(describe_interpreter, python)
            plan = await asyncio.to_thread(plan_environment, layer, ctx.workdir, cfg.lock, python)
            if not (shared / "envs" / plan.hash[:24]).exists():
                ctx.set_reason("building_environment", f"building the job's Python environment "
                                                       f"{plan.hash[:24]} in {shared / 'envs'}")
            env_dir, _ = await asyncio.to_thread(ensure_environment, shared / "envs", plan, log, ctx.workdir)
            jobdir = shared / "jobs" / f"{ctx.job_id}-{ctx.attempt}"
            await asyncio.to_thread(self._write_folder, ctx, jobdir, env_dir, layer, plan.kernel)
        except (JobEnvironmentError, EnvironmentBuildError, CaptureError) as exc:
            raise BackendError("environment_failed", f"cannot build the job's environment: {exc}") from None
        except OSError as exc:
            raise BackendError("backend_error", f"cannot write the job's folder under shared_dir {shared}: "
                                                f"{exc}") from None
        return jobdir

    def _write_folder(self, ctx: JobContext, jobdir: Path, env_dir: Path, base: Layer, kernel: str | None) -> None:
        """Blocking: the job's folder under shared_dir, its own environment over the lock's, and the batch script's
        inputs: the script, the job's variables (mode 600: secrets are among them) and its command."""
        if jobdir.exists():
            shutil.rmtree(jobdir)
        jobdir.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(ctx.workdir, jobdir, symlinks=True)
        venv = jobdir / ".jupyter-launch" / "env"
        # Over the lock's environment, which is over the queue's interpreter's: kernelspecs and nbconvert templates
        # are found in the latter's share/jupyter.
        layer = describe_interpreter(str(env_dir / "bin" / "python"))
        layer = dataclasses.replace(layer, jupyter_path=tuple(dict.fromkeys(layer.jupyter_path + base.jupyter_path)))
        make_job_venv(venv, layer)
        control = jobdir / CONTROL
        control.mkdir(parents=True)
        (jobdir / ".jupyter-launch" / "outputs").mkdir(exist_ok=True)
        env = job_environment(ctx, os.environ, extra=self.pass_env)
        env[OUTPUT_DIR_ENV] = str(jobdir / ".jupyter-launch" / "outputs")
        env = venv_variables(venv, layer, env)
        if kernel:
            kernels = str(register_kernel(venv, kernel))
            env["JUPYTER_PATH"] = os.pathsep.join([kernels, *(p for p in env["JUPYTER_PATH"].split(os.pathsep) if p)])
        python = str(venv / "bin" / "python")
        if ctx.spec.kind == "command":
            argv = [str(a) for a in ctx.spec.command or []]
            if argv and argv[0] in PYTHON_NAMES:
                argv[0] = python  # "python" in a job means its environment's interpreter
        else:
            argv = [python] + ctx.runner_command[1:]
        fd = os.open(control / "env", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
        (control / "argv").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
        (control / "job.sh").write_text(BATCH_SCRIPT)
        for name in ("stdout", "stderr"):
            (control / name).touch()

    # ------------------------------------------------------------ start: sbatch, or re-attach

    def sbatch_args(self, ctx: JobContext, jobdir: Path) -> list[str]:
        cfg: SlurmProvider = ctx.queue_config
        res = ctx.spec.resources
        control = jobdir / CONTROL
        args = ["--parsable", f"--job-name={commands.job_name(ctx.job_id)}",
                f"--comment={commands.comment(ctx.queue, ctx.job_id, ctx.attempt)}", f"--chdir={jobdir}",
                f"--output={control / 'stdout'}", f"--error={control / 'stderr'}", "--open-mode=append",
                "--export=ALL", "--requeue" if ctx.spec.retries else "--no-requeue"]
        if res.nodes > 1:  # one rank per node; cpus, memory and GPUs below are each node's
            args += [f"--nodes={res.nodes}", "--ntasks-per-node=1"]
        for option, value in (("--partition", cfg.partition), ("--account", cfg.account), ("--qos", cfg.qos)):
            if value:
                args.append(f"{option}={value}")
        args += commands.resource_options(res.cpu, res.memory, res.gpu, ctx.timeout)
        args += cfg.sbatch_options
        return args + [str(control / "job.sh")]

    async def start(self, ctx: JobContext) -> SlurmHandle:
        jobdir = self._prepared.pop((ctx.job_id, ctx.attempt), None)
        if jobdir is None:  # prepare saw a Slurm job to re-attach to
            handle = await self._adopt(ctx)
            if handle is not None:
                return handle
            jobdir = await self._prepare_folder(ctx)  # it has ended since
        # --export=ALL of an environment with nothing but the machine's basics and Slurm's settings: the batch script
        # hands the job its own anyway. (--export=NONE has Slurm load the user's login environment on the node
        # first: 2.7 s of every job's start on the test cluster.)
        env = {k: v for k, v in os.environ.items() if k.startswith("SLURM_")}
        env.update(base_variables(os.environ))
        try:
            out = await self._slurm("sbatch", self.sbatch_args(ctx, jobdir), "submit the job to Slurm", env)
        except BackendError:
            await asyncio.to_thread(shutil.rmtree, jobdir, True)  # its variables (secrets) with it
            raise
        slurm_id = out.strip().split(";")[0]
        if not slurm_id.isdigit():
            raise BackendError("backend_error", f"sbatch answered {out.strip()!r}, not a job id")
        ctx.log("stderr", f"[jupyter-launch] submitted as Slurm job {slurm_id}\n".encode())
        return SlurmHandle(slurm_id, jobdir, ctx)

    async def _adopt(self, ctx: JobContext) -> SlurmHandle | None:
        """A Slurm job for this job still there (an earlier attempt's agent went away): follow it instead."""
        rows = await self._jobs_of(ctx.job_id, ctx.queue)
        if not rows:
            return None
        row = rows[0]
        fields = await self._scontrol(row.slurm_id)
        handle = SlurmHandle(row.slurm_id, Path(row.workdir), ctx, adopted=True, state=row.state,
                             restarts=int(fields.get("Restarts", "0") or 0))
        ctx.log("stderr", f"[jupyter-launch] re-attached to Slurm job {row.slurm_id} (attempt "
                          f"{parse_comment(row.comment).get('attempt', '?')}, {row.state}); its log is read again "
                          "from the start\n".encode())
        return handle

    def mark_running(self, handle: SlurmHandle, ctx: JobContext) -> None:
        """Reported by wait() once Slurm runs the job: until then it waits in Slurm's queue, with Slurm's reason."""

    # ------------------------------------------------------------ wait: state, reasons, exit status

    async def wait(self, handle: SlurmHandle) -> int:
        try:
            return await self._watch(handle)
        finally:
            handle.settled = True
            handle.done.set()

    async def _watch(self, handle: SlurmHandle) -> int:
        ctx = handle.ctx
        cfg: SlurmProvider = ctx.queue_config
        res = ctx.spec.resources
        ask = describe_ask(res.cpu, res.memory, res.gpu, res.nodes)
        unanswered_since: float | None = None
        while True:
            try:
                rows = await self._squeue(["--jobs", handle.slurm_id, "--states", "all"],
                                          f"read the state of Slurm job {handle.slurm_id}")
            except BackendError as exc:
                # slurmctld restarting, or a network blip: the job runs on without it. Keep asking for a while.
                now = time.monotonic()
                if unanswered_since is None:
                    unanswered_since = now
                    ctx.log("stderr", f"[jupyter-launch] {exc.message}; asking again for up to "
                                      f"{self.unanswered_grace:g}s\n".encode())
                if now - unanswered_since > self.unanswered_grace:
                    raise BackendError("slurm_unreachable", f"{exc.message}, for {self.unanswered_grace:g}s; the "
                                                            f"Slurm job {handle.slurm_id} may still run") from None
                await asyncio.sleep(min(5.0, max(self.poll_interval, 1.0)))
                continue
            if unanswered_since is not None:
                unanswered_since = None
                ctx.log("stderr", b"[jupyter-launch] Slurm answers again\n")
            row = next((r for r in rows if r.slurm_id == handle.slurm_id), None)
            if row is None or not row.active:
                return await self._ended(handle, row)
            if (row.state, row.reason) != (handle.state, handle.reason_code):
                await self._state_changed(handle, row)
            if row.state == "PENDING":
                partition = cfg.partition or "(the default)"
                self._reason(handle, *commands.pending_reason(row.reason, handle.slurm_id, partition, ask))
            elif row.state == "RUNNING" and not handle.running_reported:
                handle.running_reported = True
                ctx.mark_running()
            await asyncio.sleep(self.poll_interval)

    async def _state_changed(self, handle: SlurmHandle, row: QueueRow) -> None:
        """A new state or pending reason: has Slurm requeued the job (its node failed)? Counted against the job's
        retries, as a Kubernetes Job's backoff limit counts a failed pod. (Asked at each change, not only when a
        job seen running pends again: it may have run and been requeued between two polls.)"""
        handle.state, handle.reason_code = row.state, row.reason
        fields = await self._scontrol(handle.slurm_id)
        restarts = int(fields.get("Restarts", "0") or 0)
        if restarts <= handle.restarts:
            return
        handle.restarts = restarts
        retries = handle.ctx.spec.retries
        why = fields.get("Reason", row.reason)
        handle.ctx.log("stderr", f"[jupyter-launch] Slurm requeued job {handle.slurm_id} ({why}): restart "
                                 f"{restarts} of at most {retries}\n".encode())
        if restarts > retries:
            handle.stopping = True
            with contextlib.suppress(BackendError):
                await self._slurm("scancel", [handle.slurm_id], f"cancel Slurm job {handle.slurm_id}")
            raise BackendError("node_failure", f"Slurm requeued job {handle.slurm_id} {restarts} time(s) ({why}), "
                                               f"more than the job's retries ({retries})")
        handle.running_reported = False

    async def _ended(self, handle: SlurmHandle, row: QueueRow | None) -> int:
        fields = await self._scontrol(handle.slurm_id)
        state = fields.get("JobState") or (row.state if row else "")
        restarts = int(fields.get("Restarts", "0") or handle.restarts)
        recorded = await asyncio.to_thread(_read_exit, handle.jobdir / CONTROL / f"exit-{restarts}")
        if handle.stopping:
            return recorded if recorded is not None else (commands.exit_status(fields) or 143)
        where = f"Slurm job {handle.slurm_id}"
        if state == "TIMEOUT":
            raise BackendError("timeout", f"ran past its timeout: {where} reached its time limit "
                                          f"({fields.get('TimeLimit', '?')})")
        if state == "OUT_OF_MEMORY":
            raise BackendError("out_of_memory", f"{where} ran out of the memory it asked for "
                                                f"({fields.get('MinMemoryNode') or fields.get('mem') or 'the default'})")
        if state == "NODE_FAIL":
            raise BackendError("node_failure", f"{where} ended because its node failed ({fields.get('Reason', '')}); "
                                               "give the job retries to have Slurm run it again")
        if state in ("CANCELLED", "PREEMPTED", "DEADLINE") or state.startswith("CANCELLED"):
            raise BackendError("cancelled_in_slurm", f"{where} ended {state} outside jupyter-launch (scancel, "
                                                     "preemption or a deadline)")
        if recorded is not None:
            return recorded
        status = commands.exit_status(fields)
        if status is None:
            raise BackendError("backend_error", f"{where} ended, and neither its exit status file nor Slurm "
                                                "(past MinJobAge) says how")
        return status

    def _reason(self, handle: SlurmHandle, reason: str, message: str) -> None:
        if handle.last_reason == (reason, message):
            return
        handle.last_reason = (reason, message)
        handle.ctx.set_reason(reason, message)

    # ------------------------------------------------------------ stream: the output files

    async def stream(self, handle: SlurmHandle, ctx: JobContext) -> None:
        readers = {name: _Tail(handle.jobdir / CONTROL / name) for name in ("stdout", "stderr")}
        ranks = ctx.spec.resources.nodes
        log = RankLabels(ctx.log, ranks) if ranks > 1 else None
        while True:
            await ctx.log_room.wait()  # the job's files grow on the shared filesystem meanwhile, not this process
            ended = handle.done.is_set()
            got = False
            for name, reader in readers.items():
                data = await asyncio.to_thread(reader.read)
                if data:
                    got = True
                    (log.write if log else ctx.log)(name, data)
            if ended and not got:
                if log:
                    log.flush()
                return
            if not got:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(handle.done.wait(), self.log_poll_interval)

    # ------------------------------------------------------------ stop, outputs, cleanup

    async def stop(self, handle: SlurmHandle, grace: float) -> None:
        """SIGTERM to every process of the job (``scancel --signal=TERM --full``), SIGKILL after ``grace`` seconds;
        a job still pending is just cancelled."""
        handle.stopping = True
        slurm_id = handle.slurm_id
        with contextlib.suppress(BackendError):  # asked now: wait() may not have polled since it started
            rows = await self._squeue(["--jobs", slurm_id], f"read the state of Slurm job {slurm_id}")
            if any(r.slurm_id == slurm_id and r.state == "PENDING" for r in rows):
                await self._slurm("scancel", [slurm_id], f"cancel Slurm job {slurm_id}")
                return
        with contextlib.suppress(BackendError):
            await self._slurm("scancel", ["--signal=TERM", "--full", slurm_id], f"signal Slurm job {slurm_id}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(handle.done.wait(), grace)
            return
        with contextlib.suppress(BackendError):
            await self._slurm("scancel", ["--signal=KILL", "--full", slurm_id], f"kill Slurm job {slurm_id}")
        with contextlib.suppress(BackendError):
            await self._slurm("scancel", [slurm_id], f"cancel Slurm job {slurm_id}")

    async def collect_outputs(self, handle: SlurmHandle, ctx: JobContext) -> None:
        source = handle.jobdir / ".jupyter-launch" / "outputs"
        if source.is_dir():
            await asyncio.to_thread(shutil.copytree, source, ctx.output_dir, symlinks=True, dirs_exist_ok=True)

    async def cleanup(self, handle: SlurmHandle, ctx: JobContext, result: Result) -> None:
        if not handle.settled and result.reason == "agent_error":
            return  # interrupted, not finished: leave the Slurm job for the next attempt to re-attach to
        if not handle.done.is_set():
            with contextlib.suppress(BackendError):
                await self._slurm("scancel", [handle.slurm_id], f"cancel Slurm job {handle.slurm_id}")
        await asyncio.to_thread(shutil.rmtree, handle.jobdir, True)


class RankLabels:
    """The output of a distributed job's ranks, as srun --label writes it (``0: line``), as the job's log: each
    rank's lines through a :class:`~..base.RankLog` (prefixed ``[rank N]``, control records from rank 0 only);
    lines with no label (the batch script's, srun's own) as they are."""

    def __init__(self, log: Any, ranks: int):
        self._log = log
        self._ranks = [RankLog(log, rank) for rank in range(ranks)]
        self._partial: dict[str, bytes] = {}

    def write(self, stream: str, data: bytes) -> None:
        lines = (self._partial.pop(stream, b"") + data).split(b"\n")
        if lines[-1]:
            self._partial[stream] = lines[-1]
        for line in lines[:-1]:
            self._route(stream, line + b"\n")

    def _route(self, stream: str, line: bytes) -> None:
        m = RANK_LABEL.match(line)
        if m and int(m.group(1)) < len(self._ranks):
            self._ranks[int(m.group(1))].write(stream, line[m.end():])
        else:
            self._log(stream, line)

    def flush(self) -> None:
        for stream, rest in list(self._partial.items()):
            self._route(stream, rest + b"\n")
        self._partial.clear()
        for rank in self._ranks:
            rank.flush()


class _Tail:
    """A file another machine appends to, read from where the last read ended."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def read(self, limit: int = 1 << 20) -> bytes:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(limit)
        except FileNotFoundError:
            return b""
        self.offset += len(data)
        return data


def _read_exit(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None

