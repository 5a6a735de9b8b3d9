"""The HTTP API as a client and a worker see it, on SQLite and PostgreSQL."""

import threading

from tests.conftest import AUTH, MINIMAL_SPEC

PROBLEM = "application/problem+json"


def submit(client, spec=MINIMAL_SPEC):
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 202, r.text
    return r


def test_submit_answers_202_with_location_and_the_job(client):
    r = submit(client)
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued" and job["progress"]["phase"] == "queued"
    assert job["spec"]["loss"] == "cross_entropy" and job["spec"]["lr_range"]["num_steps"] == 100
    assert client.get(r.headers["location"]).json() == job


def test_bad_spec_gets_problem_json_naming_the_field(client):
    r = client.post("/v1/jobs", json={**MINIMAL_SPEC, "lr_range": {"min_lr": 1, "max_lr": 0.5}})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == 422 and body["instance"] == "/v1/jobs"
    assert body["errors"][0]["field"] == "lr_range" and "must be below max_lr" in body["detail"]
    r = client.post("/v1/jobs", json={"model": {"name": "mlp"}})
    fields = {e["field"] for e in r.json()["errors"]}
    assert {"dataset", "optimizer"} <= fields
    r = client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert client.get("/v1/jobs").json()["jobs"] == []  # nothing was stored


def test_limits_and_size(client, settings):
    r = client.post("/v1/jobs", json={**MINIMAL_SPEC, "lr_range": {"num_steps": settings.max_lr_steps + 1}})
    assert r.status_code == 422 and "LRBS_MAX_LR_STEPS" in r.json()["detail"]
    r = client.post("/v1/jobs", json={**MINIMAL_SPEC, "padding": "x" * (settings.max_spec_bytes + 1)})
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM


def test_unknown_job_and_route_are_problems(client):
    r = client.get("/v1/jobs/nope")
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM and "nope" in r.json()["detail"]
    assert client.get("/v1/nothing").headers["content-type"] == PROBLEM


def test_list_pages_and_filters(client):
    ids = [submit(client).json()["id"] for _ in range(5)]
    client.post(f"/v1/jobs/{ids[1]}:cancel")
    page = client.get("/v1/jobs", params={"page_size": 2}).json()
    seen = [j["id"] for j in page["jobs"]]
    while page["next_page_token"]:
        page = client.get("/v1/jobs", params={"page_size": 2, "page_token": page["next_page_token"]}).json()
        seen += [j["id"] for j in page["jobs"]]
    assert seen == ids[::-1]
    cancelled = client.get("/v1/jobs", params={"state": "cancelled"}).json()["jobs"]
    assert [j["id"] for j in cancelled] == [ids[1]]
    r = client.get("/v1/jobs", params={"state": "sleeping"})
    assert r.status_code == 422 and "queued" in r.json()["detail"]
    r = client.get("/v1/jobs", params={"page_token": "garbage!"})
    assert r.status_code == 400 and "next_page_token" in r.json()["detail"]


def test_cancel_queued_then_conflict_when_ended(client):
    job_id = submit(client).json()["id"]
    r = client.post(f"/v1/jobs/{job_id}:cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert client.post(f"/v1/jobs/{job_id}:cancel").status_code == 409  # it has ended: nothing to cancel
    assert client.post("/v1/jobs/nope:cancel").status_code == 404


def test_worker_endpoints_need_the_token(client):
    r = client.post("/v1/worker/claim", json={"worker_id": "w", "wait_seconds": 0})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.post(
        "/v1/worker/claim", json={"worker_id": "w", "wait_seconds": 0}, headers={"Authorization": "Bearer wrong"}
    )
    assert r.status_code == 401


def test_worker_protocol_round_trip(client):
    assert client.post("/v1/worker/claim", json={"worker_id": "w", "wait_seconds": 0}, headers=AUTH).status_code == 204
    job_id = submit(client).json()["id"]
    lease = client.post("/v1/worker/claim", json={"worker_id": "w", "wait_seconds": 0}, headers=AUTH).json()
    assert lease["job_id"] == job_id and lease["spec"]["loss"] == "cross_entropy"
    token = lease["lease_token"]
    progress = {"phase": "lr_range", "step": 10, "total": 100, "fraction": 0.1, "lr": 0.003, "loss": 2.5}
    r = client.post(
        f"/v1/worker/jobs/{job_id}:heartbeat", json={"lease_token": token, "progress": progress}, headers=AUTH
    )
    assert r.json() == {"cancel_requested": False}
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "running" and job["progress"] == progress and job["worker_id"] == "w"
    r = client.post(f"/v1/worker/jobs/{job_id}:heartbeat", json={"lease_token": "stale"}, headers=AUTH)
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM
    r = client.post(
        f"/v1/worker/jobs/{job_id}:fail",
        json={"lease_token": token, "message": "worker shut down", "retryable": True},
        headers=AUTH,
    )
    assert r.status_code == 204
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"


def test_claim_long_polls_until_a_job_arrives(client):
    got = {}

    def wait_for_job():
        got["r"] = client.post("/v1/worker/claim", json={"worker_id": "w", "wait_seconds": 20}, headers=AUTH)

    waiter = threading.Thread(target=wait_for_job)
    waiter.start()
    job_id = submit(client).json()["id"]
    waiter.join(timeout=25)
    assert got["r"].status_code == 200 and got["r"].json()["job_id"] == job_id


def test_openapi_docs_show_the_spec_examples(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/v1/jobs/{job_id}:cancel" in schema["paths"]
    assert schema["components"]["schemas"]["JobSpec"]["examples"][0]["optimizer"]["name"] == "sgd"
    assert client.get("/readyz").json() == {"status": "ready"}
