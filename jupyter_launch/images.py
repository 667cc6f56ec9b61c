"""Job images: pulled when named, built once from an artifact's environment lock on a base image, pushed for nodes.

A job that names no image runs in ``jupyter-launch-env:<hash12>``, where the hash covers the base image (its id,
not just its name), the lock (by default every distribution the notebook's kernel had, at its version, with the
sources of local ones), the artifact's ``requirements.txt``, the build settings, the CA bundle and the
jupyter_launch sources copied in. While that hash holds, the image is reused without a build; a new lock installs
with pip's cache kept in a Docker volume, on top of the image of the closest lock built before (see
:class:`BuildPlan`). :class:`ImageService` is the one image pipeline of the Docker and Kubernetes backends (pull with a
stall timeout and the registry's credentials, build under a lock per hash, push to a queue's registry), reporting
its progress to the job; it talks to a ``docker.APIClient``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import re
import shlex
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from .backends.base import JobContext

from .errors import LaunchError

IMAGE_REPOSITORY = "jupyter-launch-env"
PREP_REPOSITORY = "jupyter-launch-prep"
DEPS_REPOSITORY = "jupyter-launch-deps"
HASH_LABEL = "jupyter-launch.env-hash"
PREP_LABEL = "jupyter-launch.prep"
FAMILY_LABEL = "jupyter-launch.deps-family"
PINS_LABEL = "jupyter-launch.deps-pins"
DEPTH_LABEL = "jupyter-launch.deps-depth"
PIP_CACHE_VOLUME = "jupyter-launch-pip-cache"
BUILDER_VERSION = "2"  # bump when the images' shape changes, so old images are not reused
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


class BuildConfig(BaseModel):
    """A queue's ``provider.build`` block, as the user writes it (Docker and Kubernetes queues)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    base_image: str | None = None
    ca_bundle: str | None = None  # extra CA bundle copied into builds (corporate proxies, this machine)
    pip_args: list[str] = Field(default_factory=list)
    # full: every distribution the notebook's kernel could import when it was submitted, at the same versions (with
    # the sources of local ones); minimal: only the runner, the notebook's %pip lines and requirements.txt.
    lock: Literal["minimal", "full"] = "full"
    # The Docker volume that keeps pip's download and wheel cache between builds (null: no cache).
    pip_cache: str | None = PIP_CACHE_VOLUME


@dataclass
class BuildSettings:
    """The queue's ``provider.build`` block, with defaults applied."""

    base_image: str
    ca_bundle: str | None = None  # None: the machine's bundle when it exists
    pip_args: list[str] = field(default_factory=list)
    lock: str = "full"
    pip_cache: str | None = PIP_CACHE_VOLUME

    @classmethod
    def from_config(cls, build: BuildConfig | dict[str, Any] | None, default_base: str) -> BuildSettings:
        build = build if isinstance(build, BuildConfig) else BuildConfig.model_validate(build or {})
        return cls(base_image=build.base_image or default_base, ca_bundle=build.ca_bundle,
                   pip_args=list(build.pip_args), lock=build.lock, pip_cache=build.pip_cache)

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
    """``environment["packages"]`` as pins (a mapping or a list of pins), less pip itself: the image's venv has its
    own, and a pip replacing itself mid-install is the one install that can break the build."""
    if isinstance(packages, dict):
        pins = [f"{name}=={version}" for name, version in sorted(packages.items()) if version]
    elif isinstance(packages, list):
        pins = sorted(str(p) for p in packages if isinstance(p, str) and p)
    else:
        pins = []
    return [p for p in pins if _pin_name(p) != "pip"]


