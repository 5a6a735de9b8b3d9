"""What careless or hostile callers and broken workers send: each answered cleanly, nothing stored, nobody down.

Every test runs on SQLite and on PostgreSQL (the `client` fixture), since storage is where NaN, deep nesting
and long strings used to turn into 500s.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from lrbs.files import file_sha256
from lrbs.service import dataset_store
from lrbs.worker.runner import Worker
from tests.conftest import AUTH, MINIMAL_SPEC, WORKER_TOKEN

PROBLEM = "application/problem+json"


def post_json_text(client, path: str, text: str, headers=None):
    """Raw JSON text: Python's json module writes NaN and Infinity tokens, as some clients do."""
    return client.post(path, content=text.encode(), headers={"content-type": "application/json", **(headers or {})})


def spec_with(path: str, value) -> dict:
    spec = json.loads(json.dumps(MINIMAL_SPEC))
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return spec


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("lr_range.max_lr", float("inf"), "lr_range.max_lr"),
        ("lr_range.min_lr", float("nan"), "lr_range.min_lr"),
        ("lr_range.diverge_factor", float("inf"), "lr_range.diverge_factor"),
        ("dataset.params.noise", float("inf"), "params.noise"),
        ("grad_clip_norm", float("inf"), "grad_clip_norm"),
        ("memory_budget_gb", float("nan"), "memory_budget_gb"),
        ("optimizer.params.momentum", float("nan"), "optimizer"),
        ("dataset.validation_fraction", float("-inf"), "validation_fraction"),
    ],
)
def test_non_finite_numbers_in_a_spec_are_refused_naming_the_field(client, path, value, field):
    r = post_json_text(client, "/v1/jobs", json.dumps(spec_with(path, value)))
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
    fields = {e["field"] for e in r.json()["errors"]}
    assert any(f.startswith(path.split(".")[0]) and (field in f) for f in fields), fields
    assert client.get("/v1/jobs").json()["jobs"] == []  # nothing stored


def test_plugin_params_must_be_finite_and_shallow(client):
    plugin = {"source": "plugin", "name": "team.models:net"}
    r = post_json_text(
        client, "/v1/jobs", json.dumps({**MINIMAL_SPEC, "model": {**plugin, "params": {"a": [1, float("nan")]}}})
    )
    assert r.status_code == 422 and "finite numbers only" in r.text
    for depth in (40, 3000):  # past the params limit; past Python's own recursion limit
        deep = "[" * depth + "1" + "]" * depth
        text = json.dumps({**MINIMAL_SPEC, "model": {**plugin, "params": {"a": "DEEP"}}}).replace('"DEEP"', deep)
        r = post_json_text(client, "/v1/jobs", text)
        assert r.status_code in (400, 422) and r.headers["content-type"] == PROBLEM, r.text[:300]
    assert client.get("/v1/jobs").json()["jobs"] == []


def test_a_result_holding_nan_is_refused_and_the_job_keeps_its_lease(client):
    client.post("/v1/jobs", json=MINIMAL_SPEC)
    lease = client.post("/v1/worker/claim", json={"worker_id": "w", "wait_seconds": 0}, headers=AUTH).json()
    result = {
        "curve": {"lr": [0.1], "loss": [float("nan")], "smoothed_loss": [1.0]},
        "suggestions": {},
        "stop_reason": "completed",
        "steps_run": 1,
        "environment": {"device": "cpu", "torch": "x", "python": "x", "lrbs": "x"},
        "wall_time_s": 1.0,
    }
    body = json.dumps({"lease_token": lease["lease_token"], "result": result})
    r = post_json_text(client, f"/v1/worker/jobs/{lease['job_id']}:complete", body, AUTH)
    assert r.status_code == 422 and "curve.loss" in r.text
    assert client.get(f"/v1/jobs/{lease['job_id']}").json()["state"] == "running"


def live_worker(client) -> Worker:
    """A real Worker whose HTTP client is the test app's (an httpx.Client over the real app and database)."""
    worker = Worker("http://testserver", WORKER_TOKEN, worker_id="w", wait_seconds=0)
    worker.http = client
    client.headers.update(AUTH)
    return worker


def test_a_refused_result_fails_the_job_instead_of_leaving_it_to_run_again(client):
    job_id = client.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"]
    worker = live_worker(client)
    lease = worker.claim()
    bad = {"curve": {"lr": [], "loss": [], "smoothed_loss": []}, "suggestions": {}, "stop_reason": "nope"}
    worker._report(lease.job_id, lease.lease_token, ":complete", {"result": bad})
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "failed" and job["error"]["kind"] == "internal"
    assert "refused this job's result" in job["error"]["message"]


