"""Job specs and queue configs: the models, YAML loading with line numbers, resource and duration parsing.

Everything a user writes (a job YAML, a queue YAML, ``-p`` values, ``--memory 8Gi``) is validated here, and every
refusal is a :class:`SpecError` whose one-line message names the file, the line and the field.
"""

from __future__ import annotations

import keyword
import math
import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, GetCoreSchemaHandler, ValidationError,
    field_validator, model_validator,
)

from .errors import LocatedError

# The built-in backends, in the order messages list them; the provider types themselves come from the backend
# registry (the ``jupyter_launch.backends`` entry points).
BUILTIN_ORDER = ("local", "docker", "kubernetes")
# Providers whose YAML we understand (so the seed's aws queue parses) but whose capacity is not provisioned here.
CLOUD_PROVIDERS = ("aws", "gcp", "azure")
JOB_KINDS = ("notebook", "cell", "command")
MAX_GPUS = 1024  # per job; also keeps the count inside the store's integer column
# Bounds on a YAML document or a parameter value: deeper or (through aliases) larger input is refused, not expanded.
MAX_DEPTH = 100
MAX_JOB_NAME = 200  # characters in a job name
MAX_NODES = 1024  # ranks of one job
MAX_VALUES = 100_000


class SpecError(LocatedError, ValueError):
    """Bad user input: ``file:line: field: message`` on one line. Still a ``ValueError`` too, as it always was: it is
    a bad value, like those the parsers here (``parse_memory``, ...) refuse, and a caller's ``except ValueError``
    around a submit keeps catching it."""


# ---------------------------------------------------------------- resource strings

_SUFFIX = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P|m)?\s*$")


def parse_cpu(value: Any) -> float:
    """Kubernetes-style CPU: ``2``, ``0.5``, ``"500m"`` -> cores as a float."""
    if isinstance(value, bool):
        raise ValueError(f"expected a CPU count like 2, 0.5 or '500m', got {value!r}")
    if isinstance(value, (int, float)):
        cores = float(value)
    else:
        m = _QUANTITY.match(str(value))
        if not m or m.group(2) not in (None, "m"):
            raise ValueError(f"expected a CPU count like 2, 0.5 or '500m', got {value!r}")
        cores = float(m.group(1)) / (1000 if m.group(2) == "m" else 1)
    if not math.isfinite(cores) or cores <= 0:
        raise ValueError(f"CPU count must be positive, got {value!r}")
    return cores


def parse_memory(value: Any) -> int:
    """Kubernetes-style memory: ``"8Gi"``, ``"512Mi"``, ``"1G"``, ``1073741824`` -> bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a memory size like '8Gi' or '512Mi', got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    else:
        m = _QUANTITY.match(str(value))
        if not m or m.group(2) == "m":
            raise ValueError(f"expected a memory size like '8Gi' or '512Mi', got {value!r}")
        size = float(m.group(1)) * _SUFFIX[m.group(2) or ""]
        if not math.isfinite(size):
            raise ValueError(f"memory size is too large, got {value!r}")
        n = int(size)
    if n <= 0:
        raise ValueError(f"memory must be positive, got {value!r}")
    return n


def parse_gpu(value: Any) -> int:
    """A whole number of GPUs (``0`` allowed)."""
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())):
        raise ValueError(f"expected a whole number of GPUs, got {value!r}")
    n = int(value)
    if not 0 <= n <= MAX_GPUS:
        raise ValueError(f"expected between 0 and {MAX_GPUS} GPUs, got {value!r}")
    return n


_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s?)?\s*$")


def parse_duration(value: Any) -> float | None:
    """``3600``, ``"1h"``, ``"1h30m"``, ``"90s"``, ``"45m"`` -> seconds; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 3600, '90s', '45m' or '1h', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m or not any(m.groups()):
            raise ValueError(f"expected a duration like 3600, '90s', '45m' or '1h', got {value!r}")
        h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


