"""The service benchmarks still start and print their tables (tiny runs; no timing is asserted)."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import pytest

from benchmarks import harness

SCRIPTS = ["load", "claim_latency", "fleet", "memory", "healthz_first_submit", "scheduling_stall"]
SCRIPTS += ["lr_quality.long_warmup", "batch_size.warmup", "batch_size.long_trajectory"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    shown = subprocess.run([sys.executable, "-m", f"benchmarks.{script}", "--help"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "usage:" in shown.stdout


def test_percentile_and_table():
    values = list(range(1, 101))
    assert harness.percentile(values, 50) == 50
    assert harness.percentile(values, 99) == 99
    assert harness.percentile([7.0], 99) == 7.0
    assert harness.table(["a", "b"], [(1, 2)]).splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]


def test_the_warmup_verdict_tells_a_worse_final_loss_from_seed_noise():
    from benchmarks.batch_size.warmup import loss_check

    fixed = [1.559, 1.560, 1.562, 1.558, 1.561]
    worse = loss_check(
        [f + 0.015 + e for f, e in zip(fixed, [0.003, -0.002, 0.001, -0.004, 0.002], strict=True)], fixed
    )
    assert worse.worse_beyond_noise and worse.worse == 5 and 0 < worse.low < 0.015 < worse.high
    mixed = loss_check([f + e for f, e in zip(fixed, [0.01, -0.012, 0.004, -0.006, 0.002], strict=True)], fixed)
    assert not mixed.worse_beyond_noise and mixed.low < 0 < mixed.high and mixed.worse == 3
    assert loss_check([math.inf, *fixed[1:]], fixed).worse_beyond_noise  # a diverged run is worse


def test_synthetic_result_is_a_valid_result():
    from lrbs.contract.results import Result

    result = Result.model_validate(harness.synthetic_result(points=20, sweeps=2))
    assert result.curve is not None and len(result.curve.lr) == 20
    assert result.sweep_curves is not None and len(result.sweep_curves) == 2


@pytest.mark.slow
def test_memory_tiny_run():
    run = [sys.executable, "-m", "benchmarks.memory", "--databases", "sqlite", "--checkpoints", "2,4", "--plots", "1"]
    done = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| sqlite | 4 | 2 |" in done.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_load_tiny_run():
    run = [sys.executable, "-m", "benchmarks.load", "--databases", "sqlite", "--processes", "1", "--endpoints",
           "get-done,post", "--duration", "1", "--seed-jobs", "12", "--connections", "2", "--pause", "0"]  # fmt: skip
    done = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| POST /v1/jobs | sqlite | 1 |" in done.stdout


def test_scheduling_stall_reads_perfs_timehist():
    from benchmarks.scheduling_stall import longest_delays

    timehist = """\
           time    cpu  task name                       wait time  sch delay   run time
                        [tid/pid]                          (msec)     (msec)     (msec)
--------------- ------  ------------------------------  ---------  ---------  ---------
    1678.048126 [0000]  rcu_preempt[15]                     3.001   1110.574      0.010
    1678.061976 [0000]  postgres[12142]                  1527.608   1522.413      0.057
    1678.062161 [0000]  postgres[12094]                     1.000    900.246      0.020
    1678.070000 [0001]  lrbs[12120/12089]                   0.100   5000.000      0.300
    1678.080000 [0001]  kworker/u8:1-fl[35]                 0.100    120.977      0.030
"""
    assert longest_delays(timehist) == (1522.413, 1110.574)  # lrbs's own delays are not the database's


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_scheduling_stall_tiny_run():
    from tests.conftest import require_postgres

    require_postgres()
    run = [sys.executable, "-m", "benchmarks.scheduling_stall", "--rounds", "1", "--duration", "1"]
    done = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("| 1 |"))
    assert row.startswith("| 1 | on | shared |") or row.startswith("| 1 | off | shared |")  # the default sessions
    assert row.endswith("| — | — |")  # no perf asked for
    assert "rounds with a p99 over 100 ms" in done.stdout


def test_the_powerlaw_task_is_a_linear_regression_with_a_frozen_projection():
    import torch

    from benchmarks.batch_size.powerlaw import projected, regression

    x, y, x_val, y_val = regression(dim=32, n_train=20000, n_val=100, noise=0.5)
    assert x.shape == (20000, 32) and y.shape == (20000, 1) and x_val.shape == (100, 32) and y_val.shape == (100, 1)
    assert abs(float(y.var()) - (1 + 0.5**2)) < 0.1  # the teacher's signal variance is 1, plus the noise's
    variances = x.var(axis=0)
    assert (variances[:-1] > variances[1:]).mean() > 0.9  # a falling (power-law) spectrum
    model = projected((32,), width=64)
    assert [name for name, _ in model.named_parameters()] == ["head.weight", "head.bias"]  # the projection is frozen
    assert torch.equal(model.projection, projected((32,), width=64).projection)  # part of the task, not the seed
    assert model(torch.from_numpy(x[:5])).shape == (5, 1)


def test_the_held_out_tabular_sets_are_split_and_scaled():
    import numpy as np

    from benchmarks.lr_quality.sklearn_data import tabular

    x, y, x_val, y_val = tabular("wine")
    assert len(x) + len(x_val) == 178 and len(x_val) == 36 and y.dtype == np.int64 and set(y) == {0, 1, 2}
    whole = np.concatenate([x, x_val])
    assert np.allclose(whole.mean(axis=0), 0, atol=1e-5) and np.allclose(whole.std(axis=0), 1, atol=1e-4)
    x, y, _, _ = tabular("diabetes")
    assert y.shape == (len(x), 1) and abs(float(np.abs(x).max())) < 0.25  # scikit-learn's own small scaling
    with pytest.raises(ValueError, match="accepted: wine, breast_cancer, diabetes"):
        tabular("iris")
