"""Sweeps: W&B's sweep shape and the --grid/--range options expanded into runs; real sweeps of a real notebook on an
embedded store through the CLI (the table best first, max-parallel, fail-fast, show, cancel, a child rerun)."""

from __future__ import annotations

import json
import math
import sqlite3
import statistics
from pathlib import Path

import pytest

from jupyter_launch.spec import SpecError, validate
from jupyter_launch.sweep import SweepConfig, load_sweep_config, parse_grid, parse_range

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
SWEEP_NB = str(NOTEBOOKS / "sweep.ipynb")


# ------------------------------------------------------------------ the sweep's shape

def test_a_grid_is_every_combination_in_order_and_fixed_values_stay():
    config = validate(SweepConfig, {"parameters": {**parse_grid(["lr=0.1,0.01", "opt=adam,sgd"]),
                                                   "epochs": {"value": 3}}})
    assert config.runs() == [{"lr": 0.1, "opt": "adam", "epochs": 3}, {"lr": 0.1, "opt": "sgd", "epochs": 3},
                             {"lr": 0.01, "opt": "adam", "epochs": 3}, {"lr": 0.01, "opt": "sgd", "epochs": 3}]


def test_random_draws_stay_in_their_ranges_and_a_seed_draws_the_same_runs():
    parameters = parse_range(["lr=1e-4:1e-1:log", "dropout=0.1:0.5", "batch=16:64:int"])
    config = validate(SweepConfig, {"method": "random", "run_cap": 200, "seed": 7, "parameters": parameters})
    runs = config.runs()
    assert len(runs) == 200 and runs == config.runs()
    assert all(1e-4 <= r["lr"] <= 1e-1 and 0.1 <= r["dropout"] <= 0.5 and 16 <= r["batch"] <= 64 for r in runs)
    assert all(isinstance(r["batch"], int) for r in runs)
    below = sum(r["lr"] < 1e-2 for r in runs)  # log-uniform: two of the three decades lie below 1e-2
    assert 0.5 < below / 200 < 0.85
    assert math.isclose(statistics.mean(r["dropout"] for r in runs), 0.3, abs_tol=0.05)


def test_a_wandb_sweep_file_loads_and_its_errors_name_the_file_line_and_field(tmp_path):
    good = tmp_path / "sweep.yaml"
    good.write_text("method: grid\nmetric:\n  name: loss\n  goal: minimize\nparameters:\n"
                    "  lr:\n    values: [0.1, 0.01]\n  epochs:\n    value: 2\n")
    config = load_sweep_config(good)
    assert (config.metric.name, config.metric.goal, len(config.runs())) == ("loss", "minimize", 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: grid\nparameters:\n  lr:\n    distribution: log_uniform_values\n    min: 0.0001\n"
                   "    max: 0.1\n")
    with pytest.raises(SpecError) as err:
        load_sweep_config(bad)
    assert str(err.value).startswith(f"{bad}:") and "lr has a continuous distribution" in str(err.value)
    for text, words in (("method: bayes\nparameters: {lr: {values: [1]}}\n", "method"),
                        ("parameters: {lr: {min: 1}}\n", "parameters.lr"),
                        ("method: random\nparameters: {lr: {values: [1]}}\n", "run_cap"),
                        ("parameters: {lr: {distribution: uniform, min: 2, max: 1}}\nmethod: random\nrun_cap: 2\n",
                         "above 'max'")):
        bad.write_text(text)
        with pytest.raises(SpecError) as err:
            load_sweep_config(bad)
        assert str(bad) in str(err.value) and words in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("option, parse", [("lr", parse_grid), ("lr=", parse_grid), ("lr=1", parse_range),
                                           ("lr=1:2:cube", parse_range), ("lr=a:b", parse_range)])
def test_bad_grid_and_range_options_name_the_option(option, parse):
    with pytest.raises(SpecError, match="--grid|--range"):
        parse([option])


# ------------------------------------------------------------------ real sweeps through the CLI

def sweep_rows(stdout: str) -> list[list[str]]:
    lines = stdout.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("JOB"))
    return [line.split() for line in lines[start:]]


