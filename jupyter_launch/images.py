"""Job images: built once from an artifact's environment lock on a base image, tagged by a hash, reused after.

A job that names no image runs in ``jupyter-launch-env:<hash12>``, where the hash covers the base image (its id,
not just its name), the parts of the lock that reach the build, the artifact's ``requirements.txt``, the build
settings, the CA bundle and the jupyter_launch sources copied in. While that hash holds, the image is reused
without a build. The Docker and Kubernetes backends share this builder; it talks to a ``docker.APIClient``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shlex
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LaunchError

IMAGE_REPOSITORY = "jupyter-launch-env"
HASH_LABEL = "jupyter-launch.env-hash"
BUILDER_VERSION = "1"  # bump when the Dockerfile's shape changes, so old images are not reused
MACHINE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
VENV = "/opt/jupyter-launch-venv"
PACKAGE_DIR = "/opt/jupyter-launch"
# What the runner imports inside the job (jupyter_launch.runner): nbclient drives ipykernel, nbconvert writes the
# HTML report, cloudpickle carries a cell job's pushed and pulled variables.
RUNNER_REQUIREMENTS = ("nbclient>=0.10", "nbformat>=5.9", "nbconvert>=7", "ipykernel>=6", "cloudpickle>=3")
ENVIRONMENT_FILES = (".jupyter-launch/environment.json", ".jupyter-launch/manifest.json")
_PIP_INSTALL = re.compile(r"^\s*[%!]?\s*(?:python3?\s+-m\s+)?pip3?\s+install\s+(.*)$")


class ImageBuildError(LaunchError, RuntimeError):
    """An image build, pull or push that failed; ``log_tail`` holds the end of the build's output."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail


@dataclass
class BuildSettings:
    """The queue's ``provider.build`` block, with defaults applied."""

    base_image: str
    ca_bundle: str | None = None  # None: the machine's bundle when it exists
    pip_args: list[str] = field(default_factory=list)
    lock: str = "minimal"  # "full" pins every package of environment["packages"]

    @classmethod
    def from_config(cls, build: dict[str, Any] | None, default_base: str) -> BuildSettings:
        build = build or {}
        return cls(base_image=build.get("base_image") or default_base, ca_bundle=build.get("ca_bundle"),
                   pip_args=list(build.get("pip_args") or []), lock=build.get("lock") or "minimal")

    def ca_bundle_path(self) -> Path | None:
        path = Path(self.ca_bundle or MACHINE_CA_BUNDLE)
        if path.is_file():
            return path
        if self.ca_bundle:
            raise ImageBuildError(f"build.ca_bundle {self.ca_bundle} does not exist on the agent's machine")
        return None


def load_environment(workdir: Path) -> dict[str, Any]:
    """The environment lock the artifact carries (``{}`` when it has none)."""
    for name in ENVIRONMENT_FILES:
        path = workdir / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                env = data.get("environment", data) if name.endswith("manifest.json") else data
                return env if isinstance(env, dict) else {}
    return {}


def pip_install_args(lines: Iterable[Any]) -> list[str]:
    """``%pip install -q numpy 'pandas<3'`` lines (or bare requirement strings) -> pip arguments."""
    args: list[str] = []
    for line in lines:
        if not isinstance(line, str) or not line.strip():
            continue
        m = _PIP_INSTALL.match(line)
        try:
            words = shlex.split(m.group(1) if m else line)
        except ValueError:
            continue
        for word in words:
            # Flags that change where or whether things install belong to the build, not to a notebook line.
            if word in ("-q", "--quiet", "-U", "--upgrade", "--user", "--no-cache-dir") or word.startswith("-q"):
                continue
            args.append(word)
    return args


def pinned_packages(packages: Any) -> list[str]:
    """``environment["packages"]`` as ``name==version`` pins (a mapping or a list of pins)."""
    if isinstance(packages, dict):
        return [f"{name}=={version}" for name, version in sorted(packages.items()) if version]
    if isinstance(packages, list):
        return sorted(str(p) for p in packages if isinstance(p, str) and p)
    return []


def package_source() -> Path:
    import jupyter_launch

    return Path(jupyter_launch.__file__).resolve().parent


