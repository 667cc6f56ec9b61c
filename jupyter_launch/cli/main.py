"""``jupyter launch ...``: queues, submit, schedules, sweeps, move, jobs, logs, cancel, rerun, outputs, agent, token
(and, from cli/fleet.py, cli/serve.py and cli/tokens.py, queue up/down/status, agent-image, serve, token).

Bad input exits with code 2 and one line naming the file, the line and the field; so do a server that cannot be
reached and a token it refuses. A followed job exits with 0 when it succeeded and 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import stat
import sys
import time
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..errors import LaunchError, LocatedError
from ..remote.discovery import client_for
from ..remote.http import SERVER_ENV, TOKEN_ENV
from ..client import FINAL, JOB_SORTS, Client, JobRecord, StoreError
from .config import LaunchCommand, config_words
from ..options import JobOptions, prepare_job, split_param_args
from ..spec import format_memory


class UsageError(LaunchError):
    """A command line that cannot be run as given."""


def _fmt_time(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


_UNPRINTABLE = ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")


def printable(text: Any) -> str:
    """``text`` with every control, format and line-break character written as its escape (``\\x1b``,
    ``\\u202e``): a stored string (a job's name, a reason an agent sent) cannot drive the terminal, reorder a line
    or start a new one."""
    text = str(text)
    if text.isprintable() and text.isascii():
        return text
    return "".join(ascii(ch)[1:-1] if unicodedata.category(ch) in _UNPRINTABLE else ch for ch in text)


def _table(rows: list[list[str]], header: list[str]) -> str:
    rows = [[printable(x) for x in r] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


STORE_HELP = """\
Which store a command uses, the first that applies:
  1. --server URL or $JUPYTER_LAUNCH_SERVER_URL: through that server, with the token in $JUPYTER_LAUNCH_TOKEN or in
     --token-file FILE (mode 600; --token T works too, but every local user sees it in `ps`) (a server that does not
     answer is an error, never a silent fallback);
  2. $JUPYTER_LAUNCH_HOME or $JUPYTER_LAUNCH_STORE_URL set: that store, embedded; no server is looked for;
  3. a local running Jupyter server with jupyter-launch (from Jupyter's runtime dir): through it, its own token;
  4. the embedded store under ~/.local/share/jupyter/launch.
`agent --server URL` with an agent token ($JUPYTER_LAUNCH_TOKEN or --token-file FILE) works for that server over
HTTP; `agent` alone runs on the store of 2 or 4 (never a discovered server).
"""


def read_token_file(path: str) -> str:
    """The token in ``path``, a file only its owner may read: a token on a command line is visible to every local
    user in `ps`, one in a file others can read is no better."""
    try:
        with open(path) as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & 0o077:
                raise UsageError(f"--token-file {path}: mode {stat.S_IMODE(mode):o} lets other users read the token; "
                                 f"chmod 600 {path}")
            lines = f.read().strip().splitlines()
    except OSError as exc:
        raise UsageError(f"--token-file {path}: {exc.strerror or exc}") from None
    if len(lines) != 1 or not lines[0].strip():
        raise UsageError(f"--token-file {path}: the file must hold the token alone, on one line")
    return lines[0].strip()


def _client(args: argparse.Namespace) -> Client:
    config = args.launch_config
    try:
        return client_for(args.server, args.token, store_class=config.store_class,
                          blob_store_class=config.blob_store_class)
    except ValueError as exc:  # a server URL that is not http(s)
        raise UsageError(str(exc)) from None


# ------------------------------------------------------------------ queue commands

def cmd_queue_create(args: argparse.Namespace) -> int:
    client = _client(args)
    q = client.create_queue(args.file, replace=args.replace)
    print(f"queue {q.name} {'updated' if args.replace else 'created'} ({q.provider}, "
          f"max_instances {q.max_instances or 'unlimited'}, min_instances {q.min_instances})")
    return 0


def cmd_queue_list(args: argparse.Namespace) -> int:
    queues = _client(args).queues()
    if args.json:
        print(json.dumps([q.to_dict() for q in queues], indent=1))
        return 0
    rows = [[q.name, q.provider, str(q.counts.get("queued", 0)),
             f"{sum(q.counts.get(s, 0) for s in ('claimed', 'starting', 'running'))}/{q.max_instances or '∞'}",
             str(q.min_instances), ",".join(q.job_types) or "any", str(len(q.agents))] for q in queues]
    print(_table(rows, ["QUEUE", "PROVIDER", "QUEUED", "RUNNING/MAX", "MIN", "JOB TYPES", "AGENTS"]))
    return 0


def cmd_queue_show(args: argparse.Namespace) -> int:
    q = _client(args).queue(args.name)
    if args.json:
        print(json.dumps(q.to_dict(), indent=1))
        return 0
    import yaml

    print(yaml.safe_dump(q.config, sort_keys=False).rstrip())
    print(f"# queued {q.counts.get('queued', 0)}, running "
          f"{sum(q.counts.get(s, 0) for s in ('claimed', 'starting', 'running'))}, agents: {', '.join(q.agents) or 'none'}")
    return 0


def cmd_queue_delete(args: argparse.Namespace) -> int:
    _client(args).delete_queue(args.name, force=args.force)
    print(f"queue {args.name} deleted")
    return 0


# ------------------------------------------------------------------ submit and jobs

def job_options(args: argparse.Namespace) -> JobOptions:
    config = getattr(args, "job_config", args.config)  # a sweep's --config is its sweep file, not a job's
    return JobOptions(notebook=args.notebook, config=config, root=args.root, name=args.name,
                      job_type=args.job_type, image=args.image, kernel=args.kernel, timeout=args.timeout,
                      retries=args.retries, priority=args.priority, cpus=args.cpus, gpus=args.gpus,
                      memory=args.memory, nodes=args.nodes,
                      env=args.env or (), secrets=args.secret or (), params=args.param or ())


def cmd_submit(args: argparse.Namespace) -> int:
    if not args.notebook and not args.config:
        raise UsageError("submit needs a NOTEBOOK or --config FILE")
    if args.notebook and args.config:
        raise UsageError("give a NOTEBOOK or --config FILE, not both")
    prepared = prepare_job(job_options(args))
    client = _client(args)
    job = client.submit_prepared(prepared, queue=args.queue, max_size=args.max_size)
    rec = job.record
    print(f"packaged {job.packaged.report()}", file=sys.stderr)  # type: ignore[union-attr]
    print(f"submitted job {job.id} to queue {rec.queue}", file=sys.stderr)
    if not args.follow:
        print(job.id)
        return 0
    return _follow(client, job.id, run_agent_for=rec.queue)


def _follow(client: Client, job_id: str, *, run_agent_for: str | None = None, offset: int = 0) -> int:
    """Stream a job's log to this terminal until it ends; on the embedded store, run an agent in-process if none
    serves its queue (through a server, the job waits for one of the server's agents)."""
    from ..service import LogPage

    async def main() -> int:
        started = False
        if run_agent_for:
            started = await client.ensure_agent(run_agent_for)
            if started:
                print(f"no agent serves queue {run_agent_for}; running one in this process until the job ends",
                      file=sys.stderr)
            elif client.server_url and not await asyncio.to_thread(client.live_agents, run_agent_for):
                print(f"no agent serves queue {run_agent_for} on {client.server_url}; the job waits for one (jupyter "
                      f"launch agent --server URL --queue {run_agent_for}, with $JUPYTER_LAUNCH_TOKEN set to an agent "
                      "token)", file=sys.stderr)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        final: list[JobRecord] = []
        try:
            async def pump() -> None:
                async for item in client.follow_events(job_id, offset):
                    if isinstance(item, LogPage):
                        for chunk in item.chunks:
                            out = sys.stderr.buffer if chunk.stream == "stderr" else sys.stdout.buffer
                            out.write(chunk.data)
                            out.flush()
                    elif item.done:
                        final.append(item)
                    elif item.state != "running":  # say why it waits, each time the reason changes
                        print(printable(f"[{item.state}] {item.message or item.reason}"), file=sys.stderr)

            pumping = asyncio.create_task(pump())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({pumping, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if stop.is_set() and not pumping.done():
                pumping.cancel()
                print(f"\ninterrupted; cancelling job {job_id}", file=sys.stderr)
                await asyncio.to_thread(client.cancel, job_id)
                if not started:
                    return 130
                await asyncio.to_thread(_wait_final, client, job_id, 60)
            else:
                await pumping  # its error, if any, is the command's
            rec = final[-1] if final else await asyncio.to_thread(client.get_job, job_id)
            print(printable(f"job {job_id} {rec.state}" + (
                f": {rec.message}" if rec.state != "succeeded" and rec.message else "")), file=sys.stderr)
            if rec.state == "succeeded":
                print(f"outputs: jupyter launch outputs {job_id} --to DIR", file=sys.stderr)
            return 0 if rec.state == "succeeded" else 1
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            await client.stop_agents()

    return asyncio.run(main())


def _wait_final(client: Client, job_id: str, timeout: float) -> JobRecord:
    deadline = time.monotonic() + timeout
    while True:
        rec = client.get_job(job_id)
        if rec.state in FINAL or time.monotonic() > deadline:
            return rec
        time.sleep(0.1)


AGO_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, flag: str, *, now: float | None = None) -> float:
    """A time a person types, as epoch seconds: a date (``2026-12-01``, local midnight), a date and time
    (``2026-12-01T14:30``, local unless it says its zone), or a span ago (``90m``, ``2d``, ``1w``)."""
    text = text.strip()
    if len(text) > 1 and text[-1] in AGO_UNITS and text[:-1].isdigit():
        return (time.time() if now is None else now) - int(text[:-1]) * AGO_UNITS[text[-1]]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(f"{flag}: {text[:40]!r} is not a date (2026-12-01), a date and time (2026-12-01T14:30) "
                         "or a span ago (90m, 2d, 1w)") from None


def cmd_jobs(args: argparse.Namespace) -> int:
    archived = {"only": True, "with": None}.get(args.archived, False)
    try:
        jobs = _client(args).jobs(
            queue=args.queue, state=args.status, limit=args.limit, owner=args.owner, job_type=args.type,
            q=args.search, submitted_after=parse_when(args.since, "--since") if args.since else None,
            submitted_before=parse_when(args.until, "--until") if args.until else None,
            archived=archived, sort=args.sort, offset=args.offset)
    except ValueError as exc:  # a filter the store refuses (the embedded store's, or the server's 400)
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps([j.to_dict() for j in jobs], indent=1, default=str))
        return 0
    rows = [[j.id, j.queue, j.state, j.reason or "", j.job_type or "", j.name or j.kind,
             j.owner_name or j.owner or "", _fmt_time(j.submitted_at), _fmt_duration(j.duration)] for j in jobs]
    print(_table(rows, ["JOB", "QUEUE", "STATE", "REASON", "TYPE", "NAME", "OWNER", "SUBMITTED", "DURATION"]))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    client = _client(args)
    for job_id in args.job_ids:
        released = client.delete(job_id)
        print(f"job {job_id}: deleted with its log, metrics and outputs ({len(released)} output blob"
              f"{'' if len(released) == 1 else 's'} released)")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    client = _client(args)
    for job_id in args.job_ids:
        client.archive(job_id, not args.undo)
        print(f"job {job_id}: {'back in the list' if args.undo else 'archived (jupyter launch jobs --archived only)'}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    client = _client(args)
    j = client.get_job(args.job_id)
    if args.json:
        print(json.dumps(j.to_dict(), indent=1, default=str))
        return 0
    res = j.spec.get("resources", {})
    lines = [
        f"job        {j.id}" + (f" (rerun of {j.rerun_of})" if j.rerun_of else ""),
        f"queue      {j.queue}" + (f"   job type {j.job_type}" if j.job_type else ""),
        f"kind       {j.kind}" + (f"   {j.name}" if j.name else ""),
        f"owner      {j.owner_name or j.owner or '-'}" + (
            f" ({j.owner})" if j.owner_name and j.owner and j.owner_name != j.owner else ""),
        f"state      {j.state}" + (f" ({j.reason})" if j.reason else ""),
        f"reason     {j.message or '-'}",
        f"attempt    {j.attempt} of {j.retries + 1}",
        f"exit code  {j.exit_code if j.exit_code is not None else '-'}",
        f"agent      {j.agent_id or '-'}",
        f"resources  cpu {res.get('cpu') or '-'}, gpu {res.get('gpu') or 0}, memory "
        f"{format_memory(res['memory']) if res.get('memory') else '-'}",
        f"submitted  {_fmt_time(j.submitted_at)}   started {_fmt_time(j.started_at)}   "
        f"finished {_fmt_time(j.finished_at)}   duration {_fmt_duration(j.duration)}",
        f"artifact   {j.artifact or '-'}",
        f"log        {j.log_size} bytes",
    ]
    if isinstance(j.progress, dict) and j.progress:  # a store written by an older server may hold anything here
        lines.append(f"progress   {j.progress.get('value')}/{j.progress.get('total') or '?'} "
                     f"{j.progress.get('description') or ''}".rstrip())
    print("\n".join(printable(line) for line in lines))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    client = _client(args)
    client.get_job(args.job_id)
    if args.follow:
        return _follow(client, args.job_id, offset=args.offset)
    offset = args.offset
    while True:
        chunks, nxt = client.read_log(args.job_id, offset)
        if not chunks:
            break
        for c in chunks:
            out = sys.stderr.buffer if c.stream == "stderr" else sys.stdout.buffer
            out.write(c.data)
        offset = nxt
    sys.stdout.flush()
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    rec = _client(args).cancel(args.job_id)
    print(f"job {rec.id}: {'cancelled' if rec.state == 'cancelled' else 'cancel requested'} ({rec.state})")
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    client = _client(args)
    job = client.rerun(args.job_id)
    print(job.id)
    if args.follow:
        return _follow(client, job.id, run_agent_for=job.record.queue)
    return 0


def cmd_move(args: argparse.Namespace) -> int:
    if not args.front:
        raise UsageError("move takes --front (the one move there is: to the front of its queue)")
    rec = _client(args).move_to_front(args.job_id)
    print(printable(f"job {rec.id}: first on queue {rec.queue} (priority {rec.priority})"))
    return 0


# ------------------------------------------------------------------ schedules

def _fmt_utc_and_local(ts: float | None, tz: str) -> str:
    """A schedule's time in its own zone (what its cron means) and in this machine's."""
    if ts is None:
        return "-"
    from ..cron import zone_info

    there = datetime.fromtimestamp(ts, zone_info(tz)).strftime("%Y-%m-%d %H:%M %Z")
    return f"{there} ({_fmt_time(ts)} here)" if tz != "UTC" else there


def cmd_schedule_create(args: argparse.Namespace) -> int:
    if bool(args.notebook) == bool(args.config):
        raise UsageError("schedule create needs a NOTEBOOK or --config FILE (one of them)")
    prepared = prepare_job(job_options(args))
    schedule, artifact = _client(args).create_schedule(prepared, queue=args.queue, cron=args.cron, tz=args.tz,
                                                       name=args.name, max_size=args.max_size)
    print(f"packaged {artifact.report()}", file=sys.stderr)
    print(printable(f"schedule {schedule.id} ({schedule.name}) on queue {schedule.queue}: '{schedule.cron}' "
                    f"{schedule.tz}; next run {_fmt_utc_and_local(schedule.next_run_at, schedule.tz)}"),
          file=sys.stderr)
    print(schedule.id)
    return 0


def cmd_schedule_list(args: argparse.Namespace) -> int:
    schedules = _client(args).schedules()
    if args.json:
        print(json.dumps([s.to_dict() for s in schedules], indent=1))
        return 0
    rows = [[s.id, s.name, s.queue, s.cron, s.tz, "paused" if s.paused else _fmt_utc_and_local(s.next_run_at, s.tz),
             _fmt_time(s.last_run_at)] for s in schedules]
    print(_table(rows, ["SCHEDULE", "NAME", "QUEUE", "CRON", "TZ", "NEXT RUN", "LAST RUN"]))
    return 0


def cmd_schedule_show(args: argparse.Namespace) -> int:
    from ..cron import Cron

    client = _client(args)
    s = client.schedule(args.schedule_id)
    runs = client.schedule_runs(s.id, limit=args.runs)
    upcoming = [] if s.paused else Cron(s.cron).next_times((s.next_run_at or time.time()) - 1, 5, s.tz)
    if args.json:
        print(json.dumps({**s.to_dict(), "next_runs": upcoming, "runs": [j.to_dict() for j in runs]}, indent=1,
                         default=str))
        return 0
    lines = [f"schedule   {s.id}   {s.name}" + ("   (paused)" if s.paused else ""),
             f"queue      {s.queue}",
             f"cron       {s.cron}   ({s.tz})",
             f"artifact   {s.artifact or '-'}",
             f"owner      {s.owner or '-'}",
             f"created    {_fmt_time(s.created_at)}"]
    nexts = [_fmt_utc_and_local(t, s.tz) for t in upcoming] or [
        f"paused (jupyter launch schedule resume {s.id})" if s.paused else "none"]
    lines += [("next runs  " if i == 0 else " " * 11) + text for i, text in enumerate(nexts)]
    print("\n".join(printable(line) for line in lines))
    print("last runs" if runs else "last runs  none yet")
    if runs:
        print(_table([[j.id, j.state, j.reason or "", _fmt_time(j.submitted_at), _fmt_duration(j.duration)]
                      for j in runs], ["JOB", "STATE", "REASON", "SUBMITTED", "DURATION"]))
    return 0


def cmd_schedule_pause(args: argparse.Namespace) -> int:
    s = _client(args).pause_schedule(args.schedule_id, args.schedule_command == "pause")
    state = "paused" if s.paused else f"resumed; next run {_fmt_utc_and_local(s.next_run_at, s.tz)}"
    print(printable(f"schedule {s.id} ({s.name}) {state}"))
    return 0


def cmd_schedule_delete(args: argparse.Namespace) -> int:
    _client(args).delete_schedule(args.schedule_id)
    print(f"schedule {args.schedule_id} deleted (the jobs it queued stay)")
    return 0


# ------------------------------------------------------------------ sweeps

def cmd_sweep(args: argparse.Namespace) -> int:
    if args.notebook in ("show", "cancel") and args.sweep_id:
        return (cmd_sweep_show if args.notebook == "show" else cmd_sweep_cancel)(args)
    if args.sweep_id:
        raise UsageError(f"unrecognized argument {args.sweep_id!r} (sweep NOTEBOOK, sweep show ID, sweep cancel ID)")
    if not args.notebook:
        raise UsageError("sweep needs a NOTEBOOK (or: sweep show ID, sweep cancel ID)")
    sweep = sweep_config(args)
    args.job_config = None
    prepared = prepare_job(job_options(args))
    client = _client(args)
    record, artifact = client.create_sweep(prepared, queue=args.queue, sweep=sweep, max_size=args.max_size)
    print(f"packaged {artifact.report()}", file=sys.stderr)
    limit = f", at most {record.max_parallel} at once" if record.max_parallel else ""
    print(printable(f"sweep {record.id} ({record.name}): {record.runs} job(s) on queue {record.queue}{limit}"),
          file=sys.stderr)
    if not args.wait:
        print(record.id)
        return 0
    return _wait_sweep(client, record.id, record.queue)


def sweep_config(args: argparse.Namespace) -> Any:
    """The sweep the options describe: ``--config FILE`` (W&B's shape) with the options laid over it, or ``--grid``,
    ``--random N`` and ``--range``."""
    from ..spec import validate
    from ..sweep import SweepConfig, load_sweep_config, parse_grid, parse_range

    data: dict[str, Any] = {}
    if args.config:
        if args.grid or args.range:
            raise UsageError("give the parameters in --config FILE or as --grid/--range, not both")
        data = load_sweep_config(args.config).model_dump(exclude_none=True)
    else:
        parameters = {**parse_grid(args.grid or ()), **parse_range(args.range or ())}
        if not parameters:
            raise UsageError("sweep needs parameters: --grid NAME=V1,V2, --range NAME=MIN:MAX[:log] with --random N, "
                             "or --config sweep.yaml")
        data = {"method": "random" if args.random or args.range else "grid", "parameters": parameters}
    overrides = {"run_cap": args.random, "max_parallel": args.max_parallel, "name": args.name, "seed": args.seed,
                 "fail_fast": args.fail_fast or None}
    if args.random:
        overrides["method"] = "random"
    data.update({k: v for k, v in overrides.items() if v is not None})
    if args.metric:
        data["metric"] = {"name": args.metric, "goal": args.goal or "minimize"}
    elif args.goal and data.get("metric"):
        data["metric"] = {**data["metric"], "goal": args.goal}
    return validate(SweepConfig, data, args.config or "<sweep options>")


def _wait_sweep(client: Client, sweep_id: str, queue: str) -> int:
    """Run an agent here when none serves the queue (embedded store), wait for every child, print the table."""
    async def main() -> list[JobRecord]:
        started = await client.ensure_agent(queue)
        if started:
            print(f"no agent serves queue {queue}; running one in this process until the sweep ends", file=sys.stderr)
        try:
            seen: dict[str, str] = {}
            while True:
                jobs = await asyncio.to_thread(client.sweep_jobs, sweep_id)
                for j in jobs:
                    if j.done and seen.get(j.id) != j.state:
                        seen[j.id] = j.state
                        print(printable(f"{j.id} {j.name} {j.state}"), file=sys.stderr)
                if all(j.done for j in jobs):
                    return jobs
                await asyncio.sleep(0.5)
        finally:
            await client.stop_agents()

    jobs = asyncio.run(main())
    print(_sweep_table(client, client.sweep(sweep_id), jobs))
    return 0 if all(j.state == "succeeded" for j in jobs) else 1


def _sweep_table(client: Client, sweep: Any, jobs: list[JobRecord]) -> str:
    from ..sweep import sweep_table

    header, rows = sweep_table(sweep, jobs, client.metrics)
    return _table(rows, header)


def cmd_sweep_show(args: argparse.Namespace) -> int:
    client = _client(args)
    sweep = client.sweep(args.sweep_id)
    jobs = client.sweep_jobs(sweep.id)
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.state] = counts.get(j.state, 0) + 1
    metric = f", metric {sweep.metric} ({sweep.goal})" if sweep.metric else ""
    print(printable(f"sweep {sweep.id} ({sweep.name}) on {sweep.queue}: {sweep.runs} job(s){metric}; "
                    + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))))
    print(_sweep_table(client, sweep, jobs))
    return 0


def cmd_sweep_cancel(args: argparse.Namespace) -> int:
    jobs = _client(args).cancel_sweep(args.sweep_id)
    print(f"sweep {args.sweep_id}: {sum(1 for j in jobs if j.state == 'cancelled' or j.cancel_requested)} job(s) "
          f"cancelled or asked to stop, {len(jobs)} in all")
    return 0


def cmd_outputs(args: argparse.Namespace) -> int:
    client = _client(args)
    client.get_job(args.job_id)
    if args.to:
        for path in client.download_outputs(args.job_id, args.to):
            print(path)
        return 0
    outs = client.outputs(args.job_id)
    print(_table([[o.path, str(o.size), o.digest[:19]] for o in outs], ["PATH", "BYTES", "DIGEST"]))
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    for m in _client(args).metrics(args.job_id):
        print(json.dumps({"step": m["step"], "time": m["time"], **m["data"]}))
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from ..agent import make_local_agent, serve
    from ..paths import default_store_url, launch_home

    args.server = args.server or os.environ.get(SERVER_ENV)
    if args.server:
        if not (args.token or os.environ.get(TOKEN_ENV)):
            raise UsageError(f"agent --server needs an agent token (from `token create`) in ${TOKEN_ENV} or in "
                             "--token-file FILE (mode 600)")
        from .tokens import cmd_remote_agent

        return cmd_remote_agent(args)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(levelname)s] %(message)s")
    config = args.launch_config
    store = config.store_class(default_store_url())
    store.ensure_default_queue()
    for q in args.queue:
        store.get_queue(q)  # unknown queue: say so before starting
    home = launch_home()
    agent = make_local_agent(store, args.queue, job_types=args.job_type, blobs=config.blob_store_class(home / "blobs"),
                             home=home, config=config.config, **agent_traits(args))
    agent.log = logging.getLogger("jupyter_launch.agent")
    run_in_foreground(agent, serve)
    return 0