def format_memory(n: int) -> str:
    for suffix in ("Ti", "Gi", "Mi", "Ki"):
        if n % _SUFFIX[suffix] == 0:
            return f"{n // _SUFFIX[suffix]}{suffix}"
    return str(n)


# ---------------------------------------------------------------- models

def _scalar_str(v: Any) -> Any:
    """YAML reads ``0.001`` and ``100`` in a command list as numbers; a command is strings."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if isinstance(v, float) else str(v)
    return v


def _no_nul(v: str) -> str:
    if "\x00" in v:
        raise ValueError("contains a NUL character, which no command argument or environment variable can hold")
    return v


CommandArg = Annotated[str, BeforeValidator(_scalar_str), AfterValidator(_no_nul)]
# Seconds between SIGTERM (or the backend's stop) and the kill; written like a timeout ("30s", 10).
GracePeriod = Annotated[float, BeforeValidator(lambda v: parse_duration(v) or 10.0), Field(gt=0)]
EnvValue = Annotated[str, BeforeValidator(_scalar_str), AfterValidator(_no_nul)]
# A size in bytes, written like a memory size ("512Mi", "10Gi", 1048576).
ByteSize = Annotated[int, BeforeValidator(lambda v: parse_memory(v)), Field(gt=0, le=2**62)]
DEFAULT_MAX_LOG_SIZE = 1024**3  # a job's log, by default
DEFAULT_MAX_OUTPUT_SIZE = 10 * 1024**3  # a job's output files together, by default


def _check_parameter_value(value: Any, name: str, depth: int = 0) -> None:
    """Only plain data reaches a notebook: what JSON holds, so the value stored is the value the job gets."""
    if depth > MAX_DEPTH:
        raise ValueError(f"parameter {name!r} is nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_parameter_value(item, name, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"parameter {name!r}: mapping keys must be strings, got {key!r}")
            _check_parameter_value(item, name, depth + 1)
        return
    raise ValueError(f"parameter {name!r}: a {type(value).__name__} cannot be passed; "
                     "use str, int, float, bool, None, or lists and mappings of them")


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Resources(Strict):
    cpu: float | None = None  # per rank
    gpu: int = 0  # per rank
    memory: int | None = None  # bytes, per rank
    # Ranks of a distributed job, one per node: each runs the same command or notebook with RANK, WORLD_SIZE,
    # LOCAL_RANK, MASTER_ADDR and MASTER_PORT set (backends.base.rank_variables).
    nodes: int = Field(default=1, ge=1, le=MAX_NODES)

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, v: Any) -> float | None:
        return None if v is None else parse_cpu(v)

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu(cls, v: Any) -> int:
        return 0 if v is None else parse_gpu(v)

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> int | None:
        return None if v is None else parse_memory(v)


MAX_PRIORITY = 1000


class JobSpec(Strict):
    """What to run. The seed's ``my_training_job.yaml`` is one of these."""

    kind: Literal["notebook", "cell", "command"] = "command"
    name: str | None = None
    job_type: str | None = None
    image: str | None = None
    command: list[CommandArg] | None = None
    notebook: str | None = None  # path inside the artifact, for kind=notebook
    code: str | None = None  # cell source, for kind=cell
    setup: list[str] = Field(default_factory=list)  # cells run before ``code`` (kind=cell)
    push: list[str] = Field(default_factory=list)  # variable names sent with a cell job
    pull: list[str] = Field(default_factory=list)  # variable names brought back from a cell job
    env: dict[str, EnvValue] = Field(default_factory=dict)
    secrets: list[str] = Field(default_factory=list)  # names resolved from the agent's environment at start
    resources: Resources = Field(default_factory=Resources)
    parameters: dict[str, Any] = Field(default_factory=dict)
    timeout: float | None = None  # seconds
    retries: int = Field(default=0, ge=0, le=100)
    kernel: str | None = None
    priority: int = Field(default=0, ge=-MAX_PRIORITY, le=MAX_PRIORITY)  # claim order: higher first, then FIFO

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, v: Any) -> Any:
        if isinstance(v, str):
            import shlex

            return shlex.split(v)
        return v

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> float | None:
        return parse_duration(v)

    @field_validator("notebook")
    @classmethod
    def _notebook_path(cls, v: str | None) -> str | None:
        if v is not None and ("\x00" in v or v.startswith("/") or ".." in v.replace("\\", "/").split("/")):
            raise ValueError(f"{v!r} is not a path inside the job's folder")
        return v

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name, value in v.items():
            if not name.isidentifier() or keyword.iskeyword(name):
                raise ValueError(f"{name!r} is not a valid parameter name (it becomes a Python variable)")
            _check_parameter_value(value, name)
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not _ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return v

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, v: list[str]) -> list[str]:
        for key in v:
            if not _ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not a valid secret name (it becomes an environment variable)")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if len(v) > MAX_JOB_NAME:
            raise ValueError(f"a job name has at most {MAX_JOB_NAME} characters, not {len(v)}")
        for ch in v:
            # Control characters (NUL, escapes that drive a terminal), format characters (bidi overrides that
            # reorder what a listing shows, zero-width ones) and line breaks have no place in a one-line name.
            if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
                raise ValueError(f"a job name cannot hold {ascii(ch)} ({unicodedata.name(ch, 'a control character')});"
                                 " use printable characters")
        return v

    @field_validator("job_type")
    @classmethod
    def _job_type(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.match(v):
            raise ValueError(f"{v!r} is not a valid job type (letters, digits, '.', '_', '-')")
        return v

    @model_validator(mode="after")
    def _kind_fields(self) -> JobSpec:
        if self.kind == "command" and not self.command:
            raise ValueError("a command job needs 'command'")
        if self.kind == "notebook" and not self.notebook:
            raise ValueError("a notebook job needs 'notebook'")
        if self.kind == "cell" and self.code is None:
            raise ValueError("a cell job needs 'code'")
        overlap = set(self.env) & set(self.secrets)
        if overlap:
            raise ValueError(f"{sorted(overlap)[0]!r} is both in env and secrets; keep it in secrets only")
        return self


class ProviderConfig(Strict):
    """What every backend's queue settings (the queue YAML's ``provider:``) have; a backend's ``config_model``
    subclasses it with ``type: Literal["<its entry point name>"]`` and its own fields."""

    type: str
    min_instances: int = Field(default=0, ge=0)
    max_instances: int | None = Field(default=None, ge=1)
    grace_period: GracePeriod = 10.0


class CloudProvider(Strict):
    """The seed's ``provider: {type: aws, ...}``: understood, so it can be refused with a useful message."""

    type: Literal["aws", "gcp", "azure"]
    region: str | None = None
    instance_type: str | None = None
    ami: str | None = None
    zone: str | None = None
    min_instances: int = Field(default=0, ge=0)
    max_instances: int | None = Field(default=None, ge=1)


class Provider:
    """The ``provider:`` field of a queue: one of the installed backends' config models, or a cloud provider this
    project refuses, chosen by ``type``. Its schema is made on the first validation of a :class:`QueueConfig`
    (``defer_build``), so importing this module loads no backend."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> Any:
        models = [*provider_models().values(), CloudProvider]
        return handler.generate_schema(Annotated[Union[tuple(models)], Field(discriminator="type")])


def provider_models() -> dict[str, type[ProviderConfig]]:
    """Each installed backend's queue-config model, by provider type (the backend registry's order)."""
    from .backends.base import backend_classes

    return {name: cls.config_model for name, cls in backend_classes().items()}


def supported_providers() -> str:
    """The provider types a queue may name, for messages: the built-in ones first, in their usual order."""
    names = list(provider_models())
    return ", ".join(sorted(names, key=lambda n: (BUILTIN_ORDER.index(n) if n in BUILTIN_ORDER else len(BUILTIN_ORDER),
                                                  n)))


class QueueConfig(Strict):
    """A named FIFO and where its jobs run. The seed's ``my_queue.yaml`` is one of these."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)

    queue_name: str
    provider: Provider = Field(default={"type": "local"}, validate_default=True)
    agent_image: str | None = None
    job_types: list[str] = Field(default_factory=list)  # accepted job types; empty = any
    description: str | None = None
    # Past either, the job is stopped and fails (log_too_large, output_too_large): one job cannot fill the store.
    max_log_size: ByteSize = DEFAULT_MAX_LOG_SIZE
    max_output_size: ByteSize = DEFAULT_MAX_OUTPUT_SIZE
    # Whose jobs an agent that serves as a user claims here: on a private queue only its user's, on a shared one
    # anyone's. Unset: private for a local queue, shared for the others (store.base.queue_is_shared).
    shared: bool | None = None

    @field_validator("queue_name")
    @classmethod
    def _queue_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r} is not a valid queue name (letters, digits, '.', '_', '-'; at most 63)")
        return v

    @property
    def min_instances(self) -> int:
        return self.provider.min_instances

    @property
    def max_instances(self) -> int | None:
        return self.provider.max_instances

    def check_runnable(self, source: str | None = None) -> None:
        """Refuse providers this project does not provision, with a message that says what to use instead."""
        if isinstance(self.provider, CloudProvider):
            raise SpecError(
                f"provider type {self.provider.type!r} is not supported here; supported providers are "
                f"{supported_providers()}. EC2/EKS (and GKE/AKS) capacity is reached through the "
                "kubernetes provider: point it at the cluster and let its autoscaler provision the nodes",
                source=source,
                field="provider.type",
            )


