"""Job environments on a cluster's shared filesystem: one virtual environment per environment lock, built once.

An environment is a hand-made virtual environment (:mod:`..job_venv`) layered over the queue's interpreter, with what
the job's lock asks for installed into it (the notebook's ``%pip install`` lines and the folder's
``requirements.txt``). It lives in ``shared_dir/envs/HASH``, the hash of the interpreter, its layer and those
installs, so every job with the same lock shares it, on every node. Each job gets a layer of its own over it (in its
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

from ...errors import LaunchError
from ...images import load_environment, pip_install_args
from ..job_venv import Layer, make_job_venv

ENV_VERSION = 1  # bump when what goes into an environment changes
COMPLETE = ".jupyter-launch-complete"


@dataclass(frozen=True)
class EnvironmentPlan:
    layer: Layer
    installs: tuple[str, ...]
    requirements: str | None

    @property
    def hash(self) -> str:
        doc = {"v": ENV_VERSION, "executable": self.layer.executable, "version": self.layer.version,
               "layer": self.layer.entries, "installs": self.installs, "requirements": self.requirements}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def plan_environment(layer: Layer, workdir: Path) -> EnvironmentPlan:
    """What the job's lock (carried in its folder) asks to be installed over ``layer``."""
    lock = load_environment(workdir)
    installs = tuple(pip_install_args(lock.get("pip_installs") or []))
    requirements_file = workdir / "requirements.txt"
    requirements = requirements_file.read_text(encoding="utf-8", errors="replace") if requirements_file.is_file() \
        else None
    return EnvironmentPlan(layer, installs, requirements)


def ensure_environment(root: Path, plan: EnvironmentPlan, log: Callable[[bytes], None]) -> tuple[Path, bool]:
    """Blocking: the environment of ``plan`` under ``root`` (``shared_dir/envs``), built when it is not there yet;
    (its folder, whether it was built now). pip's output goes to ``log``. Raises ``EnvironmentBuildError``."""
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
            args = list(plan.installs)
            if plan.requirements is not None:
                (env / "requirements.txt").write_text(plan.requirements)
                args += ["-r", str(env / "requirements.txt")]
            if args:
                _pip_install(env, args, log)
            (env / COMPLETE).write_text(json.dumps({"installs": list(plan.installs)}))
        except BaseException:
            shutil.rmtree(env, ignore_errors=True)
            raise
    return env, True


class EnvironmentBuildError(LaunchError):
    """pip could not build a lock's environment on the shared filesystem; the message holds pip's last lines."""


def _pip_install(env: Path, args: list[str], log: Callable[[bytes], None]) -> None:
    argv = [str(env / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
            "--no-input", *args]
    log(f"[jupyter-launch] building the job's environment {env.name}: pip install {' '.join(args)}\n".encode())
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
