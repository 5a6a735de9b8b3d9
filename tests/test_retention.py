"""Deleting ended jobs, and retention: old ended jobs and the uploads no job needs go away by themselves."""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
from sqlalchemy import update

from lrbs.service import dataset_store, retention
from lrbs.service.db import transaction
from lrbs.service.queue import utcnow
from lrbs.service.tables import DatasetRow, JobRow
from tests.conftest import MINIMAL_SPEC


def npz(seed: int) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.random.default_rng(seed).normal(size=(32, 3)), y=np.arange(32) % 2)
    return buf.getvalue()


def test_only_ended_jobs_can_be_deleted(client):
    job_id = client.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"]
    r = client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 409 and "cancel it first" in r.json()["detail"]
    client.post(f"/v1/jobs/{job_id}:cancel")
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 404


def test_retention_removes_old_ended_jobs_and_unused_uploads(client, sessions, settings):
    settings.retention_days = 30
    old_job, new_job, running = (client.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"] for _ in range(3))
    for job_id in (old_job, new_job):
        client.post(f"/v1/jobs/{job_id}:cancel")
    unused = client.post("/v1/datasets", files={"file": ("a.npz", npz(0))}).json()
    used = client.post("/v1/datasets", files={"file": ("b.npz", npz(1))}).json()
    kept_by = client.post("/v1/jobs", json={**MINIMAL_SPEC, "dataset": {"source": "upload", "id": used["id"]}})
    assert kept_by.status_code == 202
    long_ago = utcnow() - timedelta(days=31)
    with transaction(sessions) as session:
        session.execute(update(JobRow).where(JobRow.id.in_([old_job, running])).values(finished_at=long_ago))
        session.execute(update(DatasetRow).values(created_at=long_ago))
    with transaction(sessions) as session:
        assert retention.purge(session, settings) == (1, 1)
    assert client.get(f"/v1/jobs/{old_job}").status_code == 404
    assert client.get(f"/v1/jobs/{new_job}").status_code == 200  # ended, but recently
    assert client.get(f"/v1/jobs/{running}").json()["state"] == "queued"  # not ended: never purged
    assert client.get(f"/v1/datasets/{unused['id']}").status_code == 404
    assert not dataset_store.blob_path(settings, unused["sha256"]).exists()
    assert client.get(f"/v1/datasets/{used['id']}").status_code == 200  # a job still refers to it
    settings.retention_days = None
    with transaction(sessions) as session:
        assert retention.purge(session, settings) == (0, 0)
