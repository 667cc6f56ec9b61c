"""Bad input is refused in one line, never with a traceback.

Property tests feed job and queue YAML (random text, random documents, the seed examples mutated), parameters and
resource strings to the loaders; then broken notebooks go to submit, and hostile archives and manifests to unpacking.
Every input is either accepted, and then storable and runnable, or refused with the project's own error in one line
that names the file and the field or line. Anything else is a crash; the module prints how many inputs it tried and
how many crashed (the goal is 0).
"""

from __future__ import annotations

import collections
import copy
import gzip
import io
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_launch.artifact import ArtifactError, canonical_json, load_manifest, materialize, safe_extract_tar
from jupyter_launch.client import LaunchClient
from jupyter_launch.options import param_value
from jupyter_launch.runner import JobError, inject_parameters, parameters_source, read_notebook
from jupyter_launch.spec import (
    JobSpec, QueueConfig, SpecError, parse_cpu, parse_duration, parse_gpu, parse_job_spec, parse_memory,
    parse_queue_config, validate,
)
from jupyter_launch.store.blobs import BlobStore

from .conftest import record_figure

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SEED_JOB_TEXT = (EXAMPLES / "my_training_job.yaml").read_text()
SEED_QUEUE_TEXTS = [(EXAMPLES / name).read_text() for name in
                    ("my_queue.yaml", "my_queue.local.yaml", "my_queue.docker.yaml", "my_queue.kubernetes.yaml")]
SEED_JOB = yaml.safe_load(SEED_JOB_TEXT)
SEED_QUEUES = [yaml.safe_load(text) for text in SEED_QUEUE_TEXTS]
NOTEBOOK = {"cells": [{"cell_type": "code", "id": "c1", "metadata": {"tags": ["parameters"]}, "source": "x = 1",
                       "outputs": [], "execution_count": None}],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}

# Derandomized and without an example database, so CI tries the same inputs every run; sized for ~1 min on 2 cores.
PROPERTY = settings(deadline=None, derandomize=True, database=None, max_examples=400,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])

TRIED: collections.Counter[str] = collections.Counter()  # inputs tried, by kind
REFUSED: collections.Counter[str] = collections.Counter()  # of those, refused with the project's own error
CRASHES: list[str] = []  # one line per input that raised something other than the project's own error


@pytest.fixture(scope="module", autouse=True)
def bad_input_summary() -> Iterator[None]:
    yield
    total, refused = sum(TRIED.values()), sum(REFUSED.values())
    print(f"\nbad-input: {total} inputs tried ({refused} refused, the rest accepted), {len(CRASHES)} crashes; "
          + ", ".join(f"{kind} {n}/{REFUSED[kind]}" for kind, n in sorted(TRIED.items())))
    record_figure("bad_input", inputs_tried=total, refused=refused, crashes=len(CRASHES),
                  tried_by_kind=dict(sorted(TRIED.items())), refused_by_kind=dict(sorted(REFUSED.items())),
                  first_crashes=CRASHES[:5])


def attempt(kind: str, call: Callable[[], Any]) -> Any:
    """One input: what ``call`` returns, or the SpecError or ArtifactError it refused with.

    Any other exception is a crash: recorded for the summary, then raised so the property fails on it.
    """
    TRIED[kind] += 1
    try:
        return call()
    except (SpecError, ArtifactError) as exc:
        REFUSED[kind] += 1
        return exc
    except Exception as exc:
        CRASHES.append(f"{kind}: {type(exc).__name__}: {exc}"[:300])
        raise


def assert_one_line(exc: Exception, source: str | None = None) -> str:
    text = str(exc)
    # splitlines, not "\n": \r, \x85 and \u2028 end a line on a terminal too.
    assert len(text.splitlines()) == 1, f"not one line: {text!r}"
    if source is not None:
        assert text.startswith(f"{source}:"), f"does not name {source}: {text!r}"
    return text


def assert_names_the_problem(exc: SpecError, source: str) -> None:
    assert_one_line(exc, source)
    # A rule across fields ("a command job needs 'command'") has no single field or line; its message quotes one.
    quoted = any(f"'{name}'" in exc.message for name in [*JobSpec.model_fields, *QueueConfig.model_fields])
    assert exc.field or exc.line or quoted, f"names neither a field nor a line: {str(exc)!r}"


def stored_and_read_back(spec: JobSpec) -> dict[str, Any]:
    """What the store keeps of an accepted spec, checked to be what the agent reads back and the runner can inject."""
    stored = json.loads(json.dumps(spec.model_dump(mode="json")))
    again = JobSpec.model_validate(stored)
    assert json.dumps(again.model_dump(mode="json"), sort_keys=True) == json.dumps(stored, sort_keys=True)
    parameters_source(stored["parameters"])
    for text in [*(spec.command or []), *spec.env.values()]:  # what reaches execve
        assert "\x00" not in text
    return stored


def check_job_yaml(text: str, kind: str) -> None:
    def load() -> JobSpec:
        spec = parse_job_spec(text, "job.yaml")
        stored_and_read_back(spec)
        return spec

    result = attempt(kind, load)
    if isinstance(result, SpecError):
        assert_names_the_problem(result, "job.yaml")


def check_queue_yaml(text: str, kind: str) -> None:
    def load() -> QueueConfig:
        config = parse_queue_config(text, "queue.yaml")
        stored = json.loads(json.dumps(config.model_dump(mode="json", exclude_none=True)))
        QueueConfig.model_validate(stored)
        try:
            config.check_runnable("queue.yaml")
        except SpecError as exc:  # a cloud provider: understood, refused with what to use instead
            assert exc.field == "provider.type"
            assert_one_line(exc, "queue.yaml")
        return config

    result = attempt(kind, load)
    if isinstance(result, SpecError):
        assert_names_the_problem(result, "queue.yaml")


