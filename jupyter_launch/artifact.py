"""Job artifacts: packaging a job's folder into a content-addressed artifact, and safe unpacking.

An artifact is a manifest blob (files with digests and modes, the environment lock, the entrypoint) plus one blob per
file. Everything that unpacks one (a manifest from the store, a tar from elsewhere) checks every path first, because
both may come from another machine.
"""

from __future__ import annotations

import copy
import io
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, BinaryIO

from .errors import LocatedError
from .store.blobs import BlobStore, sha256_bytes, sha256_file

MANIFEST_VERSION = 1
DEFAULT_MAX_SIZE = 500 * 1024**2
CONTROL_DIR = ".jupyter-launch"  # the agent's folder inside a job's workdir: job.json, outputs, the manifest
MANIFEST_PATH = f"{CONTROL_DIR}/manifest.json"
IGNORE_FILES = (".gitignore", ".launchignore")  # in this order, so .launchignore has the last word
ALWAYS_EXCLUDED = frozenset({".git", "__pycache__", ".ipynb_checkpoints"})
FILE_MODES = (0o644, 0o755)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HASH_RETRIES = 3


class ArtifactError(LocatedError):
    """An artifact that cannot be built or unpacked safely: too large, an escaping link or path, a bad manifest."""


@dataclass
class Artifact:
    digest: str  # digest of the manifest blob
    manifest: dict[str, Any]
    files: int
    size: int
    largest: list[tuple[str, int]]  # the 10 largest files, largest first
    new_files: int | None = None  # files whose content the blob store lacked and got now; None when not known
    new_size: int = 0  # their bytes

    def report(self) -> str:
        """One line for the user: how much is being sent, what dominates it, and how much of it was stored already."""
        text = f"{self.files} file{'' if self.files == 1 else 's'}, {format_size(self.size)}"
        if self.largest:
            text += " (largest: " + ", ".join(f"{p} {format_size(s)}" for p, s in self.largest[:3]) + ")"
        if self.new_files is not None:
            text += f"; {self.new_files} new" + (f" ({format_size(self.new_size)})" if self.new_files else "")
            text += f", {self.files - self.new_files} already stored"
        return text


def format_size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------- hash cache

class HashCache:
    """File digests keyed by path, size, mtime and ctime, so packaging an unchanged folder reads no file again.

    Kept as one JSON file in ``folder``, loaded on first use. ``save`` replaces it atomically: two processes saving at
    once lose each other's new entries at worst (a rehash later), never corrupt the file. ctime is part of the key
    because tools that copy with ``-p`` keep mtime and size while changing the content.
    """

    FILE_NAME = "hash-cache.json"
    MAX_ENTRIES = 100_000
    # A file modified this recently may change again within the same timestamp tick without its mtime moving
    # (git's "racy clean" problem), so its digest is not cached yet.
    RACY_NS = 2 * 10**9

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / self.FILE_NAME
        self._entries: dict[str, list[Any]] | None = None
        self._dirty = False
        self._lock = threading.Lock()

    def _load(self) -> dict[str, list[Any]]:
        if self._entries is None:
            try:
                data = json.loads(self.path.read_bytes())
                entries = data["entries"] if data.get("version") == 1 else {}
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                entries = {}
            self._entries = entries if isinstance(entries, dict) else {}
        return self._entries

    def get(self, path: str | Path, stat: os.stat_result) -> str | None:
        with self._lock:
            entry = self._load().get(str(path))
        if isinstance(entry, list) and len(entry) == 4 \
                and entry[:3] == [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]:
            return entry[3]
        return None

    def put(self, path: str | Path, stat: os.stat_result, digest: str) -> None:
        if time.time_ns() - stat.st_mtime_ns < self.RACY_NS:
            return
        with self._lock:
            entries = self._load()
            entries.pop(str(path), None)  # re-insert at the end: the oldest entries go first when trimming
            entries[str(path)] = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, digest]
            self._dirty = True

    def save(self) -> None:
        with self._lock:
            if not self._dirty or self._entries is None:
                return
            excess = len(self._entries) - self.MAX_ENTRIES
            if excess > 0:
                for key in list(self._entries)[:excess]:
                    del self._entries[key]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.FILE_NAME}.")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"version": 1, "entries": self._entries}, f, separators=(",", ":"))
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
            self._dirty = False


