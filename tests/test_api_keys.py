"""Teams and keys: each key sees only what it created, an admin sees all, workers' tokens are not keys.

On SQLite and PostgreSQL, with keys made by the real `lrbs keys` command on the same database.
"""

from __future__ import annotations

import io
import threading

import numpy as np
from click.testing import CliRunner

from lrbs.cli import main
from lrbs.service import api_keys
from lrbs.service.db import transaction
from tests.conftest import AUTH, MINIMAL_SPEC

PROBLEM = "application/problem+json"


def create_key(monkeypatch, settings, name: str, admin: bool = False) -> dict[str, str]:
    monkeypatch.setenv("LRBS_DATABASE_URL", settings.database_url)
    args = ["keys", "create", "--name", name] + (["--admin"] if admin else [])
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == 0, outcome.output
    key = outcome.stdout.strip()
    assert key.startswith("lrbs_")
    return {"Authorization": f"Bearer {key}"}


def npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.random.default_rng(0).normal(size=(64, 4)), y=np.arange(64) % 2)
    return buf.getvalue()


def test_without_keys_the_api_is_open_and_with_one_it_needs_one(client, settings, monkeypatch):
    assert client.get("/v1/jobs").status_code == 200
    team = create_key(monkeypatch, settings, "team-a")
    for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/datasets"), ("GET", "/v1/workers")]:
        r = client.request(method, path, json=MINIMAL_SPEC if method == "POST" else None)
        assert r.status_code == 401 and r.headers["content-type"] == PROBLEM and "lrbs keys create" in r.text
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer lrbs_nope_nope"}).status_code == 401
    assert client.get("/v1/jobs", headers=AUTH).status_code == 401  # a worker token is not an API key
    assert client.get("/v1/jobs", headers=team).status_code == 200
    assert client.get("/healthz").status_code == 200  # probes and docs stay open
    assert client.get("/openapi.json").status_code == 200


def test_a_key_sees_only_its_own_jobs_and_datasets(client, settings, monkeypatch):
    a = create_key(monkeypatch, settings, "team-a")
    b = create_key(monkeypatch, settings, "team-b")
    admin = create_key(monkeypatch, settings, "ops", admin=True)
    job_a = client.post("/v1/jobs", json=MINIMAL_SPEC, headers=a).json()["id"]
    job_b = client.post("/v1/jobs", json=MINIMAL_SPEC, headers=b).json()["id"]
    data_a = client.post("/v1/datasets", files={"file": ("d.npz", npz())}, headers=a).json()
    data_b = client.post("/v1/datasets", files={"file": ("d.npz", npz())}, headers=b).json()
    assert data_a["id"] != data_b["id"]  # the same bytes: a dataset each

    assert [j["id"] for j in client.get("/v1/jobs", headers=a).json()["jobs"]] == [job_a]
    assert [d["id"] for d in client.get("/v1/datasets", headers=b).json()["datasets"]] == [data_b["id"]]
    for method, path in [
        ("GET", f"/v1/jobs/{job_b}"),
        ("POST", f"/v1/jobs/{job_b}:cancel"),
        ("GET", f"/v1/datasets/{data_b['id']}"),
        ("DELETE", f"/v1/datasets/{data_b['id']}"),
    ]:
        r = client.request(method, path, headers=a)
        assert r.status_code == 404, (method, path, r.text)
    spec_on_b = {**MINIMAL_SPEC, "dataset": {"source": "upload", "id": data_b["id"]}}
    assert client.post("/v1/jobs", json=spec_on_b, headers=a).status_code == 422  # not a's to use
    assert client.get(f"/v1/jobs/{job_b}", headers=b).json()["state"] == "queued"  # nothing changed

    everything = client.get("/v1/jobs", headers=admin).json()["jobs"]
    assert {j["id"] for j in everything} == {job_a, job_b}
    assert client.post(f"/v1/jobs/{job_b}:cancel", headers=admin).status_code == 200
    assert client.delete(f"/v1/datasets/{data_a['id']}", headers=a).status_code == 204
    assert client.get(f"/v1/datasets/{data_b['id']}", headers=b).status_code == 200  # b's copy and file remain
    assert client.get(f"/v1/worker/datasets/{data_b['id']}", headers=AUTH).status_code == 200


