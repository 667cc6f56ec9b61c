"""The environment a job carries: what the notebook's own Python can import, captured when the job is submitted.

The lock names the interpreter's Python version and platform, every distribution it can import (first on its
``sys.path`` wins, as for import) as a ``name==version`` pin, the distributions installed from this machine's disk
(editable or ``pip install ./dir``) with their source folders, which :func:`source_files` adds to the artifact, the
notebook's ``%pip``/``!pip`` lines and its kernel's name. The interpreter is the kernel's: a magic runs inside the
kernel (``sys.executable``); a notebook file names its kernelspec, whose ``argv[0]`` is that kernel's Python on this
machine; the panel's server asks its live kernel. Another interpreter than this process is asked in a subprocess
(about 0.2 s), remembered while its ``sys.path`` folders keep their mtimes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from .errors import LocatedError

SOURCES_DIR = ".jupyter-launch/sources"  # where a local distribution's source travels inside the artifact
# Never pinned: the agent's side provides jupyter-launch itself (the image gets the agent's own sources).
PROVIDED = frozenset({"jupyter-launch"})
_CAPTURE_TIMEOUT = 60

_PIP_LINE = re.compile(
    r"^[ \t]*(?:%pip|![ \t]*(?:pip3?|(?:python3?|\{sys\.executable\}|\"\{sys\.executable\}\")[ \t]+-m[ \t]+pip))"
    r"[ \t]+install[ \t]+(.+?)[ \t]*$",
    re.MULTILINE,
)
_TRAILING_COMMENT = re.compile(r"\s+#.*$")

# What an interpreter can import: run in this process, or by another interpreter (any Python >= 3.8, standard
# library only) that prints it as JSON.
_PROBE = r"""
import importlib.metadata, json, platform, sys, sysconfig
dists = []
for dist in importlib.metadata.distributions():
    try:
        meta = dist.metadata
        dists.append({"name": meta["Name"], "version": meta["Version"],
                      "direct_url": dist.read_text("direct_url.json")})
    except Exception:
        continue
result = {"python": platform.python_version(), "platform": sysconfig.get_platform(),
          "path": [p for p in sys.path], "dists": dists}
"""
_PROBE_PRINT = _PROBE + "json.dump(result, sys.stdout)\n"


class CaptureError(LocatedError):
    """The kernel's environment cannot be captured (its interpreter is missing or fails)."""

    def __init__(self, message: str):
        super().__init__(message, field="kernel")


def normalize_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------- which interpreter

_interpreters: dict[str, str | None] = {}


def kernel_interpreter(kernel_name: str | None) -> str | None:
    """The Python that kernel ``kernel_name`` runs on this machine: its kernelspec's ``argv[0]`` when the spec runs
    ipykernel; ``None`` when there is no such kernelspec here or it is not a Python kernel (nothing to capture)."""
    if not kernel_name:
        return sys.executable
    if kernel_name in _interpreters:
        return _interpreters[kernel_name]
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        found: str | None = sys.executable if kernel_name in ("python3", "python") else None
    else:
        argv = list(spec.argv or [])
        found = None
        if argv and any("ipykernel" in a for a in argv[1:]):
            exe = argv[0]
            if exe in ("{sys.executable}", "python", "python3") and kernel_name in ("python3", "python"):
                exe = sys.executable
            found = exe if os.path.isabs(exe) else shutil.which(exe)
    _interpreters[kernel_name] = found
    return found


def same_interpreter(exe: str) -> bool:
    """``exe`` is this process's Python (one venv's ``python`` and ``python3`` links are the same)."""
    if os.path.abspath(exe) == os.path.abspath(sys.executable):
        return True
    try:
        here = Path(sys.executable)
        there = Path(exe)
        # Same venv (or prefix) and the same real binary: the same site-packages.
        return there.resolve() == here.resolve() and there.parent == here.parent
    except OSError:
        return False


# ---------------------------------------------------------------- what it can import

_cache_lock = threading.Lock()
_cache: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}


def _stamps(paths: list[str]) -> tuple[Any, ...]:
    stamps: list[Any] = []
    for entry in paths:
        try:
            stamps.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            stamps.append((entry, None))
    return tuple(stamps)


def _probe_here() -> dict[str, Any]:
    """The same probe, run in this process (no subprocess: a magic's or the CLI's own interpreter)."""
    namespace: dict[str, Any] = {"__name__": "jupyter_launch_probe"}
    exec(_PROBE, namespace)
    return namespace["result"]


