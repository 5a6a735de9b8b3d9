"""GET /v1/jobs/{id}/events: state and progress as Server-Sent Events, resumable, ending with the final state;
and the client's `wait`, which follows them."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from httpx_sse import connect_sse

from lrbs import Client, JobCancelled
from lrbs.contract.results import Curve, Environment, Result
from tests.conftest import AUTH, MINIMAL_SPEC
from tests.live import service, sqlite_url

QUICK = {**MINIMAL_SPEC, "lr_range": {"num_steps": 30, "thoroughness": "quick"}}


@pytest.fixture
def fast_client(client):
    client.app.state.settings.events_poll_seconds = 0.02
    return client


def events(client, job_id: str, count: int, **headers: str) -> list[tuple[str, dict, str]]:
    """The first `count` events of the job's stream (or all of them, if it ends first)."""
    seen = []
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events", headers=headers) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for sse in source.iter_sse():
            if sse.data:
                seen.append((sse.event, json.loads(sse.data), sse.id))
            if len(seen) == count or sse.event == "end":
                break
    return seen


def finish(client, lease: dict) -> None:
    result = Result(
        curve=Curve(lr=[0.1], loss=[1.0], smoothed_loss=[1.0]), suggestions={}, stop_reason="completed",
        steps_run=1, wall_time_s=1.0, environment=Environment(device="cpu", torch="x", python="x", lrbs="x"),
    )  # fmt: skip
    body = {"lease_token": lease["lease_token"], "result": result.model_dump(mode="json")}
    assert client.post(f"/v1/worker/jobs/{lease['job_id']}:complete", json=body, headers=AUTH).status_code == 204


def test_a_job_streams_its_states_and_progress_then_ends(fast_client):
    client = fast_client
    job = client.post("/v1/jobs", json=QUICK).json()
    progress = {"phase": "lr_range", "step": 10, "total": 30, "fraction": 1 / 3, "lr": 0.01, "loss": 2.25}

    def worker() -> None:  # what a worker does, while the stream below is open
        lease = client.post("/v1/worker/claim", json={"worker_id": "w", "wait_seconds": 0}, headers=AUTH).json()
        started.wait(5)
        beat = {"lease_token": lease["lease_token"], "progress": progress}
        client.post(f"/v1/worker/jobs/{job['id']}:heartbeat", json=beat, headers=AUTH)
        beat_seen.wait(5)
        finish(client, lease)

    started, beat_seen = threading.Event(), threading.Event()
    seen = []
    thread = threading.Thread(target=worker)
    thread.start()
    with connect_sse(client, "GET", f"/v1/jobs/{job['id']}/events") as source:
        for sse in source.iter_sse():
            if not sse.data:
                continue
            seen.append((sse.event, json.loads(sse.data)))
            if seen[-1][1]["state"] == "running":  # the heartbeat waits for this: a separate event of its own
                started.set()
            if sse.event == "progress":
                beat_seen.set()
    thread.join()

    kinds = [kind for kind, _ in seen]
    states = [data["state"] for _, data in seen]
    assert kinds[0] == "state" and kinds[-1] == "end", kinds
    assert states[-1] == "succeeded" and "running" in states
    assert seen[kinds.index("progress")][1]["progress"] == progress  # lr and the smoothed loss included
    assert len(seen) == len({json.dumps(d, sort_keys=True) for _, d in seen})  # nothing sent twice


def test_last_event_id_resumes_without_repeating(fast_client):
    client = fast_client
    job = client.post("/v1/jobs", json=QUICK).json()
    [(kind, data, first_id)] = events(client, job["id"], 1)
    assert (kind, data["state"]) == ("state", "queued")

    # Resumed from that id: the unchanged job sends nothing until it changes; then its end.
    threading.Timer(0.3, lambda: client.post(f"/v1/jobs/{job['id']}:cancel")).start()
    resumed = events(client, job["id"], 5, **{"Last-Event-ID": first_id})
    assert [(kind, data["state"]) for kind, data, _ in resumed] == [("end", "cancelled")]
    # An ended job always answers with its end, whatever id the client had.
    again = events(client, job["id"], 5, **{"Last-Event-ID": resumed[0][2]})
    assert [kind for kind, _, _ in again] == ["end"]


