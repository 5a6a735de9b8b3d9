"""Job processes: started ahead of their job with the device prepared, then handed the job."""

from __future__ import annotations

import json
import time

from lrbs.worker.job_process import JobProcess, run_job
from tests.conftest import MINIMAL_SPEC

SPEC = json.dumps({**MINIMAL_SPEC, "lr_range": {"num_steps": 20, "thoroughness": "quick"}})


def run(standby: JobProcess | None):
    progress: list[dict] = []
    outcome = run_job(
        SPEC, dataset_path=None, plugin_modules=(), memory_headroom=0.1, memory_limit_bytes=8 * 2**30,
        on_progress=progress.append, should_stop=lambda: None, job_id="j1", standby=standby,
    )  # fmt: skip
    return outcome, progress


def test_a_standby_process_is_ready_before_its_job_and_runs_it():
    standby = JobProcess()
    assert standby.ready(timeout=60)
    assert standby.process.is_alive()  # waiting for its job, device prepared
    outcome, progress = run(standby)
    assert outcome.kind == "result" and outcome.result["recommendation"] is not None
    assert progress and not standby.process.is_alive()  # one process, one job


def test_without_a_standby_a_process_is_started_for_the_job():
    outcome, _ = run(None)
    assert outcome.kind == "result"


def test_a_standby_that_never_gets_a_job_is_stopped():
    standby = JobProcess()
    assert standby.ready(timeout=60)
    started = time.monotonic()
    standby.close()
    assert not standby.process.is_alive() and time.monotonic() - started < 5
