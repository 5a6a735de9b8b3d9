"""What the API serves: jobs, uploaded datasets and workers."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field

from lrbs.contract.common import Model, Precision
from lrbs.contract.job_spec import JobSpec
from lrbs.contract.results import Result
from lrbs.contract.shapes import DataShape


class JobState(StrEnum):
    """queued → running → succeeded | failed | cancelled; running → queued when a lease expires or an attempt
    fails with attempts left. The transitions live in lrbs.service.queue."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATES = (JobState.succeeded, JobState.failed, JobState.cancelled)


class FieldError(Model):
    field: str = Field(description="Where in the request, e.g. lr_range.max_lr.")
    message: str = Field(description="What was wrong there and what is accepted.")


class Problem(Model):
    """An error, as RFC 9457 problem details (application/problem+json): every 4xx and 5xx this API sends."""

    type: str = Field(description="A URI naming the kind of problem.", examples=["https://lrbs.dev/problems/not-found"])
    title: str = Field(description="The kind of problem in words.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What was wrong, and what is accepted.")
    instance: str | None = Field(None, description="The request path.")
    errors: list[FieldError] | None = Field(None, description="Each bad field (validation errors).")


class Progress(Model):
    phase: str = Field(description="What the worker is doing: queued, setup, lr_range, done.")
    step: int = 0
    total: int = 0
    fraction: float = Field(0.0, ge=0, le=1)
    lr: float | None = Field(None, description="lr_range: the LR of the latest step.")
    loss: float | None = Field(
        None, description="lr_range: the latest smoothed loss (of the kind lr_range.loss names)."
    )


ErrorKind = Literal[
    "invalid_job", "internal", "timeout", "shutdown", "lease_expired", "out_of_memory", "killed", "unschedulable"
]


class JobErrorDetail(Model):
    """Why an attempt ended without a result, in words a user can act on (never a traceback or a server path)."""

    message: str
    kind: ErrorKind = Field(
        "internal",
        description="invalid_job: the job asks for something that cannot run (fix the spec); internal: an "
        "unexpected error in lrbs (the worker's log has the details under the job id); timeout: past "
        "LRBS_MAX_RUN_SECONDS; shutdown: the worker stopped (retried); lease_expired: the worker stopped "
        "reporting (retried); out_of_memory / killed: the job exceeded its memory ceiling or was stopped hard; "
        "unschedulable: no online worker could run it for LRBS_UNSCHEDULABLE_SECONDS.",
    )
    attempt: int


class Job(Model):
    id: str
    state: JobState
    progress: Progress
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = Field(description="How many times a worker has claimed this job.")
    worker_id: str | None = Field(None, description="The worker that ran (or runs) the latest attempt.")
    cancel_requested: bool = False
    waiting_for: str | None = Field(
        None,
        description='A queued job no online worker can run: what it needs and who is online (e.g. "a worker '
        'with CUDA; online: 2 CPU workers"). It fails after LRBS_UNSCHEDULABLE_SECONDS.',
    )
    spec: JobSpec
    result: Result | None = None
    error: JobErrorDetail | None = None


class JobEvent(Model):
    """One Server-Sent Event of GET /v1/jobs/{id}/events: the job's state and progress, without spec or result.

    The SSE `event:` is `state` when the state changed (and for the first event), `progress` otherwise, and `end`
    for the last one, sent once the job has ended; the SSE `id:` resumes the stream with Last-Event-ID."""

    id: str
    state: JobState
    progress: Progress
    cancel_requested: bool = False
    error: JobErrorDetail | None = None
    updated_at: datetime


class DatasetOut(Model):
    id: str = Field(description='Use as {"source": "upload", "id": ...} in a job\'s dataset.')
    sha256: str = Field(description="Of the uploaded bytes: the same bytes always give the same id.")
    filename: str
    format: Literal["npz", "csv", "parquet"]
    target_column: str | None = None
    size_bytes: int
    shapes: dict[str, list[int]]
    dtypes: dict[str, str]
    shape: DataShape = Field(description="The task lrbs reads off the arrays, and the sizes a model gets.")
    created_at: datetime


class DatasetPage(Model):
    datasets: list[DatasetOut]
    next_page_token: str | None = None


class DeviceInfo(Model):
    name: str = Field(description="cpu, cuda:0, ...")
    model: str | None = None
    memory_gb: float | None = None


class WorkerInfo(Model):
    """What a worker reports when it connects: what it can run."""

    hostname: str
    lrbs: str
    torch: str
    python: str
    devices: list[DeviceInfo]
    precisions: list[Precision]
    builtins: dict[str, list[str]] = Field(description="Built-in models, datasets, losses and optimizers.")
    plugin_modules: list[str] = Field(description="Module prefixes the operator allows (LRBS_PLUGIN_MODULES).")
    plugins: dict[str, list[str]] = Field(description="Installed entry points per kind, with their modules allowed.")


class WorkerOut(Model):
    id: str
    online: bool = Field(description="Heard from within LRBS_WORKER_ONLINE_SECONDS.")
    running_job_id: str | None = None
    info: WorkerInfo | None = None
    first_seen_at: datetime
    last_seen_at: datetime


class WorkerList(Model):
    workers: list[WorkerOut]


class JobPage(Model):
    jobs: list[Job]
    next_page_token: str | None = Field(None, description="Pass as page_token for the next page.")
