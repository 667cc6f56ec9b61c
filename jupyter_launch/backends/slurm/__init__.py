"""The Slurm backend (:mod:`.backend`): jobs go in with ``sbatch``; its queue settings (:mod:`.config`), the Slurm
commands and their answers (:mod:`.commands`), and the job environments built once per lock on the cluster's shared
filesystem (:mod:`.environment`)."""

from .backend import SlurmBackend
from .config import SlurmProvider

__all__ = ["SlurmBackend", "SlurmProvider"]