# ---------------------------------------------------------------- strategies

WEIRD_TEXT = st.text(st.sampled_from(
    "a_-.:/ 0\t\n\r\x00\x01\x1b\x7f\x85\xa0\u00e9\u0301\u200b\u202e\u2028\u2029\ufeff\ufffe\uffff\U0001f680\U0010ffff"
    "'\"{}[],&*!|>%@`#?"), max_size=12)
JOB_FIELDS = list(JobSpec.model_fields) + ["cpu", "gpu", "memory"]
QUEUE_FIELDS = list(QueueConfig.model_fields) + ["type", "region", "min_instances", "max_instances", "gpus",
                                                "namespace", "pod_template", "build", "grace_period"]
KEYS = st.one_of(st.sampled_from(JOB_FIELDS + QUEUE_FIELDS), WEIRD_TEXT, st.text(max_size=8))
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(), st.text(max_size=20), WEIRD_TEXT,
    st.sampled_from(["8Gi", "500m", "1h30m", "0", "-1", "1e400", "9" * 400 + "Gi", "", "~", "local", "docker",
                     "kubernetes", "aws", "slurm", "notebook", "cell", "command", "2024-01-01", "../x.ipynb"]),
)
VALUES = st.recursive(SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                       st.dictionaries(KEYS, kids, max_size=4)), max_leaves=12)
YAML_TOKENS = [
    "-", " ", "  ", "\n", "\n  ", ":", ": ", "? ", ",", "[", "]", "{", "}", "'", '"', "#", "&a ", "*a", "*b",
    "!!str ", "!!int ", "!!binary ", "!!set ", "!!timestamp ", "!!omap ", "!!python/object/apply:os.system ",
    "!local ", "|", ">-", "---", "...", "%YAML 1.1\n", "%TAG ! tag:x,2024:\n", "<<: ", "~", "null", "true", "0x1F",
    "0o17", ".nan", "-.inf", "1e400", "2024-01-01", "\t", "\\", "\x00", "\x85", "\u2028", "\ufeff", "\ud7ff",
    "\U0001f680", "kind", "command", "notebook", "resources", "memory", "cpu", "gpu", "parameters", "env", "timeout",
    "retries", "8Gi", "500m", "queue_name", "provider", "type", "local", "docker", "kubernetes", "aws",
    "max_instances", "min_instances", "grace_period", "[" * 120, "]" * 120, "- " * 60,
]
YAML_TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(st.sampled_from(YAML_TOKENS), st.text(max_size=3)), max_size=60).map("".join),
)


def dump(data: Any, flow: bool | None) -> str:
    return yaml.safe_dump(data, allow_unicode=True, default_flow_style=flow, sort_keys=False)


def _slots(doc: Any, path: tuple = ()) -> Iterator[tuple]:
    """Every place in a document a mutation can act on: each mapping key and each list item, by path."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield path + (k,)
            yield from _slots(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield path + (i,)
            yield from _slots(v, path + (i,))


def _nest(value: Any, depth: int, as_list: bool) -> Any:
    for _ in range(depth):
        value = [value] if as_list else {"k": value}
    return value


@st.composite
def mutated_documents(draw: st.DrawFn, seeds: list[dict[str, Any]]) -> str:
    """A seed example with one to three mutations: wrong types, unknown, missing or renamed fields, weird unicode,
    deep nesting; dumped as YAML in block or flow style."""
    doc = copy.deepcopy(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        slots = [()] + list(_slots(doc))
        path = draw(st.sampled_from(slots))
        parent: Any = doc
        for p in path[:-1]:
            parent = parent[p]
        target = parent[path[-1]] if path else doc
        op = draw(st.sampled_from(["replace", "delete", "add", "rename", "nest", "unicode"]))
        if op == "add" and isinstance(target, dict):
            target[draw(KEYS)] = draw(VALUES)
        elif op == "add" and isinstance(target, list):
            target.append(draw(VALUES))
        elif not path:
            doc = draw(VALUES) if op == "replace" else doc
        elif op == "delete":
            del parent[path[-1]]
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(KEYS)] = parent.pop(path[-1])
        elif op == "nest":
            parent[path[-1]] = _nest(target, draw(st.integers(1, 130)), draw(st.booleans()))
        elif op == "unicode":
            parent[path[-1]] = draw(WEIRD_TEXT)
        else:
            parent[path[-1]] = draw(VALUES)
    return dump(doc, draw(st.sampled_from([None, False, True])))


@st.composite
def mutated_texts(draw: st.DrawFn, seeds: list[str]) -> str:
    """A seed file's text with a few edits: a token inserted, a span cut, lines swapped or re-indented, truncation."""
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "cut", "swap", "indent", "truncate"]))
        if op == "insert":
            text = text[:pos] + draw(st.one_of(st.sampled_from(YAML_TOKENS), WEIRD_TEXT)) + text[pos:]
        elif op == "cut":
            text = text[:pos] + text[pos + draw(st.integers(1, 40)):]
        elif op == "truncate":
            text = text[:pos]
        else:
            lines = text.split("\n")
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if op == "swap":
                lines[i], lines[j] = lines[j], lines[i]
            else:
                lines[i] = " " * draw(st.integers(1, 5)) + lines[i]
            text = "\n".join(lines)
    return text


