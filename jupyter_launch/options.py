"""One way from a face's options to a job: ``-p`` parameters, overrides and the target (notebook, job file, cell).

The CLI and the magics both call :func:`prepare_job`, so the same words mean the same job from either: ``-p NAME
VALUE`` or ``-p NAME=VALUE``, a value typed as a Python literal when it parses as one and otherwise kept as the exact
text typed, and a notebook always read so its kernel and ``%pip`` lines travel with the job.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spec import JobSpec, SpecError, load_job_spec, validate


@dataclass
class JobOptions:
    """What a user asked for, as any face collects it. Unset (``None``/empty) means "as the file or default says"."""

    notebook: str | Path | None = None  # a notebook to run
    config: str | Path | None = None  # a job YAML
    code: str | None = None  # a cell's code (``%%launch``)
    root: str | Path | None = None  # the folder to package; default: the notebook's or job file's folder
    name: str | None = None
    job_type: str | None = None
    image: str | None = None
    kernel: str | None = None
    timeout: str | float | None = None
    retries: int | None = None
    priority: int | None = None  # claim order on the queue: higher first, then FIFO
    cpus: str | float | None = None
    gpus: int | None = None
    memory: str | None = None
    nodes: int | None = None  # ranks of a distributed job, one per node
    env: Sequence[str] = ()  # KEY=VALUE
    secrets: Sequence[str] = ()
    params: Sequence[Sequence[str] | str] = ()  # ("NAME", "VALUE"), ("NAME=VALUE",) or "NAME=VALUE"
    extra: dict[str, Any] = field(default_factory=dict)  # further spec fields a face sets itself (cell setup, push)


@dataclass
class PreparedJob:
    """The job spec, the folder to package, and the notebook (parsed) whose environment the job carries.

    ``interpreter`` is the kernel's Python when the face knows it (a magic runs in the kernel; the server asks the
    notebook's live kernel); None: the Python of the notebook's kernelspec on this machine."""

    spec: JobSpec
    folder: Path
    notebook: dict[str, Any] | None = None
    interpreter: str | None = None


def param_value(text: str) -> Any:
    """A parameter as typed: ``3``, ``0.1``, ``True``, ``[1, 2]``, ``'quoted'`` become those Python values; anything
    else (``hello world``, ``2024-01-01``, ``x #not a comment``, text with newlines) stays exactly the text typed."""
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


def parse_params(items: Iterable[Sequence[str] | str], option: str = "-p") -> dict[str, Any]:
    """``-p NAME VALUE`` and ``-p NAME=VALUE`` (both accepted everywhere), in order; a later name wins."""
    params: dict[str, Any] = {}
    for item in items:
        parts = [item] if isinstance(item, str) else list(item)
        if len(parts) == 1:
            name, sep, value = parts[0].partition("=")
            if not sep:
                raise SpecError(f"{option} takes NAME VALUE or NAME=VALUE, got {parts[0]!r}", field="parameters")
        elif len(parts) == 2:
            name, value = parts
        else:
            raise SpecError(f"{option} takes NAME VALUE or NAME=VALUE, got {' '.join(parts)!r}", field="parameters")
        params[name] = param_value(value)
    return params


PARAM_OPTIONS = ("-p", "--param")


def split_param_args(argv: Sequence[str]) -> list[str]:
    """Command-line words with every ``-p NAME=VALUE`` (or ``--param NAME=VALUE``, ``--param=NAME=VALUE``) written as
    ``-p NAME VALUE``, so one parser rule (two values) takes both forms, wherever the option stands."""
    out: list[str] = []
    words = iter(argv)
    for word in words:
        option, eq, rest = word.partition("=")
        if eq and option == "--param":
            word, pending = option, rest
        elif word in PARAM_OPTIONS:
            pending = next(words, None)
            if pending is None:
                out.append(word)
                break
        else:
            out.append(word)
            continue
        name, sep, value = pending.partition("=")
        out.extend([word, name, value] if sep and name and not pending.startswith("-") else [word, pending])
    return out


def parse_env(items: Iterable[str], option: str = "--env") -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"{option} takes KEY=VALUE, got {item!r}", field="env")
        env[key] = value
    return env


