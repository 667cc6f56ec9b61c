"""A Slurm queue's settings: the ``provider:`` block of a queue YAML with ``type: slurm``."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator

from ...spec import ProviderConfig

# sbatch options the backend sets itself for every job: a queue's ``sbatch_options`` may not name them.
RESERVED_OPTIONS = ("--output", "--error", "--chdir", "--export", "--parsable", "--job-name", "--comment", "--wrap",
                    "--open-mode", "--requeue", "--no-requeue", "--nodes", "--ntasks", "--ntasks-per-node", "-o", "-e",
                    "-D", "-J", "-N", "-n")


class SlurmProvider(ProviderConfig):
    type: Literal["slurm"]
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    # A folder every node of the cluster sees at the same path: job folders and job environments go under it.
    shared_dir: str
    sbatch_options: list[str] = Field(default_factory=list)  # more sbatch options, each one word: --constraint=a100
    python: str | None = None  # the interpreter job environments are layered over; default: the agent's own
    # full: a job's environment has every distribution its notebook's kernel had (those the interpreter lacks at
    # that version are installed, pinned); minimal: only its %pip lines and requirements.txt over the interpreter.
    lock: Literal["minimal", "full"] = "full"

    @field_validator("shared_dir")
    @classmethod
    def _shared_dir(cls, v: str) -> str:
        if not os.path.isabs(v) or "\x00" in v:
            raise ValueError(f"{v!r} is not an absolute path (a folder every node of the cluster sees)")
        return os.path.normpath(v)

    @field_validator("sbatch_options")
    @classmethod
    def _sbatch_options(cls, v: list[str]) -> list[str]:
        for option in v:
            if not option.startswith("-") or "\x00" in option or "\n" in option:
                raise ValueError(f"{option!r} is not an sbatch option (one word, such as --constraint=a100)")
            name = option.split("=", 1)[0] if option.startswith("--") else option[:2]
            if name in RESERVED_OPTIONS:
                raise ValueError(f"{name} is set by jupyter-launch for every job; leave it out of sbatch_options")
        return v