RANDOM_DOCUMENTS = st.builds(dump, st.dictionaries(KEYS, VALUES, max_size=6), st.sampled_from([None, False, True]))
JOB_YAML = st.one_of(YAML_TEXT, RANDOM_DOCUMENTS, mutated_documents([SEED_JOB]), mutated_texts([SEED_JOB_TEXT]))
QUEUE_YAML = st.one_of(YAML_TEXT, RANDOM_DOCUMENTS, mutated_documents(SEED_QUEUES), mutated_texts(SEED_QUEUE_TEXTS))

SUFFIXES = ["", "m", "k", "Ki", "Mi", "Gi", "Ti", "Pi", "M", "G", "T", "P", "E", "Ei", "gi", "mi", "h", "s", "1h30m",
            "h30m", "b", "GiB", " cores"]
NUMBERS = st.one_of(st.integers(-(10**40), 10**40).map(str), st.floats().map(repr),
                    st.from_regex(r"\A[0-9]{0,400}(\.[0-9]{0,6})?\Z"),
                    st.sampled_from(["²", "١", "٣", "0x10", "1_000"]))
RESOURCE_VALUES = st.one_of(
    st.builds(lambda n, space, suffix: f"{n}{space}{suffix}", NUMBERS, st.sampled_from(["", " ", "\t"]),
              st.sampled_from(SUFFIXES)),
    st.text(max_size=12), WEIRD_TEXT, st.integers(-(10**40), 10**40), st.floats(), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=2),
)


# ---------------------------------------------------------------- job and queue YAML

@settings(PROPERTY, max_examples=1500)
@given(JOB_YAML)
def test_job_yaml_is_accepted_or_refused_naming_the_field(text: str):
    check_job_yaml(text, "job yaml")


@settings(PROPERTY, max_examples=1500)
@given(QUEUE_YAML)
def test_queue_yaml_is_accepted_or_refused_naming_the_field(text: str):
    check_queue_yaml(text, "queue yaml")


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefg", "bcdefgh")) + "command: [*h]\n"
REGRESSIONS = {
    "control character": ("command: [a]\nname: x\x01y\n", "job.yaml:2: malformed YAML: character #x0001"),
    "recursive alias": ("command: [a]\nparameters:\n  x: &a [*a]\n",
                        "job.yaml:3: malformed YAML: an alias refers to a value"),
    "nested 3000 deep": ("command: [a]\nparameters:\n  x: " + "[" * 3000 + "]" * 3000 + "\n",
                         "job.yaml:3: malformed YAML: nested more"),
    "alias bomb": (ALIAS_BOMB, "malformed YAML: more than 100000 values"),
    "memory past a float": ("command: [a]\nresources:\n  memory: " + "9" * 400 + "Gi\n",
                            "job.yaml:3: resources.memory: memory size is too"),
    "negative GPUs": ("command: [a]\nresources:\n  gpu: -1\n", "job.yaml:3: resources.gpu: expected between 0"),
    "GPUs past the store's integer": ("command: [a]\nresources:\n  gpu: 100000000000000000000\n",
                                      "job.yaml:3: resources.gpu: expected between 0"),
    "key with a newline": ("command: [a]\n\"x\\ny\": 1\n", "job.yaml:2: 'x\\ny': unknown field"),
    "empty key": ("command: [a]\n\"\": 1\n", "job.yaml:2: '': unknown field"),
    "NUL in env": ("command: [a]\nenv:\n  A: \"x\\0y\"\n", "job.yaml:3: env.A: contains a NUL character"),
    "NUL in command": ("command: [\"a\\0\"]\n", "job.yaml:1: command.0: contains a NUL character"),
    "parameter name not an identifier": ("command: [a]\nparameters:\n  1x: 2\n",
                                         "job.yaml:2: parameters: '1x' is not a valid parameter name"),
    "parameter name a keyword": ("command: [a]\nparameters:\n  class: 2\n",
                                 "job.yaml:2: parameters: 'class' is not a valid parameter name"),
    "parameter with a number key": ("command: [a]\nparameters:\n  x: {1: 2}\n",
                                    "job.yaml:2: parameters: parameter 'x': mapping keys must be"),
    "binary parameter": ("command: [a]\nparameters:\n  x: !!binary /w==\n",
                         "job.yaml:3: malformed YAML: binary values are not"),
    "set parameter": ("command: [a]\nparameters:\n  x: !!set {a}\n", "job.yaml:3: malformed YAML: set values are not"),
    "!!int x": ("command: [a]\nretries: !!int x\n", "job.yaml:2: malformed YAML: 'x' is not a valid int"),
    "!!int alone": ("command: [a]\nretries: !!int\n", "job.yaml:2: malformed YAML: '' is not a valid int"),
    "!!bool maybe": ("command: [a]\nparameters:\n  x: !!bool maybe\n",
                     "job.yaml:3: malformed YAML: 'maybe' is not a valid bool"),
    "5000-digit number": ("command: [a]\nretries: " + "9" * 5000 + "\n", "job.yaml:2: malformed YAML: '9999"),
    "notebook outside the folder": ("kind: notebook\nnotebook: ../../etc/passwd\n",
                                    "job.yaml:2: notebook: '../../etc/passwd' is not a path inside"),
    "absolute notebook path": ("kind: notebook\nnotebook: /abs.ipynb\n",
                               "job.yaml:2: notebook: '/abs.ipynb' is not a path inside"),
    "terminal escape in a name": ("command: [a]\nname: \"\\e[2J\\e[31mfake\"\n",
                                  "job.yaml:2: name: a job name cannot hold '\\x1b'"),
    "NUL in a name": ("command: [a]\nname: \"a\\0b\"\n", "job.yaml:2: name: a job name cannot hold '\\x00'"),
    "right-to-left override in a name": ("command: [a]\nname: \"report\\u202Efdp.exe\"\n",
                                         "job.yaml:2: name: a job name cannot hold '\\u202e' (RIGHT-TO-LEFT"),
    "line separator in a name": ("command: [a]\nname: \"a\\Lb\"\n",
                                 "job.yaml:2: name: a job name cannot hold '\\u2028'"),
    "1 MB name": ("command: [a]\nname: " + "x" * 1024**2 + "\n",
                  "job.yaml:2: name: a job name has at most 200 characters, not 1048576"),
}