def read_notebook(path: Path) -> dict[str, Any]:
    """Check a notebook file is a readable nbformat 4 document, without importing nbformat (slow to import)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError("no such notebook", source=str(path)) from None
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", source=str(path)) from None
    try:
        nb = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise SpecError(f"not a notebook: invalid JSON ({getattr(exc, 'msg', exc)})", source=str(path), line=line) from None
    except RecursionError:
        raise SpecError("not a notebook: its JSON is nested too deeply to read", source=str(path)) from None
    if not isinstance(nb, dict):
        raise SpecError("not a notebook: no 'cells' list", source=str(path))
    if "nbformat" in nb and nb["nbformat"] != 4:  # an nbformat 3 file has worksheets, not cells: say which
        raise SpecError(f"unsupported nbformat {nb['nbformat']!r} (jupyter-launch reads nbformat 4)",
                        source=str(path), field="nbformat")
    if not isinstance(nb.get("cells"), list):
        raise SpecError("not a notebook: no 'cells' list", source=str(path))
    if nb.get("nbformat") != 4:
        raise SpecError(f"unsupported nbformat {nb.get('nbformat')!r} (jupyter-launch reads nbformat 4)",
                        source=str(path), field="nbformat")
    return nb


def _overrides(opts: JobOptions) -> dict[str, Any]:
    """Scalar fields that replace what a job file says."""
    fields = {"name": opts.name, "job_type": opts.job_type, "image": opts.image, "kernel": opts.kernel,
              "timeout": opts.timeout, "retries": opts.retries, "priority": opts.priority}
    return {k: v for k, v in fields.items() if v is not None}


def _merge(data: dict[str, Any], opts: JobOptions) -> dict[str, Any]:
    """Fields merged into the file's: resources, env, secrets and parameters add to or replace its values."""
    data.update(_overrides(opts))
    resources = dict(data.get("resources") or {})
    for key, value in (("cpu", opts.cpus), ("gpu", opts.gpus), ("memory", opts.memory), ("nodes", opts.nodes)):
        if value is not None:
            resources[key] = value
    if resources:
        data["resources"] = resources
    env = dict(data.get("env") or {})
    env.update(parse_env(opts.env))
    secrets = list(data.get("secrets") or [])
    for name in opts.secrets:
        if name not in secrets:
            secrets.append(name)
        env.pop(name, None)
    if env:
        data["env"] = env
    if secrets:
        data["secrets"] = secrets
    params = parse_params(opts.params)
    if params:
        data["parameters"] = {**(data.get("parameters") or {}), **params}
    return data


def prepare_job(opts: JobOptions, *, source: str = "<options>") -> PreparedJob:
    """Options → the job spec, the folder to package and the notebook whose environment is captured.

    Exactly one target: ``notebook``, ``config`` or ``code``. Errors are :class:`SpecError` naming the file, line and
    field where there is one.
    """
    targets = [name for name in ("notebook", "config", "code") if getattr(opts, name) is not None]
    if not targets:
        raise SpecError("nothing to submit: give a notebook, --config FILE or a cell")
    if len(targets) > 1:
        raise SpecError(f"give one of a notebook, --config FILE or a cell, not {' and '.join(targets)}")
    nb = None
    if opts.config is not None:
        config = Path(opts.config)
        folder = Path(opts.root).resolve() if opts.root else config.resolve().parent
        file_spec = load_job_spec(config, _overrides(opts))
        spec = validate(JobSpec, _merge(file_spec.model_dump(), opts), str(config))
        if spec.kind == "notebook" and spec.notebook:
            nb = read_notebook(folder / spec.notebook)
        return PreparedJob(spec, folder, nb)
    if opts.notebook is not None:
        path = Path(opts.notebook).expanduser().resolve()
        nb = read_notebook(path)
        folder = Path(opts.root).expanduser().resolve() if opts.root else path.parent
        try:
            rel = path.relative_to(folder).as_posix()
        except ValueError:
            raise SpecError(f"the notebook is not inside the folder to package ({folder})",
                            source=str(opts.notebook)) from None
        data: dict[str, Any] = {"kind": "notebook", "notebook": rel, "name": path.stem}
        data.update(opts.extra)
        return PreparedJob(validate(JobSpec, _merge(data, opts), str(opts.notebook)), folder, nb)
    folder = Path(opts.root).expanduser().resolve() if opts.root else Path.cwd()
    data = {"kind": "cell", "code": opts.code, "name": "cell", **opts.extra}
    return PreparedJob(validate(JobSpec, _merge(data, opts), source), folder, None)