def _pin_name(pin: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s=<>!~;@\[]", pin, maxsplit=1)[0]).lower()


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


def _tree_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def tree_digest(path: Path) -> str:
    """A digest of a file, or of a folder's files (their relative names and contents)."""
    h = hashlib.sha256()
    for f in _tree_files(path):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _tar(files: dict[str, bytes | Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            if isinstance(data, Path):
                info = tar.gettarinfo(str(data), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with data.open("rb") as f:
                    tar.addfile(info, f)
            else:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# Run in the deps container before the lock installs: pins made on another Python minor version do not install.
_PYTHON_CHECK = """import platform, sys
want, base = sys.argv[1], sys.argv[2]
have = platform.python_version()
if want.split(".")[:2] != have.split(".")[:2]:
    print(f"the notebook's kernel runs Python {want} and the base image {base} has Python {have}: its "
          f"packages cannot be installed there at their versions. Set the queue's build.base_image to an image "
          f"with Python {'.'.join(want.split('.')[:2])}, or build.lock: minimal")
    sys.exit(3)
"""


def _digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass
class BuildPlan:
    """One environment image to build, in three stages, each an image of its own:

    ``prep`` (the base with the CA bundle and an empty venv: a plain build), ``deps`` (the lock installed into that
    venv by a container with pip's cache volume mounted, then committed; a lock close to one built before starts
    from that image and installs only the difference) and the image itself (``deps`` plus the jupyter_launch sources,
    labelled with the hash of everything). A change to jupyter_launch rebuilds only the last stage; a one-package
    change to the lock installs one package.
    """

    settings: BuildSettings
    base_id: str
    installs: list[str]  # the notebook's %pip arguments
    requirements: str | None  # the folder's requirements.txt
    ca_digest: str | None
    package_digest: str
    pins: list[str] = field(default_factory=list)  # the lock (build.lock: full)
    sources: dict[str, Path] = field(default_factory=dict)  # local distributions: {name: folder or file}
    sources_digest: str | None = None
    kernel: str | None = None  # the notebook's kernel, installed under its own name when it is not python3
    python: str | None = None  # the kernel's Python version, which the image's must match to major.minor

    @property
    def prep_key(self) -> str:
        return _digest({"v": BUILDER_VERSION, "base_id": self.base_id, "ca": self.ca_digest})

    @property
    def family(self) -> str:
        """Deps images that can start from each other: the same prep image and pip arguments."""
        return _digest({"prep": self.prep_key, "pip_args": self.settings.pip_args})[:16]

    @property
    def deps_key(self) -> str:
        return _digest({"family": self.family, "pins": self.pins, "installs": self.installs,
                        "requirements": self.requirements, "sources": self.sources_digest, "kernel": self.kernel,
                        "python": self.python, "runner": RUNNER_REQUIREMENTS})

    @property
    def hash(self) -> str:
        return _digest({"v": BUILDER_VERSION, "base": self.settings.base_image, "deps": self.deps_key,
                        "lock": self.settings.lock, "package": self.package_digest})

    @property
    def tag(self) -> str:
        return f"{IMAGE_REPOSITORY}:{self.hash[:12]}"

    @property
    def prep_tag(self) -> str:
        return f"{PREP_REPOSITORY}:{self.prep_key[:12]}"

    @property
    def deps_tag(self) -> str:
        return f"{DEPS_REPOSITORY}:{self.deps_key[:12]}"

    def prep_dockerfile(self) -> str:
        lines = [f"FROM {self.settings.base_image}"]
        env = ["PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_ROOT_USER_ACTION=ignore"]
        if self.ca_digest:
            lines.append("COPY ca.crt /etc/ssl/certs/jupyter-launch-build-ca.crt")
            env.append("PIP_CERT=/etc/ssl/certs/jupyter-launch-build-ca.crt")
        lines.append("ENV " + " ".join(env))
        lines.append(f"RUN python3 -m venv {VENV}")
        lines.append(f"LABEL {PREP_LABEL}={self.prep_key}")
        return "\n".join(lines) + "\n"

    def prep_context(self) -> bytes:
        files: dict[str, bytes | Path] = {"Dockerfile": self.prep_dockerfile().encode()}
        ca = self.settings.ca_bundle_path()
        if ca is not None:
            files["ca.crt"] = ca.read_bytes()
        return _tar(files)

    def install_script(self, remove: list[str]) -> str:
        """The shell script the deps container runs in ``/tmp/jl-build`` (what :meth:`install_files` puts there)."""
        pip = f"{VENV}/bin/pip install --progress-bar off " + " ".join(shlex.quote(a) for a in self.settings.pip_args)
        lines = ["set -e", "cd /tmp/jl-build"]
        if remove:
            lines.append(f"{VENV}/bin/pip uninstall -y -r remove.txt")
        if self.pins:
            if self.python:
                lines.append(f"{VENV}/bin/python - {shlex.quote(self.python)} "
                             f"{shlex.quote(self.settings.base_image)} <<'EOF'\n{_PYTHON_CHECK}EOF")
            # The lock is whole (every distribution the kernel had), so no resolving: each pin as it was. The
            # Python is the same major.minor (checked above); a pin whose Requires-Python names a later patch
            # release (>=3.11.5 where the image has 3.11.2) is installed as it ran in the kernel.
            lines.append(f"{pip} --no-deps --ignore-requires-python -r lock.txt")
        rest = [shlex.quote(r) for r in RUNNER_REQUIREMENTS]
        if self.requirements is not None:
            rest.append("-r requirements.txt")
        rest += [shlex.quote(a) for a in self.installs]
        rest += [shlex.quote(f"./sources/{name}/{path.name}" if path.is_file() else f"./sources/{name}")
                 for name, path in sorted(self.sources.items())]
        lines.append(f"{pip} " + " ".join(rest))
        if self.kernel:
            name = shlex.quote(self.kernel)
            lines.append(f"{VENV}/bin/python -m ipykernel install --sys-prefix --name {name} --display-name {name}")
        lines.append("cd / && rm -rf /tmp/jl-build")
        return "\n".join(lines) + "\n"

    def install_files(self, remove: list[str]) -> bytes:
        files: dict[str, bytes | Path] = {"jl-build/install.sh": self.install_script(remove).encode(),
                                          "jl-build/lock.txt": "".join(p + "\n" for p in self.pins).encode(),
                                          "jl-build/remove.txt": "".join(r + "\n" for r in remove).encode()}
        if self.requirements is not None:
            files["jl-build/requirements.txt"] = self.requirements.encode()
        for name, path in self.sources.items():
            for f in _tree_files(path):
                rel = f.name if path.is_file() else f.relative_to(path).as_posix()
                files[f"jl-build/sources/{name}/{rel}"] = f
        return _tar(files)

    def dockerfile(self) -> str:
        return "\n".join([
            f"FROM {self.deps_tag}",
            f"COPY jupyter_launch {PACKAGE_DIR}/jupyter_launch",
            f"ENV PATH={VENV}/bin:$PATH PYTHONPATH={PACKAGE_DIR} PYTHONUNBUFFERED=1",
            f"LABEL {HASH_LABEL}={self.hash}",
        ]) + "\n"

    def context_tar(self) -> bytes:
        """The last stage's build context: its Dockerfile and the jupyter_launch sources."""
        root = package_source()
        files: dict[str, bytes | Path] = {"Dockerfile": self.dockerfile().encode()}
        for path in _package_files():
            files["jupyter_launch/" + path.relative_to(root).as_posix()] = path.read_bytes()
        return _tar(files)


def run_build_container(api: Any, container: str, on_output: Callable[[str], None]) -> tuple[int, list[str]]:
    """Start a created build container and pass its output on as it comes; (its exit status, its last 20 lines)."""
    tail: list[str] = []
    api.start(container)
    for chunk in api.logs(container, stream=True, follow=True):
        text = chunk.decode("utf-8", "replace")
        on_output(text)
        tail = (tail + text.splitlines())[-20:]
    return api.wait(container).get("StatusCode", 1), tail


def discard_container(api: Any, container: str | None) -> None:
    """Remove a build container, whatever state it is in; one already gone (or an engine that refuses) is left."""
    import docker.errors

    if container is not None:
        try:
            api.remove_container(container, force=True)
        except docker.errors.APIError:
            pass


def local_sources(environment: dict[str, Any], workdir: Path | None, error: Callable[[str], Exception],
                  target: str, setting: str) -> dict[str, Path]:
    """The lock's local distributions (installed on the submitting machine from a folder or a file) by a safe name:
    where their sources are in the job's folder. One whose source did not travel raises ``error`` with a sentence
    naming it, the job's ``target`` it cannot go into and the queue ``setting`` that does without it."""
    sources: dict[str, Path] = {}
    for dist in environment.get("local") or []:
        if not isinstance(dist, dict):
            continue
        name, source = str(dist.get("name")), dist.get("source")
        where = (workdir / source) if workdir is not None and isinstance(source, str) else None
        if where is None or not where.exists() or dist.get("missing"):
            why = dist.get("missing") or "its source is not in the job's folder"
            raise error(
                f"distribution {name} {dist.get('version')} cannot be installed in the job's {target}: it was "
                f"installed on the submitting machine from a local folder ({why}) and no package index can serve "
                f"it. Reinstall it from its source folder (pip install -e DIR) and submit again, or set the queue's "
                f"{setting}: minimal")
        sources[re.sub(r"[^A-Za-z0-9._-]", "_", name)] = where
    return sources


def plan_build(settings: BuildSettings, base_id: str, environment: dict[str, Any], workdir: Path | None) -> BuildPlan:
    installs = pip_install_args(environment.get("pip_installs") or [])
    pins: list[str] = []
    sources: dict[str, Path] = {}
    kernel = environment.get("kernel") if isinstance(environment.get("kernel"), str) else None
    kernel = None if kernel in ("python3", "python") else kernel  # ipykernel's own kernel is in every image
    if settings.lock == "full":
        pins = pinned_packages(environment.get("packages"))
        sources = local_sources(environment, workdir, ImageBuildError, "image", "build.lock")
    requirements = None
    if workdir is not None and (workdir / "requirements.txt").is_file():
        requirements = (workdir / "requirements.txt").read_text(encoding="utf-8", errors="replace")
    ca = settings.ca_bundle_path()
    ca_digest = hashlib.sha256(ca.read_bytes()).hexdigest() if ca else None
    sources_digest = _digest({n: tree_digest(p) for n, p in sorted(sources.items())}) if sources else None
    python = environment.get("python") if pins and isinstance(environment.get("python"), str) else None
    return BuildPlan(settings, base_id, installs, requirements, ca_digest, package_digest(), pins=pins,
                     sources=sources, sources_digest=sources_digest, kernel=kernel, python=python)


class ImageBuilder:
    """Builds and caches job images on one Docker engine (a ``docker.APIClient``). Blocking: call from a thread."""

    max_depth = 8  # deps images stacked on each other before one starts from the prep image again

    def __init__(self, api: Any):
        self.api = api

    def image_id(self, ref: str) -> str | None:
        import docker.errors

        try:
            return self.api.inspect_image(ref)["Id"]
        except docker.errors.ImageNotFound:
            return None

    def _labels(self, ref: str) -> dict[str, str] | None:
        import docker.errors

        try:
            return self.api.inspect_image(ref)["Config"].get("Labels") or {}
        except docker.errors.ImageNotFound:
            return None

    def cached(self, plan: Any) -> bool:
        labels = self._labels(plan.tag)
        return labels is not None and labels.get(HASH_LABEL) == plan.hash

    def build(self, plan: Any, on_output: Callable[[str], None]) -> str:
        """Build ``plan.tag``, sending the build's output to ``on_output`` line by line; returns the tag."""
        if isinstance(plan, BuildPlan):
            if self._labels(plan.prep_tag) is None:
                self._classic(plan.prep_tag, plan.prep_context(), on_output, plan.settings.base_image)
            if self._labels(plan.deps_tag) is None:
                self._install(plan, on_output)
        return self._classic(plan.tag, plan.context_tar(), on_output, plan.settings.base_image)

    def _classic(self, tag: str, context: bytes, on_output: Callable[[str], None], base: str) -> str:
        import docker.errors

        tail: list[str] = []
        try:
            for event in self.api.build(fileobj=io.BytesIO(context), custom_context=True, tag=tag,
                                        rm=True, forcerm=True, decode=True):
                text = event.get("stream") or event.get("status") or ""
                if text:
                    on_output(text)
                    tail = (tail + text.splitlines())[-20:]
                if "error" in event:
                    detail = (event.get("errorDetail") or {}).get("message") or event["error"]
                    raise ImageBuildError(f"building {tag} on {base} failed: {detail.strip()}", "\n".join(tail))
        except docker.errors.APIError as exc:
            raise ImageBuildError(f"building {tag} failed: {exc.explanation or exc}", "\n".join(tail)) from None
        return tag

    def nearest(self, plan: BuildPlan) -> tuple[str, list[str], int]:
        """The image the deps stage starts from: the deps image of this family whose lock is closest to the plan's
        (if it is close), else the prep image; with the pins to remove and the new image's depth."""
        wanted = {_pin_name(p): p for p in plan.pins}
        best: tuple[int, str, list[str], int] | None = None
        for image in self.api.images(filters={"label": f"{FAMILY_LABEL}={plan.family}"}):
            labels = image.get("Labels") or {}
            try:
                pins = json.loads(labels.get(PINS_LABEL, ""))
                depth = int(labels.get(DEPTH_LABEL, ""))
            except ValueError:
                continue
            if depth >= self.max_depth or not image.get("RepoTags"):
                continue
            have = {_pin_name(p): p for p in pins}
            changed = sum(1 for n, p in wanted.items() if have.get(n) != p)
            removed = sorted(n for n in have if n not in wanted)
            cost = changed + len(removed)
            if best is None or cost < best[0]:
                best = (cost, image["RepoTags"][0], removed, depth + 1)
        if best is not None and best[0] <= max(3, len(wanted) // 4):
            return best[1], best[2], best[3]
        return plan.prep_tag, [], 1

    def _install(self, plan: BuildPlan, on_output: Callable[[str], None]) -> None:
        """The deps stage: a container from the nearest image runs pip with the cache volume, then is committed."""
        import docker.errors

        parent, remove, depth = self.nearest(plan)
        on_output(f"installing the environment ({len(plan.pins)} pinned distributions) on "
                  f"{'the image of a close lock, ' + parent if parent != plan.prep_tag else parent}\n")
        binds = {plan.settings.pip_cache: {"bind": "/root/.cache/pip", "mode": "rw"}} if plan.settings.pip_cache \
            else {}
        env = [] if plan.settings.pip_cache else ["PIP_NO_CACHE_DIR=1"]
        api = self.api
        container = None
        tail: list[str] = []
        try:
            container = api.create_container(parent, command=["sh", "/tmp/jl-build/install.sh"], environment=env,
                                             host_config=api.create_host_config(binds=binds),
                                             labels={"jupyter-launch.build": plan.deps_tag})["Id"]
            api.put_archive(container, "/tmp", plan.install_files(remove))
            status, tail = run_build_container(api, container, on_output)
            if status != 0:
                raise ImageBuildError(f"installing the environment for {plan.tag} on {plan.settings.base_image} "
                                      f"failed (exit code {status}): {(tail or ['no output'])[-1].strip()}",
                                      "\n".join(tail))
            repository, _, tag = plan.deps_tag.partition(":")
            changes = [f"LABEL {FAMILY_LABEL}={plan.family}", f"LABEL {DEPTH_LABEL}={depth}",
                       f"LABEL {PINS_LABEL}={json.dumps(json.dumps(plan.pins))}", 'CMD ["python3"]',
                       "ENV PIP_NO_CACHE_DIR=1"]
            api.commit(container, repository=repository, tag=tag, changes=changes)
        except docker.errors.APIError as exc:
            raise ImageBuildError(f"installing the environment for {plan.tag} failed: {exc.explanation or exc}",
                                  "\n".join(tail)) from None
        finally:
            discard_container(api, container)


def registry_of(image: str) -> str:
    """The registry host an image reference pulls from (``docker.io`` for bare names)."""
    from docker.auth import resolve_repository_name
    from docker.utils import parse_repository_tag

    repo, _ = parse_repository_tag(image)
    try:
        registry, _ = resolve_repository_name(repo)
    except Exception:
        return "docker.io"
    return registry


def auth_from_secret(value: str, registry: str) -> dict[str, str] | None:
    """``user:password``, or a Docker config JSON (``{"auths": {registry: {...}}}``) -> an auth_config."""
    text = value.strip()
    if text.startswith("{"):
        try:
            auths = json.loads(text).get("auths") or {}
        except (ValueError, AttributeError):
            return None
        for key, entry in auths.items():
            host = re.sub(r"^https?://", "", key).split("/")[0]
            if host in (registry, "index.docker.io" if registry == "docker.io" else registry):
                if entry.get("auth"):
                    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                    return {"username": user, "password": password}
                if entry.get("username"):
                    return {"username": entry["username"], "password": entry.get("password", "")}
        return None
    user, sep, password = text.partition(":")
    return {"username": user, "password": password} if sep else None


class ImagePlan(Protocol):
    """What :meth:`ImageService.build` needs of a plan (:class:`BuildPlan`, or a backend's own)."""

    settings: BuildSettings

    @property
    def hash(self) -> str: ...

    @property
    def tag(self) -> str: ...

    def context_tar(self) -> bytes: ...


class ImageService:
    """Pulls, builds and pushes job images on one Docker engine, telling the job what it is doing.

    The job sees ``pulling_image``, ``building_image`` and ``pushing_image`` with a sentence, and the engine's output
    in its log; failures are :class:`~jupyter_launch.backends.base.BackendError` with ``image_pull_failed``,
    ``image_build_failed`` or ``image_push_failed``. Builds of one hash wait for each other, so concurrent jobs of one
    environment build it once.
    """

    def __init__(self, api: Any, *, pull_timeout: float, pull_timeout_setting: str,
                 builds: list[dict[str, Any]] | None = None):
        self.api = api
        self.builder = ImageBuilder(api)
        self.pull_timeout = pull_timeout
        self.pull_timeout_setting = pull_timeout_setting  # the trait a user sets, named in the stall message
        # What each build-or-reuse did: {"tag", "cached", "seconds"}, seconds from the start of the image step
        # (base image, hash, cache look-up) to the image being ready (bench, tests).
        self.builds = builds if builds is not None else []
        self._locks: dict[str, asyncio.Lock] = {}
        self._pushed: set[str] = set()

    # ------------------------------------------------------------ pull

    async def ensure(self, image: str, ctx: JobContext | None, registry_auth: str | None = None) -> str:
        """The image's id on the engine, pulled first when it is not there; ``registry_auth`` names the secret in
        the agent's environment holding the registry's credentials (else the engine's Docker config counts)."""
        from .backends.base import BackendError

        import docker.errors

        try:
            image_id = await asyncio.to_thread(self.builder.image_id, image)
        except docker.errors.APIError as exc:
            raise BackendError("docker_unavailable", f"the Docker engine refused to inspect {image}: "
                                                     f"{exc.explanation or exc}") from None
        except Exception as exc:
            raise BackendError("docker_unavailable", f"cannot reach the Docker engine: {exc}") from None
        if image_id is not None:
            return image_id
        registry = registry_of(image)
        if ctx is not None:
            ctx.set_reason("pulling_image", f"pulling {image} from {registry}")
            ctx.log("stderr", f"[jupyter-launch] pulling {image} from {registry}\n".encode())
        loop = asyncio.get_running_loop()

        def progress(line: str) -> None:
            if ctx is not None:
                loop.call_soon_threadsafe(ctx.log, "stderr", f"[pull] {line}\n".encode())

        await asyncio.to_thread(self._pull, image, registry, registry_auth, progress)
        return await asyncio.to_thread(self.builder.image_id, image) or ""

    def _pull(self, image: str, registry: str, registry_auth: str | None, progress: Callable[[str], None]) -> None:
        import docker.errors
        import requests
        import urllib3
        from docker import auth as docker_auth
        from docker.utils import parse_repository_tag

        from .backends.base import BackendError

        api = self.api
        repo, tag = parse_repository_tag(image)
        auth = None
        if registry_auth:
            value = os.environ.get(registry_auth)
            if value is None:
                raise BackendError("image_pull_failed", (
                    f"cannot pull image {image} from registry {registry}: the queue's provider.registry_auth names "
                    f"the secret {registry_auth!r}, which is not set in the agent's environment"))
            auth = auth_from_secret(value, registry)
        headers = {}
        if auth is not None:
            headers["X-Registry-Auth"] = docker_auth.encode_header(auth)
        else:
            api.reload_config()  # a `docker login` made since the agent started counts, as the failure advises
            header = docker_auth.get_config_header(api, registry)
            if header:
                headers["X-Registry-Auth"] = header
        last: dict[str, str] = {}
        response = None
        try:
            # docker-py's pull() sends its request with no timeout at all, so a registry that stops answering
            # would hold the job in pulling_image forever. The same request with a read timeout fails it instead.
            response = api._post(api._url("/images/create"), params={"fromImage": repo, "tag": tag or "latest"},
                                 headers=headers, stream=True, timeout=self.pull_timeout)
            api._raise_for_status(response)
            for event in api._stream_helper(response, decode=True):
                if "error" in event:
                    raise docker.errors.APIError((event.get("errorDetail") or {}).get("message") or event["error"])
                status, layer = event.get("status", ""), event.get("id", "")
                # Progress ticks ("Downloading" with a bar) would flood the log; each layer's changes are enough.
                if status and last.get(layer) != status and status not in ("Downloading", "Extracting"):
                    last[layer] = status
                    progress(f"{layer}: {status}" if layer else status)
        except Exception as exc:
            if isinstance(exc, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError)):
                detail = (f"the Docker engine reported no progress for {self.pull_timeout:g}s, so {registry} is not "
                          f"answering ({self.pull_timeout_setting} sets how long a pull may stall)")
            else:
                detail = (getattr(exc, "explanation", None) or str(exc)).strip()
            how = ("give the agent credentials: set the queue's provider.registry_auth to the name of a secret "
                   "in the agent's environment holding 'user:password' or a Docker config JSON, or run "
                   f"`docker login {registry}` as the agent's user (~/.docker/config.json)")
            raise BackendError("image_pull_failed", (
                f"cannot pull image {image} from registry {registry}: {detail}. Check the name for a typo "
                f"and that the Docker engine can reach {registry}; if the image is private, {how}")) from None
        finally:
            if response is not None:
                response.close()  # its connection, on every path: a half-read stream would hold it

    # ------------------------------------------------------------ build

    async def environment_image(self, ctx: JobContext, build: BuildConfig, default_base: str,
                                registry_auth: str | None = None) -> str:
        """``jupyter-launch-env:<hash>``: the queue's base image with the job's environment, reused while its hash
        holds."""
        from .backends.base import BackendError

        t0 = time.monotonic()  # the whole image step, a cache hit's hashing and look-up included
        try:
            settings = BuildSettings.from_config(build, default_base)
            base_id = await self.ensure(settings.base_image, ctx, registry_auth)
            plan = await asyncio.to_thread(plan_build, settings, base_id, load_environment(ctx.workdir),
                                           ctx.workdir)
        except ImageBuildError as exc:
            raise BackendError("image_build_failed", str(exc)) from None
        return await self.build(plan, ctx, "this environment", t0)

    async def build(self, plan: ImagePlan, ctx: JobContext, what: str, t0: float | None = None) -> str:
        """``plan.tag``, built from ``what`` (said in the job's log) unless the engine has it for this hash."""
        from .backends.base import BackendError

        t0 = time.monotonic() if t0 is None else t0
        base = plan.settings.base_image
        async with self._locks.setdefault(plan.hash, asyncio.Lock()):
            try:
                cached = await asyncio.to_thread(self.builder.cached, plan)
            except Exception as exc:
                raise BackendError("image_build_failed", f"the agent's Docker engine failed: {exc}") from None
            if cached:
                seconds = time.monotonic() - t0
                self.builds.append({"tag": plan.tag, "cached": True, "seconds": seconds})
                ctx.log("stderr", f"[jupyter-launch] image {plan.tag} is up to date for {what} (hash "
                                  f"{plan.hash[:12]}, checked in {seconds:.2f}s); no build\n".encode())
                return plan.tag
            ctx.set_reason("building_image", f"building image {plan.tag} on {base} from {what}")
            ctx.log("stderr", f"[jupyter-launch] building image {plan.tag} on {base}\n".encode())
            loop = asyncio.get_running_loop()

            def output(text: str) -> None:
                data = "".join(f"[build] {line}\n" for line in text.splitlines() if line.strip()).encode()
                if data:
                    loop.call_soon_threadsafe(ctx.log, "stderr", data)

            try:
                await asyncio.to_thread(self.builder.build, plan, output)
            except ImageBuildError as exc:
                raise BackendError("image_build_failed", f"{exc} (the build's output is in the job's log)") from None
            seconds = time.monotonic() - t0
            self.builds.append({"tag": plan.tag, "cached": False, "seconds": seconds})
            ctx.log("stderr", f"[jupyter-launch] built {plan.tag} in {seconds:.1f}s\n".encode())
            return plan.tag

    # ------------------------------------------------------------ push

    async def push(self, image: str, registry: str, ctx: JobContext) -> str:
        """Tag ``image`` into ``registry`` and push it; returns the name the nodes pull."""
        from .backends.base import BackendError

        registry = registry.rstrip("/")
        repository, _, tag = image.rpartition(":")
        remote = f"{registry}/{repository}"
        ref = f"{remote}:{tag}"
        if ref in self._pushed:
            return ref
        ctx.set_reason("pushing_image", f"pushing {ref}")
        ctx.log("stderr", f"[jupyter-launch] pushing {ref}\n".encode())

        def push() -> None:
            self.api.tag(image, remote, tag)
            for event in self.api.push(remote, tag=tag, stream=True, decode=True):
                if "error" in event:
                    raise ImageBuildError((event.get("errorDetail") or {}).get("message") or event["error"])

        try:
            await asyncio.to_thread(push)
        except Exception as exc:
            raise BackendError("image_push_failed", (
                f"cannot push {ref} to the queue's registry: {exc}. Log the agent's Docker engine in to it "
                f"(`docker login {registry.split('/')[0]}` as the agent's user) and give the nodes pull access "
                "(provider.image_pull_secrets)")) from None
        self._pushed.add(ref)
        return ref