@pytest.mark.parametrize("case", list(REGRESSIONS))
def test_inputs_that_crashed_or_slipped_through_before_are_one_line_refusals(case: str):
    """Inputs that crashed the loader, or were accepted and failed later (in the store, the agent or the runner),
    before the fixes that came with these tests: regressions, each tried on every run."""
    text, where = REGRESSIONS[case]
    with pytest.raises(SpecError) as info:
        parse_job_spec(text, "job.yaml")
    assert where in assert_one_line(info.value, "job.yaml")


def test_stored_names_and_messages_reach_the_terminal_escaped(client: LaunchClient, cli_env: dict[str, str],
                                                              launch_home: Path, tmp_path: Path):
    """A row stored before names were checked (or by another version, or a message an agent sent) holds a terminal
    escape, a NUL and a right-to-left override: `jobs` and `show` print them as escapes, never raw."""
    folder = tmp_path / "job"
    folder.mkdir()
    job = client.submit(spec={"kind": "command", "command": ["true"], "name": "plain"}, root=folder)
    hostile = "\x1b[2J\x1b[31mok\x00\u202egnp.exe\u2028"
    with sqlite3.connect(launch_home / "launch.db") as db:
        db.execute("UPDATE jobs SET name = ?, state = 'failed', reason = 'exit_code', message = ? WHERE id = ?",
                   (hostile, "agent says " + hostile, job.id))
    for args in (["jobs"], ["show", job.id]):
        proc = subprocess.run([sys.executable, "-m", "jupyter_launch.cli", *args], env=cli_env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert not any(ch in proc.stdout for ch in "\x1b\x00\u202e\u2028"), repr(proc.stdout)
        assert "\\x1b[2J\\x1b[31mok\\x00\\u202egnp.exe\\u2028" in proc.stdout


def test_dates_in_yaml_stay_the_text_written_like_command_line_parameters():
    spec = parse_job_spec("command: [a]\nparameters:\n  day: 2024-01-01\n  at: 2024-01-01 10:00:00\n", "job.yaml")
    assert spec.parameters == {"day": "2024-01-01", "at": "2024-01-01 10:00:00"}
    assert param_value("2024-01-01") == "2024-01-01"
    assert stored_and_read_back(spec)["parameters"] == spec.parameters


# ---------------------------------------------------------------- resource strings and parameters

@PROPERTY
@given(RESOURCE_VALUES)
def test_resource_strings_parse_to_valid_values_or_raise_value_error(value: Any):
    checks = {
        "cpu": (parse_cpu, lambda r: isinstance(r, float) and 0 < r < float("inf")),
        "memory": (parse_memory, lambda r: isinstance(r, int) and r > 0),
        "gpu": (parse_gpu, lambda r: isinstance(r, int) and 0 <= r <= 1024),
        "timeout": (parse_duration, lambda r: r is None or (isinstance(r, float) and 0 < r < float("inf"))),
    }
    for name, (parse, valid) in checks.items():
        TRIED[f"resource {name}"] += 1
        try:
            result = parse(value)
        except ValueError as exc:
            REFUSED[f"resource {name}"] += 1
            assert_one_line(exc)
            continue
        except Exception as exc:
            CRASHES.append(f"resource {name}: {type(exc).__name__}: {exc}"[:300])
            raise
        assert valid(result), (name, value, result)


@PROPERTY
@given(st.fixed_dictionaries({}, optional={"cpu": RESOURCE_VALUES, "memory": RESOURCE_VALUES,
                                           "gpu": RESOURCE_VALUES}),
       st.one_of(st.none(), RESOURCE_VALUES), st.booleans())
def test_resources_in_a_job_are_refused_naming_the_resource(resources: dict[str, Any], timeout: Any, as_yaml: bool):
    data = {"command": ["train"], "resources": resources, **({"timeout": timeout} if timeout is not None else {})}
    if as_yaml:
        result = attempt("job resources (yaml)", lambda: stored_and_read_back(parse_job_spec(dump(data, None),
                                                                                             "job.yaml")))
        source = "job.yaml"
    else:  # the CLI's --cpus/--memory/--gpus/--timeout and the Python API
        result = attempt("job resources (api)", lambda: stored_and_read_back(validate(JobSpec, data, "<cli>")))
        source = "<cli>"
    if isinstance(result, SpecError):
        assert_names_the_problem(result, source)
        assert result.field.split(".")[0] in ("resources", "timeout"), str(result)


IDENTIFIERS = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,10}\Z")
PARAM_NAMES = st.one_of(IDENTIFIERS, st.sampled_from(["class", "None", "lambda", "1x", "a-b", "", "é", "x y"]),
                        WEIRD_TEXT)


