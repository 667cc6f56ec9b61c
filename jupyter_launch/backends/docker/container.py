"""What a job's container is: its labels, the ``sh`` wrapper that hands it its secrets, its create and exec
settings, its folder going in and its outputs coming out, and the raw attach connection its log is read from.

All blocking (docker-py), called from threads by :mod:`.backend`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import select
import socket
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...images import PACKAGE_DIR, package_source
from ..base import JobContext, job_environment
from .config import DockerProvider

LABEL = "jupyter-launch"
JOB_ID_LABEL = f"{LABEL}.job-id"
ATTEMPT_LABEL = f"{LABEL}.attempt"
FENCE_LABEL = f"{LABEL}.fence"
QUEUE_LABEL = f"{LABEL}.queue"
AGENT_LABEL = f"{LABEL}.agent"
WARM_LABEL = f"{LABEL}.warm"
MANAGED_BY = "app.jupyter-launch.managed-by"
WORK_DIR = "/jl/work"
OUTPUT_DIR = f"{WORK_DIR}/.jupyter-launch/outputs"
READ_SIZE = 256 * 1024
EMIT_INTERVAL = 0.005  # seconds the log pump gathers output before handing it to the event loop

# Runs as ``sh -c WRAPPER jupyter-launch ARGV...``. With secrets, the first line on stdin is ``export K='v' ...``
# (values quoted for sh, newlines as $jl_nl), so they reach the job's environment without ever being part of the
# container's config. ``python`` means the image's Python even where only ``python3`` exists (Debian).
WRAPPER = (
    'jl_nl=$(printf "\\nx"); jl_nl=${jl_nl%x}; '
    'if [ "${JUPYTER_LAUNCH_SECRETS_ON_STDIN:-}" = 1 ]; then IFS= read -r jl_line || true; eval "$jl_line"; '
    'unset jl_line JUPYTER_LAUNCH_SECRETS_ON_STDIN; fi; unset jl_nl; '
    'case "$1" in python) command -v python >/dev/null 2>&1 || { shift; set -- python3 "$@"; };; esac; '
    'exec "$@" </dev/null'
)
# The main process of a warm container: idle until a job is exec'd into it; stops at once on SIGTERM.
IDLE = ["sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]
STOP_EXEC = ["sh", "-c", "kill -TERM -1 2>/dev/null; exit 0"]


def container_name(job_id: str, attempt: int) -> str:
    return "jl-" + re.sub(r"[^a-zA-Z0-9_.-]", "-", f"{job_id}-{attempt}")[:120]


def sh_quote(value: str) -> str:
    """One sh word for ``value``, on one line (newlines become ``$jl_nl``, which the wrapper defines)."""
    return "'" + value.replace("'", "'\\''").replace("\n", "'\"$jl_nl\"'") + "'"


def secrets_line(secrets: dict[str, str]) -> bytes:
    return ("export " + " ".join(f"{k}={sh_quote(v)}" for k, v in secrets.items()) + "\n").encode()


class Hijacked:
    """A raw connection to the engine after an HTTP upgrade (attach, exec start): the stream, and its first bytes."""

    def __init__(self, sock: socket.socket, first: bytes = b""):
        self.sock, self.first = sock, first

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def hijack(api: Any, path: str, query: dict[str, Any] | None = None, body: dict[str, Any] | None = None) -> Hijacked:
    """POST ``path`` with ``Upgrade: tcp`` on a connection of our own and return it raw.

    docker-py's ``attach_socket`` leaves the socket tied to a pooled response that cannot be closed cleanly; owning
    the connection keeps close (and the socket's lifetime) ours. Unix sockets and plain TCP engines; other
    transports (TLS, ssh) go through docker-py.
    """
    import docker.errors
    from urllib.parse import urlencode, urlsplit

    adapter = getattr(api, "_custom_adapter", None)
    url = urlsplit(api._url(path))
    target = url.path + ("?" + urlencode(query) if query else "")
    if hasattr(adapter, "socket_path"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(adapter.socket_path)
    elif api.base_url.startswith("http://"):
        sock = socket.create_connection((url.hostname, url.port or 2375))
    else:
        raise NotImplementedError(api.base_url)
    data = json.dumps(body).encode() if body is not None else b""
    try:
        sock.sendall((f"POST {target} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                raise docker.errors.APIError(f"the engine closed the connection on {path}")
            head += chunk
        header, _, rest = head.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        if status not in (101, 200):
            try:
                message = json.loads(rest.decode(errors="replace").strip().splitlines()[-1]).get("message", "")
            except (ValueError, IndexError, AttributeError):
                message = rest.decode(errors="replace")
            raise docker.errors.APIError(f"{status}: {message}")
    except BaseException:
        sock.close()
        raise
    return Hijacked(sock, rest)


@dataclass
class DockerHandle:
    api: Any
    container: str
    copy: bool  # the job's folder was copied in: outputs come back with get_archive
    sock: Hijacked | None = None  # the attach (or exec) connection
    exec_id: str | None = None
    warm: bool = False
    stream_ended: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = 0.0
    stopping: bool = False  # the agent asked for the stop (cancel, timeout, lost lease)
    closed: bool = False  # its connection is closed: the stream's reader stops waiting for room in the log


def job_argv(ctx: JobContext) -> list[str]:
    return list(ctx.spec.command or []) if ctx.spec.kind == "command" else list(ctx.runner_command)


def job_env(ctx: JobContext, built: bool) -> dict[str, str]:
    """The container's environment over the image's: nothing of the agent's (the image has its own PATH, HOME...);
    the secrets come on stdin, through the wrapper."""
    env = job_environment(ctx, secrets=False)
    env["JUPYTER_LAUNCH_OUTPUT_DIR"] = OUTPUT_DIR  # the agent's path means nothing inside the container
    env.setdefault("HOME", "/tmp")
    if ctx.spec.kind != "command" and not built:
        env["PYTHONPATH"] = PACKAGE_DIR  # the runner, from the agent's own install (mounted or copied in)
    if ctx.gpu_ids:
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(map(str, ctx.gpu_ids))
    if ctx.secrets:
        env["JUPYTER_LAUNCH_SECRETS_ON_STDIN"] = "1"
    return env


def labels(ctx: JobContext) -> dict[str, str]:
    return {MANAGED_BY: "jupyter-launch", JOB_ID_LABEL: ctx.job_id, ATTEMPT_LABEL: str(ctx.attempt),
            FENCE_LABEL: str(ctx.fence), QUEUE_LABEL: ctx.queue, AGENT_LABEL: ctx.agent_id}


def wrapped(argv: list[str], ctx: JobContext) -> list[str]:
    """The job's argv behind the sh wrapper when it needs one (secrets, or ``python`` to resolve)."""
    if ctx.secrets or (argv and argv[0] == "python"):
        return ["sh", "-c", WRAPPER, "jupyter-launch", *argv]
    return argv


def isolation(config: DockerProvider) -> dict[str, Any]:
    """The host settings every container of the queue gets, warm ones included."""
    kwargs: dict[str, Any] = {
        "init": True,  # PID 1 forwards SIGTERM to the job, so stop's grace period means something
        "privileged": False,
        "security_opt": ["no-new-privileges"],
    }
    if config.network:
        kwargs["network_mode"] = config.network
    if config.runtime:
        kwargs["runtime"] = config.runtime
    return kwargs


def host_config(api: Any, ctx: JobContext, binds: dict[str, dict[str, str]] | None) -> dict[str, Any]:
    from docker.types import DeviceRequest

    res = ctx.spec.resources
    kwargs = isolation(ctx.queue_config)
    kwargs["binds"] = binds or None
    if res.cpu:
        kwargs["nano_cpus"] = int(res.cpu * 1e9)
    if res.memory:
        kwargs["mem_limit"] = res.memory
    if res.gpu:
        kwargs["device_requests"] = [DeviceRequest(driver="nvidia", device_ids=[str(g) for g in ctx.gpu_ids],
                                                   capabilities=[["gpu"]])]
    return api.create_host_config(**kwargs)


def mounts(ctx: JobContext, built: bool) -> dict[str, dict[str, str]]:
    """The job's folder read-write, as a local job's: it is this attempt's own unpacked copy, removed after it, so what
    the job writes there stays its own; its output folder is inside it (and the runner's package, read-only, when the
    image lacks it)."""
    binds = {str(ctx.workdir): {"bind": WORK_DIR, "mode": "rw"}}
    if ctx.spec.kind != "command" and not built:
        binds[str(package_source())] = {"bind": f"{PACKAGE_DIR}/jupyter_launch", "mode": "ro"}
    return binds


def workdir_tar(ctx: JobContext, built: bool) -> bytes:
    """The job's folder as ``jl/work/...`` (and the runner's package when the image lacks it), for put_archive."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(ctx.workdir), arcname=WORK_DIR.lstrip("/"))
        if ctx.spec.kind != "command" and not built:
            tar.add(str(package_source()), arcname=f"{PACKAGE_DIR.lstrip('/')}/jupyter_launch",
                    filter=lambda info: None if "__pycache__" in info.name else info)
    return buf.getvalue()


def fetch_outputs(api: Any, container: str, output_dir: Path) -> None:
    """Copy the container's output folder into ``output_dir`` (a copied-in job's outputs)."""
    import docker.errors

    try:
        stream, _ = api.get_archive(container, OUTPUT_DIR)
    except docker.errors.NotFound:
        return
    with tempfile.TemporaryFile() as tmp:
        for chunk in stream:
            tmp.write(chunk)
        tmp.seek(0)
        with tarfile.open(fileobj=tmp) as tar:
            members = []
            for m in tar.getmembers():
                # The archive's top folder is "outputs/": the files under it are the job's outputs.
                head, _, rest = m.name.partition("/")
                if not rest or not (m.isfile() or m.isdir()) or rest.startswith("/") or ".." in rest.split("/"):
                    continue
                m.name = rest
                m.mode &= 0o755
                members.append(m)
            output_dir.mkdir(parents=True, exist_ok=True)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(output_dir, members=members, filter="data")
            else:  # Python before 3.11.4 (Debian bookworm's 3.11.2, in the agent image): no extraction filters. The
                # members are plain files and folders with relative names and no special bits, checked above: what
                # the data filter lets through (as the Kubernetes bootstrap does for old Pythons in pods).
                tar.extractall(output_dir, members=members)


def remove(api: Any, cid: str) -> None:
    import docker.errors

    with contextlib.suppress(docker.errors.NotFound):
        api.remove_container(cid, force=True, v=True)


def split_frames(buf: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """Demultiplex attach frames (an 8-byte header: stream, size): runs of one stream, and the partial rest."""
    batch: list[tuple[str, bytes]] = []
    run: list[bytes] = []
    run_name = ""
    pos, end = 0, len(buf)
    while end - pos >= 8:
        size = int.from_bytes(buf[pos + 4:pos + 8], "big")
        if end - pos - 8 < size:
            break
        name = "stderr" if buf[pos] == 2 else "stdout"
        if name != run_name and run:
            batch.append((run_name, b"".join(run)))
            run = []
        run_name = name
        run.append(buf[pos + 8:pos + 8 + size])
        pos += 8 + size
    if run:
        batch.append((run_name, b"".join(run)))
    return batch, buf[pos:]


def pump(conn: Hijacked, read_size: int, emit: Callable[[list[tuple[str, bytes]]], None]) -> None:
    """Read an attach stream to its end in large chunks, handing ``emit`` one batch per EMIT_INTERVAL, not one per
    read: a job writing a line at a time would otherwise cost the event loop a wake-up per line. ``emit`` may block
    (``ThreadLog.write_many``: while the job's log has no room); the container's writes then wait on the stream."""
    raw, first = conn.sock, conn.first
    pieces: list[bytes] = [first] if first else []
    size = len(first)
    since = time.monotonic()
    rest = b""
    eof = False
    while not eof:
        if pieces:
            wait = EMIT_INTERVAL - (time.monotonic() - since)
            readable = wait > 0 and size < read_size and select.select([raw], [], [], wait)[0]
        else:
            readable = True
        if readable:
            try:
                chunk = raw.recv(read_size)
            except OSError:
                chunk = b""
            if chunk:
                if not pieces:
                    since = time.monotonic()
                pieces.append(chunk)
                size += len(chunk)
                continue
            eof = True
        if pieces:
            batch, rest = split_frames(rest + b"".join(pieces))
            pieces, size = [], 0
            if batch:
                emit(batch)
