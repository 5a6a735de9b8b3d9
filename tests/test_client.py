"""The Python client and `apply`, against the real app and database (and a real server end to end)."""

from __future__ import annotations

import pytest
import torch

from lrbs import Client, JobCancelled, LrbsError, apply
from lrbs.contract.job_spec import JobSpec
from lrbs.schedules import SCHEDULES
from lrbs.worker.advise import advise
from tests.conftest import AUTH, MINIMAL_SPEC

QUICK = {**MINIMAL_SPEC, "lr_range": {"num_steps": 30, "thoroughness": "quick"}}


def test_submit_get_list_cancel_and_typed_errors(client):
    lrbs = Client(http=client)
    jobs = [lrbs.submit(QUICK) for _ in range(3)]
    assert lrbs.get(jobs[0].id).spec.lr_range.num_steps == 30
    assert [j.id for j in lrbs.list(page_size=2)] == [j.id for j in reversed(jobs)]  # newest first, every page
    assert lrbs.cancel(jobs[0]).state == "cancelled"
    with pytest.raises(JobCancelled):
        lrbs.wait(jobs[0])
    with pytest.raises(LrbsError) as refused:
        lrbs.submit({**QUICK, "lr_range": {"num_steps": 1}})
    assert refused.value.status == 422 and refused.value.errors[0]["field"] == "lr_range.num_steps"
    with pytest.raises(LrbsError, match="404"):
        lrbs.get("nope")
    with pytest.raises(TimeoutError):
        lrbs.wait(jobs[1], timeout=0.1, poll_seconds=0.05)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_apply_builds_what_the_snippet_prints(schedule):
    spec = JobSpec.model_validate({**QUICK, "schedule": schedule, "train_steps": 120,
                                   "optimizer": {"name": "adamw", "params": {"weight_decay": 0.01}}})  # fmt: skip
    rec = advise(spec).recommendation
    assert rec is not None and rec.optimizer_class == "torch.optim.AdamW"

    def lrs(make) -> list[float]:
        model = torch.nn.Linear(3, 2)
        optimizer, scheduler = make(model)
        out = []
        for _ in range(120):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    def from_snippet(model):
        scope = {"torch": torch, "model": model}
        exec(rec.snippet, scope)
        return scope["optimizer"], scope["scheduler"]

    optimizer, _ = apply(rec, torch.nn.Linear(3, 2).parameters())
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["weight_decay"] == 0.01
    assert lrs(lambda m: apply(rec, m.parameters())) == pytest.approx(lrs(from_snippet), rel=2e-3)


def test_the_same_idempotency_key_and_body_replay_the_first_job(client):
    first = client.post("/v1/jobs", json=QUICK, headers={"Idempotency-Key": "k1"})
    again = client.post("/v1/jobs", json=QUICK, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["location"] == first.headers["location"]
    other = client.post("/v1/jobs", json={**QUICK, "seed": 3}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["detail"]
    assert len(client.get("/v1/jobs").json()["jobs"]) == 1
    assert client.post("/v1/jobs", json=QUICK, headers={"Idempotency-Key": "k2"}).json()["id"] != first.json()["id"]


def test_an_idempotency_digest_leaves_out_defaults_so_upgrades_keep_retries_matching():
    from lrbs.contract.job_spec import JobSpec
    from lrbs.service.idempotency import body_digest

    sent = JobSpec.model_validate(QUICK)
    explicit = JobSpec.model_validate({**QUICK, "world_size": 1})
    assert body_digest(sent) != body_digest(explicit)  # what was sent counts ...
    assert "world_size" not in sent.model_dump_json(exclude_unset=True)  # ... a default that was not sent does not
    assert body_digest(sent) == body_digest(JobSpec.model_validate(QUICK))


def test_concurrent_submits_with_one_key_make_one_job(client):
    import threading

    barrier, ids = threading.Barrier(4), []

    def submit() -> None:
        barrier.wait()
        ids.append(client.post("/v1/jobs", json=QUICK, headers={"Idempotency-Key": "same"}).json()["id"])

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(client.get("/v1/jobs").json()["jobs"]) == 1


def test_the_client_retries_a_submit_with_one_idempotency_key():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    keys: list[str] = []

    class Down(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["content-length"]))
            keys.append(self.headers["idempotency-key"])
            self.send_response(503)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Down)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(LrbsError, match="503"):
            Client(url=f"http://127.0.0.1:{server.server_address[1]}").submit(QUICK)
    finally:
        server.shutdown()
    assert len(keys) == 5 and len(set(keys)) == 1  # every retry carried the same key


