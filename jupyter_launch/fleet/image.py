"""The agent image (``jupyter launch agent-image build``): this jupyter-launch installed on a local base image, so a
queue's ``agent_image`` names something real where no registry holds one.

Two stages, each a container committed to an image (no registry is needed, only the engine): the dependencies, pinned
to the versions installed here, with pip's cache volume mounted (``jupyter-launch-agent-deps:<hash>``, reused while
the pins and the base do not change); then the package's sources from the imported ``jupyter_launch`` folder with its
entry points (the backends) on top. The machine's CA bundle is copied in, so pip in the build and the job images the
agent builds later reach the package registries this machine trusts.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..images import (MACHINE_CA_BUNDLE, PIP_CACHE_VOLUME, ImageBuildError, discard_container, package_source,
                      run_build_container)

DEFAULT_BASE_IMAGE = "launch-python:bookworm"
IMAGE_LABEL = "jupyter-launch.agent-image"
PREFIX = "/opt/jupyter-launch"  # the image's virtual environment; its bin is first on PATH
SOURCES = f"{PREFIX}/src"  # jupyter_launch and its dist-info, on sys.path through a .pth file
DISTRIBUTION = "jupyter-launch"

_INSTALL = f"""set -e
python3 -m venv {PREFIX}
{PREFIX}/bin/pip install --disable-pip-version-check --no-input --cert {MACHINE_CA_BUNDLE} \\
    -r /tmp/jl-agent/requirements.txt
