"""pull → run → report. One job at a time; heartbeats carry progress and bring back cancellations.

The worker never touches the database: it speaks the service's /v1/worker endpoints with a token.
A worker killed at any instant loses no job: its lease expires and the service requeues the job.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import httpx

from lrbs.contract.resources import Progress
from lrbs.contract.worker_messages import Lease
from lrbs.worker.advise import advise
from lrbs.worker.batch_advice import MEMORY_HEADROOM
from lrbs.worker.capabilities import describe
from lrbs.worker.errors import JobError
from lrbs.worker.plugins import PluginPolicy

log = logging.getLogger("lrbs.worker")

HEARTBEAT_SECONDS = 2.0  # also how fresh the progress a user sees is


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
    ):
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.wait_seconds = wait_seconds
        self.policy = policy or PluginPolicy()
        self.cache_dir = cache_dir or Path.home() / ".cache" / "lrbs" / "datasets"
        self.registered = False
        self.memory_headroom = memory_headroom
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(10.0, read=wait_seconds + 10.0),
        )
        self.stopping = threading.Event()
        self.busy = False

    # ------------------------------------------------------------------------------------------ loop

    def run_forever(self, max_jobs: int | None = None) -> None:
        self._install_signal_handlers()
        log.info("worker %s pulling jobs from %s", self.worker_id, self.http.base_url)
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
                self.run(lease)
                done += 1
        self.http.close()

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
        info = describe(self.policy)
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
        return Lease.model_validate(r.json())

    # ------------------------------------------------------------------------------------------- job

    def run(self, lease: Lease) -> None:
        log.info("job %s: attempt %d", lease.job_id, lease.attempt)
        self.busy = True
        beat = Heartbeat(self, lease)
        beat.start()
        deadline = time.monotonic() + lease.max_run_seconds

        def on_progress(p: Progress) -> None:
            beat.progress = p
            if beat.stop is not None:
                raise beat.stop
            if self.stopping.is_set():
                raise Stop("shutdown", f"worker {self.worker_id} shut down during the attempt")
            if time.monotonic() > deadline:
                raise Stop(
                    "timeout",
                    f"the job ran past the service's limit of {lease.max_run_seconds:g} s "
                    "(LRBS_MAX_RUN_SECONDS); ask for fewer steps or a smaller model",
                )

        try:
            result = advise(
                lease.spec,
                on_progress,
                policy=self.policy,
                memory_headroom=self.memory_headroom,
                fetch_upload=lambda dataset_id: self.fetch_dataset(dataset_id, lease.dataset_sha256),
            )
        except Stop as stop:
            beat.halt()
            self._report_stop(lease, stop)
        except JobError as exc:
            beat.halt()
            self._report(lease, ":fail", {"message": str(exc), "retryable": False})
        except Exception as exc:
            beat.halt()
            log.exception("job %s failed", lease.job_id)
            message = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
            self._report(lease, ":fail", {"message": message[:10_000], "retryable": False})
        else:
            beat.halt()
            self._report(lease, ":complete", {"result": result.model_dump(mode="json")})
            log.info("job %s: succeeded", lease.job_id)
        finally:
            self.busy = False

    def fetch_dataset(self, dataset_id: str, sha256: str | None) -> Path:
        """Download an uploaded dataset once per content hash, verify it, and keep it for the next job."""
        if not sha256:
            raise JobError(f"the service sent no checksum for dataset {dataset_id}")
        cached = self.cache_dir / f"{sha256}.npz"
        if cached.exists():
            return cached
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.part")
        digest = hashlib.sha256()
        with self.http.stream("GET", f"/v1/worker/datasets/{dataset_id}") as r:
            if r.status_code == 404:
                raise JobError(f"dataset {dataset_id} was deleted from the service")
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
            self._report(lease, ":cancelled", {})
        elif stop.outcome == "shutdown":
            self._report(lease, ":fail", {"message": stop.message, "retryable": True})
        elif stop.outcome == "timeout":
            self._report(lease, ":fail", {"message": stop.message, "retryable": False})
        # lease_lost: someone else owns the job now; say nothing

    def _report(self, lease: Lease, action: str, body: dict, tries: int = 5) -> None:
        """Reports are idempotent on the service, so a lost answer is simply sent again."""
        body = {"lease_token": lease.lease_token, **body}
        for attempt in range(tries):
            try:
                r = self.http.post(f"/v1/worker/jobs/{lease.job_id}{action}", json=body)
            except httpx.HTTPError as exc:
                log.warning("job %s: report %s failed (%s); retrying", lease.job_id, action, exc)
                time.sleep(min(2**attempt, 10))
                continue
            if r.status_code == 409:
                log.warning("job %s: lease lost before the report: %s", lease.job_id, r.json().get("detail"))
            elif r.is_error:
                log.error("job %s: report %s refused: %s %s", lease.job_id, action, r.status_code, r.text)
            return
        log.error("job %s: gave up reporting %s; the lease will expire and the job run again", lease.job_id, action)


class Heartbeat(threading.Thread):
    """Extends the lease and sends progress; turns a cancel request or a lost lease into `stop`."""

    def __init__(self, worker: Worker, lease: Lease) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{lease.job_id}")
        self.worker, self.lease = worker, lease
        self.interval = min(HEARTBEAT_SECONDS, lease.lease_seconds / 3)
        self.progress: Progress | None = None
        self.stop: Stop | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        self.beat()  # at once: setting up a big job can take a while
        while not self._halt.wait(self.interval):
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
        self.join()