def test_a_grid_sweep_waits_and_prints_its_table_best_first_with_at_most_k_running(cli, launch_home):
    proc = cli("sweep", SWEEP_NB, "--grid", "lr=0.1,0.01", "--grid", "epochs=2,3", "--max-parallel", "2",
               "--metric", "loss", "--wait", timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = sweep_rows(proc.stdout)
    assert rows[0] == ["JOB", "lr", "epochs", "STATE", "loss", "accuracy"]
    assert [(r[1], r[2], r[3], r[4]) for r in rows[1:]] == [
        ("0.01", "2", "succeeded", "0.02"), ("0.01", "3", "succeeded", "0.03"), ("0.1", "2", "succeeded", "0.2"),
        ("0.1", "3", "succeeded", "0.3")]
    db = sqlite3.connect(launch_home / "launch.db")
    spans = db.execute("select started_at, finished_at from jobs where parent_id is not null").fetchall()
    db.close()
    # never more than two of its jobs between their start and their end at one moment
    assert max(sum(s <= t < f for s, f in spans) for t, _ in spans) <= 2
    sweep_id = proc.stderr.split("sweep ")[1].split()[0]
    shown = cli("sweep", "show", sweep_id, check=True).stdout
    assert "4 job(s), metric loss (minimize); 4 succeeded" in shown
    assert sweep_rows(shown) == rows
    rerun = cli("rerun", rows[-1][0], "--follow", check=True, timeout=180)  # a child is a plain job
    again = json.loads(cli("show", rerun.stdout.splitlines()[0], "--json", check=True).stdout)
    assert (again["state"], again["parent_id"], again["rerun_of"]) == ("succeeded", sweep_id, rows[-1][0])


def test_a_failed_job_stops_a_fail_fast_sweep_and_not_another(cli, launch_home):
    stopped = cli("sweep", SWEEP_NB, "--grid", "lr=5,0.1,0.2", "--max-parallel", "1", "--fail-fast", "--wait",
                  timeout=300)
    assert stopped.returncode == 1, stopped.stderr
    assert [r[2] for r in sweep_rows(stopped.stdout)[1:]] == ["failed", "cancelled", "cancelled"]
    went_on = cli("sweep", SWEEP_NB, "--grid", "lr=5,0.1", "--max-parallel", "1", "--metric", "accuracy", "--goal",
                  "maximize", "--wait", timeout=300)
    assert went_on.returncode == 1, went_on.stderr
    assert [(r[1], r[2]) for r in sweep_rows(went_on.stdout)[1:]] == [("0.1", "succeeded"), ("5", "failed")]


def test_a_sweep_file_in_wandb_shape_runs_random_draws_and_cancel_stops_what_is_left(cli, launch_home, tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text("method: random\nrun_cap: 5\nseed: 3\nmetric: {name: loss, goal: minimize}\nparameters:\n"
                      "  lr: {distribution: log_uniform_values, min: 0.001, max: 0.1}\n  epochs: {values: [1, 2]}\n")
    proc = cli("sweep", SWEEP_NB, "--config", str(config), "--name", "search", check=True)
    sweep_id = proc.stdout.strip()
    shown = cli("sweep", "show", sweep_id, check=True).stdout
    rows = sweep_rows(shown)[1:]
    assert len(rows) == 5 and {r[3] for r in rows} == {"queued"}
    assert all(0.001 <= float(r[1]) <= 0.1 and r[2] in ("1", "2") for r in rows)
    cancelled = cli("sweep", "cancel", sweep_id, check=True).stdout
    assert "5 job(s) cancelled or asked to stop, 5 in all" in cancelled
    assert {r[3] for r in sweep_rows(cli("sweep", "show", sweep_id, check=True).stdout)[1:]} == {"cancelled"}


@pytest.mark.parametrize("args, message", [
    (["--grid", "lr"], "--grid takes NAME=V1,V2"),
    (["--range", "lr=1:2"], "run_cap: a random sweep needs the number of runs"),
    ([], "sweep needs parameters"),
    (["--grid", "lr=1,2", "--queue", "nope"], "unknown queue 'nope'"),
])
def test_a_bad_sweep_is_one_line_with_exit_code_2(cli, launch_home, args, message):
    proc = cli("sweep", SWEEP_NB, *args)
    assert proc.returncode == 2, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("jupyter launch: error:")]
    assert len(error) == 1 and message in error[0], proc.stderr