def test_a_revoked_key_gets_401(client, settings, monkeypatch):
    a = create_key(monkeypatch, settings, "team-a")
    create_key(monkeypatch, settings, "team-b")  # keys remain, so the API stays closed
    outcome = CliRunner().invoke(main, ["keys", "revoke", "team-a"])
    assert outcome.exit_code == 0 and "revoked" in outcome.output
    assert client.get("/v1/jobs", headers=a).status_code == 401
    listing = CliRunner().invoke(main, ["keys", "list"]).output
    assert "team-a" in listing and "revoked" in listing and "lrbs_" not in listing  # never the key itself


def test_per_key_limits_on_active_jobs_and_stored_bytes(client, settings, monkeypatch):
    a = create_key(monkeypatch, settings, "team-a")
    b = create_key(monkeypatch, settings, "team-b")
    settings.max_active_jobs_per_key = 2
    for _ in range(2):
        assert client.post("/v1/jobs", json=MINIMAL_SPEC, headers=a).status_code == 202
    r = client.post("/v1/jobs", json=MINIMAL_SPEC, headers=a)
    assert r.status_code == 429 and r.headers["retry-after"] and "LRBS_MAX_ACTIVE_JOBS_PER_KEY" in r.json()["detail"]
    assert client.post("/v1/jobs", json=MINIMAL_SPEC, headers=b).status_code == 202  # another key is not held back
    settings.max_stored_mb_per_key = len(npz()) * 1.5 / 2**20
    assert client.post("/v1/datasets", files={"file": ("d.npz", npz())}, headers=a).status_code == 201
    other = io.BytesIO()
    np.savez(other, x=np.ones((64, 4)), y=np.arange(64) % 2)
    r = client.post("/v1/datasets", files={"file": ("e.npz", other.getvalue())}, headers=a)
    assert r.status_code == 429 and "LRBS_MAX_STORED_MB_PER_KEY" in r.json()["detail"]


def test_serve_refuses_a_public_address_without_a_key(settings, monkeypatch):
    monkeypatch.setenv("LRBS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("LRBS_AUTO_MIGRATE", "1")
    outcome = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--workers", "0"])
    assert outcome.exit_code != 0 and "lrbs keys create" in outcome.output


def test_deleting_a_dataset_and_submitting_a_job_on_it_never_interleave(client, sessions):
    """Racing a delete against a submit: one wins cleanly (409 for the delete, or 422 for the submit)."""
    for _ in range(10):
        dataset = client.post("/v1/datasets", files={"file": ("d.npz", npz())}).json()
        spec = {**MINIMAL_SPEC, "dataset": {"source": "upload", "id": dataset["id"]}}
        answers: dict[str, int] = {}
        barrier = threading.Barrier(2)

        def submit(answers=answers, spec=spec, barrier=barrier) -> None:
            barrier.wait()
            answers["submit"] = client.post("/v1/jobs", json=spec).status_code

        def delete(answers=answers, dataset=dataset, barrier=barrier) -> None:
            barrier.wait()
            answers["delete"] = client.delete(f"/v1/datasets/{dataset['id']}").status_code

        threads = [threading.Thread(target=submit), threading.Thread(target=delete)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(answers.values()) in ([202, 409], [204, 422]), answers
        for job in client.get("/v1/jobs", params={"state": "queued"}).json()["jobs"]:
            assert client.get(f"/v1/datasets/{job['spec']['dataset']['id']}").status_code == 200
            client.post(f"/v1/jobs/{job['id']}:cancel")
        client.delete(f"/v1/datasets/{dataset['id']}")


def test_keys_are_stored_hashed(sessions):
    with transaction(sessions) as session:
        row, plain = api_keys.create(session, "team-x")
    assert plain not in (row.key_sha256, row.id) and len(row.key_sha256) == 64