def _package_files() -> list[Path]:
    root = package_source()
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def package_digest() -> str:
    h = hashlib.sha256()
    root = package_source()
    for path in _package_files():
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@dataclass
class BuildPlan:
    """One image to build: its hash, tag, and the inputs that went into the hash."""

    settings: BuildSettings
    base_id: str
    installs: list[str]
    requirements: str | None
    ca_digest: str | None
    package_digest: str

    @property
    def hash(self) -> str:
        doc = {"v": BUILDER_VERSION, "base": self.settings.base_image, "base_id": self.base_id,
               "installs": self.installs, "requirements": self.requirements, "pip_args": self.settings.pip_args,
               "lock": self.settings.lock, "ca": self.ca_digest, "package": self.package_digest}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    @property
    def tag(self) -> str:
        return f"{IMAGE_REPOSITORY}:{self.hash[:12]}"

    def dockerfile(self) -> str:
        pip = f"{VENV}/bin/pip install " + " ".join(shlex.quote(a) for a in self.settings.pip_args)
        lines = [f"FROM {self.settings.base_image}"]
        env = ["PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_NO_CACHE_DIR=1", "PIP_ROOT_USER_ACTION=ignore"]
        if self.ca_digest:
            lines.append("COPY ca.crt /etc/ssl/certs/jupyter-launch-build-ca.crt")
            env.append("PIP_CERT=/etc/ssl/certs/jupyter-launch-build-ca.crt")
        lines.append("ENV " + " ".join(env))
        # The runner's dependencies first: their layer stays in the build cache when only the lock changes.
        lines.append(f"RUN python3 -m venv {VENV} && {pip} " + " ".join(shlex.quote(r) for r in RUNNER_REQUIREMENTS))
        if self.requirements is not None:
            lines.append("COPY requirements.txt /tmp/jupyter-launch-requirements.txt")
            lines.append(f"RUN {pip} -r /tmp/jupyter-launch-requirements.txt")
        if self.installs:
            lines.append(f"RUN {pip} " + " ".join(shlex.quote(a) for a in self.installs))
        lines.append(f"COPY jupyter_launch {PACKAGE_DIR}/jupyter_launch")
        lines.append(f"ENV PATH={VENV}/bin:$PATH PYTHONPATH={PACKAGE_DIR} PYTHONUNBUFFERED=1")
        lines.append(f"LABEL {HASH_LABEL}={self.hash}")
        return "\n".join(lines) + "\n"

    def context_tar(self) -> bytes:
        """The build context (Dockerfile, CA bundle, requirements, the jupyter_launch sources) as a tar."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            def add(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))

            add("Dockerfile", self.dockerfile().encode())
            ca = self.settings.ca_bundle_path()
            if ca is not None:
                add("ca.crt", ca.read_bytes())
            if self.requirements is not None:
                add("requirements.txt", self.requirements.encode())
            root = package_source()
            for path in _package_files():
                add("jupyter_launch/" + path.relative_to(root).as_posix(), path.read_bytes())
        return buf.getvalue()


def plan_build(settings: BuildSettings, base_id: str, environment: dict[str, Any], workdir: Path | None) -> BuildPlan:
    installs = pip_install_args(environment.get("pip_installs") or [])
    if settings.lock == "full":
        installs = pinned_packages(environment.get("packages")) + installs
    requirements = None
    if workdir is not None and (workdir / "requirements.txt").is_file():
        requirements = (workdir / "requirements.txt").read_text(encoding="utf-8", errors="replace")
    ca = settings.ca_bundle_path()
    ca_digest = hashlib.sha256(ca.read_bytes()).hexdigest() if ca else None
    return BuildPlan(settings, base_id, installs, requirements, ca_digest, package_digest())


class ImageBuilder:
    """Builds and caches job images on one Docker engine (a ``docker.APIClient``). Blocking: call from a thread."""

    def __init__(self, api: Any):
        self.api = api

    def image_id(self, ref: str) -> str | None:
        import docker.errors

        try:
            return self.api.inspect_image(ref)["Id"]
        except docker.errors.ImageNotFound:
            return None

    def cached(self, plan: BuildPlan) -> bool:
        import docker.errors

        try:
            labels = self.api.inspect_image(plan.tag)["Config"].get("Labels") or {}
        except docker.errors.ImageNotFound:
            return False
        return labels.get(HASH_LABEL) == plan.hash

    def build(self, plan: BuildPlan, on_output: Callable[[str], None]) -> str:
        """Build ``plan.tag``, sending the build's output to ``on_output`` line by line; returns the tag."""
        import docker.errors

        tail: list[str] = []
        try:
            for event in self.api.build(fileobj=io.BytesIO(plan.context_tar()), custom_context=True, tag=plan.tag,
                                        rm=True, forcerm=True, decode=True):
                text = event.get("stream") or event.get("status") or ""
                if text:
                    on_output(text)
                    tail = (tail + text.splitlines())[-20:]
                if "error" in event:
                    detail = (event.get("errorDetail") or {}).get("message") or event["error"]
                    raise ImageBuildError(f"building {plan.tag} on {plan.settings.base_image} failed: "
                                          f"{detail.strip()}", "\n".join(tail))
        except docker.errors.APIError as exc:
            raise ImageBuildError(f"building {plan.tag} failed: {exc.explanation or exc}", "\n".join(tail)) from None
        return plan.tag