def _probe_there(exe: str) -> dict[str, Any]:
    try:
        proc = subprocess.run([exe, "-I", "-c", _PROBE_PRINT], capture_output=True, text=True, timeout=_CAPTURE_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CaptureError(f"cannot ask the kernel's Python {exe} what it has installed: {exc}") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CaptureError(f"the kernel's Python {exe} failed to list its packages: {tail}")
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise CaptureError(f"the kernel's Python {exe} printed something other than its package list") from None
    # -I leaves out the working folder and PYTHONPATH; what the kernel imports from its working folder is the
    # job's folder, which travels anyway.
    return data


def probe(exe: str | None = None) -> dict[str, Any]:
    """What interpreter ``exe`` (default: this one) can import, remembered while its ``sys.path`` is unchanged
    (``%pip install`` in the kernel adds a dist-info folder to site-packages, which moves its mtime)."""
    here = exe is None or same_interpreter(exe)
    key = sys.executable if here else os.path.abspath(str(exe))
    with _cache_lock:
        cached = _cache.get(key)
    paths = list(sys.path) if here else (cached[1]["path"] if cached else [])
    stamp = (os.getcwd(), _stamps(paths)) if here else _stamps(paths)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    data = _probe_here() if here else _probe_there(str(exe))
    if not here:
        stamp = _stamps(data.get("path") or [])
    with _cache_lock:
        _cache[key] = (stamp, data)
    return data


# ---------------------------------------------------------------- the lock

def _local_source(direct_url: str | None) -> tuple[bool, str | None, str | None]:
    """(installed from this machine's disk, its source folder or wheel when it still exists, a pin for a VCS
    install)."""
    if not direct_url:
        return False, None, None
    try:
        info = json.loads(direct_url)
    except ValueError:
        return False, None, None
    if not isinstance(info, dict):
        return False, None, None
    url = str(info.get("url", ""))
    vcs = info.get("vcs_info")
    if isinstance(vcs, dict) and vcs.get("vcs") and vcs.get("commit_id") and not url.startswith("file:"):
        return False, None, f"{vcs['vcs']}+{url}@{vcs['commit_id']}"
    if not url.startswith("file:"):
        return False, None, None
    path = unquote(urlparse(url).path)
    return True, (path if os.path.exists(path) else None), None


def lock_packages(data: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The probe's distributions as pins (``name==version``, ``name @ git+…@commit``) and the local ones
    (``{"name", "version", "path"}`` with the path on this machine, None when it is gone)."""
    seen: set[str] = set()
    pins: list[tuple[str, str]] = []
    local: list[dict[str, Any]] = []
    for dist in data.get("dists") or []:
        name, version = dist.get("name"), dist.get("version")
        if not name or not version:
            continue
        key = normalize_name(name)
        if key in seen:
            continue  # shadowed: the first on sys.path wins, as for import
        seen.add(key)
        if key in PROVIDED:
            continue
        is_local, path, vcs_pin = _local_source(dist.get("direct_url"))
        if is_local:
            local.append({"name": name, "version": version, "path": path})
        else:
            pins.append((key, f"{name} @ {vcs_pin}" if vcs_pin else f"{name}=={version}"))
    return [p for _, p in sorted(pins)], sorted(local, key=lambda d: normalize_name(d["name"]))


def pip_installs(notebook: dict[str, Any]) -> list[str]:
    """The arguments of the notebook's ``%pip install`` and ``!pip install`` lines, in order."""
    found: list[str] = []
    cells = notebook.get("cells")
    for cell in cells if isinstance(cells, list) else []:
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        if "install" not in source:
            continue
        for m in _PIP_LINE.finditer(source.replace("\\\n", " ")):
            args = _TRAILING_COMMENT.sub("", m.group(1)).strip()
            if args:
                found.append(args)
    return found


def notebook_kernel(notebook: dict[str, Any] | None) -> str | None:
    metadata = notebook.get("metadata") if isinstance(notebook, dict) else None
    kernelspec = metadata.get("kernelspec") if isinstance(metadata, dict) else None
    if isinstance(kernelspec, dict) and isinstance(kernelspec.get("name"), str):
        return kernelspec["name"]
    return None


def capture(notebook: dict[str, Any] | None = None, kernel_name: str | None = None, *,
            interpreter: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The environment lock, and the local distributions' source folders to package (``{artifact dir: folder}``).

    ``interpreter`` is the kernel's Python when the caller knows it (a magic: its own; the server: its live
    kernel's); else the kernelspec of ``kernel_name`` or the notebook's is looked up on this machine. A kernel that
    is not Python (or not installed here) carries its name and the notebook's installs, no packages.
    """
    if kernel_name is None:
        kernel_name = notebook_kernel(notebook)
    exe = interpreter or kernel_interpreter(kernel_name)
    lock: dict[str, Any] = {"python": None, "platform": None, "kernel": kernel_name, "packages": [],
                            "pip_installs": pip_installs(notebook) if notebook else []}
    sources: dict[str, str] = {}
    if exe is None:
        return lock, sources
    data = probe(exe)
    pins, local = lock_packages(data)
    lock.update(python=data.get("python"), platform=data.get("platform"), packages=pins)
    if local:
        entries = []
        for dist in local:
            entry = {"name": dist["name"], "version": dist["version"]}
            if dist["path"] is None:
                entry["missing"] = "installed from a folder that no longer exists"
            elif os.path.isdir(dist["path"]):
                entry["source"] = f"{SOURCES_DIR}/{normalize_name(dist['name'])}"
                sources[entry["source"]] = dist["path"]
            else:  # a wheel or sdist file on this machine
                entry["source"] = f"{SOURCES_DIR}/{normalize_name(dist['name'])}/{os.path.basename(dist['path'])}"
                sources[entry["source"]] = dist["path"]
            entries.append(entry)
        lock["local"] = entries
    return lock, sources