def test_a_stored_job_that_no_longer_validates_fails_alone(client, sessions):
    from sqlalchemy import update

    from lrbs.service.tables import JobRow

    bad = client.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"]
    good = client.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"]
    with sessions.begin() as session:  # a row written by an older release, say
        session.execute(update(JobRow).where(JobRow.id == bad).values(spec={"model": {"name": "gone"}}))
    lease = live_worker(client).claim()
    assert lease is not None and lease.job_id == good  # the next job is handed out instead
    with sessions() as session:
        row = session.get(JobRow, bad)
        assert row.state == "failed" and row.error["kind"] == "invalid_job"
        assert "no longer validates" in row.error["message"]


class UnreadableLease(BaseHTTPRequestHandler):
    """A real HTTP server that hands out a lease this worker cannot read, and records the reports."""

    reports: list[tuple[str, dict]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path == "/v1/worker/claim":
            payload = json.dumps({"job_id": "j1", "lease_token": "t1", "spec": {"model": 3}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
        else:
            UnreadableLease.reports.append((self.path, body))
            payload = b""
            self.send_response(204)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


def test_a_lease_the_worker_cannot_read_fails_that_job_and_the_worker_lives_on():
    server = ThreadingHTTPServer(("127.0.0.1", 0), UnreadableLease)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        worker = Worker(f"http://127.0.0.1:{server.server_address[1]}", "t", worker_id="w")
        assert worker.claim() is None
        (path, body), *_ = UnreadableLease.reports
        assert path == "/v1/worker/jobs/j1:fail" and body["kind"] == "invalid_job"
        assert body["lease_token"] == "t1" and "could not read the job" in body["message"]
    finally:
        server.shutdown()


def test_job_errors_carry_no_traceback_or_server_path(client):
    spec = {**MINIMAL_SPEC, "dataset": {"source": "upload", "id": "does-not-matter"}}
    job_id = client.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"]
    worker = live_worker(client)
    lease = worker.claim()
    lease.spec.lr_range.num_steps = 0  # a spec the job process cannot run: an internal error
    worker.run(lease)
    error = client.get(f"/v1/jobs/{job_id}").json()["error"]
    assert error["kind"] == "internal" and "Traceback" not in error["message"]
    assert "/work/" not in error["message"] and "site-packages" not in error["message"]
    assert f"under job {job_id}" in error["message"]
    assert spec  # the upload variant is covered by the dataset tests below


def test_a_non_ascii_bearer_token_is_401(client):
    r = client.post("/v1/worker/claim", json={"worker_id": "w"}, headers={"Authorization": "Bearer tökén".encode()})
    assert r.status_code == 401 and r.headers["content-type"] == PROBLEM


def test_a_deeply_nested_page_token_is_400(client):
    token = base64.urlsafe_b64encode(("[" * 20_000).encode()).decode()
    r = client.get("/v1/jobs", params={"page_token": token})
    assert r.status_code == 400 and "page_token" in r.json()["detail"]


def test_head_healthz(client):
    assert client.head("/healthz").status_code == 200


def test_cancelling_an_ended_job_is_409_every_time(client):
    job_id = client.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"]
    assert client.post(f"/v1/jobs/{job_id}:cancel").status_code == 200
    r = client.post(f"/v1/jobs/{job_id}:cancel")
    assert r.status_code == 409 and "already ended cancelled" in r.json()["detail"]


def test_a_cancel_accepted_while_running_wins_over_a_late_result(client):
    job_id = client.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"]
    lease = client.post("/v1/worker/claim", json={"worker_id": "w", "wait_seconds": 0}, headers=AUTH).json()
    assert client.post(f"/v1/jobs/{job_id}:cancel").json()["cancel_requested"] is True
    result = {
        "curve": {"lr": [0.1], "loss": [1.0], "smoothed_loss": [1.0]},
        "suggestions": {},
        "stop_reason": "completed",
        "steps_run": 1,
        "environment": {"device": "cpu", "torch": "x", "python": "x", "lrbs": "x"},
        "wall_time_s": 1.0,
    }
    body = {"lease_token": lease["lease_token"], "result": result}
    for _ in range(2):  # delivery is at-least-once: the repeat is a no-op
        assert client.post(f"/v1/worker/jobs/{job_id}:complete", json=body, headers=AUTH).status_code == 204
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "cancelled" and job["result"] is None


def test_a_target_column_name_over_300_characters_is_422(client):
    csv = ("a," + "t" * 301 + "\n1,0\n2,1\n").encode()
    r = client.post("/v1/datasets", files={"file": ("d.csv", csv)}, data={"target_column": "t" * 301})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert client.get("/v1/datasets").json()["datasets"] == []


def test_upload_errors_show_no_server_paths(client):
    r = client.post("/v1/datasets", files={"file": ("d.parquet", b"not parquet at all")})
    assert r.status_code == 422 and "Parquet" in r.json()["detail"]
    assert "/tmp" not in r.text and "incoming" not in r.text


def npz(n=64, seed=0) -> bytes:
    g = np.random.default_rng(seed)
    buf = io.BytesIO()
    np.savez(buf, x=g.normal(size=(n, 4)).astype(np.float32), y=(np.arange(n) % 2).astype(np.int64))
    return buf.getvalue()


def test_concurrent_identical_uploads_store_one_valid_file(settings, tmp_path):
    """The stored .npz must match the checksum every upload of those bytes recorded."""
    content = npz(4096)
    sources = []
    for i in range(6):
        path = tmp_path / f"copy{i}.npz"
        path.write_bytes(content)
        sources.append(path)
    sha = dataset_store.receive(io.BytesIO(content), settings)[1]

    def prepare(path: Path):
        return dataset_store.prepare(path, "d.npz", sha, len(content), None, settings)

    with ThreadPoolExecutor(6) as pool:
        rows = list(pool.map(prepare, sources))
    blob = dataset_store.blob_path(settings, sha)
    assert {row.data_sha256 for row in rows} == {file_sha256(blob)}
    assert not list(blob.parent.glob("*.part"))  # no staging file left behind


def test_a_missing_dataset_file_is_a_clear_404_for_workers(client, settings):
    dataset = client.post("/v1/datasets", files={"file": ("d.npz", npz())}).json()
    dataset_store.blob_path(settings, dataset["sha256"]).unlink()
    r = client.get(f"/v1/worker/datasets/{dataset['id']}", headers=AUTH)
    assert r.status_code == 404 and "missing from this service's data folder" in r.json()["detail"]


def test_a_damaged_cached_copy_is_fetched_again(client, tmp_path):
    dataset = client.post("/v1/datasets", files={"file": ("d.npz", npz())}).json()
    worker = live_worker(client)
    worker.cache_dir = tmp_path / "cache"
    sha = client.get(f"/v1/worker/datasets/{dataset['id']}", headers=AUTH).headers["x-content-sha256"]
    first = worker.fetch_dataset(dataset["id"], sha)
    first.write_bytes(first.read_bytes()[:100])  # truncated on disk
    again = worker.fetch_dataset(dataset["id"], sha)
    assert again == first and file_sha256(again) == sha
    other = npz(seed=1)
    again.write_bytes(other)  # a different, valid .npz in its place
    assert file_sha256(worker.fetch_dataset(dataset["id"], sha)) == sha


class FlakyService(BaseHTTPRequestHandler):
    """A real HTTP server that answers 503 to the first reports, then 204: a service restarting."""

    failures_left = 3
    received: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["content-length"]))
        FlakyService.received.append(self.path)
        if FlakyService.failures_left > 0:
            FlakyService.failures_left -= 1
            self.send_response(503)
        else:
            self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_reports_are_retried_through_5xx_until_accepted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        worker = Worker(f"http://127.0.0.1:{server.server_address[1]}", "t", worker_id="w")
        worker._report("job1", "lease1", ":complete", {"result": {}})
        assert FlakyService.received == ["/v1/worker/jobs/job1:complete"] * 4  # 3 × 503, then accepted
    finally:
        server.shutdown()


def chunks(total: int, size: int = 1 << 16):
    """A body with no Content-Length: sent as it is generated (chunked)."""
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def test_chunked_bodies_past_the_limit_are_413_on_every_endpoint(client, settings):
    r = client.post(
        "/v1/jobs", content=chunks(settings.max_spec_bytes + 10), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "LRBS_MAX_SPEC_BYTES" in r.json()["detail"]
    settings.max_result_mb = 0.01
    r = client.post(
        "/v1/worker/jobs/x:complete", content=chunks(20_000), headers={**AUTH, "content-type": "application/json"}
    )
    assert r.status_code == 413 and "LRBS_MAX_RESULT_MB" in r.json()["detail"]
    r = client.post("/v1/worker/jobs/x:heartbeat", content=chunks(settings.max_spec_bytes + 10), headers=AUTH)
    assert r.status_code == 413
    assert client.get("/v1/jobs").json()["jobs"] == []