# ---------------------------------------------------------------- paths

def _check_relpath(path: Any) -> str:
    """A manifest path must name a file strictly inside the folder it is unpacked into."""
    if not isinstance(path, str) or not path or "\x00" in path or path.startswith("/") \
            or any(part in ("", ".", "..") for part in path.split("/")):
        raise ArtifactError(f"unsafe path in artifact: {path!r}")
    if path == MANIFEST_PATH:
        raise ArtifactError(f"{MANIFEST_PATH} is reserved for the artifact's own manifest")
    return path


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


# ---------------------------------------------------------------- building

@dataclass
class _Found:
    rel: str
    path: str  # what to read: the real path for a symlink
    stat: os.stat_result


_ignore_specs: dict[str, tuple[tuple[int, int], Any]] = {}  # per process: an ignore file is parsed once


def _ignore_spec(path: str) -> Any:
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (st.st_size, st.st_mtime_ns)
    cached = _ignore_specs.get(path)
    if cached and cached[0] == key:
        return cached[1]
    import pathspec

    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            spec = pathspec.GitIgnoreSpec.from_lines(f.read().splitlines())
    except OSError:
        return None
    _ignore_specs[path] = (key, spec)
    return spec


class _Ignores:
    """The .gitignore/.launchignore rules in force in one folder: the deepest file with a matching pattern decides."""

    def __init__(self, rules: tuple[tuple[str, Any], ...] = ()):
        self.rules = rules  # (folder's path in the artifact with a trailing '/', its parsed rules), outermost first

    def enter(self, folder: str, rel_dir: str, names: set[str]) -> _Ignores:
        added = []
        for name in IGNORE_FILES:
            spec = _ignore_spec(os.path.join(folder, name)) if name in names else None
            if spec is not None:
                added.append((rel_dir, spec))
        return _Ignores(self.rules + tuple(added)) if added else self

    def ignored(self, rel: str, is_dir: bool) -> bool:
        for base, spec in reversed(self.rules):
            sub = rel[len(base):]
            decision = spec.check_file(sub + "/" if is_dir else sub).include
            if decision is not None:
                return decision
        return False


def _follow_link(root: str, rel: str, path: str) -> str | None:
    """The real path behind symbolic links; None when it leads nowhere (editor lock files are dangling links)."""
    real = os.path.realpath(path)
    if not os.path.exists(real):
        return None
    if not _within(real, root):
        raise ArtifactError(f"{rel} is a symbolic link to {real}, outside the folder being packaged; "
                            "copy what it points to into the folder, or add the link to .launchignore", source=root)
    return real


def _walk(root: str, skip_dirs: set[str]) -> list[_Found]:
    found: list[_Found] = []
    # (folder to list, its path in the artifact with a trailing '/', rules in force, real folders above: loop guard)
    stack: list[tuple[str, str, _Ignores, frozenset[str]]] = [(root, "", _Ignores(), frozenset({root}))]
    while stack:
        folder, rel_dir, ignores, above = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            raise ArtifactError(f"{rel_dir or './'}: cannot read the folder ({exc.strerror}); add it to .launchignore",
                                source=root) from None
        names = {e.name for e in entries}
        if rel_dir and "pyvenv.cfg" in names:
            continue  # a virtual environment: machine-specific, rebuilt from the environment lock instead
        ignores = ignores.enter(folder, rel_dir, names)
        for e in entries:
            if e.name in ALWAYS_EXCLUDED or (not rel_dir and e.name == CONTROL_DIR):
                continue
            rel = rel_dir + e.name
            is_dir = e.is_dir()
            if ignores.ignored(rel, is_dir):
                continue
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise ArtifactError(f"{rel!r}: the file name is not valid UTF-8; rename it or add it to .launchignore",
                                    source=root) from None
            path = e.path
            if e.is_symlink():
                path = _follow_link(root, rel, e.path)
                if path is None:
                    continue
            if is_dir:
                if path not in above and path not in skip_dirs:
                    stack.append((path, rel + "/", ignores, above | {path}))
            elif e.is_file():  # sockets, fifos and devices have no content to send
                try:
                    found.append(_Found(rel, path, e.stat()))
                except FileNotFoundError:
                    continue  # deleted since the folder was listed
    return found


