"""A real uvicorn server, real worker processes and real PyTorch: what a user sees over HTTP."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.conftest import MINIMAL_SPEC, WORKER_TOKEN
from tests.live import process, service, sqlite_url, wait_for, wait_for_progress, worker

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]  # real uvicorn servers and worker processes


def test_a_folder_holding_worker_code_cannot_replace_the_embedded_worker(tmp_path):
    """`lrbs serve` started where a worker.py or an lrbs/ folder lies still runs lrbs's own worker."""
    project = tmp_path / "project"
    (project / "lrbs" / "worker").mkdir(parents=True)
    for decoy in ("worker.py", "lrbs/__init__.py", "lrbs/worker/__init__.py", "lrbs/worker/__main__.py"):
        (project / decoy).write_text("raise SystemExit('a decoy from the current folder was imported')\n")
    with service(sqlite_url(tmp_path), tmp_path, cwd=project) as http:
        job = wait_for(http, http.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"], timeout=90)
    assert job["state"] == "succeeded", (tmp_path / "service.log").read_text()[-3000:]


def test_default_spec_gets_a_recommendation_in_the_falling_region_and_survives_a_restart(tmp_path):
    url = sqlite_url(tmp_path)
    with service(url, tmp_path) as http:
        r = http.post("/v1/jobs", json=MINIMAL_SPEC)
        assert r.status_code == 202
        job = wait_for(http, r.json()["id"])
    assert job["state"] == "succeeded", job
    result = job["result"]
    rec = result["recommendation"]
    assert rec["schedule"] == "one_cycle" and rec["max_lr"] == rec["lr"]
    assert rec["base_lr"] == pytest.approx(rec["lr"] / rec["div_factor"])
    curve = result["curve"]
    lrs, smoothed = curve["lr"], curve["smoothed_loss"]
    i = min(range(len(lrs)), key=lambda k: abs(lrs[k] - rec["lr"]))
    lowest = smoothed.index(min(smoothed))
    # falling region: below where the curve started, and at or before its minimum
    assert smoothed[i] < smoothed[0] and i <= lowest, (rec, lrs[lowest])
    assert set(result["suggestions"]) == {"lowest", "steepest", "valley", "minimum", "slide"}
    assert result["sweeps"] == 3 and rec["lr_low"] <= rec["lr"] <= rec["lr_high"] and rec["snippet"]
    assert result["environment"]["device"] == "cpu"

    with service(url, tmp_path, workers=0) as http:  # a restart keeps every job and result
        assert http.get(f"/v1/jobs/{job['id']}").json() == job


def test_embedded_workers_split_the_cores_between_them(tmp_path):
    """Two workers on one machine would each take every core and slow each other down: `lrbs serve --workers 2`
    gives each half (the job's environment says how many threads it ran with)."""
    with service(sqlite_url(tmp_path), tmp_path, workers=2) as http:
        job = wait_for(http, http.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["environment"]["cpu_threads"] == max(1, (os.cpu_count() or 1) // 2)  # threads_each(2)


def test_cancel_a_running_job(tmp_path):
    long_job = {
        **MINIMAL_SPEC,
        "model": {"name": "mlp", "params": {"hidden": [512, 512]}},
        "lr_range": {"num_steps": 10_000, "max_lr": 1e-3},
    }
    with service(sqlite_url(tmp_path), tmp_path) as http:
        job_id = http.post("/v1/jobs", json=long_job).json()["id"]
        wait_for_progress(http, job_id)
        assert http.post(f"/v1/jobs/{job_id}:cancel").json()["cancel_requested"] is True
        job = wait_for(http, job_id)
    assert job["state"] == "cancelled" and job["progress"]["step"] < 10_000


def test_two_workers_never_run_the_same_job(database_url, tmp_path):
    with (
        service(database_url, tmp_path, workers=0) as http,
        worker(http.port, tmp_path, "a"),
        worker(http.port, tmp_path, "b"),
    ):
        ids = [http.post("/v1/jobs", json={**MINIMAL_SPEC, "seed": i}).json()["id"] for i in range(6)]
        jobs = [wait_for(http, job_id) for job_id in ids]
    assert all(j["state"] == "succeeded" for j in jobs), jobs
    assert all(j["attempts"] == 1 for j in jobs)  # claimed exactly once each
    assert {j["worker_id"] for j in jobs} <= {"a", "b"}


@pytest.mark.timeout(600)
def test_a_killed_worker_loses_no_job(tmp_path):
    slow = {
        **MINIMAL_SPEC,
        "model": {"name": "mlp", "params": {"hidden": [256, 256]}},
        "lr_range": {"num_steps": 1000, "max_lr": 1e-3, "batch_size": 32},  # 3 sweeps: long enough to kill mid-run
    }
    with service(sqlite_url(tmp_path), tmp_path, workers=0, lease_seconds="3", reap_interval_seconds="0.5") as http:
        with worker(http.port, tmp_path, "doomed") as doomed:
            job_id = http.post("/v1/jobs", json=slow).json()["id"]
            wait_for_progress(http, job_id)
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
        with worker(http.port, tmp_path, "rescuer"):
            job = wait_for(http, job_id, timeout=400)  # minutes when CI shares its 2 cores
    assert job["state"] == "succeeded" and job["attempts"] == 2 and job["worker_id"] == "rescuer"


SLOW_JOB = {
    **MINIMAL_SPEC,
    "model": {"name": "mlp", "params": {"hidden": [256, 256]}},
    "lr_range": {"num_steps": 5000, "max_lr": 1e-3, "batch_size": 32},
}


def test_sigterm_hands_the_running_job_back(tmp_path):
    with service(sqlite_url(tmp_path), tmp_path, workers=0) as http:
        with worker(http.port, tmp_path, "leaving") as leaving:
            job_id = http.post("/v1/jobs", json=SLOW_JOB).json()["id"]
            wait_for_progress(http, job_id)
            leaving.send_signal(signal.SIGTERM)
            assert leaving.wait(timeout=30) == 0
        job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "queued" and job["attempts"] == 1  # back in the queue for the next worker
    assert "shut down" in job["error"]["message"]


def test_sigterm_to_lrbs_serve_hands_back_the_embedded_workers_job_and_leaves_no_orphan(tmp_path):
    """The service stops handing out jobs, its embedded worker hands its running job back while the API still
    answers it, and only then does the service exit: the job is queued for the next worker, not left running."""
    url = sqlite_url(tmp_path)
    with service(url, tmp_path) as http:
        job_id = http.post("/v1/jobs", json=SLOW_JOB).json()["id"]
        wait_for_progress(http, job_id)
        embedded = [pid for pid, command in children_of(http.pid) if "lrbs.worker" in command]
        assert embedded
        os.kill(http.pid, signal.SIGTERM)
        deadline = time.monotonic() + 40
        while Path(f"/proc/{http.pid}").exists() and time.monotonic() < deadline:
            if Path(f"/proc/{http.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break  # exited; the test harness reaps it
            time.sleep(0.1)
        assert time.monotonic() < deadline, "lrbs serve did not exit after SIGTERM"
    for pid in embedded:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
    with service(url, tmp_path, workers=0) as http:
        job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "queued" and job["attempts"] == 1, job
    assert "shut down" in job["error"]["message"]


def test_a_job_past_the_run_time_limit_fails_with_the_setting_named(tmp_path):
    with service(sqlite_url(tmp_path), tmp_path, max_run_seconds="1") as http:
        job = wait_for(http, http.post("/v1/jobs", json=SLOW_JOB).json()["id"])
    assert job["state"] == "failed" and "LRBS_MAX_RUN_SECONDS" in job["error"]["message"]


def test_a_plugin_model_on_an_uploaded_dataset(tmp_path, plugin_site):
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (3, 6))
    y = rng.integers(0, 3, 400)
    buf = io.BytesIO()
    np.savez(buf, x=(centers[y] + rng.normal(size=(400, 6))).astype(np.float32), y=y)
    mark = tmp_path / "evil-imported"
    with service(sqlite_url(tmp_path), tmp_path, workers=0) as http:
        env = {
            "LRBS_WORKER_TOKEN": WORKER_TOKEN,
            "PYTHONPATH": str(plugin_site),
            "LRBS_PLUGIN_MODULES": "lrbs_test_plugins",
            "LRBS_CACHE_DIR": str(tmp_path / "cache"),
            "LRBS_TEST_EVIL_MARK": str(mark),
        }
        args = ["-m", "lrbs.worker", "--url", f"http://127.0.0.1:{http.port}", "--worker-id", "team", "--wait", "5"]
        with process(args, env, tmp_path / "team.log"):
            dataset = http.post("/v1/datasets", files={"file": ("blobs.npz", buf.getvalue())}).json()
            spec = {
                "model": {"source": "plugin", "name": "team-mlp", "params": {"hidden": 16}},
                "dataset": {"source": "upload", "id": dataset["id"]},
                "optimizer": {"name": "adam"},
                "device": "cpu",  # the tests assume the CPU: auto picks a GPU where one is
                "lr_range": {"num_steps": 60, "batch_size": 32},
                "train_steps": 100,  # confirmation trainings, when the sweeps disagree, stay short
            }
            ok = wait_for(http, http.post("/v1/jobs", json=spec).json()["id"], timeout=300)
            evil = {**spec, "model": {"source": "plugin", "name": "lrbs_test_evil:model"}}
            refused_id = http.post("/v1/jobs", json=evil).json()["id"]
            time.sleep(3)  # a few claims: the worker, which does not allow that module, leaves the job queued
            refused = http.get(f"/v1/jobs/{refused_id}").json()
            (worker,) = http.get("/v1/workers").json()["workers"]
    assert ok["state"] == "succeeded", ok
    assert ok["result"]["recommendation"]["lr"] > 0
    assert refused["state"] == "queued" and refused["attempts"] == 0, refused
    assert "plugin module lrbs_test_evil allowed (LRBS_PLUGIN_MODULES)" in refused["waiting_for"]
    assert not mark.exists()  # the refused module was never imported
    assert list((tmp_path / "cache").glob("*.npz"))  # fetched once, kept by hash
    assert worker["id"] == "team" and worker["info"]["plugins"]["model"] == ["team-mlp"]


def test_batch_size_advice_over_http(tmp_path):
    spec = {
        **MINIMAL_SPEC,
        "batch_sizes": {"auto": True, "min": 16, "max": 128},
        "target_effective_batch": 256,
        "lr_range": {"batch_size": 32, "thoroughness": "quick"},
    }
    with service(sqlite_url(tmp_path), tmp_path) as http:
        r = http.post("/v1/jobs", json={**spec, "batch_sizes": {"auto": True, "min": 64, "max": 8}})
        assert r.status_code == 422 and "must not exceed" in r.json()["detail"]
        job = wait_for(http, http.post("/v1/jobs", json=spec).json()["id"])
    assert job["state"] == "succeeded", job
    advice = job["result"]["batch_advice"]
    assert [c["batch_size"] for c in advice["candidates"]] == [16, 32, 64, 128]
    assert advice["batch_size"] in (16, 32, 64, 128) and advice["grad_accumulation_steps"] >= 2
    assert advice["reason"] and advice["noise_scale"]["measurements"] > 0


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_oversized_chunked_bodies_are_cut_off_while_streaming(tmp_path):
    """100 MB sent chunked, with no Content-Length, to a JSON endpoint and to the upload endpoint: each gets
    413 and the service's peak memory grows by a small fraction of what was sent."""

    def body(total: int, head: bytes = b"", size: int = 1 << 20):
        yield head
        for _ in range(total // size):
            yield b"x" * size

    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.npz"\r\n\r\n'
    requests = [
        ("/v1/jobs", b"", "application/json"),
        ("/v1/datasets", part, "multipart/form-data; boundary=b"),
    ]
    with service(sqlite_url(tmp_path), tmp_path, workers=0, max_upload_mb="4") as http:
        http.get("/v1/jobs")
        before = peak_rss_mb(http.pid)
        for path, head, kind in requests:
            try:
                r = http.post(path, content=body(100 << 20, head), headers={"content-type": kind})
                assert r.status_code == 413, r.text
            except httpx.TransportError:
                pass  # the service may close the connection while the client is still sending: also a refusal
        assert http.get("/healthz").status_code == 200
        grown = peak_rss_mb(http.pid) - before
    assert grown < 30, f"the service grew by {grown:.0f} MB while refusing 200 MB"


def test_a_worker_gone_during_its_long_poll_is_handed_nothing(tmp_path):
    """Killed while its claim long-polls, a worker must not be given the next job: with one attempt allowed,
    the job still runs, on the worker that is alive."""
    with service(sqlite_url(tmp_path), tmp_path, workers=0, max_attempts="1") as http:
        with worker(http.port, tmp_path, "doomed") as doomed:
            deadline = time.monotonic() + 60
            while not any(w["id"] == "doomed" for w in http.get("/v1/workers").json()["workers"]):
                assert time.monotonic() < deadline, "the worker never connected"
                time.sleep(0.2)
            time.sleep(1.0)  # inside its long-poll now
            doomed.kill()
            doomed.wait()
        job_id = http.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"]
        time.sleep(2.0)
        assert http.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
        with worker(http.port, tmp_path, "alive"):
            job = wait_for(http, job_id)
    assert job["state"] == "succeeded" and job["attempts"] == 1 and job["worker_id"] == "alive"


def test_jobs_that_exhaust_memory_or_never_finish_a_step_leave_their_worker_running(tmp_path, plugin_site):
    """A job past the memory ceiling fails at once with that reason (no retry); a job stuck inside a step is
    cancelled within 5 s; the same worker process then runs a normal job. A built-in model that lrbs can size
    as too big for the worker is not even claimed: it says what it waits for."""
    # 8192² × 4 B is 256 MiB a layer: weights, gradients and momentum of these layers pass a 1 GB ceiling. As a
    # plugin it cannot be sized before it runs, so the worker claims it and its memory watchdog stops it.
    hog = {**MINIMAL_SPEC, "model": {"source": "plugin", "name": "lrbs_test_plugins.models:hog"}}
    sized_hog = {**MINIMAL_SPEC, "model": {"name": "mlp", "params": {"hidden": [8192, 8192, 8192]}}}
    stuck = {**MINIMAL_SPEC, "model": {"source": "plugin", "name": "lrbs_test_plugins.models:stuck"}}
    env = {
        "LRBS_WORKER_TOKEN": WORKER_TOKEN,
        "PYTHONPATH": str(plugin_site),
        "LRBS_PLUGIN_MODULES": "lrbs_test_plugins",
        "LRBS_JOB_MEMORY_GB": "1",
    }
    with service(sqlite_url(tmp_path), tmp_path, workers=0) as http:
        args = ["-m", "lrbs.worker", "--url", f"http://127.0.0.1:{http.port}", "--worker-id", "w", "--wait", "5"]
        with process(args, env, tmp_path / "w.log") as worker_process:
            job = wait_for(http, http.post("/v1/jobs", json=hog).json()["id"])
            assert job["state"] == "failed" and job["attempts"] == 1, job
            assert job["error"]["kind"] == "out_of_memory" and "LRBS_JOB_MEMORY_GB" in job["error"]["message"]

            stuck_id = http.post("/v1/jobs", json=stuck).json()["id"]
            wait_for(http, stuck_id, states=("running",))
            time.sleep(3)  # well inside its first forward pass
            asked = time.monotonic()
            http.post(f"/v1/jobs/{stuck_id}:cancel")
            job = wait_for(http, stuck_id, timeout=30)
            assert job["state"] == "cancelled" and time.monotonic() - asked < 5

            job = wait_for(http, http.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"])
            assert job["state"] == "succeeded" and job["worker_id"] == "w"
            assert worker_process.poll() is None  # the same worker process, alive throughout

            refused = http.post("/v1/jobs", json=sized_hog)  # the worker has registered its 1 GB ceiling
            assert refused.status_code == 422 and "GB" in refused.json()["detail"], refused.text


def children_of(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append((int(entry.name), cmdline))
    return found


def test_lrbs_serve_restarts_an_embedded_worker_that_dies(tmp_path):
    with service(sqlite_url(tmp_path), tmp_path) as http:
        deadline = time.monotonic() + 60
        while not (embedded := [p for p, cmd in children_of(http.pid) if "embedded-0" in cmd]):
            assert time.monotonic() < deadline, "no embedded worker"
            time.sleep(0.2)
        os.kill(embedded[0], signal.SIGKILL)
        job = wait_for(http, http.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"], timeout=90)
        assert job["state"] == "succeeded" and job["worker_id"] == "embedded-0"
        assert [p for p, cmd in children_of(http.pid) if "embedded-0" in cmd] != embedded  # a new process
    assert "embedded worker 0 exited" in (tmp_path / "service.log").read_text()


def test_a_pipeline_gets_and_applies_advice_in_three_lines(tmp_path):
    from lrbs import Client, apply

    with service(sqlite_url(tmp_path), tmp_path) as http:
        lrbs = Client(url=f"http://127.0.0.1:{http.port}")
        job = lrbs.wait(lrbs.submit({**MINIMAL_SPEC, "schedule": "cosine", "train_steps": 50}), timeout=120)
        model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        optimizer, scheduler = apply(job.result.recommendation, model.parameters())
    assert job.state == "succeeded" and optimizer.param_groups[0]["lr"] > 0
    for _ in range(3):
        optimizer.step()
        scheduler.step()


def test_the_cli_submits_waits_and_reports_with_exit_codes(tmp_path):
    lrbs = [str(Path(sys.executable).parent / "lrbs")]
    spec = tmp_path / "spec.yaml"
    spec.write_text(  # a range test of a second or more: the event stream reports phases it sees (every 0.5 s)
        "model: {name: mlp, params: {hidden: [256, 256]}}\n"
        "dataset: {name: synthetic_classification, params: {n_samples: 512}}\n"
        "optimizer: {name: sgd, params: {momentum: 0.9}}\n"
        "lr_range: {num_steps: 400}\n"
        "device: cpu\n"
    )
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"name": "mlp"}}')

    def cli(*args: str, url: str) -> subprocess.CompletedProcess:
        return subprocess.run([*lrbs, *args, "--url", url], capture_output=True, text=True, timeout=120)

    with service(sqlite_url(tmp_path), tmp_path) as http:
        url = f"http://127.0.0.1:{http.port}"
        done = cli("submit", str(spec), "--wait", url=url)
        assert done.returncode == 0, done.stderr
        assert "succeeded" in done.stdout and "lr " in done.stdout and "scheduler = " in done.stdout
        assert "lr_range" in done.stderr and "#" in done.stderr  # the live progress bar, from the event stream
        job_id = done.stdout.split()[1].rstrip(":")
        as_json = cli("result", job_id, "--json", url=url)
        assert as_json.returncode == 0 and '"recommendation"' in as_json.stdout
        picture = tmp_path / "curve.png"
        assert cli("plot", job_id, "-o", str(picture), url=url).returncode == 0
        assert picture.read_bytes().startswith(b"\x89PNG")
        assert cli("plot", job_id, "-o", str(tmp_path / "curve.pdf"), url=url).returncode == 2  # .png or .svg only
        listed = cli("list", "--json", url=url)
        assert job_id in listed.stdout
        refused = cli("submit", str(bad), url=url)
        assert refused.returncode == 2 and "dataset" in refused.stderr
        slow = tmp_path / "slow.json"
        slow.write_text(json.dumps({**MINIMAL_SPEC, "lr_range": {"num_steps": 10_000, "max_lr": 1e-3}}))
        running = cli("submit", str(slow), url=url).stdout.split()[1].rstrip(":")
        assert cli("cancel", running, url=url).returncode == 0
        wait_for(http, running)
        ended = cli("result", running, url=url)
        assert ended.returncode == 1 and "cancelled" in ended.stdout
    gone = cli("status", job_id, url=url)
    assert gone.returncode == 3 and "cannot reach the service" in gone.stderr