# ---------------------------------------------------------------- YAML with line numbers

class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that builds only what JSON holds (a date stays the text the user wrote) and refuses nesting
    deeper than ``MAX_DEPTH`` before its recursive composer runs out of stack."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # SafeConstructor converts scalars with int(), float() and a dict lookup, so `!!int x`, `!!bool maybe` and a
        # 5000-digit number raise Python's own errors: make them YAML errors with the value's line.
        try:
            return super().construct_object(node, deep)
        except (ValueError, KeyError, IndexError, TypeError, OverflowError):
            text = str(node.value) if len(str(node.value)) <= 40 else str(node.value)[:40] + "..."
            raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not a valid "
                                                    f"{node.tag.rpartition(':')[2]}", node.start_mark) from None


def _refuse_tag(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    raise yaml.constructor.ConstructorError(None, None, f"{node.tag.rpartition(':')[2]} values are not supported; "
                                            "write a string or a list", node.start_mark)


_LineLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)
_LineLoader.add_constructor("tag:yaml.org,2002:binary", _refuse_tag)
_LineLoader.add_constructor("tag:yaml.org,2002:set", _refuse_tag)


def _load_with_lines(text: str) -> tuple[Any, dict[tuple, int]]:
    """The document and the line of every mapping key and sequence item by path; every refusal is a YAMLError."""
    loader = _LineLoader(text)
    lines: dict[tuple, int] = {}
    count = 0
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lines

        def walk(n: yaml.Node, path: tuple, above: tuple[yaml.Node, ...]) -> None:
            # Aliases make a graph of the tree: refuse cycles and documents that expand past MAX_VALUES (alias bombs).
            nonlocal count
            count += 1
            if n in above or len(above) > MAX_DEPTH or count > MAX_VALUES:
                problem = ("an alias refers to a value that contains it" if n in above else
                           f"nested more than {MAX_DEPTH} levels deep" if len(above) > MAX_DEPTH else
                           f"more than {MAX_VALUES} values once aliases are expanded")
                raise yaml.composer.ComposerError(None, None, problem, n.start_mark)
            lines.setdefault(path, n.start_mark.line + 1)
            if isinstance(n, yaml.MappingNode):
                for k, v in n.value:
                    key = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
                    lines[path + (key,)] = k.start_mark.line + 1
                    walk(v, path + (key,), above + (n,))
            elif isinstance(n, yaml.SequenceNode):
                for i, v in enumerate(n.value):
                    lines[path + (i,)] = v.start_mark.line + 1
                    walk(v, path + (i,), above + (n,))

        walk(node, (), ())
        data = loader.construct_document(node)
    finally:
        loader.dispose()
    return data, lines


