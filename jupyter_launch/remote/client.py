"""``LaunchClient`` through a running server's API, with a user's token (``connect``): the ``HttpStore`` with that
token, and blobs packaged locally then uploaded before a submit."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ..store import BlobStore
from .http import Http
from .store import HttpBlobs, HttpStore


class ServerBlobs(HttpBlobs):
    """The client's blobs: packaging writes to the local cache as usual; before a submit, the blobs it touched are
    checked with the server in one call and only the missing ones are uploaded."""

    def __init__(self, http: Http, cache: BlobStore):
        super().__init__(http, cache, prefix="artifacts/blobs", missing_path="artifacts/missing")
        self._touched: dict[str, None] = {}
        self._lock = threading.Lock()

    def _touch(self, digest: str) -> str:
        with self._lock:
            self._touched[digest] = None
        return digest

    def has(self, digest: str) -> bool:
        self._touch(digest)
        return self.cache.has(digest)

    def put_file(self, src: str | Path, digest: str | None = None) -> str:
        return self._touch(self.cache.put_file(src, digest))

    def put_bytes(self, data: bytes) -> str:
        return self._touch(self.cache.put_bytes(data))

    def put_stream(self, stream: Any, expected: str | None = None, max_size: int | None = None) -> str:
        return self._touch(self.cache.put_stream(stream, expected, max_size))

    def sync(self) -> list[str]:
        """Upload the blobs the server lacks, of those touched since the last sync; returns those uploaded."""
        with self._lock:
            digests, self._touched = list(self._touched), {}
        missing = self.missing(digests)
        for digest in missing:
            self.upload(digest, self.cache.path(digest))
        return missing


def connect(server_url: str, token: str, *, home: str | Path | None = None, owner: str | None = None) -> Any:
    """A ``LaunchClient`` that works through a running server's API instead of the embedded store."""
    from ..client import LaunchClient
    from ..paths import launch_home

    store = HttpStore(server_url, user_token=token)
    cache = BlobStore((Path(home) if home else launch_home()) / "blobs")
    store.blobs = ServerBlobs(store.user_http, cache)  # type: ignore[arg-type]
    client = LaunchClient(store=store, blobs=store.blobs, home=home, owner=owner)  # type: ignore[arg-type]
    client.server_url = store.server_url
    return client
