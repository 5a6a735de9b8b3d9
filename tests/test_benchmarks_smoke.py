"""The service benchmarks still start and print their tables (tiny runs; no timing is asserted)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from benchmarks import harness

SCRIPTS = ["load", "claim_latency", "fleet", "memory", "healthz_first_submit"]


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