def field_line(text: str, field: str) -> int | None:
    """The line of ``field`` (dotted, ``provider.type``) in a YAML document, or of its nearest parent written there:
    for refusals made after a document parsed (``check_runnable``, the queue manager's)."""
    try:
        _, lines = _load_with_lines(text)
    except yaml.YAMLError:
        return None
    parts = tuple(field.split("."))
    return next((lines[parts[:k]] for k in range(len(parts), 0, -1) if parts[:k] in lines), None)


def _first_error(exc: ValidationError, lines: dict[tuple, int], source: str | None) -> SpecError:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    # pydantic puts the union tag in the path ("provider", "aws", "region"); the user wrote "provider.region".
    tags = {*provider_models(), *CLOUD_PROVIDERS}
    clean = tuple(p for i, p in enumerate(loc) if not (i > 0 and loc[i - 1] == "provider" and p in tags))
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        clean = clean + ("type",)
    line = None
    for k in range(len(clean), -1, -1):
        if clean[:k] in lines:
            line = lines[clean[:k]]
            break
    # Keys are the user's text: one that would break the line or vanish is quoted.
    field = ".".join(str(p) if isinstance(p, int) or (p and p.isprintable()) else repr(p) for p in clean) or None
    typ = err["type"]
    if typ == "extra_forbidden":
        msg = "unknown field"
    elif typ == "missing":
        msg = "required field is missing"
    elif typ == "union_tag_invalid" or typ == "union_tag_not_found":
        msg = f"unknown provider type; supported providers are {supported_providers()}"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        if "input" in err and typ.endswith("_type"):
            msg += f" (got {err['input']!r})"
    return SpecError(msg, source=source, line=line, field=field)


