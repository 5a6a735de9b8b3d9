"""/metrics, request ids, JSON logs with request and job ids, and per-phase times."""

from __future__ import annotations

import json
import time

import pytest

from lrbs.contract.resources import Progress
from lrbs.contract.results import Curve, Environment, Result
from lrbs.worker.job import PhaseClock
from tests.conftest import AUTH, MINIMAL_SPEC
from tests.live import service, sqlite_url, wait_for
from tests.test_scheduling import info, register


def metric(text: str, name: str) -> float:
    """The value of one sample line, e.g. 'lrbs_jobs{state="queued"}'."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in:\n{text}")


def test_metrics_count_jobs_workers_requests_queue_wait_and_phases(client):
    register(client, "cpu-1", info())
    job = client.post("/v1/jobs", json=MINIMAL_SPEC).json()
    client.post("/v1/jobs", json=MINIMAL_SPEC)
    client.get(f"/v1/jobs/{job['id']}")
    lease = client.post("/v1/worker/claim", json={"worker_id": "cpu-1", "wait_seconds": 0}, headers=AUTH).json()
    result = Result(
        curve=Curve(lr=[0.1], loss=[1.0], smoothed_loss=[1.0]), suggestions={}, stop_reason="completed",
        steps_run=1, wall_time_s=1.0, environment=Environment(device="cpu", torch="x", python="x", lrbs="x"),
        phase_seconds={"setup": 0.2, "lr_range": 1.5},
    )  # fmt: skip
    body = {"lease_token": lease["lease_token"], "result": result.model_dump(mode="json")}
    for _ in range(2):  # a repeated report (at-least-once delivery) is counted once
        assert client.post(f"/v1/worker/jobs/{lease['job_id']}:complete", json=body, headers=AUTH).status_code == 204

    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert metric(text, 'lrbs_jobs{state="succeeded"}') == 1 and metric(text, 'lrbs_jobs{state="queued"}') == 1
    assert metric(text, "lrbs_queue_depth") == 1
    assert metric(text, 'lrbs_workers_online{device_kind="cpu"}') == 1
    assert metric(text, 'lrbs_workers_online{device_kind="cuda"}') == 0
    assert metric(text, "lrbs_queue_wait_seconds_count") == 1
    assert metric(text, 'lrbs_job_phase_seconds_sum{phase="lr_range"}') == 1.5
    assert metric(text, 'lrbs_job_phase_seconds_count{phase="setup"}') == 1
    # latency by route template (not by job id), method and status
    get_one = 'lrbs_http_request_duration_seconds_count{method="GET",route="/v1/jobs/{job_id}",status="200"}'
    assert metric(text, get_one) == 1
    assert metric(text, 'lrbs_http_request_duration_seconds_count{method="POST",route="/v1/jobs",status="202"}') == 2
    client.get("/no/such/page")
    assert 'route="unmatched"' in client.get("/metrics").text
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_request_ids_are_echoed_or_made(client):
    given = client.get("/healthz", headers={"X-Request-ID": "pipeline-42.a"})
    assert given.headers["x-request-id"] == "pipeline-42.a"
    made = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert made.headers["x-request-id"] != "bad id with spaces" and len(made.headers["x-request-id"]) == 16


def test_phase_clock_times_each_phase_from_its_first_report():
    seen: list[str] = []
    clock = PhaseClock(lambda p: seen.append(p.phase))
    for phase in ("setup", "lr_range", "lr_range", "confirm", "lr_range"):
        clock(Progress(phase=phase))
        time.sleep(0.01)
    totals = clock.totals()
    assert seen == ["setup", "lr_range", "lr_range", "confirm", "lr_range"]
    assert set(totals) == {"setup", "lr_range", "confirm"}
    assert totals["lr_range"] >= 0.03 and totals["setup"] >= 0.01  # lr_range twice: 2 sleeps, then 1 more


@pytest.mark.slow
@pytest.mark.timeout(600)  # seconds when the machine is free; minutes when CI shares its 2 cores
def test_json_logs_carry_the_request_id_and_the_job_id_in_service_and_worker(tmp_path):
    spec = {**MINIMAL_SPEC, "lr_range": {"thoroughness": "quick"}}
    with service(sqlite_url(tmp_path), tmp_path, log_format="json") as http:
        job = http.post("/v1/jobs", json=spec, headers={"X-Request-ID": "submit-1"}).json()
        assert wait_for(http, job["id"], timeout=500)["state"] == "succeeded"
        http.get("/metrics")
    lines = [line for line in (tmp_path / "service.log").read_text().splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]
    submit = [e for e in entries if e.get("logger") == "lrbs.access" and e.get("request_id") == "submit-1"]
    assert submit and submit[0]["route"] == "/v1/jobs" and submit[0]["status"] == 202
    about_job = [e for e in entries if e.get("job_id") == job["id"]]
    assert {e["logger"] for e in about_job} >= {"lrbs.access", "lrbs.worker"}  # the service's lines and the worker's
    assert any("succeeded" in e["message"] for e in about_job if e["logger"] == "lrbs.worker")
    assert all(e.get("request_id") for e in entries if e.get("logger") == "lrbs.access")
