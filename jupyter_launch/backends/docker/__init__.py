"""The Docker backend (:mod:`.backend`), its queue settings (:mod:`.config`), what a job's container is
(:mod:`.container`) and warm containers (:mod:`.warm`)."""

from .backend import DockerBackend

__all__ = ["DockerBackend"]
