"""A local job's own Python environment: a virtual environment made by hand, layered over an interpreter's.

The job's ``python``, ``pip`` and kernel run in it: what the job installs (``%pip install``, ``pip install``) lands in
its own site-packages and goes when the job's folder goes, while everything the interpreter's environment has stays
importable after the job's own packages. Made without the ``venv`` module (which copies scripts and can run
``ensurepip``): a ``pyvenv.cfg``, symlinks to the interpreter, two ``pip`` scripts and one ``.pth`` file, well under
a millisecond. What the layer holds is asked of the interpreter once per agent (:func:`describe_interpreter`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import LaunchError

# Run by the interpreter a job's environment is layered over: what its environment is, as the agent would run it
# (its PYTHONPATH honoured). The standard library comes with the interpreter itself, so it is not part of the layer.
_DESCRIBE = r"""
import json, os, site, sys
sites = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
if site.ENABLE_USER_SITE:
    sites.append(site.getusersitepackages())
jupyter = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
jupyter.append(os.path.join(sys.prefix, "share", "jupyter"))
print(json.dumps({
    "executable": os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable),
    "version": "%d.%d.%d" % sys.version_info[:3],
    "path": [os.path.abspath(p) for p in sys.path if p],
    "sites": [os.path.abspath(p) for p in sites],
    "base": [os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)],
    "jupyter_path": [p for p in jupyter if os.path.isdir(p)],
}))
"""

# pip as the environment's own: ``pip`` in a job (a command, ``!pip`` in a notebook) installs into the job.
_PIP = '#!/bin/sh\nexec "$(dirname "$0")/python" -m pip "$@"\n'


class JobEnvironmentError(LaunchError):
    """The interpreter a job's environment is layered over cannot be run or described."""


@dataclass(frozen=True)
class Layer:
    """An interpreter's environment, as a job's environment sees it under its own."""

    executable: str  # the real interpreter binary (a venv's base interpreter, not its symlink)
    version: str  # "3.11.7"
    entries: tuple[tuple[str, bool], ...]  # sys.path beyond the standard library, in order; True: a site folder
    jupyter_path: tuple[str, ...]  # where its kernelspecs and nbconvert templates are (its prefix's share/jupyter)

    @property
    def lib(self) -> str:
        major, minor = self.version.split(".")[:2]
        return f"python{major}.{minor}"

    def pth_line(self) -> str:
        """One ``import`` line of a ``.pth`` file that appends the layer to ``sys.path``: site folders through
        ``site.addsitedir`` (their own ``.pth`` files, editable installs, run as in the layer), others as they are."""
        # exec'd in a function by site.py: a comprehension cannot see names it imports, hence __import__.
        return ("import sys; [__import__('site').addsitedir(p) if s else p in sys.path or sys.path.append(p) "
                f"for p, s in {list(self.entries)!r}]\n")


@functools.lru_cache(maxsize=None)
def describe_interpreter(python: str) -> Layer:
    """What ``python``'s environment is (asked of it once; then cached for the agent's life)."""
    try:
        proc = subprocess.run([python, "-c", _DESCRIBE], capture_output=True, text=True, timeout=60, cwd="/")
    except (OSError, subprocess.SubprocessError) as exc:
        raise JobEnvironmentError(f"cannot run the job's interpreter {python!r}: {exc}") from None
    if proc.returncode != 0:
        raise JobEnvironmentError(f"the job's interpreter {python!r} exited {proc.returncode}: "
                                f"{proc.stderr.strip()[-500:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    sites = set(info["sites"])
    base = tuple(p.rstrip(os.sep) + os.sep for p in info["base"])
    entries: list[tuple[str, bool]] = []
    for path in info["path"]:
        is_site = path in sites
        if path == "/" or any(e[0] == path for e in entries) or not os.path.isdir(path):
            continue
        if not is_site and os.path.realpath(path).startswith(base):
            continue  # the standard library: the job's interpreter has its own
        entries.append((path, is_site))
    return Layer(info["executable"], info["version"], tuple(entries), tuple(info["jupyter_path"]))


def make_job_venv(root: Path, layer: Layer) -> Path:
    """A virtual environment at ``root`` (which must not exist yet) over ``layer``; returns its ``bin`` folder."""
    bin_dir = root / "bin"
    site_dir = root / "lib" / layer.lib / "site-packages"
    site_dir.mkdir(parents=True)
    bin_dir.mkdir()
    (root / "pyvenv.cfg").write_text(
        f"home = {os.path.dirname(layer.executable)}\ninclude-system-site-packages = false\n"
        f"version = {layer.version}\nexecutable = {layer.executable}\n")
    os.symlink(layer.executable, bin_dir / "python")
    for name in ("python3", layer.lib):
        os.symlink("python", bin_dir / name)
    for name in ("pip", "pip3"):
        script = bin_dir / name
        script.write_text(_PIP)
        script.chmod(0o755)
    (site_dir / "_jupyter_launch_layer.pth").write_text(layer.pth_line())
    return bin_dir


def venv_variables(root: Path, layer: Layer, env: dict[str, str]) -> dict[str, str]:
    """``env`` with the job's environment in front: its ``bin`` first on PATH, VIRTUAL_ENV, and JUPYTER_PATH ending
    with the layer's (so its kernelspecs and nbconvert templates are found from the job's own prefix)."""
    env = dict(env)
    env["PATH"] = os.pathsep.join([str(root / "bin"), env.get("PATH") or os.defpath])
    env["VIRTUAL_ENV"] = str(root)
    jupyter = [p for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    env["JUPYTER_PATH"] = os.pathsep.join(jupyter + [p for p in layer.jupyter_path if p not in jupyter])
    return env


def kernel_overlay(control: Path, kernel_name: str | None, agent: Layer) -> Path | None:
    """For a notebook whose kernelspec runs another Python than the agent's (a kernel installed from its own
    virtual environment): a job environment layered over that Python (``control/kernel-env``) and a kernelspec of
    the same name that runs it, in the folder returned, to put first on the job's ``JUPYTER_PATH``; ``%pip`` in
    that kernel then installs into the job, not into the kernel's environment. None when the kernel is not found
    here, is not Python, or is the agent's own Python (the job's environment already covers it)."""
    if not kernel_name:
        return None
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        return None
    argv = list(spec.argv or [])
    if not argv or not any("ipykernel" in a for a in argv[1:]):
        return None
    if not os.path.isabs(argv[0]):
        return None  # "python" on the job's PATH: the job's own environment, first there
    layer = describe_interpreter(argv[0])
    if (layer.executable, layer.entries) == (agent.executable, agent.entries):
        return None
    env_dir = control / "kernel-env"
    if not env_dir.exists():
        make_job_venv(env_dir, layer)
    overlay = control / "kernels-overlay"
    target = overlay / "kernels" / kernel_name
    if not target.exists():
        shutil.copytree(spec.resource_dir, target, symlinks=True)
        data = json.loads((target / "kernel.json").read_text(encoding="utf-8"))
        data["argv"] = [str(env_dir / "bin" / "python")] + list(data.get("argv") or argv)[1:]
        (target / "kernel.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    return overlay
