"""Job environments on a cluster's shared filesystem: one virtual environment per environment lock, built once.

An environment is a hand-made virtual environment (:mod:`..job_venv`) layered over the queue's interpreter, with what
the job's lock asks for installed into it: with ``lock: full`` (the default) every distribution the notebook's
kernel had that the queue's interpreter lacks at that version, pinned, and its local distributions from the sources
the artifact carries; then the notebook's ``%pip install`` lines and the folder's ``requirements.txt``. (Each job
registers the notebook's kernel under its own name in its own layer.) It lives in ``shared_dir/envs/HASH``, the hash of the interpreter,
its layer and those installs, so every job with the same lock shares it, on every node. Each job gets a layer of its own over it (in its
folder), so what a job installs stays the job's. It is built under an exclusive lock on ``HASH.lock`` and marked
complete last, so two agents never build one twice and no job uses one half built.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...environment import lock_packages, probe
from ...errors import LaunchError
from ...images import load_environment, local_sources, pinned_packages, pip_install_args, tree_digest
from ..job_venv import Layer, make_job_venv

ENV_VERSION = 2  # bump when what goes into an environment changes
COMPLETE = ".jupyter-launch-complete"


@dataclass(frozen=True)
class EnvironmentPlan:
    layer: Layer
    installs: tuple[str, ...]
    requirements: str | None
    pins: tuple[str, ...] = ()  # lock: full: the kernel's distributions the layer lacks at their version
    sources: tuple[tuple[str, str, str], ...] = ()  # local distributions: (name, path in the job's folder, digest)
    kernel: str | None = None  # the notebook's kernel: each job registers it in its own layer (not in the hash)

    @property
    def hash(self) -> str:
        doc = {"v": ENV_VERSION, "executable": self.layer.executable, "version": self.layer.version,
               "layer": self.layer.entries, "installs": self.installs, "requirements": self.requirements,
               "pins": self.pins, "sources": [(name, digest) for name, _, digest in self.sources]}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def plan_environment(layer: Layer, workdir: Path, lock_mode: str = "full",
                     python: str | None = None) -> EnvironmentPlan:
    """What the job's lock (carried in its folder) asks to be installed over ``layer``, the environment of
    interpreter ``python`` (default: the layer's). Blocking (it asks that interpreter what it has, once while its
    folders are unchanged). Raises ``EnvironmentBuildError`` when
    the lock cannot be had over ``layer``: another Python minor version, a local distribution with no source."""
    lock = load_environment(workdir)
    installs = tuple(pip_install_args(lock.get("pip_installs") or []))
    requirements_file = workdir / "requirements.txt"
    requirements = requirements_file.read_text(encoding="utf-8", errors="replace") if requirements_file.is_file() \
        else None
    kernel = lock.get("kernel") if isinstance(lock.get("kernel"), str) else None
    kernel = None if kernel in ("python3", "python") else kernel  # the layer's own kernel
    if lock_mode != "full":
        return EnvironmentPlan(layer, installs, requirements, kernel=kernel)
    wanted = pinned_packages(lock.get("packages"))
    kernel_python = lock.get("python")
    interpreter = python or layer.executable
    if wanted and isinstance(kernel_python, str) and kernel_python.split(".")[:2] != layer.version.split(".")[:2]:
        raise EnvironmentBuildError(
            f"the notebook's kernel runs Python {kernel_python} and the queue's interpreter {interpreter} has Python "
            f"{layer.version}: its packages cannot be installed there at their versions. Set the queue's "
            f"provider.python to a Python {'.'.join(kernel_python.split('.')[:2])}, or provider.lock: minimal")
    have = set(lock_packages(probe(interpreter))[0]) if wanted else set()
    pins = tuple(p for p in wanted if p not in have)
    found = local_sources(lock, workdir, EnvironmentBuildError, "environment", "provider.lock")
    sources = tuple(sorted((name, str(where.relative_to(workdir)), tree_digest(where)) for name, where in found.items()))
    return EnvironmentPlan(layer, installs, requirements, pins, sources, kernel)


def ensure_environment(root: Path, plan: EnvironmentPlan, log: Callable[[bytes], None],
                       workdir: Path | None = None) -> tuple[Path, bool]:
    """Blocking: the environment of ``plan`` under ``root`` (``shared_dir/envs``), built when it is not there yet;
    (its folder, whether it was built now). pip's output goes to ``log``; local distributions are installed from
    their sources in ``workdir`` (the job's folder). Raises ``EnvironmentBuildError``."""
    root.mkdir(parents=True, exist_ok=True)
    env = root / plan.hash[:24]
    if (env / COMPLETE).exists():
        return env, False
    with open(root / f"{plan.hash[:24]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another agent may be building it: wait for it, then use it
        if (env / COMPLETE).exists():
            return env, False
        shutil.rmtree(env, ignore_errors=True)  # half built by an agent killed while building it
        try:
            # Built in place (scripts pip writes name the interpreter by its path); used only once marked complete.
            make_job_venv(env, plan.layer)
            if plan.pins:
                # The lock is whole (every distribution the kernel had), so no resolving: each pin as it was, over
                # what the queue's interpreter has at the same versions.
                (env / "lock.txt").write_text("".join(p + "\n" for p in plan.pins))
                _pip_install(env, ["--no-deps", "--ignore-requires-python", "-r", str(env / "lock.txt")], log,
                             f"{len(plan.pins)} pinned distributions of the notebook's kernel")
            if plan.sources:
                if workdir is None:
                    raise EnvironmentBuildError("the job's local distributions need its folder to be installed from")
                _pip_install(env, [str(workdir / path) for _, path, _ in plan.sources], log)
            args = list(plan.installs)
            if plan.requirements is not None:
                (env / "requirements.txt").write_text(plan.requirements)
                args += ["-r", str(env / "requirements.txt")]
            if args:
                _pip_install(env, args, log)
            (env / COMPLETE).write_text(json.dumps({"installs": list(plan.installs), "pins": list(plan.pins)}))
        except BaseException:
            shutil.rmtree(env, ignore_errors=True)
            raise
    return env, True


class EnvironmentBuildError(LaunchError):
    """pip could not build a lock's environment on the shared filesystem; the message holds pip's last lines."""


def register_kernel(env: Path, name: str) -> Path:
    """A kernelspec ``name`` in ``env``'s own share/jupyter (returned, to put first on the job's JUPYTER_PATH) that
    runs its Python: the job's notebook finds the kernel it names there, not the one of the machine that submitted
    it, and what ``%pip`` installs in that kernel lands in ``env``."""
    share = env / "share" / "jupyter"
    target = share / "kernels" / name
    target.mkdir(parents=True, exist_ok=True)
    (target / "kernel.json").write_text(json.dumps({
        "argv": [str(env / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": name, "language": "python", "metadata": {"debugger": True}}, indent=1))
    return share


def _pip_install(env: Path, args: list[str], log: Callable[[bytes], None], what: str | None = None) -> None:
    argv = [str(env / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
            "--no-input", "--progress-bar", "off", *args]
    log(f"[jupyter-launch] building the job's environment {env.name}: pip install {what or ' '.join(args)}\n"
        .encode())
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=env,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "VIRTUAL_ENV": str(env)}) as proc:
        assert proc.stdout is not None
        tail: list[bytes] = []
        for line in proc.stdout:
            log(line)
            tail = (tail + [line])[-5:]
    if proc.returncode != 0:
        said = b"".join(tail).decode(errors="replace").strip().splitlines()
        raise EnvironmentBuildError(f"pip install {' '.join(args)} exited {proc.returncode}"
                                    + (f": {said[-1]}" if said else ""))
