"""Content-addressed blob storage on a folder: ``sha256/ab/cdef…``; a blob already stored is never written again."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return "sha256:" + h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _check(digest: str) -> str:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexd


@contextlib.contextmanager
def _removed_unless_kept(tmp: str) -> Iterator[None]:
    """Remove the temporary file ``tmp`` if the block fails: a half-written blob on a full disk keeps it full."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class BlobStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        hexd = _check(digest)
        return self.root / "sha256" / hexd[:2] / hexd[2:]

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def missing(self, digests: list[str]) -> list[str]:
        return [d for d in dict.fromkeys(digests) if not self.has(d)]

    def put_file(self, src: str | Path, digest: str | None = None) -> str:
        """Store a copy of a file; returns its digest. A copy that fails (a full disk) leaves nothing behind."""
        digest = digest or sha256_file(src)
        dest = self.path(digest)
        if dest.exists():
            return digest
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        os.close(fd)
        with _removed_unless_kept(tmp):
            shutil.copyfile(src, tmp)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
        return digest

    def put_bytes(self, data: bytes) -> str:
        digest = sha256_bytes(data)
        dest = self.path(digest)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".", suffix=".tmp")
            with _removed_unless_kept(tmp):
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.chmod(tmp, 0o444)
                os.replace(tmp, dest)
        return digest

    def put_stream(self, stream: BinaryIO, expected: str | None = None, max_size: int | None = None) -> str:
        """Store from a stream, checking the digest when one is expected (uploads)."""
        h = hashlib.sha256()
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=tmp_dir)
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                while block := stream.read(CHUNK):
                    size += len(block)
                    if max_size is not None and size > max_size:
                        raise ValueError(f"blob larger than the limit of {max_size} bytes")
                    h.update(block)
                    f.write(block)
            digest = "sha256:" + h.hexdigest()
            if expected and expected != digest:
                raise ValueError(f"content does not match its digest: expected {expected}, got {digest}")
            dest = self.path(digest)
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp, 0o444)
                os.replace(tmp, dest)
            return digest
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def remove(self, digest: str) -> bool:
        """Remove a blob nothing uses any more; false when it was not there."""
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def read_bytes(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def open(self, digest: str) -> BinaryIO:
        return open(self.path(digest), "rb")
