"""Uploading datasets over HTTP and using them in jobs, on SQLite and PostgreSQL."""

import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import AUTH, MINIMAL_SPEC

PROBLEM = "application/problem+json"


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def classification(n=64, features=5, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    return npz_bytes(x=rng.normal(size=(n, features)).astype(np.float32), y=rng.integers(0, 3, n))


def upload(client, content: bytes, filename="data.npz", **form):
    return client.post("/v1/datasets", files={"file": (filename, content)}, data=form)


def test_npz_upload_describes_the_data_and_dedupes(client):
    r = upload(client, classification())
    assert r.status_code == 201, r.text
    ds = r.json()
    assert r.headers["location"] == f"/v1/datasets/{ds['id']}"
    assert ds["sha256"] == hashlib.sha256(classification()).hexdigest()
    assert ds["shapes"] == {"x": [64, 5], "y": [64]} and ds["dtypes"] == {"x": "float32", "y": "int64"}
    assert ds["shape"] == {"task": "classification", "input_shape": [5], "num_outputs": 3}
    again = upload(client, classification(), filename="renamed.npz")
    assert again.status_code == 200 and again.json()["id"] == ds["id"]
    assert client.get(f"/v1/datasets/{ds['id']}").json() == ds
    assert [d["id"] for d in client.get("/v1/datasets").json()["datasets"]] == [ds["id"]]


def test_csv_and_parquet_uploads(client):
    csv = b"a,b,label\n0.1,0.2,1.5\n0.3,0.4,2.5\n0.5,0.6,3.0\n"
    r = upload(client, csv, "table.csv", target_column="label")
    assert r.status_code == 201, r.text
    assert r.json()["shape"]["task"] == "regression" and r.json()["target_column"] == "label"
    table = pa.table({"f1": [0.0, 1.0, 2.0, 3.0], "f2": [1.0, 0.0, 1.0, 0.0], "target": [0, 1, 0, 1]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    r = upload(client, buf.getvalue(), "table.parquet")
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "parquet" and r.json()["shape"]["task"] == "classification"


def test_token_data_is_language_modelling(client):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, (32, 17))
    r = upload(client, npz_bytes(x=tokens[:, :-1], y=tokens[:, 1:]), "tokens.npz")
    assert r.json()["shape"] == {"task": "language_modeling", "input_shape": [16], "num_outputs": int(tokens.max()) + 1}


def test_bad_files_get_422_saying_what_is_accepted(client):
    pickled = npz_bytes(x=np.array([{"a": 1}, {"b": 2}], dtype=object), y=np.array([0, 1]))
    r = upload(client, pickled)
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM and "pickle" in r.json()["detail"]
    r = upload(client, b"a,target\n1,0\n2\n", "ragged.csv")
    assert r.status_code == 422 and "line 3" in r.json()["detail"]
    r = upload(client, npz_bytes(x=np.zeros((4, 2)), y=np.zeros(3, dtype=int)))
    assert r.status_code == 422
    r = upload(client, b"hello", "notes.txt")
    assert r.status_code == 422 and ".npz" in r.json()["detail"]
    assert client.get("/v1/datasets").json()["datasets"] == []  # nothing stored


def test_uploads_past_the_limit_get_413(client, settings):
    settings.max_upload_mb = 0.001  # about 1 KB
    big = classification(n=400)
    r = upload(client, big)
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
    assert "LRBS_MAX_UPLOAD_MB" in r.json()["detail"]


def test_jobs_on_an_upload_are_checked_against_its_shape(client):
    ds = upload(client, classification()).json()
    spec = {**MINIMAL_SPEC, "dataset": {"source": "upload", "id": ds["id"]}}
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["loss"] == "cross_entropy"  # inferred from the stored labels
    r = client.post("/v1/jobs", json={**spec, "model": {"name": "cnn"}})
    assert r.status_code == 422 and "needs image data" in r.json()["detail"]
    r = client.post("/v1/jobs", json={**spec, "dataset": {"source": "upload", "id": "missing"}})
    assert r.status_code == 422 and "POST /v1/datasets" in r.json()["detail"]


def test_delete_is_refused_while_a_job_needs_the_dataset(client):
    ds = upload(client, classification()).json()
    job = client.post("/v1/jobs", json={**MINIMAL_SPEC, "dataset": {"source": "upload", "id": ds["id"]}}).json()
    r = client.delete(f"/v1/datasets/{ds['id']}")
    assert r.status_code == 409 and "1 queued or running job" in r.json()["detail"]
    client.post(f"/v1/jobs/{job['id']}:cancel")
    assert client.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    assert client.get(f"/v1/datasets/{ds['id']}").status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 200  # the job's record stays


def test_workers_download_the_canonical_npz_with_its_checksum(client):
    ds = upload(client, b"a,b,target\n1,2,0\n3,4,1\n5,6,0\n", "t.csv").json()
    client.post("/v1/jobs", json={**MINIMAL_SPEC, "dataset": {"source": "upload", "id": ds["id"]}})
    lease = client.post("/v1/worker/claim", json={"worker_id": "w", "wait_seconds": 0}, headers=AUTH).json()
    assert client.get(f"/v1/worker/datasets/{ds['id']}").status_code == 401
    r = client.get(f"/v1/worker/datasets/{ds['id']}", headers=AUTH)
    assert hashlib.sha256(r.content).hexdigest() == r.headers["x-content-sha256"] == lease["dataset_sha256"]
    with np.load(io.BytesIO(r.content), allow_pickle=False) as npz:
        assert npz["x"].tolist() == [[1, 2], [3, 4], [5, 6]] and npz["y"].tolist() == [0, 1, 0]


def test_workers_are_listed_with_what_they_can_run(client):
    info = {
        "hostname": "gpu-7",
        "lrbs": "0.1.0",
        "torch": "2.13.0",
        "python": "3.11",
        "precisions": ["fp32"],
        "devices": [{"name": "cpu"}],
        "builtins": {"models": ["mlp"]},
        "plugin_modules": ["team"],
        "plugins": {"model": ["team-resnet"]},
    }
    assert (
        client.post("/v1/worker/register", json={"worker_id": "gpu-7", "info": info}, headers=AUTH).status_code == 204
    )
    job = client.post("/v1/jobs", json=MINIMAL_SPEC).json()
    client.post("/v1/worker/claim", json={"worker_id": "gpu-7", "wait_seconds": 0}, headers=AUTH)
    (worker,) = client.get("/v1/workers").json()["workers"]
    assert worker["id"] == "gpu-7" and worker["online"] and worker["running_job_id"] == job["id"]
    assert worker["info"]["plugins"] == {"model": ["team-resnet"]}
