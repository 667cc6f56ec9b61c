"""Artifacts: content addressing, ignore rules, the hash cache, and refusing unsafe unpacking."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import stat
import tarfile
import time
from pathlib import Path

import pytest

from jupyter_launch import artifact
from jupyter_launch.artifact import (
    Artifact,
    ArtifactError,
    HashCache,
    build_artifact,
    canonical_json,
    load_manifest,
    materialize,
    safe_extract_tar,
    write_tar,
)
from jupyter_launch.errors import LaunchError
from jupyter_launch.spec import SpecError
from jupyter_launch.store.blobs import BlobStore

OLD = time.time() - 3600  # an mtime old enough for the hash cache to trust


def write(path: Path, data: str | bytes, mode: int | None = None, old: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    if mode is not None:
        os.chmod(path, mode)
    if old:
        os.utime(path, (OLD, OLD))
    return path


def blob_files(blobs: BlobStore) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in (blobs.root / "sha256").rglob("*") if p.is_file()}


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    write(root / "train.ipynb", json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    write(root / "run.sh", "#!/bin/sh\necho hi\n", mode=0o755)
    write(root / "data" / "small.csv", "a,b\n1,2\n")
    write(root / "data" / "blob.bin", bytes(range(256)) * 40)
    return root


# ---------------------------------------------------------------- building


def test_same_tree_gives_same_digest_and_writes_no_blob_again(project: Path, blobs: BlobStore, tmp_path: Path):
    first = build_artifact(project, blobs, entrypoint="train.ipynb")
    stored = blob_files(blobs)
    assert len(stored) == 5  # four files and the manifest
    second = build_artifact(project, blobs, entrypoint="train.ipynb")
    assert second.digest == first.digest
    assert blob_files(blobs) == stored  # same inodes, same mtimes: nothing was rewritten

    copy = shutil.copytree(project, tmp_path / "elsewhere")
    assert build_artifact(copy, blobs, entrypoint="train.ipynb").digest == first.digest
    assert build_artifact(project, blobs, entrypoint="other.ipynb").digest != first.digest
    assert build_artifact(project, blobs, environment={"python": "3.12"}).digest != first.digest


def test_manifest_is_canonical_json_with_files_modes_and_environment(project: Path, blobs: BlobStore):
    env = {"python": "3.11.7", "packages": ["numpy==2.0.0"]}
    art = build_artifact(project, blobs, environment=env, entrypoint="train.ipynb")
    raw = blobs.read_bytes(art.digest)
    assert raw == canonical_json(art.manifest)
    manifest = json.loads(raw)
    assert manifest["version"] == 1 and manifest["environment"] == env and manifest["entrypoint"] == "train.ipynb"
    assert sorted(manifest["files"]) == ["data/blob.bin", "data/small.csv", "run.sh", "train.ipynb"]
    assert manifest["files"]["run.sh"]["mode"] == 0o755
    assert manifest["files"]["data/small.csv"] == {
        "digest": blobs.put_bytes(b"a,b\n1,2\n"), "size": 8, "mode": 0o644}
    assert art.files == 4 and art.size == sum(f["size"] for f in manifest["files"].values())
    assert art.largest[0] == ("data/blob.bin", 10240)


def test_gitignore_launchignore_and_nested_gitignore(tmp_path: Path, blobs: BlobStore):
    root = tmp_path / "p"
    write(root / ".gitignore", "*.log\nbuild/\n*.csv\n")
    write(root / ".launchignore", "secrets/\n!keep.log\n")
    write(root / "main.py", "x")
    write(root / "debug.log", "x")
    write(root / "keep.log", "x")  # .launchignore re-includes what .gitignore left out
    write(root / "build" / "out.o", "x")
    write(root / "secrets" / "token", "x")
    write(root / "notes.txt", "x")
    write(root / "sub" / ".gitignore", "notes.txt\n!wanted.csv\n")
    write(root / "sub" / "notes.txt", "x")  # the nested rule applies below sub/ only
    write(root / "sub" / "wanted.csv", "x")  # a deeper file overrides a shallower one
    write(root / "sub" / "other.csv", "x")
    write(root / "sub" / "deeper" / "notes.txt", "x")

    files = set(build_artifact(root, blobs).manifest["files"])
    assert files == {".gitignore", ".launchignore", "main.py", "keep.log", "notes.txt", "sub/.gitignore",
                     "sub/wanted.csv"}


def test_git_caches_venvs_control_folder_and_special_files_are_left_out(tmp_path: Path, blobs: BlobStore):
    root = tmp_path / "p"
    write(root / "main.py", "x")
    write(root / ".git" / "HEAD", "ref: refs/heads/main\n")
    write(root / "pkg" / "__pycache__" / "m.cpython-311.pyc", "x")
    write(root / "pkg" / "m.py", "x")
    write(root / ".ipynb_checkpoints" / "main-checkpoint.ipynb", "x")
    write(root / ".venv" / "pyvenv.cfg", "home = /usr/bin\n")
    write(root / ".venv" / "lib" / "site.py", "x")
    write(root / "env2" / "pyvenv.cfg", "home = /usr/bin\n")  # a venv under any name
    write(root / "env2" / "bin" / "python", "x")
    write(root / ".jupyter-launch" / "outputs" / "old.png", "x")  # a previous run's control folder
    os.mkfifo(root / "pipe")
    os.symlink("does-not-exist", root / ".#main.py")  # an editor's lock file: a dangling link

    assert set(build_artifact(root, blobs).manifest["files"]) == {"main.py", "pkg/m.py"}


def test_include_packages_only_the_named_files(project: Path, blobs: BlobStore):
    write(project / ".gitignore", "*.ipynb\n")
    art = build_artifact(project, blobs, include=["train.ipynb", "./data/small.csv"])
    assert set(art.manifest["files"]) == {"train.ipynb", "data/small.csv"}
    with pytest.raises(ArtifactError, match="missing.ipynb: no such file"):
        build_artifact(project, blobs, include=["missing.ipynb"])
    with pytest.raises(ArtifactError, match="unsafe path"):
        build_artifact(project, blobs, include=["../outside.py"])


def test_size_limit_error_lists_the_largest_files_and_stores_nothing(tmp_path: Path, blobs: BlobStore):
    root = tmp_path / "p"
    for i, size in enumerate([50_000, 40_000, 30_000, 20_000, 10_000, 5_000, 1_000]):
        write(root / f"f{i}.bin", b"x" * size)
    with pytest.raises(ArtifactError) as info:
        build_artifact(root, blobs, max_size=100_000)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, LaunchError) and not isinstance(info.value, SpecError)
    assert "156.0 kB" in message and "100.0 kB" in message
    assert "f0.bin (50.0 kB), f1.bin (40.0 kB), f2.bin (30.0 kB), f3.bin (20.0 kB), f4.bin (10.0 kB)" in message
    assert "f5.bin" not in message
    assert ".launchignore" in message and "--max-size" in message
    assert blob_files(blobs) == {}  # refused before anything was hashed or copied

    write(root / ".launchignore", "f0.bin\nf1.bin\n")
    assert build_artifact(root, blobs, max_size=100_000).size == 66_000 + len("f0.bin\nf1.bin\n")


def test_hash_cache_hit_avoids_rehashing(project: Path, blobs: BlobStore, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch):
    for path in project.rglob("*"):
        os.utime(path, (OLD, OLD))
    hashed: list[str] = []
    real = artifact.sha256_file
    monkeypatch.setattr(artifact, "sha256_file", lambda p: hashed.append(os.path.basename(p)) or real(p))

    cache = HashCache(tmp_path / "home")
    first = build_artifact(project, blobs, hash_cache=cache)
    assert len(hashed) == 4
    cache.save()
    assert (tmp_path / "home" / HashCache.FILE_NAME).is_file()

    hashed.clear()
    reloaded = HashCache(tmp_path / "home")  # another process: the cache comes from disk
    assert build_artifact(project, blobs, hash_cache=reloaded).digest == first.digest
    assert hashed == []

    write(project / "data" / "small.csv", "a,b\n3,4\n", old=True)  # same size, content changed
    os.utime(project / "data" / "small.csv", (OLD + 1, OLD + 1))
    second = build_artifact(project, blobs, hash_cache=reloaded)
    assert hashed == ["small.csv"]
    assert second.manifest["files"]["data/small.csv"]["digest"] == blobs.put_bytes(b"a,b\n3,4\n")


def test_hash_cache_does_not_trust_a_file_modified_just_now(tmp_path: Path, blobs: BlobStore,
                                                            monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "p"
    write(root / "fresh.py", "x = 1\n")  # a rewrite within the same mtime tick would go unnoticed
    hashed: list[str] = []
    real = artifact.sha256_file
    monkeypatch.setattr(artifact, "sha256_file", lambda p: hashed.append(p) or real(p))
    cache = HashCache(tmp_path / "home")
    build_artifact(root, blobs, hash_cache=cache)
    build_artifact(root, blobs, hash_cache=cache)
    assert len(hashed) == 2


def test_hash_cache_survives_a_damaged_file(tmp_path: Path):
    write(tmp_path / "home" / HashCache.FILE_NAME, "{not json")
    cache = HashCache(tmp_path / "home")
    path = write(tmp_path / "f", "x", old=True)
    assert cache.get(path, path.stat()) is None
    cache.put(path, path.stat(), "sha256:" + "0" * 64)
    cache.save()
    assert HashCache(tmp_path / "home").get(path, path.stat()) == "sha256:" + "0" * 64


def test_symlinks_inside_are_stored_as_content_and_escaping_ones_refused(tmp_path: Path, blobs: BlobStore):
    root = tmp_path / "p"
    write(root / "real" / "data.csv", "1,2\n")
    os.symlink("real/data.csv", root / "alias.csv")
    os.symlink("real", root / "linked-dir")
    os.symlink(".", root / "real" / "loop")  # must not recurse forever
    files = build_artifact(root, blobs).manifest["files"]
    assert set(files) == {"real/data.csv", "alias.csv", "linked-dir/data.csv"}
    assert files["alias.csv"] == files["real/data.csv"]

    write(tmp_path / "outside" / "passwords.txt", "secret")
    os.symlink(tmp_path / "outside" / "passwords.txt", root / "leak.txt")
    with pytest.raises(ArtifactError, match=r"leak\.txt is a symbolic link to .*outside.*\.launchignore"):
        build_artifact(root, blobs)
    write(root / ".launchignore", "leak.txt\n")
    assert "leak.txt" not in build_artifact(root, blobs).manifest["files"]

    os.symlink(tmp_path / "outside", root / "escape-dir")
    with pytest.raises(ArtifactError, match="escape-dir is a symbolic link"):
        build_artifact(root, blobs)
    with pytest.raises(ArtifactError, match="escape-dir/passwords.txt is a symbolic link"):
        build_artifact(root, blobs, include=["escape-dir/passwords.txt"])


def test_extra_files_are_added_and_override_the_tree(project: Path, blobs: BlobStore):
    art = build_artifact(project, blobs, extra_files={".jupyter-launch/cell.py": b"print(42)\n",
                                                      "run.sh": b"echo replaced\n"})
    files = art.manifest["files"]
    assert blobs.read_bytes(files[".jupyter-launch/cell.py"]["digest"]) == b"print(42)\n"
    assert files["run.sh"] == {"digest": blobs.put_bytes(b"echo replaced\n"), "size": 14, "mode": 0o644}
    for bad in ("../x.py", "/etc/x", "a//b", ".jupyter-launch/manifest.json"):
        with pytest.raises(ArtifactError):
            build_artifact(project, blobs, extra_files={bad: b"x"})


def test_report_says_how_much_and_what_dominates():
    art = Artifact(digest="sha256:" + "0" * 64, manifest={}, files=12, size=1_300_000,
                   largest=[("a.csv", 1_000_000), ("b.py", 2_500), ("c", 12), ("d", 1)])
    assert art.report() == "12 files, 1.3 MB (largest: a.csv 1.0 MB, b.py 2.5 kB, c 12 B)"
    assert Artifact("sha256:" + "0" * 64, {}, 1, 5, [("x", 5)]).report() == "1 file, 5 B (largest: x 5 B)"


# ---------------------------------------------------------------- unpacking


def test_materialize_round_trip_is_byte_exact_with_modes(project: Path, blobs: BlobStore, tmp_path: Path):
    art = build_artifact(project, blobs, environment={"python": "3.11.7"})
    dest = materialize(art.digest, blobs, tmp_path / "work")
    for rel in art.manifest["files"]:
        out = dest / rel
        assert out.read_bytes() == (project / rel).read_bytes()
        assert stat.S_IMODE(out.stat().st_mode) == (0o755 if rel == "run.sh" else 0o644)
        assert out.stat().st_nlink == 1  # a copy: the job may write to it without touching the shared blob
    assert json.loads((dest / ".jupyter-launch" / "manifest.json").read_bytes()) == art.manifest
    (dest / "data" / "small.csv").write_text("changed")
    assert blobs.read_bytes(art.manifest["files"]["data/small.csv"]["digest"]) == b"a,b\n1,2\n"


def test_tar_round_trip(project: Path, blobs: BlobStore, tmp_path: Path):
    art = build_artifact(project, blobs)
    buf = io.BytesIO()
    write_tar(art.digest, blobs, buf)
    again = io.BytesIO()
    write_tar(art.digest, blobs, again)
    assert buf.getvalue() == again.getvalue()  # same artifact, same stream

    written = safe_extract_tar(io.BytesIO(gzip.compress(buf.getvalue())), tmp_path / "out")
    assert written == art.size + len(blobs.read_bytes(art.digest))
    for rel in art.manifest["files"]:
        assert (tmp_path / "out" / rel).read_bytes() == (project / rel).read_bytes()
    assert os.access(tmp_path / "out" / "run.sh", os.X_OK)
    assert not os.access(tmp_path / "out" / "data" / "small.csv", os.X_OK)
    assert json.loads((tmp_path / "out" / ".jupyter-launch" / "manifest.json").read_bytes()) == art.manifest


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def _huge_header() -> io.BytesIO:
    info = tarfile.TarInfo("huge.bin")
    info.size = 10**12  # the header alone: refusing it must not need the data
    return io.BytesIO(info.tobuf(tarfile.PAX_FORMAT))


MALICIOUS = {
    "absolute path": (lambda: _tar((_member("/tmp/evil.txt"), b"x")), "unsafe member"),
    "dot-dot path": (lambda: _tar((_member("ok/../../evil.txt"), b"x")), "unsafe member"),
    "symlink to /etc": (lambda: _tar((_member("etc", tarfile.SYMTYPE, "/etc"), None)), "link to '/etc'"),
    "relative symlink escaping": (lambda: _tar((_member("a/up", tarfile.SYMTYPE, "../../.."), None)), "outside"),
    "write through a symlink": (lambda: _tar((_member("up", tarfile.SYMTYPE, ".."), None),
                                             (_member("up/evil.txt"), b"x")), "outside"),
    "hard link escaping": (lambda: _tar((_member("h", tarfile.LNKTYPE, "../evil.txt"), None)), "hard link"),
    "hard link to /etc/passwd": (lambda: _tar((_member("h", tarfile.LNKTYPE, "/etc/passwd"), None)), "hard link"),
    "fifo": (lambda: _tar((_member("f", tarfile.FIFOTYPE), None)), "device or fifo"),
    "device": (lambda: _tar((_member("d", tarfile.CHRTYPE), None)), "device or fifo"),
    "member claiming a huge size": (_huge_header, "size limit"),
    "bomb past the size limit": (lambda: io.BytesIO(gzip.compress(_tar((_member("zeros"), bytes(2 * 1024**2))).read())),
                                 "size limit"),
    "too many small files": (lambda: _tar(*[(_member(f"f{i}"), b"") for i in range(20)]), "more than 10 members"),
    "not a tar": (lambda: io.BytesIO(b"this is not an archive" * 100), "not a readable tar"),
}


@pytest.mark.parametrize("case", list(MALICIOUS))
def test_malicious_tars_are_refused_and_write_nothing_outside(case: str, tmp_path: Path):
    make, message = MALICIOUS[case]
    box = tmp_path / "box"
    dest = box / "dest"
    with pytest.raises(ArtifactError, match=message) as info:
        safe_extract_tar(make(), dest, max_size=1024**2, max_files=10)
    assert "\n" not in str(info.value)
    assert [p.name for p in box.iterdir()] == ["dest"]
    assert not (dest / "zeros").exists() and not (dest / "huge.bin").exists()


def test_safe_extract_keeps_links_that_stay_inside(tmp_path: Path):
    tar = _tar((_member("data/a.txt"), b"hello"), (_member("alias", tarfile.SYMTYPE, "data/a.txt"), None),
               (_member("hard", tarfile.LNKTYPE, "data/a.txt"), None))
    assert safe_extract_tar(tar, tmp_path / "out") == 5
    assert (tmp_path / "out" / "alias").read_text() == "hello" == (tmp_path / "out" / "hard").read_text()


def _put_manifest(blobs: BlobStore, files: dict, version: int = 1) -> str:
    return blobs.put_bytes(canonical_json({"version": version, "files": files, "environment": {},
                                           "entrypoint": None}))


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "", "a//b", "./a", "a\x00b",
                                  ".jupyter-launch/manifest.json"])
def test_manifest_with_an_unsafe_path_is_refused(path: str, blobs: BlobStore, tmp_path: Path):
    entry = {"digest": blobs.put_bytes(b"pwned"), "size": 5, "mode": 0o644}
    digest = _put_manifest(blobs, {"ok.txt": entry, path: entry})
    with pytest.raises(ArtifactError):
        load_manifest(digest, blobs)
    box = tmp_path / "box"
    box.mkdir()
    with pytest.raises(ArtifactError):
        materialize(digest, blobs, box / "dest")
    assert list(box.rglob("*")) == []  # refused before anything was written, dest included
    assert not (tmp_path / "x").exists()


def test_bad_manifests_are_refused_with_one_line(blobs: BlobStore, tmp_path: Path):
    entry = {"digest": blobs.put_bytes(b"x"), "size": 1, "mode": 0o644}
    cases = {
        "version 2 is not supported": _put_manifest(blobs, {"a": entry}, version=2),
        "both a file and a folder": _put_manifest(blobs, {"a": entry, "a/b": entry}),
        "bad manifest entry": _put_manifest(blobs, {"a": {**entry, "mode": 0o4755}}),
        "not valid JSON": blobs.put_bytes(b"{nope"),
        "not in the blob store": "sha256:" + "1" * 64,
        "not an artifact digest": "md5:abc",
    }
    for message, digest in cases.items():
        with pytest.raises(ArtifactError, match=message) as info:
            load_manifest(digest, blobs)
        assert "\n" not in str(info.value)

    missing_blob = _put_manifest(blobs, {"a": {"digest": "sha256:" + "2" * 64, "size": 1, "mode": 0o644}})
    with pytest.raises(ArtifactError, match="the blob of a .* is missing"):
        materialize(missing_blob, blobs, tmp_path / "dest")


def test_materialize_does_not_write_through_a_symlink_already_in_dest(project: Path, blobs: BlobStore,
                                                                       tmp_path: Path):
    art = build_artifact(project, blobs)
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", dest / "data")
    with pytest.raises(ArtifactError, match="outside"):
        materialize(art.digest, blobs, dest)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_extraction_works_on_a_python_without_tar_filters(tmp_path: Path, monkeypatch):
    """Pythons before 3.10.12 / 3.11.4 (Debian bookworm's /usr/bin/python3 is 3.11.2) have no tar extraction
    filters and take ``filter=`` as a TypeError: every job's folder failed to unpack there. Extraction now gives
    each member what the data filter would: no special bits, no group/other write, owner read-write."""
    from jupyter_launch.artifact import safe_extract_tar

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name: str, mode: int, data: bytes | None = None, kind: bytes = tarfile.REGTYPE, link: str = ""):
            info = tarfile.TarInfo(name)
            info.mode, info.type, info.linkname = mode, kind, link
            info.uid, info.gid, info.uname, info.gname = 4242, 4242, "someone", "others"
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        add("pkg", 0o777, kind=tarfile.DIRTYPE)
        add("pkg/setuid.sh", 0o4777, b"#!/bin/sh\necho hi\n")
        add("pkg/readonly.txt", 0o444, b"data\n")
        add("pkg/link", 0o777, kind=tarfile.SYMTYPE, link="readonly.txt")
    old_extract = tarfile.TarFile.extract

    def extract_without_filters(self, member, path="", set_attrs=True, *, numeric_owner=False, **kwargs):
        if kwargs:  # 3.11.2's signature: no filter argument
            raise TypeError(f"extract() got an unexpected keyword argument {next(iter(kwargs))!r}")
        return old_extract(self, member, path, set_attrs, numeric_owner=numeric_owner, filter="fully_trusted")

    monkeypatch.delattr(tarfile, "data_filter")
    monkeypatch.setattr(tarfile.TarFile, "extract", extract_without_filters)
    buf.seek(0)
    dest = tmp_path / "out"
    assert safe_extract_tar(buf, dest) == len(b"#!/bin/sh\necho hi\n") + len(b"data\n")
    assert stat.S_IMODE((dest / "pkg/setuid.sh").stat().st_mode) == 0o755  # no setuid, no group/other write
    assert stat.S_IMODE((dest / "pkg/readonly.txt").stat().st_mode) == 0o644  # the owner can write it
    assert os.readlink(dest / "pkg/link") == "readonly.txt" and (dest / "pkg/link").read_text() == "data\n"
    assert (dest / "pkg/setuid.sh").stat().st_uid == os.getuid()  # not the archive's 4242, even as root


def test_an_unwritable_destination_is_one_clear_error_on_a_python_without_tar_filters(tmp_path: Path, monkeypatch):
    """There, ``tarfile.FilterError`` does not exist either: an extraction error must not turn into an
    AttributeError while the error is being caught."""
    from jupyter_launch.artifact import ArtifactError, safe_extract_tar

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("blocked/file.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    buf.seek(0)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "blocked").write_text("a file where the archive wants a folder")
    monkeypatch.delattr(tarfile, "data_filter")
    monkeypatch.delattr(tarfile, "FilterError")
    monkeypatch.setattr(artifact, "FILTER_ERRORS", ())
    with pytest.raises(ArtifactError, match="cannot extract archive member 'blocked/file.txt'"):
        safe_extract_tar(buf, dest)