def test_an_unknown_job_is_a_404_problem(client):
    r = client.get("/v1/jobs/nope/events")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert "nope" in r.json()["detail"]


@pytest.mark.slow
@pytest.mark.timeout(600)  # a minute when the machine is free; more when CI shares its 2 cores
def test_wait_follows_the_stream_of_a_real_job(tmp_path):
    """Client.wait against a live service and worker: progress arrives over the stream (with the range test's LR
    and loss), and the job is read once, at its end, instead of polled."""
    with service(sqlite_url(tmp_path), tmp_path) as http:
        paths: list[str] = []
        lrbs = Client(url=f"http://127.0.0.1:{http.port}")
        lrbs.http.event_hooks["request"].append(lambda request: paths.append(request.url.path))
        # long enough (a few seconds) for heartbeats to carry range-test progress
        job = lrbs.submit({**QUICK, "lr_range": {"num_steps": 4000, "max_lr": 1e-3, "thoroughness": "quick"}})
        reports = []
        done = lrbs.wait(job, timeout=500, on_progress=reports.append)
    assert done.state == "succeeded"
    assert any(p.phase == "lr_range" and p.lr is not None and p.loss is not None for p in reports)
    assert paths.count(f"/v1/jobs/{job.id}/events") >= 1
    assert paths.count(f"/v1/jobs/{job.id}") == 1  # the final read, no polling
    assert [p.phase for p in reports].count("done") == 1  # the end event's, not again after the final read


def test_wait_falls_back_to_polling_where_no_stream_comes(fast_client):
    """A proxy that answers the stream with something else (here: a plain JSON body) still lets wait finish."""
    client = fast_client

    def no_stream(request: httpx.Request):
        if request.url.path.endswith("/events"):
            return httpx.Response(200, json={"not": "a stream"})
        return None

    lrbs = Client(http=client)
    job = lrbs.submit(QUICK)
    lrbs.cancel(job)
    original = client.send

    def send(request, **kwargs):
        return no_stream(request) or original(request, **kwargs)

    client.send = send
    try:
        with pytest.raises(JobCancelled):
            lrbs.wait(job, timeout=10)
    finally:
        client.send = original


def test_a_worker_sends_each_new_phase_at_once(client, monkeypatch):
    """A phase shorter than the heartbeat interval still reaches watchers: a new phase is sent without waiting."""
    from types import SimpleNamespace

    from lrbs.contract.resources import Progress
    from lrbs.contract.worker_messages import Lease
    from lrbs.worker import runner

    monkeypatch.setattr(runner, "HEARTBEAT_SECONDS", 60.0)
    job = client.post("/v1/jobs", json=QUICK).json()
    claimed = client.post("/v1/worker/claim", json={"worker_id": "w", "wait_seconds": 0}, headers=AUTH).json()
    client.headers.update(AUTH)
    beat = runner.Heartbeat(SimpleNamespace(http=client), Lease.model_validate(claimed))

    def progress_seen() -> dict | None:
        return client.get(f"/v1/jobs/{job['id']}").json()["progress"]

    beat.start()
    try:
        beat.report(Progress(phase="lr_range", step=1, total=30))
        deadline = threading.Event()
        for _ in range(100):
            if (progress_seen() or {}).get("phase") == "lr_range":
                break
            deadline.wait(0.05)
        assert progress_seen()["step"] == 1
        beat.report(Progress(phase="lr_range", step=2, total=30))  # the same phase waits for the next beat
        deadline.wait(0.5)
        assert progress_seen()["step"] == 1
    finally:
        beat.halt()