def run_in_foreground(agent: Any, serve: Any) -> None:
    """Run ``serve(agent, stop)`` until a signal stops the agent (SIGTERM gracefully, SIGINT or a second signal at
    once: ``agent.stop_on_signals``)."""
    from ..agent import stop_on_signals

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(agent, stop)
        await serve(agent, stop)

    asyncio.run(main())


def agent_traits(args: argparse.Namespace) -> dict[str, Any]:
    """The agent's settings given as options (they win over the config files' ``c.Agent.*``)."""
    traits: dict[str, Any] = {}
    if args.lease is not None:
        traits["lease_seconds"] = args.lease
    if args.max_jobs:
        traits["max_jobs"] = args.max_jobs
    if args.gpus is not None:
        traits["gpus"] = list(range(args.gpus))
    return traits


class _HelpAll(argparse.Action):
    """``agent --help-all``: every option of the agent and of each registered backend, settable as ``c.Class.name``
    in jupyter_launch_config.py or as ``--Class.name=value``."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, help=_HelpAll.__doc__.strip())

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        parser.print_help()
        print()
        print(LaunchCommand().help_all())
        parser.exit()


# ------------------------------------------------------------------ parser

def _add_server_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--server", metavar="URL", default=default,
                        help="work through this Jupyter server (default: $JUPYTER_LAUNCH_SERVER_URL; which store a "
                             "command uses: `jupyter launch --help`)")
    parser.add_argument("--token", metavar="T", default=default,
                        help="the server's token; for `agent`, an agent token (default: $JUPYTER_LAUNCH_TOKEN). Every "
                             "local user sees a command line in `ps`: prefer the variable or --token-file")
    parser.add_argument("--token-file", metavar="FILE", default=default,
                        help="read the token from FILE, which only its owner may read (chmod 600 FILE)")


def _add_job_options(p: argparse.ArgumentParser, *, job_file: bool = True) -> None:
    """The options that describe a job, the same for `submit`, `schedule create` and `sweep`."""
    p.add_argument("notebook", nargs="?", help="the notebook to run")
    if job_file:
        p.add_argument("--config", "-c", help="a job YAML (kind, command, image, env, resources, ...)")
    p.add_argument("--queue", "-q", default="default")
    p.add_argument("--job-type", "-t")
    p.add_argument("--name")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a notebook parameter, as NAME VALUE or NAME=VALUE; a value that is a Python literal (3, 0.1, "
                        "True, [1, 2], 'text') has its type, anything else is the exact text typed")
    p.add_argument("--cpus", help="CPU cores (2, 0.5, 500m)")
    p.add_argument("--gpus", type=int)
    p.add_argument("--memory", help="memory (8Gi, 512Mi)")
    p.add_argument("--nodes", type=int, help="ranks of a distributed job, one per node; each gets RANK, WORLD_SIZE, "
                                             "LOCAL_RANK, MASTER_ADDR, MASTER_PORT")
    p.add_argument("--image")
    p.add_argument("--kernel")
    p.add_argument("--env", action="append", metavar="KEY=VALUE")
    p.add_argument("--secret", action="append", metavar="NAME",
                   help="an environment variable resolved on the agent at start; never stored")
    p.add_argument("--timeout", help="3600, 90s, 45m, 1h")
    p.add_argument("--retries", type=int)
    p.add_argument("--priority", type=int, help="claim order on the queue: higher first, FIFO within one priority "
                   "(default 0; -1000 to 1000)")
    p.add_argument("--root", help="the folder to package (default: the notebook's or config's folder)")
    p.add_argument("--max-size", type=int, help="refuse artifacts larger than this many bytes")


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations before the command: they would be matched against the command's own options too (`outputs
    # --to DIR` is neither --token nor --token-file).
    p = argparse.ArgumentParser(prog="jupyter launch", description="Run notebooks, cells and commands on queues.",
                                epilog=STORE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    _add_server_options(p, None)
    # The same options after the command (`jupyter launch jobs --server URL`); unset there, they keep the global value.
    server_options = argparse.ArgumentParser(add_help=False)
    _add_server_options(server_options, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    q = sub.add_parser("queue", help="create, list, show or delete queues")
    qs = q.add_subparsers(dest="queue_command", metavar="ACTION")
    qc = qs.add_parser("create", help="create a queue from a YAML file", parents=[server_options])
    qc.add_argument("file")
    qc.add_argument("--replace", action="store_true", help="replace the queue's config if it exists")
    qc.set_defaults(func=cmd_queue_create)
    qu = qs.add_parser("update", help="replace a queue's config from a YAML file", parents=[server_options])
    qu.add_argument("file")
    qu.set_defaults(func=cmd_queue_create, replace=True)
    ql = qs.add_parser("list", help="list queues", parents=[server_options])
    ql.add_argument("--json", action="store_true")
    ql.set_defaults(func=cmd_queue_list)
    qsh = qs.add_parser("show", help="show a queue", parents=[server_options])
    qsh.add_argument("name")
    qsh.add_argument("--json", action="store_true")
    qsh.set_defaults(func=cmd_queue_show)
    qd = qs.add_parser("delete", help="delete a queue", parents=[server_options])
    qd.add_argument("name")
    qd.add_argument("--force", action="store_true", help="cancel its queued and running jobs")
    qd.set_defaults(func=cmd_queue_delete)
    from .fleet import add_fleet_commands

    add_fleet_commands(qs, server_options, sub)

    s = sub.add_parser("submit", help="submit a notebook or a job YAML to a queue", parents=[server_options])
    _add_job_options(s)
    s.add_argument("--follow", "-f", action="store_true", help="stream the log until the job ends")
    s.set_defaults(func=cmd_submit)

    sc = sub.add_parser("schedule", help="run a notebook or job on a schedule (cron); list, show, pause, resume, "
                        "delete schedules")
    scs = sc.add_subparsers(dest="schedule_command", metavar="ACTION")
    scc = scs.add_parser("create", help="package a notebook or job YAML once and queue it at each time a cron "
                         "expression names; any agent or Jupyter server on the store fires it",
                         parents=[server_options])
    _add_job_options(scc)
    scc.add_argument("--cron", required=True, help="five fields: minute hour day-of-month month day-of-week, with "
                     "ranges, steps, lists and names ('0 6 * * mon-fri', '*/15 * * * *'), or @daily, @hourly...")
    scc.add_argument("--tz", default="UTC", help="the time zone the cron expression is read in (Europe/Berlin; "
                     "default UTC)")
    scc.set_defaults(func=cmd_schedule_create)
    scl = scs.add_parser("list", help="list schedules with their next and last runs", parents=[server_options])
    scl.add_argument("--json", action="store_true")
    scl.set_defaults(func=cmd_schedule_list)
    ssh = scs.add_parser("show", help="a schedule: its next runs, its last runs and their states",
                         parents=[server_options])
    ssh.add_argument("schedule_id")
    ssh.add_argument("--runs", type=int, default=10, help="how many of its last runs to show (default 10)")
    ssh.add_argument("--json", action="store_true")
    ssh.set_defaults(func=cmd_schedule_show)
    for action, func, helptext in (("pause", cmd_schedule_pause, "stop a schedule firing"),
                                   ("resume", cmd_schedule_pause, "fire again, from its next time after now"),
                                   ("delete", cmd_schedule_delete, "delete a schedule (its jobs stay)")):
        a = scs.add_parser(action, help=helptext, parents=[server_options])
        a.add_argument("schedule_id")
        a.set_defaults(func=func)

    sw = sub.add_parser("sweep", help="run a notebook once per parameter combination (grid, random, or a W&B sweep "
                        "file); `sweep show ID` prints its table, `sweep cancel ID` cancels its jobs",
                        parents=[server_options])
    _add_job_options(sw, job_file=False)
    sw.add_argument("sweep_id", nargs="?", help=argparse.SUPPRESS)
    sw.add_argument("--config", "-c", help="a sweep YAML in W&B's shape: method (grid, random), parameters (values, "
                    "value, or distribution with min and max), metric (name, goal), run_cap")
    sw.add_argument("--grid", action="append", metavar="NAME=V1,V2", help="values to go through; repeatable (the "
                    "runs are every combination)")
    sw.add_argument("--random", type=int, metavar="N", help="N runs drawn at random (from --range and --grid)")
    sw.add_argument("--range", action="append", metavar="NAME=MIN:MAX[:lin|log|int]",
                    help="a range drawn from with --random; repeatable")
    sw.add_argument("--seed", type=int, help="the random draws' seed (the same seed, the same runs)")
    sw.add_argument("--max-parallel", type=int, metavar="K", help="at most K of its jobs run at once")
    sw.add_argument("--fail-fast", action="store_true", help="the first job that fails cancels the rest")
    sw.add_argument("--metric", help="the metric that ranks the jobs (the last value each logged)")
    sw.add_argument("--goal", choices=["minimize", "maximize"], help="whether less or more --metric is better "
                    "(default minimize)")
    sw.add_argument("--wait", action="store_true", help="wait for every job, then print the table (runs an agent "
                    "here when none serves the queue)")
    sw.set_defaults(func=cmd_sweep)

    mv = sub.add_parser("move", help="move a queued job: --front puts it first on its queue", parents=[server_options])
    mv.add_argument("job_id")
    mv.add_argument("--front", action="store_true", help="first on its queue (its priority raised above the others')")
    mv.set_defaults(func=cmd_move)

    j = sub.add_parser("jobs", aliases=["list"], help="list jobs, newest first, filtered and sorted on the store",
                       parents=[server_options])
    j.add_argument("--queue", "-q")
    j.add_argument("--status", "--state", "-s", help="state(s), comma-separated")
    j.add_argument("--owner", help="only this owner's jobs")
    j.add_argument("--type", help="only jobs of this job type")
    j.add_argument("--search", help="text found in the job's name (any case), or the start of its id")
    j.add_argument("--since", help="submitted at or after: 2026-12-01, 2026-12-01T14:30, or a span ago (2d, 90m)")
    j.add_argument("--until", help="submitted before (same forms as --since)")
    j.add_argument("--sort", default="-submitted",
                   help=f"one of {', '.join(JOB_SORTS)}; '-' in front for descending, as --sort=-name (default -submitted)")
    j.add_argument("--archived", choices=["only", "with"], help="list only archived jobs, or them with the rest")
    j.add_argument("--limit", "-n", type=int, default=50)
    j.add_argument("--offset", type=int, default=0, help="skip this many jobs (the next page)")
    j.add_argument("--json", action="store_true")
    j.set_defaults(func=cmd_jobs)

    d = sub.add_parser("delete", help="delete ended jobs with their logs, metrics and outputs",
                       parents=[server_options])
    d.add_argument("job_ids", nargs="+", metavar="JOB")
    d.set_defaults(func=cmd_delete)

    ar = sub.add_parser("archive", help="hide ended jobs from `jobs` (kept, and listed with --archived)",
                        parents=[server_options])
    ar.add_argument("job_ids", nargs="+", metavar="JOB")
    ar.add_argument("--undo", action="store_true", help="bring archived jobs back into the list")
    ar.set_defaults(func=cmd_archive)

    for name, func, helptext in (("show", cmd_show, "a job's state, reason, attempt, exit code and times"),
                                 ("cancel", cmd_cancel, "cancel a job"),
                                 ("metrics", cmd_metrics, "a job's metrics as JSON lines")):
        c = sub.add_parser(name, help=helptext, parents=[server_options])
        c.add_argument("job_id")
        if name == "show":
            c.add_argument("--json", action="store_true")
        c.set_defaults(func=func)

    lg = sub.add_parser("logs", help="print a job's log", parents=[server_options])
    lg.add_argument("job_id")
    lg.add_argument("--follow", "-f", action="store_true")
    lg.add_argument("--offset", type=int, default=0, help="start at this byte offset (resume)")
    lg.set_defaults(func=cmd_logs)

    r = sub.add_parser("rerun", help="run a job again with the same artifact and spec", parents=[server_options])
    r.add_argument("job_id")
    r.add_argument("--follow", "-f", action="store_true")
    r.set_defaults(func=cmd_rerun)

    o = sub.add_parser("outputs", help="list or download a job's outputs", parents=[server_options])
    o.add_argument("job_id")
    o.add_argument("--to", help="download into this folder")
    o.set_defaults(func=cmd_outputs)

    a = sub.add_parser("agent", help="run an agent in the foreground (with --server URL and an agent token in "
                       "$JUPYTER_LAUNCH_TOKEN or --token-file FILE: for that server, over HTTP). SIGTERM stops it "
                       "gracefully (running jobs get c.Agent.stop_grace seconds, then are handed back); SIGINT, or a "
                       "second signal, hands them back at once", parents=[server_options])
    a.add_argument("--queue", "-q", action="append", required=True)
    a.add_argument("--job-type", "-t", action="append", default=[])
    a.add_argument("--lease", type=float, help="lease seconds (default: c.Agent.lease_seconds, 30)")
    a.add_argument("--max-jobs", type=int)
    a.add_argument("--gpus", type=int, help="GPU slots (default: detected with nvidia-smi)")
    a.add_argument("--help-all", action=_HelpAll)
    a.set_defaults(func=cmd_agent)

    from .serve import add_serve_command
    from .tokens import add_token_commands

    add_serve_command(sub)
    add_token_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(split_param_args(sys.argv[1:] if argv is None else argv))
    config_args, unknown = config_words(rest)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        args.config_words = config_args  # handed on to processes a command starts (the queue manager's)
        args.launch_config = LaunchCommand()
        try:
            args.launch_config.load(config_args)
        except Exception as exc:  # a config file that does not run, or a --Class.trait=value of the wrong type
            raise UsageError(f"Jupyter config (jupyter_launch_config.py in `jupyter --paths` config, or "
                             f"--Class.trait=value): {type(exc).__name__}: {exc}") from None
        if getattr(args, "token_file", None):
            if args.token:
                raise UsageError("give --token or --token-file, not both")
            args.token = read_token_file(args.token_file)
        if args.token and not (args.server or os.environ.get(SERVER_ENV)):
            raise UsageError(f"--token goes with --server URL (or ${SERVER_ENV})")
        return args.func(args)
    except (LocatedError, StoreError, UsageError) as exc:  # bad input (a spec, a folder to package), a refusal
        print(f"jupyter launch: error: {printable(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0

