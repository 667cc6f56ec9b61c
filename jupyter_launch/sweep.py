"""Parameter sweeps: W&B's sweep shape (method grid or random, parameters with values or a distribution, a metric
and its goal) from a YAML file or from ``--grid``/``--range`` options, expanded into the runs a sweep queues.

Each run is one child job: the sweep's notebook with that run's parameters laid over its own. Children are plain
jobs with the sweep as their parent, so cancelling, rerunning and following one is what it is for any job.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from .options import param_value
from .spec import SpecError, Strict, validate

MAX_RUNS = 1000  # children one sweep may queue
DISTRIBUTIONS = ("uniform", "log_uniform_values", "int_uniform", "categorical")


class Parameter(Strict):
    """One swept parameter, as W&B writes it: ``values`` (a list), ``value`` (fixed), or a ``distribution`` with
    ``min`` and ``max`` (``uniform``, ``log_uniform_values``, ``int_uniform``)."""

    values: list[Any] | None = None
    value: Any = None
    distribution: Literal["uniform", "log_uniform_values", "int_uniform", "categorical"] | None = None
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Parameter:
        if self.distribution in (None, "categorical"):
            if self.values is None and self.value is None:
                raise ValueError("give 'values' (a list), 'value', or a 'distribution' with 'min' and 'max'")
            if self.values is not None and not self.values:
                raise ValueError("'values' is empty")
        else:
            if self.min is None or self.max is None or not (math.isfinite(self.min) and math.isfinite(self.max)):
                raise ValueError(f"distribution {self.distribution} needs finite 'min' and 'max'")
            if self.min > self.max:
                raise ValueError(f"'min' ({self.min:g}) is above 'max' ({self.max:g})")
            if self.distribution == "log_uniform_values" and self.min <= 0:
                raise ValueError("log_uniform_values needs 'min' above 0")
        return self

    @property
    def choices(self) -> list[Any] | None:
        """The values a grid goes through; ``None`` for a continuous distribution."""
        if self.values is not None:
            return list(self.values)
        if self.distribution is None or self.distribution == "categorical":
            return [self.value]
        if self.distribution == "int_uniform":
            return list(range(int(self.min), int(self.max) + 1))  # type: ignore[arg-type]
        return None

    def sample(self, rng: random.Random) -> Any:
        if self.distribution == "uniform":
            return rng.uniform(self.min, self.max)  # type: ignore[arg-type]
        if self.distribution == "log_uniform_values":
            return math.exp(rng.uniform(math.log(self.min), math.log(self.max)))  # type: ignore[arg-type]
        if self.distribution == "int_uniform":
            return rng.randint(int(self.min), int(self.max))  # type: ignore[arg-type]
        return rng.choice(self.choices)  # type: ignore[arg-type]


class Metric(Strict):
    name: str
    goal: Literal["minimize", "maximize"] = "minimize"


class SweepConfig(Strict):
    """A sweep in W&B's shape, plus how its children run."""

    method: Literal["grid", "random"] = "grid"
    parameters: dict[str, Parameter]
    metric: Metric | None = None
    run_cap: int | None = Field(default=None, ge=1, le=MAX_RUNS)  # random: how many runs
    max_parallel: int | None = Field(default=None, ge=1)
    fail_fast: bool = False
    seed: int | None = None  # random: the same seed draws the same runs
    name: str | None = None

    @model_validator(mode="after")
    def _runs(self) -> SweepConfig:
        if not self.parameters:
            raise ValueError("parameters: give at least one parameter to sweep")
        for name in self.parameters:
            if not name.isidentifier():
                raise ValueError(f"parameters: {name!r} is not a valid parameter name (it becomes a Python variable)")
        if self.method == "grid":
            continuous = [n for n, p in self.parameters.items() if p.choices is None]
            if continuous:
                raise ValueError(f"parameters: {', '.join(continuous)} has a continuous distribution; a grid needs "
                                 "'values' (or use method: random)")
            count = math.prod(len(p.choices or []) for p in self.parameters.values())
            if count > MAX_RUNS:
                raise ValueError(f"parameters: the grid has {count} runs; a sweep has at most {MAX_RUNS}")
        elif self.run_cap is None:
            raise ValueError("run_cap: a random sweep needs the number of runs (run_cap, or --random N)")
        return self

    def runs(self) -> list[dict[str, Any]]:
        """Each child's parameters: the grid's product in order, or ``run_cap`` random draws."""
        if self.method == "grid":
            names = list(self.parameters)
            product = itertools.product(*(self.parameters[n].choices or [] for n in names))
            return [dict(zip(names, combo)) for combo in product]
        rng = random.Random(self.seed)
        return [{n: p.sample(rng) for n, p in self.parameters.items()} for _ in range(self.run_cap or 0)]


def load_sweep_config(path: str | Path) -> SweepConfig:
    """A sweep YAML (W&B's shape); ``SpecError`` naming the file, line and field."""
    import yaml

    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror or exc}", source=source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpecError(f"not YAML: {getattr(exc, 'problem', exc)}", source=source,
                        line=mark.line + 1 if mark else None) from None
    if not isinstance(data, dict):
        raise SpecError("a sweep file is a mapping (method, parameters, metric)", source=source)
    return validate(SweepConfig, data, source)


def parse_grid(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``--grid lr=0.1,0.01``: each value typed as ``-p`` types it."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name or not values:
            raise SpecError(f"--grid takes NAME=V1,V2,..., got {item!r}", field="parameters")
        out[name] = {"values": [param_value(v) for v in values.split(",")]}
    return out


def parse_range(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``--range lr=1e-4:1e-1:log`` (log-uniform), ``drop=0.1:0.5`` (uniform), ``bs=16:64:int`` (whole numbers)."""
    kinds = {"": "uniform", "lin": "uniform", "log": "log_uniform_values", "int": "int_uniform"}
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        parts = spec.split(":")
        if not sep or not name or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in kinds):
            raise SpecError(f"--range takes NAME=MIN:MAX[:lin|log|int], got {item!r}", field="parameters")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise SpecError(f"--range {item!r}: MIN and MAX must be numbers", field="parameters") from None
        out[name] = {"distribution": kinds[parts[2] if len(parts) == 3 else ""], "min": low, "max": high}
    return out


def sweep_table(sweep: Any, jobs: list[Any], metrics_of: Callable[[str], list[dict[str, Any]]]
                ) -> tuple[list[str], list[list[str]]]:
    """The header and one row per child: its id, the swept parameters, its state and the last value of each numeric
    metric it logged; best first when the sweep names a metric (its goal decides), children without it last."""
    swept = list((sweep.config.get("parameters") or {}).keys())
    last: dict[str, dict[str, Any]] = {}
    for job in jobs:
        values: dict[str, Any] = {}
        for record in metrics_of(job.id):
            values.update(record["data"])
        last[job.id] = values
    names = sorted({k for v in last.values() for k, x in v.items() if _number(x)})
    metric = sweep.metric
    if metric:
        names = [metric] + [n for n in names if n != metric]
        sign = -1 if sweep.goal == "maximize" else 1

        def rank(job: Any) -> tuple[int, float]:
            value = last[job.id].get(metric)
            return (0, sign * value) if _number(value) else (1, 0.0)

        jobs = sorted(jobs, key=rank)
    rows = [[job.id, *(_cell(job.spec.get("parameters", {}).get(p)) for p in swept), job.state,
             *(_cell(last[job.id].get(n)) for n in names)] for job in jobs]
    return ["JOB", *swept, "STATE", *names], rows


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)
