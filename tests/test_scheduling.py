"""A mixed fleet: each job's requirements against what each worker registered. A worker claims only jobs it can
run; a job no online worker can run says why, and fails after LRBS_UNSCHEDULABLE_SECONDS."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from lrbs.contract.job_spec import JobSpec
from lrbs.contract.resources import DeviceInfo, WorkerInfo
from lrbs.service import scheduling
from lrbs.service.app import create_app
from tests.conftest import AUTH, MINIMAL_SPEC

AUTO = {k: v for k, v in MINIMAL_SPEC.items() if k != "device"}


def info(*gpus: float, precisions=("fp32", "bf16"), modules=(), plugins=None) -> WorkerInfo:
    devices = [DeviceInfo(name="cpu", memory_gb=16)]
    devices += [DeviceInfo(name=f"cuda:{i}", model="H200", memory_gb=gb) for i, gb in enumerate(gpus)]
    return WorkerInfo(hostname="h", lrbs="x", torch="x", python="x", devices=devices,
                      precisions=list(precisions) + (["fp16"] if gpus else []), builtins={},
                      plugin_modules=list(modules), plugins=plugins or {})  # fmt: skip


def need(**spec) -> scheduling.Requirements:
    return scheduling.requirements(JobSpec.model_validate({**AUTO, **spec}))


def test_requirements_read_off_the_spec_and_what_each_worker_lacks():
    cpu, gpu = info(), info(80.0)
    assert scheduling.missing(need(device="cpu"), cpu) == [] and scheduling.missing(need(), gpu) == []
    assert scheduling.missing(need(device="cuda"), cpu) == ["CUDA"]
    assert need(precision="fp16").device == "cuda"  # fp16 trains with a GradScaler: CUDA only
    assert scheduling.missing(need(device="cuda:1"), gpu) == ["cuda:1"]
    assert scheduling.missing(need(device="cuda:1"), info(80.0, 80.0)) == []
    plugin = need(model={"source": "plugin", "name": "team_models.vision:net"},
                  optimizer={"source": "plugin", "name": "lion"})  # fmt: skip
    assert plugin.plugin_modules == ["team_models.vision"] and plugin.plugin_entry_points == {"optimizer": ["lion"]}
    assert scheduling.missing(plugin, info(modules=["team_models"], plugins={"optimizer": ["lion"]})) == []
    lacks = scheduling.missing(plugin, cpu)
    assert any("team_models.vision" in gap for gap in lacks) and any("'lion'" in gap for gap in lacks)
    big = scheduling.Requirements(memory_gb=40)
    assert scheduling.missing(big, info(80.0)) == []
    assert scheduling.missing(big, info(24.0)) == ["40.0 GB of GPU memory"]
    assert scheduling.missing(need(device="cuda"), None) == []  # an unregistered worker claims anything


def register(client, worker_id: str, worker: WorkerInfo) -> None:
    body = {"worker_id": worker_id, "info": worker.model_dump(mode="json")}
    assert client.post("/v1/worker/register", json=body, headers=AUTH).status_code == 204


def claim(client, worker_id: str) -> str | None:
    r = client.post("/v1/worker/claim", json={"worker_id": worker_id, "wait_seconds": 0}, headers=AUTH)
    return r.json()["job_id"] if r.status_code == 200 else None


def test_a_cpu_worker_skips_a_cuda_job_that_then_says_what_it_waits_for(client):
    register(client, "cpu-1", info())
    register(client, "cpu-2", info())
    gpu_job = client.post("/v1/jobs", json={**AUTO, "device": "cuda"}).json()
    cpu_job = client.post("/v1/jobs", json=MINIMAL_SPEC).json()
    assert gpu_job["waiting_for"] == "a worker with CUDA; online: 2 CPU workers"
    assert cpu_job["waiting_for"] is None

    assert claim(client, "cpu-1") == cpu_job["id"]  # the older CUDA job is left for a GPU worker
    assert claim(client, "cpu-2") is None
    listed = {j["id"]: j for j in client.get("/v1/jobs", params={"state": "queued"}).json()["jobs"]}
    assert listed[gpu_job["id"]]["waiting_for"] == "a worker with CUDA; online: 2 CPU workers"

    register(client, "gpu-1", info(80.0))
    assert client.get(f"/v1/jobs/{gpu_job['id']}").json()["waiting_for"] is None
    assert claim(client, "gpu-1") == gpu_job["id"]


def test_with_no_worker_online_a_job_waits_for_any(client):
    job = client.post("/v1/jobs", json=MINIMAL_SPEC).json()
    assert job["waiting_for"] == "any worker; online: none"


@pytest.fixture
def impatient(settings):
    settings.unschedulable_seconds, settings.reap_interval_seconds = 0.3, 0.1
    with TestClient(create_app(settings)) as c:
        yield c


def test_a_job_no_worker_can_run_fails_after_the_setting_saying_why(impatient):
    client = impatient
    register(client, "cpu-1", info())
    runnable = client.post("/v1/jobs", json=MINIMAL_SPEC).json()
    stuck = client.post("/v1/jobs", json={**AUTO, "precision": "fp16"}).json()
    deadline = time.monotonic() + 10
    while client.get(f"/v1/jobs/{stuck['id']}").json()["state"] == "queued" and time.monotonic() < deadline:
        time.sleep(0.1)
    failed = client.get(f"/v1/jobs/{stuck['id']}").json()
    assert failed["state"] == "failed" and failed["error"]["kind"] == "unschedulable", failed
    assert "LRBS_UNSCHEDULABLE_SECONDS" in failed["error"]["message"]
    assert "a worker with CUDA" in failed["error"]["message"] and "1 CPU worker" in failed["error"]["message"]
    assert client.get(f"/v1/jobs/{runnable['id']}").json()["state"] == "queued"  # a CPU worker can run it


def test_a_worker_busy_with_a_long_job_stays_online_through_its_heartbeats(client, sessions):
    """It makes no claims while it runs a job: its heartbeats keep it listed as online."""
    from datetime import timedelta

    from lrbs.service.queue import utcnow
    from lrbs.service.tables import WorkerRow

    register(client, "busy", info())
    client.post("/v1/jobs", json=MINIMAL_SPEC)
    lease = client.post("/v1/worker/claim", json={"worker_id": "busy", "wait_seconds": 0}, headers=AUTH).json()
    with sessions.begin() as session:  # as if its last claim was long ago
        session.get(WorkerRow, "busy").last_seen_at = utcnow() - timedelta(hours=1)
    assert not client.get("/v1/workers").json()["workers"][0]["online"]
    beat = {"lease_token": lease["lease_token"]}
    assert client.post(f"/v1/worker/jobs/{lease['job_id']}:heartbeat", json=beat, headers=AUTH).status_code == 200
    assert client.get("/v1/workers").json()["workers"][0]["online"]


@pytest.mark.parametrize("cache_seconds", [60.0, 0.0])
def test_a_replica_reuses_the_online_workers_it_read_until_one_comes_online_through_it(settings, cache_seconds):
    """LRBS_WORKER_LIST_CACHE_SECONDS: what a queued job waits for comes from the online workers this replica
    read, reused that long; a worker that registers through this replica shows at once, one that came online
    through another replica (here: written straight to the database) once the time is up (0: at once)."""
    from lrbs.service import worker_registry
    from lrbs.service.db import make_engine, make_sessionmaker, transaction

    settings.worker_list_cache_seconds = cache_seconds
    with TestClient(create_app(settings)) as c:
        job = c.post("/v1/jobs", json={**AUTO, "device": "cuda"}).json()
        assert job["waiting_for"] == "a worker with CUDA; online: none"
        engine = make_engine(settings.database_url)
        try:
            with transaction(make_sessionmaker(engine)) as session:  # as another replica would record it
                worker_registry.seen(session, settings, "cpu-elsewhere", info())
        finally:
            engine.dispose()
        elsewhere = c.get(f"/v1/jobs/{job['id']}").json()["waiting_for"]
        seen_at_once = "a worker with CUDA; online: 1 CPU worker"
        assert elsewhere == ("a worker with CUDA; online: none" if cache_seconds else seen_at_once)
        register(c, "gpu-here", info(80.0))
        assert c.get(f"/v1/jobs/{job['id']}").json()["waiting_for"] is None  # through this replica: at once


def test_a_submit_takes_no_connection_for_reads_while_the_replica_keeps_the_online_workers(settings):
    """No Idempotency-Key and the online workers in memory: a submit takes no connection for its reads, only
    for its insert (a PostgreSQL checkout is a ping, a round trip). With a key it reads for a replay first. It
    answers with the kept workers' waiting_for."""
    from sqlalchemy import event

    settings.worker_list_cache_seconds = 60.0
    with TestClient(create_app(settings)) as c:
        checkouts = []
        event.listen(c.app.state.sessions.kw["bind"].pool, "checkout", lambda *args: checkouts.append(1))

        def taken(headers: dict[str, str] | None = None) -> int:
            before = len(checkouts)
            response = c.post("/v1/jobs", json={**AUTO, "device": "cuda"}, headers=headers)
            assert response.status_code == 202 and response.json()["waiting_for"] == "a worker with CUDA; online: none"
            return len(checkouts) - before

        reading_workers = taken()
        assert taken() == reading_workers - 1  # the workers are kept now: no read
        assert taken({"Idempotency-Key": "k1"}) == reading_workers  # a replay is looked for
