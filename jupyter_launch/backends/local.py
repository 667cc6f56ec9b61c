"""The local backend: a job is a process group on the agent's machine, in the unpacked artifact's folder.

Output is read from the pipes in large chunks (not line by line: asyncio's readline is many times slower), cancel
is SIGTERM to the group, a grace period, then SIGKILL. Children get PR_SET_PDEATHSIG so a killed agent leaves no job
running behind its lease. Queues with ``min_instances`` keep warm runners, each with a kernel already started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

from traitlets import Integer

from .base import Backend, JobContext, Result

READ_SIZE = 256 * 1024
PYTHON_NAMES = ("python", "python3")


def _set_pdeathsig() -> None:
    """Runs in the child before exec: die with the agent (Linux); a no-op elsewhere."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


@dataclass
class LocalHandle:
    proc: asyncio.subprocess.Process
    warm: bool = False


class WarmPool:
    """Runners with a started kernel, waiting on stdin for a job: a notebook job then skips kernel start."""

    def __init__(self, python: str, size: int, env: dict[str, str]):
        self.python = python
        self.size = size
        self.env = env
        self._ready: deque[asyncio.subprocess.Process] = deque()
        self._spawning = 0
        self._closed = False

    def top_up(self) -> None:
        while not self._closed and len(self._ready) + self._spawning < self.size:
            self._spawning += 1
            asyncio.get_running_loop().create_task(self._spawn())

    async def _spawn(self) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python, "-m", "jupyter_launch.runner", "--warm",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=self.env, start_new_session=True, preexec_fn=_set_pdeathsig)
            line = await proc.stdout.readline()  # type: ignore[union-attr]
            if line.strip() == b"ready" and not self._closed:
                self._ready.append(proc)
            else:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        finally:
            self._spawning -= 1

    def ready_pids(self) -> list[int]:
        return [proc.pid for proc in self._ready if proc.returncode is None]

    def take(self) -> asyncio.subprocess.Process | None:
        while self._ready:
            proc = self._ready.popleft()
            if proc.returncode is None:
                self.top_up()
                return proc
        self.top_up()
        return None

    async def close(self) -> None:
        self._closed = True
        while self._ready:
            proc = self._ready.popleft()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


class LocalBackend(Backend):
    name: ClassVar[str] = "local"
    read_size = Integer(READ_SIZE, config=True, help="Bytes read from a job's pipes at a time.")

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._pools: dict[str, WarmPool] = {}

    @classmethod
    def supported_features(cls) -> dict[str, bool]:
        return {"gpus": True, "local_gpus": True, "warm_pool": True, "images": False, "reattach": False}

    def python(self, ctx_or_config: JobContext | dict[str, Any]) -> str:
        config = ctx_or_config.queue_config if isinstance(ctx_or_config, JobContext) else ctx_or_config
        return config.get("python") or sys.executable

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Jobs must not inherit the agent's own store or notebook-server settings by accident.
        for key in ("JUPYTER_LAUNCH_STORE_URL", "JPY_SESSION_NAME"):
            env.pop(key, None)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def job_env(self, ctx: JobContext) -> dict[str, str]:
        env = self.base_env()
        env.update(ctx.env)
        env.update(ctx.secrets)
        if ctx.gpu_ids or ctx.spec.resources.gpu == 0:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in ctx.gpu_ids)
        return env

    async def warm_up(self, queue: str, config: dict[str, Any]) -> None:
        """Keep ``min_instances`` warm runners for this queue (called by the agent when it starts)."""
        size = int(config.get("min_instances") or 0)
        if size and queue not in self._pools:
            self._pools[queue] = WarmPool(self.python(config), size, self.base_env())
            self._pools[queue].top_up()

    def warm_runners(self, queue: str) -> list[int]:
        """Pids of the runners waiting, kernel started, for this queue's next notebook job."""
        pool = self._pools.get(queue)
        return pool.ready_pids() if pool else []

    async def shutdown(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()

    async def start(self, ctx: JobContext) -> LocalHandle:
        python = self.python(ctx)
        if ctx.spec.kind == "command":
            argv = list(ctx.spec.command or [])
            if ctx.spec.image:
                ctx.log("stderr", f"[jupyter-launch] local backend: image {ctx.spec.image} is not used; "
                                  "the job runs in the agent's environment\n".encode())
            if argv and argv[0] in PYTHON_NAMES:
                argv[0] = python  # "python" in a job means this environment's interpreter, not the first on PATH
        else:
            pool = self._pools.get(ctx.queue)
            proc = pool.take() if pool else None
            if proc is not None:
                line = json.dumps({"job_file": str(ctx.workdir / ".jupyter-launch" / "job.json"),
                                   "cwd": str(ctx.workdir), "env": {**ctx.env, **ctx.secrets,
                                   **({"CUDA_VISIBLE_DEVICES": ",".join(map(str, ctx.gpu_ids))} if ctx.gpu_ids else {})}})
                proc.stdin.write(line.encode() + b"\n")  # type: ignore[union-attr]
                await proc.stdin.drain()  # type: ignore[union-attr]
                proc.stdin.close()  # type: ignore[union-attr]
                return LocalHandle(proc, warm=True)
            argv = [python] + ctx.runner_command[1:]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=ctx.workdir, env=self.job_env(ctx), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True, preexec_fn=_set_pdeathsig, limit=self.read_size)
        except (FileNotFoundError, PermissionError) as exc:
            from .base import BackendError

            raise BackendError("exit_code", f"cannot start {argv[0]!r}: {exc.strerror}") from None
        return LocalHandle(proc)

    async def stream(self, handle: LocalHandle, ctx: JobContext) -> None:
        async def pump(reader: asyncio.StreamReader | None, name: str) -> None:
            if reader is None:
                return
            while chunk := await reader.read(self.read_size):
                ctx.log(name, chunk)

        await asyncio.gather(pump(handle.proc.stdout, "stdout"), pump(handle.proc.stderr, "stderr"))

    async def wait(self, handle: LocalHandle) -> int:
        code = await handle.proc.wait()
        return code if code >= 0 else 128 - code  # killed by signal N -> 128 + N, as a shell reports it

    async def stop(self, handle: LocalHandle, grace: float) -> None:
        proc = handle.proc
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    async def cleanup(self, handle: LocalHandle, ctx: JobContext, result: Result) -> None:
        # A job's leftover children (a kernel it started, a background process) end with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(handle.proc.pid, signal.SIGKILL)