def _source_files(prefix: str, source: str, skip: set[str]) -> list[_Found]:
    """A local distribution's source (a folder, with its ignore files applied, or one wheel/sdist) under ``prefix``."""
    real = os.path.realpath(source)
    if os.path.isfile(real):
        return [_Found(prefix, real, os.stat(real))]
    return [_Found(f"{prefix}/{f.rel}", f.path, f.stat) for f in _walk(real, skip)]


def _included(root: str, include: list[str]) -> list[_Found]:
    found: list[_Found] = []
    for item in include:
        rel = _check_relpath(posixpath.normpath(PurePath(item).as_posix()))
        real = _follow_link(root, rel, os.path.join(root, *rel.split("/")))
        if real is None or not os.path.isfile(real):
            raise ArtifactError(f"{rel}: no such file in {root}", field="include")
        found.append(_Found(rel, real, os.stat(real)))
    return found


def _size_error(root: str, found: list[tuple[str, int]], total: int, max_size: int) -> ArtifactError:
    top = sorted(found, key=lambda f: (-f[1], f[0]))[:5]
    largest = ", ".join(f"{rel} ({format_size(size)})" for rel, size in top)
    return ArtifactError(f"the job's files come to {format_size(total)}, over the limit of {format_size(max_size)}; "
                         f"largest: {largest}. Add what the job does not need to .launchignore, or raise the limit "
                         "(--max-size)", source=root)


def _hash(found: _Found, hash_cache: HashCache | None) -> tuple[str, os.stat_result]:
    """The file's digest and the stat it belongs to, hashing again if the file changes while it is read."""
    st = found.stat
    for _ in range(_HASH_RETRIES):
        cached = hash_cache.get(found.path, st) if hash_cache else None
        if cached:
            return cached, st
        digest = sha256_file(found.path)
        after = os.stat(found.path)
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            if hash_cache:
                hash_cache.put(found.path, st, digest)
            return digest, st
        st = after
    raise ArtifactError(f"{found.rel} keeps changing while it is being packaged; try again when it is written")


def _store(found: _Found, digest: str, blobs: BlobStore) -> bool:
    """Put a file's content in the blob store unless it is there; True when it was written now."""
    if blobs.has(digest):
        return False
    # Copy through put_stream, which checks the digest as it copies: a file rewritten between hashing and
    # copying must not land in the store under the old digest, where it would never be replaced.
    with open(found.path, "rb") as f:
        try:
            blobs.put_stream(f, expected=digest)
        except ValueError:
            raise ArtifactError(f"{found.rel} changed while it was being packaged; try again") from None
    return True


