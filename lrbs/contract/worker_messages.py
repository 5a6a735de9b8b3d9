"""The pull protocol workers speak: register, claim (long-poll), heartbeat, and report the outcome."""

from __future__ import annotations

from pydantic import Field

from lrbs.contract.common import Model, Strict
from lrbs.contract.job_spec import JobSpec
from lrbs.contract.resources import ErrorKind, Progress, WorkerInfo
from lrbs.contract.results import Result


class ClaimRequest(Strict):
    worker_id: str = Field(min_length=1, max_length=200)
    wait_seconds: float = Field(20.0, ge=0, le=60, description="Long-poll: how long to wait for a job.")


class Registration(Strict):
    worker_id: str = Field(min_length=1, max_length=200)
    info: WorkerInfo


class Lease(Model):
    job_id: str
    lease_token: str
    lease_seconds: float
    attempt: int
    max_run_seconds: float
    spec: JobSpec
    dataset_sha256: str | None = Field(None, description="For an uploaded dataset: the sha256 of its .npz.")


class Heartbeat(Strict):
    lease_token: str
    progress: Progress | None = None


class HeartbeatReply(Model):
    cancel_requested: bool


class Completion(Strict):
    lease_token: str
    result: Result


class Failure(Strict):
    lease_token: str
    message: str = Field(max_length=10_000)
    kind: ErrorKind = "internal"
    retryable: bool = Field(
        False, description="True when another attempt may succeed (e.g. the worker is shutting down)."
    )


class Cancelled(Strict):
    lease_token: str