@PROPERTY
@given(st.dictionaries(PARAM_NAMES, st.one_of(st.text(max_size=30), YAML_TEXT, WEIRD_TEXT), max_size=4))
def test_command_line_parameters_are_injectable_or_refused(pairs: dict[str, str]):
    """``-p NAME VALUE``: the value is read as a Python literal or kept as typed and never raises; the job is refused
    naming ``parameters`` or runnable, the notebook getting the parameters as Python literals."""
    def submit() -> JobSpec:
        parameters = {name: param_value(value) for name, value in pairs.items()}
        spec = validate(JobSpec, {"kind": "notebook", "notebook": "nb.ipynb", "parameters": parameters}, "<cli>")
        stored_and_read_back(spec)
        return spec

    result = attempt("parameters (-p)", submit)
    if isinstance(result, SpecError):
        assert_names_the_problem(result, "<cli>")
        assert result.field == "parameters", str(result)


class Opaque:
    pass


PYTHON_VALUES = st.recursive(
    st.one_of(SCALARS, st.binary(max_size=4), st.sets(st.integers(), max_size=2), st.builds(Opaque),
              st.complex_numbers(), st.dates(), st.datetimes()),
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.tuples(kids, kids),
                           st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), kids, max_size=3)),
    max_leaves=10)


@PROPERTY
@given(st.dictionaries(PARAM_NAMES, PYTHON_VALUES, max_size=3))
def test_python_api_parameters_are_plain_data_or_refused(parameters: dict[str, Any]):
    """``client.submit(spec={..., "parameters": {...}})``: anything a Python caller passes."""
    result = attempt("parameters (api)", lambda: stored_and_read_back(
        validate(JobSpec, {"command": ["x"], "parameters": parameters}, "<spec>")))
    if isinstance(result, SpecError):
        assert_names_the_problem(result, "<spec>")


def test_recursive_and_deep_parameter_values_are_refused():
    loop: list[Any] = [1]
    loop.append(loop)
    for value in (loop, _nest(0, 500, as_list=True), _nest(0, 500, as_list=False)):
        with pytest.raises(SpecError, match="nested more than 100 levels deep") as info:
            validate(JobSpec, {"command": ["x"], "parameters": {"x": value}}, "<spec>")
        assert_names_the_problem(info.value, "<spec>")


# ---------------------------------------------------------------- notebooks

def job_count(home: Path) -> int:
    db = home / "launch.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from jobs").fetchone()[0]


def blob_count(home: Path) -> int:
    return sum(1 for p in (home / "blobs").rglob("*") if p.is_file())


BAD_NOTEBOOKS: dict[str, tuple[bytes, str]] = {
    "truncated": (json.dumps(NOTEBOOK).encode()[:40], "not a notebook: invalid JSON"),
    "not JSON": (b"print('hello')\n", "not a notebook: invalid JSON"),
    "not UTF-8": (b"\xff\xfe\x00\x81garbage", "not a notebook"),
    "empty": (b"", "not a notebook: invalid JSON"),
    "nbformat 3": (json.dumps({**NOTEBOOK, "nbformat": 3, "nbformat_minor": 0}).encode(), "unsupported nbformat 3"),
    "nbformat 99": (json.dumps({**NOTEBOOK, "nbformat": 99}).encode(), "unsupported nbformat 99"),
    "nbformat as a string": (json.dumps({**NOTEBOOK, "nbformat": "4"}).encode(), "unsupported nbformat '4'"),
    "no nbformat": (json.dumps({"cells": []}).encode(), "unsupported nbformat None"),
    "cells a mapping": (json.dumps({**NOTEBOOK, "cells": {"0": "x"}}).encode(), "no 'cells' list"),
    "cells a string": (json.dumps({**NOTEBOOK, "cells": "x = 1"}).encode(), "no 'cells' list"),
    "a JSON list": (b"[1, 2, 3]", "no 'cells' list"),
    "nbformat 3 as saved (worksheets)": (json.dumps({"nbformat": 3, "nbformat_minor": 0, "metadata": {},
                                                     "worksheets": [{"cells": []}]}).encode(), "unsupported nbformat 3"),
}


@pytest.mark.parametrize("case", list(BAD_NOTEBOOKS))
def test_a_broken_notebook_is_refused_at_submit_and_nothing_is_stored(case: str, client: LaunchClient,
                                                                      launch_home: Path, tmp_path: Path):
    data, message = BAD_NOTEBOOKS[case]
    path = tmp_path / "work" / "broken.ipynb"
    path.parent.mkdir()
    path.write_bytes(data)
    result = attempt("notebook (submit)", lambda: client.submit(path))
    assert isinstance(result, SpecError), f"accepted: {result!r}"
    assert message in assert_one_line(result, str(path))
    assert client.jobs() == [] and job_count(launch_home) == 0
    assert blob_count(launch_home) == 0  # refused before packaging: no half-written artifact


def test_a_deeply_nested_notebook_is_refused_at_submit(client: LaunchClient, launch_home: Path, tmp_path: Path):
    path = tmp_path / "deep.ipynb"
    path.write_text('{"cells": [], "nbformat": 4, "metadata": ' + "[" * 100_000 + "]" * 100_000 + "}")
    TRIED["notebook (submit)"] += 1
    with pytest.raises(SpecError) as info:
        client.submit(path)
    assert_one_line(info.value, str(path))
    assert job_count(launch_home) == 0


NOTEBOOK_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=6)),
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=6), kids, max_size=3)),
    max_leaves=8)