def _load_model(model: type[BaseModel], text: str, source: str | None, overrides: dict[str, Any] | None = None):
    try:
        data, lines = _load_with_lines(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise SpecError(f"malformed YAML: {exc.problem or exc.context}", source=source,
                        line=mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as exc:  # a control character; it carries a position, not a line
        raise SpecError(f"malformed YAML: character #x{exc.character:04x} is not allowed", source=source,
                        line=text.count("\n", 0, exc.position) + 1) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"expected a mapping at the top, got {type(data).__name__}", source=source, line=1)
    data = {**data, **(overrides or {})}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, lines, source) from None


def _read(path: str | Path) -> tuple[str, str]:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8"), str(path)
    except FileNotFoundError:
        raise SpecError("no such file", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read: {exc}", source=str(path)) from None


def load_job_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> JobSpec:
    text, source = _read(path)
    return _load_model(JobSpec, text, source, overrides)


def load_queue_config(path: str | Path) -> QueueConfig:
    text, source = _read(path)
    return _load_model(QueueConfig, text, source)


def parse_job_spec(text: str, source: str = "<job>") -> JobSpec:
    return _load_model(JobSpec, text, source)


def parse_queue_config(text: str, source: str = "<queue>") -> QueueConfig:
    return _load_model(QueueConfig, text, source)


def validate(model: type[BaseModel], data: dict[str, Any], source: str = "<input>"):
    """Validate a dict (from JSON, the CLI) with the same one-line errors as YAML files."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, {}, source) from None
