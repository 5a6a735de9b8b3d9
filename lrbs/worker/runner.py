"""pull → run → report. One job at a time; heartbeats carry progress and bring back cancellations.

The worker never touches the database: it speaks the service's /v1/worker endpoints with a token.
A worker killed at any instant loses no job: its lease expires and the service requeues the job.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from lrbs import logs
from lrbs.contract.job_spec import UploadedDataset
from lrbs.contract.resources import Progress
from lrbs.contract.worker_messages import Lease
from lrbs.files import file_sha256
from lrbs.redact import without_paths
from lrbs.worker.batch_advice import MEMORY_HEADROOM
from lrbs.worker.capabilities import describe
from lrbs.worker.errors import JobError
from lrbs.worker.job_process import JobProcess, Outcome, default_memory_gb, run_job, warm_up
from lrbs.worker.plugins import PluginPolicy

log = logging.getLogger("lrbs.worker")

STANDBY_READY_SECONDS = 120.0  # the longest a job process may take to prepare its device
HEARTBEAT_SECONDS = 2.0  # also how fresh the progress a user sees is
REPORT_PATIENCE_SECONDS = 120.0  # a finished job's report outlives a service restart this long


def summary(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])


class Stop(Exception):
    """Abort the running job; `outcome` says how to report it."""

    def __init__(self, outcome: str, message: str = "") -> None:
        super().__init__(message or outcome)
        self.outcome = outcome  # "cancelled" | "lease_lost" | "shutdown" | "timeout"
        self.message = message


class Worker:
    def __init__(
        self,
        url: str,
        token: str,
        worker_id: str | None = None,
        wait_seconds: float = 20.0,
        policy: PluginPolicy | None = None,
        cache_dir: Path | None = None,
        memory_headroom: float = MEMORY_HEADROOM,
        job_memory_gb: float | None = None,
    ):
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.wait_seconds = wait_seconds
        self.policy = policy or PluginPolicy()
        self.cache_dir = cache_dir or Path.home() / ".cache" / "lrbs" / "datasets"
        self.registered = False
        self.memory_headroom = memory_headroom
        self.job_memory_gb = job_memory_gb or default_memory_gb()
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(10.0, read=wait_seconds + 10.0),
        )
        self.stopping = threading.Event()
        self.busy = False
        self.standby: JobProcess | None = None  # the next job's process, its device already prepared
        self.lease_seconds = 30.0  # the service's lease length, learnt from each claim

    # ------------------------------------------------------------------------------------------ loop

    def run_forever(self, max_jobs: int | None = None) -> None:
        self._install_signal_handlers()
        warm_up()  # the job processes' forkserver imports torch now, not when the first job arrives
        self.standby = self.next_job_process()
        log.info(
            "worker %s pulling jobs from %s (job memory ceiling %.1f GB)",
            self.worker_id,
            self.http.base_url,
            self.job_memory_gb,
        )
        done, backoff = 0, 0.5
        while not self.stopping.is_set() and (max_jobs is None or done < max_jobs):
            try:
                if not self.registered:
                    self.register()
                lease = self.claim()
                backoff = 0.5
            except httpx.HTTPError as exc:  # service down or restarting: wait and try again
                log.warning("cannot reach the service (%s); retrying in %.1f s", exc, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if lease is not None:
                try:
                    self.run(lease)
                except Exception:  # nothing a job does may take its worker down
                    log.exception("job %s: the worker could not finish handling it", lease.job_id)
                done += 1
        if self.standby is not None:
            self.standby.close()
        self.http.close()

    def next_job_process(self) -> JobProcess | None:
        """The process the next job will run in, started (and its device prepared: CUDA's context and cuDNN)
        before that job is claimed, so a job's wall time is the job's own."""
        standby = JobProcess()
        if standby.ready(timeout=STANDBY_READY_SECONDS):
            return standby
        log.warning("a job process did not get its device ready within %.0f s; jobs start cold", STANDBY_READY_SECONDS)
        standby.close()
        return None

    def _install_signal_handlers(self) -> None:
        def on_signal(signum, _frame):
            log.info("signal %d: finishing up", signum)
            self.stopping.set()
            if not self.busy:  # idle in a long-poll: leave now; a running job stops at its next step
                raise SystemExit(0)

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)

    def register(self) -> None:
        info = describe(self.policy, self.job_memory_gb)
        r = self.http.post("/v1/worker/register", json={"worker_id": self.worker_id, "info": info.model_dump()})
        r.raise_for_status()
        self.registered = True
        log.info(
            "registered: devices %s, plugin modules allowed: %s",
            [d.name for d in info.devices],
            ", ".join(self.policy.modules) or "none",
        )

    def claim(self) -> Lease | None:
        r = self.http.post("/v1/worker/claim", json={"worker_id": self.worker_id, "wait_seconds": self.wait_seconds})
        if r.status_code == 204:
            return None
        r.raise_for_status()
        raw = r.json()
        try:
            lease = Lease.model_validate(raw)
            self.lease_seconds = lease.lease_seconds
            return lease
        except ValidationError as exc:  # a job this worker cannot read fails alone; the worker goes on
            job_id, token = raw.get("job_id"), raw.get("lease_token")
            log.error("job %s: unreadable lease: %s", job_id, exc)
            if isinstance(job_id, str) and isinstance(token, str):
                message = f"this worker could not read the job: {summary(exc)}"
                self._fail(job_id, token, message, "invalid_job")
            return None

    # ------------------------------------------------------------------------------------------- job

    def run(self, lease: Lease) -> None:
        """Run one job in a child process (job_process.py), heartbeating from the moment it is claimed."""
        context = logs.job_id.set(lease.job_id)  # on every line logged for this job, until it is handled
        try:
            self._run(lease)
        finally:
            logs.job_id.reset(context)
            if self.standby is None and not self.stopping.is_set():
                self.standby = self.next_job_process()  # after the report, before the next claim

    def take_standby(self) -> JobProcess | None:
        standby, self.standby = self.standby, None
        return standby

    def _run(self, lease: Lease) -> None:
        log.info("job %s: attempt %d", lease.job_id, lease.attempt)
        self.busy = True
        beat = Heartbeat(self, lease)
        beat.start()
        stops: list[Stop] = []
        try:
            outcome = self._attempt(lease, beat, stops)
        except JobError as exc:
            outcome = Outcome("error", error_kind="invalid_job", message=without_paths(str(exc)))
        except Exception as exc:
            log.exception("job %s failed", lease.job_id)  # the traceback stays here, in the worker's log
            outcome = Outcome("error", message=f"{type(exc).__name__}: {without_paths(str(exc))[:500]}")
        finally:
            beat.halt()
            self.busy = False
        if outcome.kind == "stopped":
            self._report_stop(lease, stops[-1])
        elif outcome.kind == "result":
            self._report(lease.job_id, lease.lease_token, ":complete", {"result": outcome.result})
            log.info("job %s: succeeded", lease.job_id)
        else:
            message = outcome.message
            if outcome.error_kind == "internal":
                message = (
                    f"lrbs hit an internal error ({message}); the log of worker {self.worker_id} has the "
                    f"details under job {lease.job_id}"
                )
            log.info("job %s: failed (%s): %s", lease.job_id, outcome.error_kind, outcome.message)
            self._fail(lease.job_id, lease.lease_token, message, outcome.error_kind)

    def _attempt(self, lease: Lease, beat: Heartbeat, stops: list[Stop]) -> Outcome:
        """Fetch the job's data, then run it in a child process until it ends or must be stopped."""
        deadline = time.monotonic() + lease.max_run_seconds

        def should_stop() -> str | None:
            stop = beat.stop
            if stop is None and self.stopping.is_set():
                stop = Stop("shutdown", f"worker {self.worker_id} shut down during the attempt")
            if stop is None and time.monotonic() > deadline:
                stop = Stop(
                    "timeout",
                    f"the job ran past the service's limit of {lease.max_run_seconds:g} s "
                    "(LRBS_MAX_RUN_SECONDS); ask for fewer steps or a smaller model",
                )
            if stop is None:
                return None
            stops.append(stop)
            return stop.outcome

        def on_progress(progress: dict) -> None:
            beat.report(Progress.model_validate(progress))

        dataset = lease.spec.dataset
        path = self.fetch_dataset(dataset.id, lease.dataset_sha256) if isinstance(dataset, UploadedDataset) else None
        return run_job(
            lease.spec.model_dump_json(),
            dataset_path=path,
            plugin_modules=self.policy.modules,
            memory_headroom=self.memory_headroom,
            memory_limit_bytes=int(self.job_memory_gb * 2**30),
            on_progress=on_progress,
            should_stop=should_stop,
            job_id=lease.job_id,
            standby=self.take_standby(),
        )

    def fetch_dataset(self, dataset_id: str, sha256: str | None) -> Path:
        """Download an uploaded dataset once per content hash, verify it, and keep it for the next job."""
        if not sha256:
            raise JobError(f"the service sent no checksum for dataset {dataset_id}")
        cached = self.cache_dir / f"{sha256}.npz"
        if cached.exists():
            if file_sha256(cached) == sha256:  # checked before every use: a damaged copy is fetched again
                return cached
            log.warning("dataset %s: the cached copy does not match its sha256; fetching it again", dataset_id)
            cached.unlink(missing_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{secrets.token_hex(8)}.part")  # unique even across containers (same pids)
        digest = hashlib.sha256()
        with self.http.stream("GET", f"/v1/worker/datasets/{dataset_id}") as r:
            if r.status_code == 404:
                detail = r.read() and r.json().get("detail")
                raise JobError(f"dataset {dataset_id} cannot be downloaded from the service: {detail or 'not found'}")
            r.raise_for_status()
            with open(partial, "wb") as out:
                for chunk in r.iter_bytes(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != sha256:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"dataset {dataset_id} arrived corrupted (sha256 {digest.hexdigest()} != {sha256})")
        os.replace(partial, cached)
        return cached

    def _report_stop(self, lease: Lease, stop: Stop) -> None:
        log.info("job %s: stopped (%s)", lease.job_id, stop.outcome)
        if stop.outcome == "cancelled":
            self._report(lease.job_id, lease.lease_token, ":cancelled", {})
        elif stop.outcome == "shutdown":
            self._fail(lease.job_id, lease.lease_token, stop.message, "shutdown", retryable=True)
        elif stop.outcome == "timeout":
            self._fail(lease.job_id, lease.lease_token, stop.message, "timeout")
        # lease_lost: someone else owns the job now; say nothing

    def _report(self, job_id: str, lease_token: str, action: str, body: dict) -> None:
        """Reports are idempotent on the service, so one whose answer was lost is simply sent again.

        5xx answers and connection errors are retried with backoff for at least a lease (and at least
        REPORT_PATIENCE_SECONDS), keeping the result until the service accepts or refuses it. A result the
        service refuses (422) fails the job with the reason instead of leaving it to run again."""
        body = {"lease_token": lease_token, **body}
        patience = max(REPORT_PATIENCE_SECONDS, 2 * self.lease_seconds)
        deadline, delay = time.monotonic() + patience, 0.25
        while True:
            try:
                r = self.http.post(f"/v1/worker/jobs/{job_id}{action}", json=body)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if r.status_code < 500:
                    break
                problem = f"HTTP {r.status_code}"
            if time.monotonic() + delay > deadline:
                log.error("job %s: gave up reporting %s after %.0f s (%s)", job_id, action, patience, problem)
                return
            log.warning("job %s: report %s failed (%s); retrying in %.1f s", job_id, action, problem, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        if r.status_code == 409:
            log.warning("job %s: lease lost before the report: %s", job_id, r.json().get("detail"))
        elif r.status_code == 422 and action == ":complete":
            detail = r.json().get("detail", r.text[:500])
            log.error("job %s: the service refused the result: %s", job_id, detail)
            message = f"the service refused this job's result: {detail}"
            self._fail(job_id, lease_token, message, "internal")
        elif r.is_error:
            log.error("job %s: report %s refused: %s %s", job_id, action, r.status_code, r.text[:500])

    def _fail(self, job_id: str, lease_token: str, message: str, kind: str, retryable: bool = False) -> None:
        body = {"message": message[:10_000], "kind": kind, "retryable": retryable}
        self._report(job_id, lease_token, ":fail", body)


class Heartbeat(threading.Thread):
    """Extends the lease and sends progress; turns a cancel request or a lost lease into `stop`."""

    def __init__(self, worker: Worker, lease: Lease) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{lease.job_id}")
        self.worker, self.lease = worker, lease
        self.interval = min(HEARTBEAT_SECONDS, lease.lease_seconds / 3)
        self.progress: Progress | None = None
        self.stop: Stop | None = None
        self._halt = threading.Event()
        self._nudge = threading.Event()

    def report(self, progress: Progress) -> None:
        """Keep the latest progress for the next beat; a new phase is sent at once, so that a watcher sees every
        phase, even one shorter than the heartbeat interval."""
        new_phase = self.progress is None or progress.phase != self.progress.phase
        self.progress = progress
        if new_phase:
            self._nudge.set()

    def run(self) -> None:
        logs.job_id.set(self.lease.job_id)  # a thread starts with a fresh context
        self.beat()  # at once: setting up a big job can take a while
        while True:
            self._nudge.wait(self.interval)
            self._nudge.clear()
            if self._halt.is_set():
                return
            self.beat()

    def beat(self) -> None:
        body: dict[str, Any] = {"lease_token": self.lease.lease_token}
        if self.progress is not None:
            body["progress"] = self.progress.model_dump()
        try:
            r = self.worker.http.post(f"/v1/worker/jobs/{self.lease.job_id}:heartbeat", json=body)
        except httpx.HTTPError as exc:  # transient: the lease outlives a few missed beats
            log.warning("job %s: heartbeat failed (%s)", self.lease.job_id, exc)
            return
        if r.status_code == 409:
            self.stop = Stop("lease_lost")
        elif r.is_success and r.json().get("cancel_requested"):
            self.stop = Stop("cancelled")

    def halt(self) -> None:
        self._halt.set()
        self._nudge.set()
        self.join()