CELL_KEYS = ["cell_type", "id", "metadata", "source", "outputs", "execution_count", "attachments"]


@st.composite
def notebook_bytes(draw: st.DrawFn) -> bytes:
    """A valid notebook with a few fields replaced, dropped or added, dumped as JSON and sometimes cut short."""
    nb = copy.deepcopy(NOTEBOOK)
    for _ in range(draw(st.integers(0, 3))):
        cells = nb.get("cells")
        targets = [nb] + [t for t in (nb.get("metadata"), cells[0] if isinstance(cells, list) and cells else None)
                          if isinstance(t, dict)]
        target = draw(st.sampled_from(targets))
        keys = ["cells", "metadata", "nbformat", "nbformat_minor"] if target is nb else CELL_KEYS + ["kernelspec"]
        key = draw(st.sampled_from(keys))
        if draw(st.booleans()):
            target[key] = draw(st.one_of(NOTEBOOK_JSON, st.sampled_from([3, 4, 5, 99, "4", 4.0, -1])))
        else:
            target.pop(key, None)
    raw = json.dumps(nb).encode()
    cut = draw(st.one_of(st.none(), st.integers(0, len(raw))))
    return raw if cut is None else raw[:cut]


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LaunchClient]:
    """One client for every example of a property (a fresh store per example costs more than the check)."""
    client = LaunchClient(home=tmp_path_factory.mktemp("launch-home"))
    yield client
    client.close()


@settings(PROPERTY, max_examples=300)
@given(raw=st.one_of(notebook_bytes(), st.binary(max_size=60)))
def test_notebooks_are_refused_at_submit_or_run_but_never_crash(shared_client: LaunchClient, raw: bytes):
    """Submit checks a notebook lightly; what it lets through, the runner reads fully: each side either takes the
    notebook or refuses it with its own one-line error."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nb.ipynb"
        path.write_bytes(raw)
        result = attempt("notebook (submit)", lambda: shared_client.prepare(path))
        if isinstance(result, SpecError):
            assert_one_line(result, str(path))
            return

        def run() -> None:
            with warnings.catch_warnings():  # nbformat warns on odd notebooks; a job shows warnings, never fails on one
                warnings.simplefilter("ignore")
                try:
                    nb = read_notebook(path)
                except JobError as exc:
                    REFUSED["notebook (runner)"] += 1
                    assert exc.reason == "invalid_notebook"
                    assert_one_line(exc)
                    return
                inject_parameters(nb, {"x": 2})
                code = [c.source for c in nb.cells if c.cell_type == "code" and c.source.strip()]  # as execute_cells
                assert "# Parameters\nx = 2\n" in code

        attempt("notebook (runner)", run)


# ---------------------------------------------------------------- through the CLI, as a user runs it

CLI_CASES = {
    "job with a control character": (["submit", "--config", "{dir}/ctrl.yaml"], "ctrl.yaml:2: malformed YAML"),
    "job with a recursive alias": (["submit", "--config", "{dir}/alias.yaml"], "alias.yaml:3: malformed YAML"),
    "job nested 3000 deep": (["submit", "--config", "{dir}/deep.yaml"], "deep.yaml:3: malformed YAML: nested"),
    "job asking 9e399 GiB": (["submit", "--config", "{dir}/huge.yaml"], "huge.yaml:3: resources.memory"),
    "queue with an unknown field": (["queue", "create", "{dir}/queue.yaml"], "queue.yaml:4: provider.\u00e9t\u00e9"),
    "truncated notebook": (["submit", "{dir}/truncated.ipynb"], "truncated.ipynb:1: not a notebook"),
    "nbformat 99 notebook": (["submit", "{dir}/v99.ipynb"], "v99.ipynb: nbformat: unsupported nbformat 99"),
    "notebook job with a broken notebook": (["submit", "--config", "{dir}/nbjob.yaml"],
                                            "notlist.ipynb: not a notebook: no 'cells' list"),
    "bad -p name": (["submit", "{dir}/ok.ipynb", "-p", "not-a-name", "1"], "parameters: 'not-a-name'"),
}


def write_cli_inputs(d: Path) -> None:
    d.mkdir()
    (d / "ctrl.yaml").write_text("command: [echo]\nname: a\x07b\n")
    (d / "alias.yaml").write_text("command: [echo]\nparameters:\n  x: &a [*a]\n")
    (d / "deep.yaml").write_text("command: [echo]\nparameters:\n  x: " + "[" * 3000 + "]" * 3000 + "\n")
    (d / "huge.yaml").write_text("command: [echo]\nresources:\n  memory: " + "9" * 400 + "Gi\n")
    (d / "queue.yaml").write_text("queue_name: q\nprovider:\n  type: local\n  \u00e9t\u00e9: 1\n")
    (d / "truncated.ipynb").write_text(json.dumps(NOTEBOOK)[:50])
    (d / "v99.ipynb").write_text(json.dumps({**NOTEBOOK, "nbformat": 99}))
    (d / "notlist.ipynb").write_text(json.dumps({**NOTEBOOK, "cells": {"a": 1}}))
    (d / "nbjob.yaml").write_text("kind: notebook\nnotebook: notlist.ipynb\n")
    (d / "ok.ipynb").write_text(json.dumps(NOTEBOOK))


def test_cli_refuses_bad_files_with_exit_2_and_one_line_naming_the_file(cli_env: dict[str, str], launch_home: Path,
                                                                         tmp_path: Path):
    """Real `jupyter launch` processes, started together (each spends most of its time importing)."""
    d = tmp_path / "inputs"
    write_cli_inputs(d)
    procs = {case: subprocess.Popen([sys.executable, "-m", "jupyter_launch.cli",
                                     *[a.replace("{dir}", str(d)) for a in args]],
                                    env=cli_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    encoding="utf-8", errors="replace")
             for case, (args, _) in CLI_CASES.items()}
    failures = []
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        TRIED["cli"] += 1
        REFUSED["cli"] += proc.returncode == 2
        expect = CLI_CASES[case][1]
        lines = err.strip().splitlines()
        if proc.returncode != 2 or len(lines) != 1 or expect not in lines[0] or "Traceback" in err:
            failures.append(f"{case}: exit {proc.returncode}, stderr {err!r}")
            if "Traceback" in err:
                CRASHES.append(f"cli {case}: {lines[-1] if lines else ''}"[:300])
    assert not failures, "\n".join(failures)
    assert job_count(launch_home) == 0


# ---------------------------------------------------------------- archives

def _tar_member(name: str, kind: bytes, linkname: str = "", data: bytes | None = None) -> tuple[tarfile.TarInfo, Any]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    if data is not None:
        info.size = len(data)
    return info, io.BytesIO(data) if data is not None else None


def make_tar(members: list[tuple[tarfile.TarInfo, Any]], compression: str = "") -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}" if compression else "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, data)
    buf.seek(0)
    return buf


class Box:
    """A folder holding the extraction's ``dest`` and, beside it, ``outside/secret.txt`` that must not change."""

    def __init__(self, root: Path):
        self.root = root
        self.dest = root / "dest"
        self.outside = root / "outside"
        self.outside.mkdir(parents=True)
        self.secret = self.outside / "secret.txt"
        self.secret.write_text("secret")

    def assert_nothing_escaped(self) -> None:
        assert self.secret.read_text() == "secret"
        assert os.stat(self.secret).st_nlink == 1  # no hard link to it was made inside dest
        assert {p.name for p in self.root.iterdir()} <= {"dest", "outside"}
        assert [p.name for p in self.outside.iterdir()] == ["secret.txt"]
        real_dest = os.path.realpath(self.dest)
        for folder, dirs, files in os.walk(self.dest):
            for name in dirs + files:
                path = os.path.join(folder, name)
                if os.path.islink(path):
                    target = os.path.realpath(path)
                    assert target == real_dest or target.startswith(real_dest + os.sep), f"{path} -> {target}"


