"""Job and queue YAML: the seed files as written, resource strings, and one-line errors naming file, line, field."""

from __future__ import annotations

from pathlib import Path

import pytest

from jupyter_launch.options import param_value, parse_params, split_param_args
from jupyter_launch.spec import (
    JobSpec, SpecError, load_job_spec, load_queue_config, parse_cpu, parse_duration, parse_job_spec, parse_memory,
    parse_queue_config,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_seed_job_yaml_parses_as_written():
    spec = load_job_spec(EXAMPLES / "my_training_job.yaml")
    assert spec.job_type == "train-model"
    assert spec.image == "wandb/deeplearning:latest"
    assert spec.command == ["python", "train.py", "--learning-rate", "0.001", "--epochs", "100"]
    assert spec.env == {"MY_API_KEY": "your_secret_key"}
    assert spec.resources.cpu == 2 and spec.resources.gpu == 1 and spec.resources.memory == 8 * 2**30


def test_seed_queue_yaml_parses_and_aws_is_refused_with_alternatives():
    q = load_queue_config(EXAMPLES / "my_queue.yaml")
    assert q.queue_name == "gpu-training-queue"
    p = q.provider
    assert (p.type, p.region, p.instance_type, p.min_instances, p.max_instances) == (
        "aws", "us-east-1", "g4dn.xlarge", 0, 5)
    assert q.agent_image == "wandb/agent:latest"
    with pytest.raises(SpecError) as err:
        q.check_runnable("my_queue.yaml")
    msg = str(err.value)
    assert "local, docker, kubernetes" in msg and "kubernetes provider" in msg and "EC2" in msg


@pytest.mark.parametrize("name", ["my_queue.local.yaml", "my_queue.docker.yaml", "my_queue.kubernetes.yaml"])
def test_example_queues_for_each_provider(name):
    q = load_queue_config(EXAMPLES / name)
    assert q.queue_name == "gpu-training-queue"
    assert q.provider.type == name.split(".")[1]
    q.check_runnable()


@pytest.mark.parametrize("value,cores", [(2, 2.0), ("2", 2.0), ("500m", 0.5), (0.25, 0.25), ("1.5", 1.5)])
def test_cpu_strings(value, cores):
    assert parse_cpu(value) == cores


@pytest.mark.parametrize("value,nbytes", [("8Gi", 8 * 2**30), ("512Mi", 512 * 2**20), ("1G", 10**9), (1024, 1024),
                                          ("1.5Gi", int(1.5 * 2**30))])
def test_memory_strings(value, nbytes):
    assert parse_memory(value) == nbytes


@pytest.mark.parametrize("bad", ["8Gx", "-1Gi", "lots", "", "500m", True, 0])
def test_bad_memory_strings(bad):
    with pytest.raises(ValueError):
        parse_memory(bad)


@pytest.mark.parametrize("bad", ["2 cores", "-1", "0", "1Gi", False])
def test_bad_cpu_strings(bad):
    with pytest.raises(ValueError):
        parse_cpu(bad)


@pytest.mark.parametrize("value,seconds", [("1h", 3600), ("90s", 90), ("45m", 2700), ("1h30m", 5400), (12, 12)])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("text,where", [
    ("command: [a]\nresources:\n  memory: 8Gx\n", "job.yaml:3: resources.memory:"),
    ("command: [a]\nbogus: 1\n", "job.yaml:2: bogus: unknown field"),
    ("command: [a]\nresources:\n  gpu: two\n", "job.yaml:3: resources.gpu:"),
    ("command: [a]\nretries: many\n", "job.yaml:2: retries:"),
    ("command: [a\n", "job.yaml:2: malformed YAML"),
    ("- a\n- b\n", "job.yaml:1: expected a mapping"),
    ("kind: notebook\n", "job.yaml:1: a notebook job needs 'notebook'"),
    ("command: [a]\nenv:\n  1BAD: x\n", "job.yaml:2: env:"),
    ("command: [a]\ntimeout: soon\n", "job.yaml:2: timeout:"),
])
def test_job_errors_name_file_line_field(text, where):
    with pytest.raises(SpecError) as err:
        parse_job_spec(text, "job.yaml")
    line = str(err.value)
    assert line.startswith(where), line
    assert "\n" not in line


@pytest.mark.parametrize("text,where", [
    ("queue_name: q\nprovider:\n  type: local\n  bogus: 1\n", "q.yaml:4: provider.bogus: unknown field"),
    ("queue_name: q\nprovider:\n  type: pbs\n", "q.yaml:3: provider.type: unknown provider type"),
    ("queue_name: q\nprovider:\n  type: docker\n  max_instances: 0\n", "q.yaml:4: provider.max_instances:"),
    ("provider:\n  type: local\n", "q.yaml:1: queue_name: required field is missing"),
    ("queue_name: 'bad name!'\n", "q.yaml:1: queue_name:"),
])
def test_queue_errors_name_file_line_field(text, where):
    with pytest.raises(SpecError) as err:
        parse_queue_config(text, "q.yaml")
    assert str(err.value).startswith(where), str(err.value)


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_job_spec(tmp_path / "nope.yaml")


def test_params_keep_their_types():
    assert param_value("3") == 3
    assert param_value("0.1") == 0.1
    assert param_value("True") is True
    assert param_value("[1, 2]") == [1, 2]
    assert param_value("{'a': 1}") == {"a": 1}
    assert param_value("'quoted'") == "quoted"
    assert param_value("hello world") == "hello world"
    assert param_value("2024-01-01") == "2024-01-01"
    assert param_value("'; import os #") == "'; import os #"


def test_params_that_are_no_python_literal_stay_the_exact_text_typed():
    # Read as YAML these lost their comment, their newline, their quotes or became booleans.
    assert param_value("true") == "true"
    assert param_value("x #not a comment") == "x #not a comment"
    assert param_value("line one\nline two") == "line one\nline two"
    assert param_value("  padded  ") == "  padded  "
    assert param_value("9" * 5000) == "9" * 5000  # past int's digit limit: kept, not an error


def test_both_faces_take_name_value_and_name_equals_value():
    assert split_param_args(["nb.ipynb", "-p", "a", "1", "--param", "b=x=y", "--param=c=3", "-p", "d", "e=f"]) == [
        "nb.ipynb", "-p", "a", "1", "--param", "b", "x=y", "--param", "c", "3", "-p", "d", "e=f"]
    assert parse_params([("a", "1"), "b=two", ["c", "[3]"]]) == {"a": 1, "b": "two", "c": [3]}
    with pytest.raises(SpecError, match="NAME VALUE or NAME=VALUE"):
        parse_params(["lonely"])


def test_secret_and_env_overlap_refused():
    with pytest.raises(Exception, match="both in env and secrets"):
        JobSpec(command=["x"], env={"TOKEN": "a"}, secrets=["TOKEN"])
