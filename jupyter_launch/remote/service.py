"""Job operations of a Jupyter server that is a client of the team's jupyter-launch service (``LaunchApp.service_url``):
the server's REST handlers call this ``LaunchService`` as usual, and it works through the service's API.

The store is an ``HttpStore`` with the server's own token (in a JupyterHub user's server, its ``$JUPYTERHUB_API_TOKEN``),
so the service records and checks ownership by that token's user. What the server packages from its own files (the
panel's notebook) is written to a local cache and its missing blobs are uploaded before the job, sweep or schedule
naming it is sent. The service wakes its own agents, grants its queues' agents the artifacts and releases the blobs of
deleted jobs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifact import Artifact, load_manifest
from ..options import PreparedJob
from ..service import Caller, LaunchService
from ..store import BlobStore
from .store import HttpBlobs, HttpStore


class ServiceClientService(LaunchService):
    """``LaunchService`` over a service's API: ``store`` is an ``HttpStore``, ``cache`` the local blob store packaging
    writes to, ``remote_blobs`` the service's artifact blobs (``/launch/api/artifacts/...``)."""

    def __init__(self, store: HttpStore, cache: BlobStore, remote_blobs: HttpBlobs, *, home: Path, **kwargs: Any):
        super().__init__(store, cache, home=home, **kwargs)
        self.remote_blobs = remote_blobs

    def wake(self) -> None:
        """Nothing to wake here: the service wakes its agents when it takes the job."""

    def package(self, prepared: PreparedJob, **options: Any) -> Artifact:
        """Package into the local cache, then upload the artifact's blobs the service lacks (its manifest and the
        files it lists: what the service grants its queue's agents)."""
        artifact = super().package(prepared, **options)
        digests = [artifact.digest] + [entry["digest"] for entry in
                                       load_manifest(artifact.digest, self.blobs)["files"].values()]
        for digest in self.remote_blobs.missing(digests):
            self.remote_blobs.upload(digest, self.blobs.path(digest))
        return artifact

    def delete_job(self, job_id: str, *, caller: Caller | None = None) -> list[str]:
        """The service deletes the job and releases its blobs; returns the digests it removed."""
        if caller is not None:
            self.get_job(job_id, caller=caller)
        return self.store.delete_job(job_id)