def gzip_bomb() -> io.BytesIO:
    """10 MB of zeros in a tar.gz of about 10 kB."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 10 * 1024**2
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert len(buf.getvalue()) < 50_000
    buf.seek(0)
    return buf


ARCHIVES: dict[str, tuple[Callable[[Box], io.BytesIO], str]] = {
    "../x": (lambda box: make_tar([_tar_member("../outside/secret.txt", tarfile.REGTYPE, data=b"pwned")]),
             "unsafe member"),
    "/etc/x": (lambda box: make_tar([_tar_member("/etc/x", tarfile.REGTYPE, data=b"pwned")]), "unsafe member"),
    "absolute path into the box": (lambda box: make_tar([_tar_member(str(box.secret), tarfile.REGTYPE,
                                                                     data=b"pwned")]), "unsafe member"),
    "symlink outside": (lambda box: make_tar([_tar_member("s", tarfile.SYMTYPE, str(box.outside))]), "outside"),
    "relative symlink outside": (lambda box: make_tar([_tar_member("a/s", tarfile.SYMTYPE, "../../outside")]),
                                 "outside"),
    "hard link outside": (lambda box: make_tar([_tar_member("h", tarfile.LNKTYPE, str(box.secret))]), "hard link"),
    "hard link then a write through it": (lambda box: make_tar([
        _tar_member("h", tarfile.LNKTYPE, "../outside/secret.txt"),
        _tar_member("h", tarfile.REGTYPE, data=b"pwned")]), "hard link"),
    "symlink then a file through it": (lambda box: make_tar([
        _tar_member("s", tarfile.SYMTYPE, "../outside"), _tar_member("s/secret.txt", tarfile.REGTYPE, data=b"pwned")]),
        "outside"),
    "inside symlink, then a symlink through it": (lambda box: make_tar([
        _tar_member("a", tarfile.DIRTYPE), _tar_member("l", tarfile.SYMTYPE, "a"),
        _tar_member("l/up", tarfile.SYMTYPE, "../../outside")]), "outside"),
    "gzip bomb past the size limit": (lambda box: gzip_bomb(), "size limit"),
    "a file where a folder is needed": (lambda box: make_tar([_tar_member("a", tarfile.REGTYPE, data=b"x"),
                                                              _tar_member("a/b", tarfile.REGTYPE, data=b"y")]),
                                        "cannot extract archive member 'a/b'"),
    "hard link to a member not there": (lambda box: make_tar([_tar_member("h", tarfile.LNKTYPE, "missing")]),
                                        "the archive does not hold"),
    # tarfile falls back to extracting a link's target in its place when it cannot make the link: a link to itself
    # then recursed until RecursionError, a crash instead of a refusal.
    "a symbolic link to itself where a folder is": (lambda box: make_tar([
        _tar_member("a/x", tarfile.REGTYPE, data=b"x"), _tar_member("a", tarfile.SYMTYPE, "a")]),
        "is a link where the archive made a folder"),
    "a hard link to itself": (lambda box: make_tar([_tar_member("h", tarfile.REGTYPE, data=b"x"),
                                                    _tar_member("h", tarfile.LNKTYPE, "h")]),
                              "the archive does not hold"),
    "a name too long for the file system": (lambda box: make_tar([_tar_member("n" * 300, tarfile.REGTYPE,
                                                                              data=b"x")]), "cannot extract"),
}


@pytest.mark.parametrize("case", list(ARCHIVES))
def test_hostile_archives_are_refused_and_nothing_escapes(case: str, tmp_path: Path):
    box = Box(tmp_path / "box")
    make, message = ARCHIVES[case]
    result = attempt("archive", lambda: safe_extract_tar(make(box), box.dest, max_size=1024**2))
    assert isinstance(result, ArtifactError), f"accepted: {result!r}"
    assert message in assert_one_line(result), str(result)
    box.assert_nothing_escaped()
    assert not (box.dest / "zeros.bin").exists()


PARTS = ["a", "b", "..", ".", "", "outside", "secret.txt", "dest", "é", "<box>"]
TAR_PATHS = st.lists(st.sampled_from(PARTS), min_size=1, max_size=4).map("/".join)
TAR_MEMBERS = st.lists(st.tuples(
    st.sampled_from([tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                     tarfile.FIFOTYPE]),
    TAR_PATHS, TAR_PATHS, st.binary(max_size=8)), min_size=1, max_size=6)


@PROPERTY
@given(TAR_MEMBERS, st.sampled_from(["", "gz"]))
def test_random_archives_extract_inside_or_are_refused(members: list[tuple[bytes, str, str, bytes]],
                                                       compression: str):
    """Archives from names with ``..``, ``/``, empty parts and the box's own absolute path, holding files, folders,
    symbolic and hard links: extracted inside ``dest``, or refused with an ArtifactError; never written outside."""
    with tempfile.TemporaryDirectory() as tmp:
        box = Box(Path(tmp))

        def real(path: str) -> str:
            return path.replace("<box>", str(box.root).lstrip("/"))

        tar = make_tar([_tar_member(real(name), kind, real(link), data if kind == tarfile.REGTYPE else None)
                        for kind, name, link, data in members], compression)
        result = attempt("archive", lambda: safe_extract_tar(tar, box.dest, max_size=64, max_files=5))
        if isinstance(result, ArtifactError):
            assert_one_line(result)
        box.assert_nothing_escaped()


@PROPERTY
@given(st.dictionaries(TAR_PATHS, st.sampled_from([0o644, 0o755]), min_size=1, max_size=4))
def test_manifests_with_any_paths_materialize_inside_or_are_refused(files: dict[str, int]):
    with tempfile.TemporaryDirectory() as tmp:
        box = Box(Path(tmp) / "box")
        blobs = BlobStore(Path(tmp) / "blobs")
        entry = {"digest": blobs.put_bytes(b"pwned"), "size": 5}
        manifest = {"version": 1, "files": {p: {**entry, "mode": m} for p, m in files.items()}, "environment": {},
                    "entrypoint": None}
        digest = blobs.put_bytes(canonical_json(manifest))
        loaded = attempt("manifest", lambda: load_manifest(digest, blobs))
        written = attempt("manifest", lambda: materialize(digest, blobs, box.dest))
        if isinstance(loaded, ArtifactError):
            assert isinstance(written, ArtifactError)
            assert_one_line(loaded)
            assert not box.dest.exists()  # refused before anything was written
        else:
            assert written == box.dest
            for rel in files:
                assert (box.dest / rel).read_bytes() == b"pwned"
        box.assert_nothing_escaped()


def test_a_manifest_listing_one_blob_600_times_is_refused_before_anything_is_unpacked(tmp_path: Path):
    """75.7 KB of manifest naming one 1 MiB blob 600 times used to write 629 MB on the agent."""
    blobs = BlobStore(tmp_path / "blobs")
    entry = {"digest": blobs.put_bytes(os.urandom(1024**2)), "size": 1024**2, "mode": 0o644}
    manifest = {"version": 1, "files": {f"copy-{i:03d}.bin": entry for i in range(600)}, "environment": {},
                "entrypoint": None}
    digest = blobs.put_bytes(canonical_json(manifest))
    box = Box(tmp_path / "box")
    with pytest.raises(ArtifactError) as refused:
        materialize(digest, blobs, box.dest)
    assert str(refused.value) == (f"artifact {digest}: its files come to 629.1 MB, over the packaging limit of "
                                  "524.3 MB; nothing was unpacked")
    assert_one_line(refused.value)
    assert not box.dest.exists()
    record_figure("artifact unpack bound", manifest_bytes=len(canonical_json(manifest)), listed_bytes=600 * 1024**2,
                  written_bytes=0)
    under = {**manifest, "files": {f"copy-{i:03d}.bin": entry for i in range(3)}}
    assert materialize(blobs.put_bytes(canonical_json(under)), blobs, box.dest, max_size=3 * 1024**2) == box.dest


def test_gzip_bomb_is_refused_before_its_data_is_written(tmp_path: Path):
    box = Box(tmp_path / "box")
    with pytest.raises(ArtifactError, match="past the size limit of 1.0 MB"):
        safe_extract_tar(gzip_bomb(), box.dest, max_size=1024**2)
    assert list(box.dest.iterdir()) == []
    under = io.BytesIO(gzip.compress(make_tar([_tar_member("small.bin", tarfile.REGTYPE, data=bytes(1000))]).read()))
    assert safe_extract_tar(under, box.dest, max_size=1024**2) == 1000  # the same path, under the limit, works