site=$({PREFIX}/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo {SOURCES} > "$site/jupyter-launch-src.pth"
"""

_SCRIPT = f"""#!{PREFIX}/bin/python
import sys

from jupyter_launch.cli import main

sys.exit(main())
"""


def requirements() -> list[str]:
    """This jupyter-launch's dependencies (no extras), each pinned to the version installed here."""
    dist = importlib.metadata.distribution(DISTRIBUTION)
    pins = []
    for req in dist.requires or []:
        if "extra ==" in req:
            continue
        name = re.split(r"[\s=<>!~;\[(]", req, maxsplit=1)[0]
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(req.split(";")[0].strip())
    return sorted(pins, key=str.lower)


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    folders = sorted({"/".join(name.split("/")[:i]) for name in files for i in range(1, name.count("/") + 1)})
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755 if "/bin/" in f"/{name}" else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sources() -> dict[str, bytes]:
    """The package folder and a dist-info carrying its version and entry points, relative to ``SOURCES``."""
    root = package_source()
    files = {f"jupyter_launch/{p.relative_to(root).as_posix()}": p.read_bytes()
             for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}
    dist = importlib.metadata.distribution(DISTRIBUTION)
    info = f"jupyter_launch-{dist.version}.dist-info"
    files[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: {dist.version}\n").encode()
    files[f"{info}/entry_points.txt"] = (dist.read_text("entry_points.txt") or "").encode()
    return files


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


class AgentImageBuilder:
    """Builds the agent image on one engine (a ``docker.APIClient``). Blocking: call from a thread."""

    def __init__(self, api: Any, *, base_image: str = DEFAULT_BASE_IMAGE, pip_cache: str | None = PIP_CACHE_VOLUME,
                 ca_bundle: str = MACHINE_CA_BUNDLE):
        self.api = api
        self.base_image = base_image
        self.pip_cache = pip_cache
        self.ca_bundle = Path(ca_bundle)

    def _label(self, ref: str) -> str | None:
        import docker.errors

        try:
            return (self.api.inspect_image(ref)["Config"].get("Labels") or {}).get(IMAGE_LABEL)
        except docker.errors.ImageNotFound:
            return None

    def build(self, tag: str | None = None, on_output: Callable[[str], None] = lambda text: None) -> str:
        """Build (or find already built) the image of this jupyter-launch; tag it ``tag`` when given. Returns the
        tag, ``jupyter-launch-agent:<hash>`` by default."""
        import docker.errors

        try:
            self.api.inspect_image(self.base_image)
        except docker.errors.ImageNotFound:
            raise ImageBuildError(f"base image {self.base_image} is not on this engine (ci/python-base.sh makes "
                                  "launch-python:bookworm; --base IMAGE names another)") from None
        ca = self.ca_bundle.read_bytes() if self.ca_bundle.is_file() else b""
        pins = requirements()
        deps_hash = _digest(self.base_image, self.api.inspect_image(self.base_image)["Id"], _INSTALL, *pins, ca)
        deps_tag = f"jupyter-launch-agent-deps:{deps_hash[:12]}"
        sources = _sources()
        image_hash = _digest(deps_hash, *(n.encode() + b"\0" + d for n, d in sorted(sources.items())))
        final = f"jupyter-launch-agent:{image_hash[:12]}"
        if self._label(deps_tag) != deps_hash:
            on_output(f"installing {len(pins)} pinned dependencies on {self.base_image}\n")
            files = {"tmp/jl-agent/requirements.txt": "\n".join(pins).encode() + b"\n",
                     "tmp/jl-agent/install.sh": _INSTALL.encode()}
            if ca:
                files[MACHINE_CA_BUNDLE.lstrip("/")] = ca
            self._stage(self.base_image, deps_tag, deps_hash, files, ["sh", "/tmp/jl-agent/install.sh"], on_output)
        if self._label(final) != image_hash:
            on_output(f"adding jupyter_launch from {package_source()}\n")
            files = {f"{SOURCES.lstrip('/')}/{name}": data for name, data in sources.items()}
            files[f"{PREFIX.lstrip('/')}/bin/jupyter-launch"] = _SCRIPT.encode()
            self._stage(deps_tag, final, image_hash, files, None, on_output)
        if tag and tag != final:
            repository, _, version = tag.rpartition(":") if ":" in tag.rsplit("/", 1)[-1] else (tag, "", "latest")
            self.api.tag(final, repository, version or "latest")
            return tag if ":" in tag.rsplit("/", 1)[-1] else f"{tag}:latest"
        return final

    def _stage(self, parent: str, tag: str, label: str, files: dict[str, bytes], command: list[str] | None,
               on_output: Callable[[str], None]) -> None:
        """A container from ``parent`` with ``files`` put in (paths from ``/``), ``command`` run when given, then
        committed as ``tag``."""
        import docker.errors

        api = self.api
        binds = {self.pip_cache: {"bind": "/root/.cache/pip", "mode": "rw"}} if self.pip_cache and command else {}
        container = None
        tail: list[str] = []
        try:
            container = api.create_container(parent, command=command or ["true"], labels={IMAGE_LABEL: "build"},
                                             host_config=api.create_host_config(binds=binds))["Id"]
            by_top: dict[str, dict[str, bytes]] = {}
            for name, data in files.items():  # one archive per top folder: put_archive extracts into a folder
                top, _, rest = name.partition("/")
                by_top.setdefault(top, {})[rest] = data
            for top, members in by_top.items():
                api.put_archive(container, f"/{top}", _tar(members))
            if command:
                status, tail = run_build_container(api, container, on_output)
                if status != 0:
                    raise ImageBuildError(f"building {tag} on {parent} failed (exit code {status}): "
                                          f"{(tail or ['no output'])[-1].strip()}", "\n".join(tail))
            repository, _, version = tag.rpartition(":")
            api.commit(container, repository=repository, tag=version, changes=[
                f"LABEL {IMAGE_LABEL}={label}",
                f"ENV PATH={PREFIX}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                'CMD ["jupyter-launch", "agent", "--help"]'])
        except docker.errors.APIError as exc:
            raise ImageBuildError(f"building {tag} failed: {exc.explanation or exc}", "\n".join(tail)) from None
        finally:
            discard_container(api, container)
