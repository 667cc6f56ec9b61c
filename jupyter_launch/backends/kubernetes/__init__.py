"""The Kubernetes backend (:mod:`.backend`), its queue settings (:mod:`.config`), the cluster objects of a job
(:mod:`.manifests`), how a job's folder and outputs travel (:mod:`.bootstrap`) and its pods' logs (:mod:`.pods`)."""

from .backend import KubernetesBackend

__all__ = ["KubernetesBackend"]