def canonical_json(data: Any) -> bytes:
    """One byte string per value, so the same inputs always give the same manifest digest."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def build_artifact(root: str | Path, blobs: BlobStore, *, include: list[str] | None = None,
                   environment: dict[str, Any] | None = None, entrypoint: str | None = None,
                   max_size: int = DEFAULT_MAX_SIZE, hash_cache: HashCache | None = None,
                   extra_files: dict[str, bytes] | None = None, sources: dict[str, str] | None = None) -> Artifact:
    """Package ``root`` (or just ``include``) plus ``extra_files`` and ``sources`` (``{path in the artifact: folder
    or file elsewhere}``, the environment's local distributions); only blobs the store lacks are written."""
    root_real = os.path.realpath(root)
    if not os.path.isdir(root_real):
        raise ArtifactError("not a folder", source=str(root))
    skip = {os.path.realpath(blobs.root)}  # a blob store inside the folder is not content
    if include is not None:
        found = _included(root_real, include)
    else:
        found = _walk(root_real, skip)
    for prefix, source in (sources or {}).items():
        found += _source_files(_check_relpath(prefix), source, skip)
    extra = {_check_relpath(p): data for p, data in (extra_files or {}).items()}
    found = [f for f in found if f.rel not in extra]
    sizes = [(f.rel, f.stat.st_size) for f in found] + [(p, len(d)) for p, d in extra.items()]
    total = sum(size for _, size in sizes)
    if total > max_size:
        raise _size_error(root_real, sizes, total, max_size)

    files: dict[str, dict[str, Any]] = {}
    new_files = new_size = 0
    for f in found:
        try:
            digest, st = _hash(f, hash_cache)
            written = _store(f, digest, blobs)
        except OSError as exc:
            raise ArtifactError(f"cannot package {f.rel}: {exc.strerror or exc}", source=root_real) from None
        files[f.rel] = {"digest": digest, "size": st.st_size, "mode": 0o755 if st.st_mode & 0o111 else 0o644}
        if written:
            new_files, new_size = new_files + 1, new_size + st.st_size
    for path, data in extra.items():
        digest = sha256_bytes(data)
        if not blobs.has(digest):
            blobs.put_bytes(data)
            new_files, new_size = new_files + 1, new_size + len(data)
        files[path] = {"digest": digest, "size": len(data), "mode": 0o644}
    total = sum(entry["size"] for entry in files.values())
    if total > max_size:  # a file grew while it was being packaged
        raise _size_error(root_real, [(p, e["size"]) for p, e in files.items()], total, max_size)

    manifest = {"version": MANIFEST_VERSION, "files": files, "environment": environment or {},
                "entrypoint": entrypoint}
    digest = blobs.put_bytes(canonical_json(manifest))
    largest = sorted(((p, e["size"]) for p, e in files.items()), key=lambda x: (-x[1], x[0]))[:10]
    return Artifact(digest=digest, manifest=manifest, files=len(files), size=total, largest=largest,
                    new_files=new_files, new_size=new_size)


# ---------------------------------------------------------------- reading and unpacking

def _read_manifest(digest: str, blobs: BlobStore, max_size: int = DEFAULT_MAX_SIZE) -> tuple[bytes, dict[str, Any]]:
    """The manifest blob, as stored and checked (its files coming to at most ``max_size`` bytes in all)."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ArtifactError(f"not an artifact digest: {digest!r}")
    try:
        data = blobs.read_bytes(digest)
    except FileNotFoundError:
        raise ArtifactError(f"artifact {digest} is not in the blob store") from None
    if sha256_bytes(data) != digest:
        raise ArtifactError(f"artifact {digest} is damaged in the blob store (its content does not match its digest)")
    try:
        manifest = json.loads(data)
    except ValueError:
        raise ArtifactError(f"artifact {digest}: the manifest is not valid JSON") from None
    return data, _check_manifest(manifest, digest, max_size)


def _check_manifest(manifest: Any, digest: str, max_size: int) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        raise ArtifactError(f"artifact {digest}: the manifest is not a JSON object")
    version = manifest.get("version")
    if version != MANIFEST_VERSION:
        raise ArtifactError(f"artifact {digest}: manifest version {version!r} is not supported (this jupyter-launch "
                            f"reads version {MANIFEST_VERSION}); use the same jupyter-launch version on both sides")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"artifact {digest}: the manifest has no 'files' mapping")
    for path, entry in files.items():
        _check_relpath(path)
        if not (isinstance(entry, dict) and isinstance(entry.get("digest"), str) and _DIGEST.match(entry["digest"])
                and type(entry.get("size")) is int and entry["size"] >= 0 and entry.get("mode") in FILE_MODES):
            raise ArtifactError(f"artifact {digest}: bad manifest entry for {path!r}")
    # Checked before anything is written: one blob listed many times would otherwise unpack to any size.
    total = sum(entry["size"] for entry in files.values())
    if total > max_size:
        raise ArtifactError(f"artifact {digest}: its files come to {format_size(total)}, over the packaging limit "
                            f"of {format_size(max_size)}; nothing was unpacked")
    for path in files:  # a path cannot be both a file and a folder
        parent = path.rpartition("/")[0]
        while parent:
            if parent in files:
                raise ArtifactError(f"artifact {digest}: {parent!r} is both a file and a folder")
            parent = parent.rpartition("/")[0]
    if not isinstance(manifest.get("environment", {}), dict):
        raise ArtifactError(f"artifact {digest}: 'environment' is not a mapping")
    if not isinstance(manifest.get("entrypoint"), (str, type(None))):
        raise ArtifactError(f"artifact {digest}: 'entrypoint' is not a string")
    return manifest


def load_manifest(digest: str, blobs: BlobStore) -> dict[str, Any]:
    """The artifact's manifest, with its digest, version and every path checked."""
    return _read_manifest(digest, blobs)[1]


def materialize(digest: str, blobs: BlobStore, dest: str | Path, *, max_size: int = DEFAULT_MAX_SIZE) -> Path:
    """Write the artifact's files into ``dest`` (plus the manifest at ``.jupyter-launch/manifest.json``); an artifact
    whose files come to more than ``max_size`` bytes is refused before anything is written.

    Files are copied, never hard-linked: blobs are shared by every job and the job may write to its files.
    """
    data, manifest = _read_manifest(digest, blobs, max_size)
    dest_path = Path(dest)
    dest_path.mkdir(parents=True, exist_ok=True)
    real_dest = os.path.realpath(dest_path)
    made: set[str] = set()

    def target_for(rel: str) -> str:
        target = os.path.join(real_dest, *rel.split("/"))
        parent = os.path.dirname(target)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        if not _within(os.path.realpath(target), real_dest):
            raise ArtifactError(f"artifact {digest}: {rel!r} would be written outside {real_dest}")
        if os.path.lexists(target):
            os.unlink(target)  # replace, never write through whatever is there
        return target

    for rel, entry in sorted(manifest["files"].items()):
        src = blobs.path(entry["digest"])
        try:
            size = os.stat(src).st_size
        except FileNotFoundError:
            raise ArtifactError(f"artifact {digest}: the blob of {rel} ({entry['digest']}) is missing") from None
        if size != entry["size"]:
            raise ArtifactError(f"artifact {digest}: the blob of {rel} has {size} bytes, the manifest says "
                                f"{entry['size']}")
        target = target_for(rel)
        shutil.copyfile(src, target)
        os.chmod(target, entry["mode"])
    with open(target_for(MANIFEST_PATH), "wb") as f:
        f.write(data)
    return dest_path


def write_tar(digest: str, blobs: BlobStore, fileobj: BinaryIO, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
    """The artifact as an uncompressed tar stream (for containers); same artifact, same bytes."""
    data, manifest = _read_manifest(digest, blobs, max_size)

    def info(name: str, size: int, mode: int) -> tarfile.TarInfo:
        member = tarfile.TarInfo(name)
        member.size, member.mode, member.mtime = size, mode, 0
        return member

    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for rel, entry in sorted(manifest["files"].items()):
            with blobs.open(entry["digest"]) as f:
                tar.addfile(info(rel, entry["size"], entry["mode"]), f)
        tar.addfile(info(MANIFEST_PATH, len(data), 0o644), io.BytesIO(data))


def _check_member(member: tarfile.TarInfo, real_dest: str) -> None:
    name = member.name
    if "\x00" in name or name.startswith("/") or ".." in name.split("/"):
        raise ArtifactError(f"unsafe member in archive: {name!r}")
    if not _within(os.path.realpath(os.path.join(real_dest, name)), real_dest):
        raise ArtifactError(f"archive member {name!r} would be written outside the destination")
    if member.issym():
        target = os.path.normpath(os.path.join(real_dest, os.path.dirname(name), member.linkname))
        if os.path.isabs(member.linkname) or not _within(os.path.realpath(target), real_dest):
            raise ArtifactError(f"archive member {name!r} is a link to {member.linkname!r}, outside the destination")
    elif member.islnk():
        target = os.path.normpath(os.path.join(real_dest, member.linkname))
        if os.path.isabs(member.linkname) or ".." in member.linkname.split("/") \
                or not _within(os.path.realpath(target), real_dest):
            raise ArtifactError(f"archive member {name!r} is a hard link to {member.linkname!r}, outside the "
                                "destination")
    elif not (member.isreg() or member.isdir()):
        raise ArtifactError(f"archive member {name!r} is a device or fifo; only files, folders and links are allowed")


# tarfile's refusals under the data filter; a Python without filters (see extract_member) has none to catch.
FILTER_ERRORS: tuple[type[Exception], ...] = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()


def extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: str) -> None:
    """Extract one member (already checked by :func:`_check_member`) with tarfile's ``data`` filter: no special
    bits, no group or other write, no owner from the archive, the owner able to read and write its files.

    Pythons before 3.10.12 / 3.11.4 (Debian bookworm's 3.11.2) have no extraction filters, and ``filter=`` is a
    TypeError there: the member is extracted as a copy with the attributes that filter would give it. The names and
    links were checked before, as they are for every Python."""
    if hasattr(tarfile, "data_filter"):
        tar.extract(member, dest, filter="data")
        return
    safe = copy.copy(member)
    if safe.isreg() or safe.islnk():
        mode = safe.mode & 0o755
        safe.mode = (mode if mode & 0o100 else mode & ~0o111) | 0o600
    else:  # a folder or a symlink: the data filter leaves the mode to the umask; the same here for a folder
        safe.mode = 0o755
    # Not chown to the archive's owner (tarfile does when run as root); our own ids are what the filter leaves.
    safe.uid, safe.gid, safe.uname, safe.gname = os.getuid(), os.getgid(), "", ""
    tar.extract(safe, dest, set_attrs=not safe.issym())


def safe_extract_tar(fileobj: BinaryIO, dest: str | Path, *, max_size: int = DEFAULT_MAX_SIZE,
                     max_files: int = 100_000) -> int:
    """Extract a (possibly compressed) tar stream into ``dest``; returns the bytes written.

    Every member is checked before it is written, and sizes are counted as the stream goes: an archive bomb fails at
    the first member past the limit, not after filling the disk.
    """
    Path(dest).mkdir(parents=True, exist_ok=True)
    real_dest = os.path.realpath(dest)
    written = count = 0
    files: set[str] = set()  # the regular files extracted so far: what a hard link may point to
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                count += 1
                if count > max_files:
                    raise ArtifactError(f"archive has more than {max_files} members (at {member.name!r})")
                _check_member(member, real_dest)
                if member.islnk() and os.path.normpath(member.linkname) not in files - {os.path.normpath(member.name)}:
                    # Only to a file extracted before it: tarfile would otherwise fall back to extracting the target
                    # member again, which for a link to itself or to a folder recurses without end.
                    raise ArtifactError(f"archive member {member.name!r} is a hard link to {member.linkname!r}, "
                                        "which the archive does not hold before it as a file")
                if member.issym() and os.path.isdir(os.path.join(real_dest, member.name)) \
                        and not os.path.islink(os.path.join(real_dest, member.name)):
                    # tarfile cannot unlink a folder to put the link there, and falls back to extracting the
                    # link's target member in its place: for a link to itself that recursion has no end.
                    raise ArtifactError(f"archive member {member.name!r} is a link where the archive made a folder")
                if member.isreg():
                    files.add(os.path.normpath(member.name))
                    written += member.size
                    if written > max_size:
                        raise ArtifactError(f"archive member {member.name!r} takes the archive past the size limit "
                                            f"of {format_size(max_size)}")
                try:
                    extract_member(tar, member, real_dest)
                except FILTER_ERRORS as exc:
                    raise ArtifactError(f"unsafe member in archive: {exc}") from None
                except KeyError:  # tarfile's word for a hard link whose target came later or not at all
                    raise ArtifactError(f"archive member {member.name!r} is a hard link to {member.linkname!r}, "
                                        "which the archive does not hold before it") from None
                except OSError as exc:  # a file where a folder was, a name too long, a full disk
                    raise ArtifactError(f"cannot extract archive member {member.name!r}: "
                                        f"{exc.strerror or exc}") from None
                except RecursionError:  # tarfile resolving links through links: never a sound archive
                    raise ArtifactError(f"archive member {member.name!r} is a link that resolves to itself") from None
    except tarfile.TarError as exc:
        raise ArtifactError(f"not a readable tar archive: {exc}") from None
    return written