def test_names_labels_and_the_summary_view(client, sessions):
    from lrbs.contract.results import Curve, Environment, Result

    lrbs = Client(http=client)
    vision = lrbs.submit({**QUICK, "name": "resnet sweep", "labels": {"team": "vision", "run": "3"}})
    lrbs.submit({**QUICK, "labels": {"team": "nlp"}})
    assert [j.id for j in lrbs.list(labels={"team": "vision"})] == [vision.id]
    assert [j.id for j in lrbs.list(labels={"team": "vision", "run": "4"})] == []
    assert lrbs.get(vision).spec.name == "resnet sweep"
    r = client.get("/v1/jobs", params={"label": "no-colon"})
    assert r.status_code == 422 and "key:value" in r.json()["detail"]
    bad = client.post("/v1/jobs", json={**QUICK, "labels": {f"k{i}": "v" for i in range(17)}})
    assert bad.status_code == 422  # at most 16 labels

    lease = client.post("/v1/worker/claim", json={"worker_id": "w", "wait_seconds": 0}, headers=AUTH).json()
    sweep = Curve(lr=[0.1] * 500, loss=[1.0] * 500, smoothed_loss=[1.0] * 500)
    result = Result(
        curve=sweep, sweep_curves=[sweep, sweep], suggestions={},
        stop_reason="completed", steps_run=500, wall_time_s=1.0,
        environment=Environment(device="cpu", torch="x", python="x", lrbs="x"),
    )  # fmt: skip
    body = {"lease_token": lease["lease_token"], "result": result.model_dump(mode="json")}
    assert client.post(f"/v1/worker/jobs/{lease['job_id']}:complete", json=body, headers=AUTH).status_code == 204
    full = client.get("/v1/jobs", params={"state": "succeeded"})
    summary = client.get("/v1/jobs", params={"state": "succeeded", "view": "summary"})
    assert summary.json()["jobs"][0]["result"]["curve"] is None
    assert summary.json()["jobs"][0]["result"]["sweep_curves"] is None
    assert full.json()["jobs"][0]["result"]["curve"]["lr"] == [0.1] * 500
    assert len(full.json()["jobs"][0]["result"]["sweep_curves"]) == 2
    assert len(summary.content) < len(full.content) / 3
    every = client.get("/v1/jobs").json()  # the queued jobs too: the summary differs only by the curves
    for job in every["jobs"]:
        if job["result"]:
            job["result"].update(curve=None, sweep_curves=None)
    assert client.get("/v1/jobs", params={"view": "summary"}).json() == every


def test_the_cli_shows_each_batch_candidates_time_steps_and_samples():
    from lrbs.client_cli import candidate_table
    from lrbs.contract.results import BatchCandidate

    candidates = [
        BatchCandidate(batch_size=16, fits=True, samples_per_s=2166.2, lr=0.00223, relative_time_to_target=1.0,
                       relative_steps_to_target=1.0, relative_samples_to_target=1.0),
        BatchCandidate(batch_size=32, fits=True, samples_per_s=2456.4, lr=0.00315, relative_time_to_target=1.135,
                       relative_steps_to_target=0.643, relative_samples_to_target=1.286),
        BatchCandidate(batch_size=4096, fits=False, note="over 90% of the memory budget"),
    ]  # fmt: skip
    header, sixteen, thirty_two, too_big = candidate_table(candidates, chosen=16)
    assert header.split() == ["batch", "fits", "peak", "MiB", "samples/s", "lr", "time×", "steps×", "samples×"]
    assert sixteen.split() == ["*16", "yes", "-", "2166", "0.00223", "1.00", "1.00", "1.00"]
    assert thirty_two.split() == ["32", "yes", "-", "2456", "0.00315", "1.14", "0.64", "1.29"]
    assert too_big.split() == ["4096", "no", "-", "-", "-", "-", "-", "-"]
    assert len({len(line) for line in (header, sixteen, thirty_two, too_big)}) == 1  # aligned columns
