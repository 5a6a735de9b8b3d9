"""The job state machine, in one place.

    queued → running → succeeded | failed | cancelled
    running → queued   (lease expired or a retryable failure, with attempts left)

Every write by a worker is fenced by the lease token it got when it claimed the job, so a worker that
lost its lease (expired, requeued, claimed by another) cannot write a result. Delivery is at-least-once;
`complete` is idempotent for the lease that wrote it.
"""

from __future__ import annotations

import secrets
import time
import typing
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Integer,
    Row,
    String,
    Table,
    bindparam,
    case,
    cast,
    exists,
    func,
    insert,
    literal,
    null,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, load_only

from lrbs.contract.job_spec import JobSpec
from lrbs.contract.resources import TERMINAL_STATES, JobErrorDetail, JobState, Progress, WorkerInfo, WorkerOut
from lrbs.contract.results import Result
from lrbs.service import scheduling
from lrbs.service.api_keys import OPEN, Caller
from lrbs.service.db import epoch_now, rowcount
from lrbs.service.errors import RETRY_AFTER_SECONDS, Conflict, LeaseLost, NotFound, TooManyRequests
from lrbs.service.pagination import newest_first
from lrbs.service.scheduling import Requirements
from lrbs.service.settings import Settings
from lrbs.service.tables import JobLabelRow, JobRow, WorkerRow


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    """Time-ordered and unguessable: 12 hex digits of milliseconds, 12 random."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def progress(phase: str, step: int = 0, total: int = 0) -> dict:
    fraction = min(1.0, step / total) if total else 0.0
    return Progress(phase=phase, step=step, total=total, fraction=fraction).model_dump()


# --------------------------------------------------------------------------------------- user actions


def submit(
    session: Session,
    spec: JobSpec,
    settings: Settings,
    dataset_id: str | None = None,
    owner_key_id: str | None = None,
    requirements: Requirements | None = None,
) -> JobRow:
    now = utcnow()
    values = dict(
        id=new_job_id(),
        state=JobState.queued,
        spec=spec.model_dump(mode="json"),
        progress=progress("queued"),
        created_at=now,
        updated_at=now,
        attempts=0,
        heartbeats=0,
        max_attempts=settings.max_attempts,
        cancel_requested=False,
        dataset_id=dataset_id,
        owner_key_id=owner_key_id,
        requirements=(requirements or scheduling.requirements(spec)).model_dump(),
    )
    # Core inserts on the tables (neither the ORM's unit of work nor its bulk path: together a third of a submit's
    # CPU, spent holding SQLite's write lock). The row returned is not in the session.
    connection = session.connection()
    if owner_key_id is None:
        connection.execute(_INSERT_JOB, values)
    else:  # one statement: the key's count and the insert, which inserts nothing at the limit
        most = settings.max_active_jobs_per_key
        if rowcount(connection.execute(_INSERT_JOB_UNDER_LIMIT, {**values, "owner": owner_key_id, "most": most})) == 0:
            raise TooManyRequests(
                f"this key has {most} queued or running jobs, the most this service allows "
                f"(setting LRBS_MAX_ACTIVE_JOBS_PER_KEY); wait for some to end",
                retry_after=RETRY_AFTER_SECONDS,
            )
    if spec.labels:
        connection.execute(
            _INSERT_LABEL, [{"job_id": values["id"], "key": k, "value": v} for k, v in spec.labels.items()]
        )
    return JobRow(**values)


# Built once: a statement's cache key is computed per statement object, so these cost no SQL compilation per submit.
# Counted up to the limit only, from the (owner_key_id, state) index: a submit's cost does not grow with the key's jobs.
# The two states are two parameters: an IN over a tuple is an "expanding" parameter, rendered into the SQL again on
# every execution (with the ORM's result handling, which a Core count does not need: 50-130 µs a submit in-process).
_ACTIVE_JOBS_OF_KEY = select(func.count()).select_from(
    select(literal(1))
    .where(
        JobRow.owner_key_id == bindparam("owner"),
        JobRow.state.in_([bindparam(s.name, s, type_=JobRow.state.type) for s in (JobState.queued, JobState.running)]),
    )
    .limit(bindparam("most", type_=Integer))
    .subquery()
)
_INSERT_JOB = insert(typing.cast(Table, JobRow.__table__))
# A key's submit counts its active jobs and inserts in one statement (INSERT ... SELECT <the values> WHERE
# count < most): one round trip fewer than a count, then an insert. The columns are the ones `submit` sets.
_SUBMIT_COLUMNS = ("id", "state", "spec", "progress", "created_at", "updated_at", "attempts", "heartbeats",
                   "max_attempts", "cancel_requested", "dataset_id", "owner_key_id", "requirements")  # fmt: skip
_INSERT_JOB_UNDER_LIMIT = _INSERT_JOB.from_select(
    _SUBMIT_COLUMNS,
    select(*(bindparam(name, type_=JobRow.__table__.c[name].type) for name in _SUBMIT_COLUMNS)).where(
        _ACTIVE_JOBS_OF_KEY.scalar_subquery() < bindparam("most", type_=Integer)
    ),
).execution_options(preserve_rowcount=True)  # SQLAlchemy reads an INSERT's rowcount only when asked (else -1)
_INSERT_LABEL = insert(typing.cast(Table, JobLabelRow.__table__))


# What decides whether a kept body is current (api/jobs.serialized): who may see it, its last change and, while
# it is queued, what it needs from a worker.
HEAD = (JobRow.id, JobRow.state, JobRow.owner_key_id, JobRow.created_at, JobRow.updated_at, JobRow.requirements)
# A list page reads them as plain rows from a Core select on the tables (ORM objects took a third of a page's
# time; ORM-enabled column selects still ran the ORM's row loading, 5-10%), and a job's requirements only while
# it is queued (each is JSON to parse).
_JOBS, _LABELS = JobRow.__table__.c, JobLabelRow.__table__.c
_PAGE_HEAD = (
    *(_JOBS[column.key] for column in HEAD[:-1]),
    case((_JOBS.state == JobState.queued, _JOBS.requirements), else_=null()).label("requirements"),
)
JobHead = JobRow | Row[Any]  # either has the HEAD columns as attributes


def get(session: Session, job_id: str, caller: Caller = OPEN, head_only: bool = False) -> JobRow:
    """The job, if it exists and `caller` may see it (a key sees only its own jobs: 404 for others').
    `head_only`: only the HEAD columns are read now (any other is read when used, one query each)."""
    job = session.get(JobRow, job_id, options=[load_only(*HEAD)] if head_only else None)
    if job is None or not caller.owns(job.owner_key_id):
        raise NotFound(f"no job {job_id!r}")
    return job


def cancel(session: Session, job_id: str, caller: Caller = OPEN) -> JobRow:
    """A queued job is cancelled at once; a running one is flagged and its worker stops it."""
    get(session, job_id, caller)
    now = utcnow()
    done = rowcount(
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.state == JobState.queued)
            .values(
                state=JobState.cancelled,
                finished_at=now,
                updated_at=now,
                cancel_requested=True,
                progress=progress("cancelled"),
            )
            .execution_options(synchronize_session=False)
        )
    )
    flagged = done or rowcount(
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.state == JobState.running)
            .values(cancel_requested=True, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    )
    job = get(session, job_id)
    session.refresh(job)
    if not flagged:
        raise Conflict(f"job {job_id} already ended {job.state}; only queued or running jobs can be cancelled")
    return job


def delete(session: Session, job_id: str, caller: Caller = OPEN) -> None:
    """Delete an ended job (a queued or running one must be cancelled first)."""
    job = get(session, job_id, caller)
    if job.state not in TERMINAL_STATES:
        raise Conflict(f"job {job_id} is {job.state}; cancel it first, then delete it once it has ended")
    session.delete(job)


def list_jobs(
    session: Session,
    state: str | None,
    page_size: int,
    page_token: str | None,
    caller: Caller = OPEN,
    labels: dict[str, str] | None = None,
) -> tuple[list[Row[Any]], str | None]:
    """A page of jobs, newest first: rows of their HEAD columns (jobs.serialized reads the rest of the rows it
    needs in one query)."""
    query = select(*_PAGE_HEAD)
    for key, value in (labels or {}).items():
        query = query.where(exists().where(_LABELS.job_id == _JOBS.id, _LABELS.key == key, _LABELS.value == value))
    if not caller.admin:
        query = query.where(_JOBS.owner_key_id == caller.key_id)
    if state is not None:
        query = query.where(_JOBS.state == state)
    return newest_first(session, query, _JOBS, page_size, page_token, rows=True)


CURVE_KEYS = ("curve", "sweep_curves")  # the bulk of a result: what the summary view leaves out


def without_curves(session: Session) -> ColumnElement[Any]:
    """A job's result without its curves, cut out by the database (the summary view)."""
    if session.get_bind().dialect.name == "postgresql":
        trimmed: ColumnElement[Any] = cast(JobRow.result, JSONB)
        for key in CURVE_KEYS:
            trimmed = trimmed.op("-", return_type=JSONB)(literal(key, String))
        return trimmed
    return type_coerce(func.json_remove(JobRow.result, *(f"$.{key}" for key in CURVE_KEYS)), JSON)


# ------------------------------------------------------------------------------------- worker actions


CLAIM_SCAN = 100  # queued jobs a claim looks through for one its worker can run


def claim(session: Session, worker_id: str, settings: Settings) -> JobRow | None:
    """Take the oldest queued job this worker can run, by the capabilities it registered.

    The candidates are read without locks; each is then taken by an update that only a still-queued row
    matches, so exactly one claimer wins it and a loser moves on to the next (on PostgreSQL the loser waits
    for the winner's commit, then sees the row is no longer queued; SQLite serialises writers, see db.py).
    """
    worker = session.get(WorkerRow, worker_id)
    info = WorkerInfo.model_validate(worker.info) if worker is not None and worker.info else None
    oldest = (
        select(JobRow.id, JobRow.requirements)
        .where(JobRow.state == JobState.queued)
        .order_by(JobRow.created_at, JobRow.id)
        .limit(CLAIM_SCAN)
    )
    for job_id, need in session.execute(oldest).all():
        if need is not None and scheduling.missing(scheduling.Requirements.model_validate(need), info):
            continue
        now = utcnow()
        taken = session.scalars(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.state == JobState.queued)
            .values(
                state=JobState.running,
                lease_token=secrets.token_urlsafe(24),
                lease_expires_at=epoch_now() + settings.lease_seconds,
                attempts=JobRow.attempts + 1,
                heartbeats=0,
                worker_id=worker_id,
                started_at=now,
                updated_at=now,
                progress=progress("setup"),
            )
            .returning(JobRow)
            .execution_options(synchronize_session=False)
        ).first()
        if taken is not None:
            return taken
    return None


def _running(job_id: str, lease_token: str):
    return (JobRow.id == job_id, JobRow.lease_token == lease_token, JobRow.state == JobState.running)


def _lease_lost(session: Session, job_id: str) -> LeaseLost:
    job = get(session, job_id)
    return LeaseLost(
        f"this worker no longer holds job {job_id} (it is {job.state}, attempt {job.attempts}); "
        "drop it without reporting"
    )


def heartbeat(session: Session, job_id: str, lease_token: str, prog: Progress | None, settings: Settings) -> bool:
    """Extend the lease, record progress and that its worker is alive; returns whether the user asked to cancel.
    (A worker running a long job makes no claims: its heartbeats are what keep it listed as online.)"""
    values: dict = {
        "lease_expires_at": epoch_now() + settings.lease_seconds,
        "updated_at": utcnow(),
        "heartbeats": JobRow.heartbeats + 1,
    }
    if prog is not None:
        values["progress"] = prog.model_dump()
    row = session.execute(
        update(JobRow)
        .where(*_running(job_id, lease_token))
        .values(**values)
        .returning(JobRow.cancel_requested, JobRow.worker_id)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        raise _lease_lost(session, job_id)
    if row[1] is not None:
        session.execute(update(WorkerRow).where(WorkerRow.id == row[1]).values(last_seen_at=utcnow()))
    return bool(row[0])


def _finish(session: Session, job_id: str, lease_token: str, state: str, cancelled: bool = False, **values) -> bool:
    """End a running attempt whose lease matches; only a job whose cancel flag equals `cancelled` (succeeded:
    no cancel requested; cancelled: one was)."""
    now = utcnow()
    return bool(
        rowcount(
            session.execute(
                update(JobRow)
                .where(*_running(job_id, lease_token), JobRow.cancel_requested == cancelled)
                .values(state=state, finished_at=now, updated_at=now, lease_expires_at=None, **values)
                .execution_options(synchronize_session=False)
            )
        )
    )


def complete(session: Session, job_id: str, lease_token: str, result: Result) -> bool:
    """Store the result; True when this call made the job succeed. Repeating the call with the same lease is a
    no-op (at-least-once delivery).

    A cancel accepted while the job ran wins: the job ends cancelled and the late result is discarded."""
    payload = result.model_dump(mode="json")
    steps = result.steps_run
    done = progress("done", steps, steps)
    if _finish(session, job_id, lease_token, JobState.succeeded, result=payload, progress=done, error=None):
        return True
    if _finish(session, job_id, lease_token, JobState.cancelled, cancelled=True, progress=progress("cancelled")):
        return False
    job = get(session, job_id)
    if not (job.state in (JobState.succeeded, JobState.cancelled) and job.lease_token == lease_token):
        raise _lease_lost(session, job_id)
    return False


def fail(
    session: Session, job_id: str, lease_token: str, message: str, retryable: bool, kind: str = "internal"
) -> JobRow:
    job = session.scalars(select(JobRow).where(*_running(job_id, lease_token)).with_for_update()).first()
    if job is None:
        job = get(session, job_id)
        if job.state in (JobState.failed, JobState.queued, JobState.cancelled) and job.lease_token == lease_token:
            return job  # a repeated report of the same failure
        raise _lease_lost(session, job_id)
    _end_attempt(job, message, retryable, kind)
    return job


def mark_cancelled(session: Session, job_id: str, lease_token: str) -> None:
    """The worker stopped the job because the user asked to."""
    if _finish(session, job_id, lease_token, JobState.cancelled, cancelled=True, progress=progress("cancelled")):
        return
    job = get(session, job_id)
    if not (job.state == JobState.cancelled and job.lease_token == lease_token):
        raise _lease_lost(session, job_id)


def release(session: Session, job_id: str, lease_token: str) -> bool:
    """Hand a claimed job back without using an attempt: its worker went away before it started."""
    return bool(
        rowcount(
            session.execute(
                update(JobRow)
                .where(*_running(job_id, lease_token), JobRow.heartbeats == 0)
                .values(
                    state=JobState.queued,
                    attempts=JobRow.attempts - 1,
                    lease_expires_at=None,
                    worker_id=None,
                    started_at=None,
                    updated_at=utcnow(),
                    progress=progress("queued"),
                )
                .execution_options(synchronize_session=False)
            )
        )
    )


def release_unstarted(session: Session, grace_seconds: float) -> int:
    """Claimed jobs with no heartbeat within the grace period go back to the queue, attempts untouched."""
    stale = session.scalars(
        select(JobRow)
        .where(
            JobRow.state == JobState.running,
            JobRow.heartbeats == 0,
            JobRow.started_at < utcnow() - timedelta(seconds=grace_seconds),
        )
        .with_for_update(skip_locked=True)
    ).all()
    return sum(release(session, job.id, job.lease_token or "") for job in stale)


def reap(session: Session) -> int:
    """Requeue (or fail, with no attempts left) running jobs whose worker stopped heartbeating."""
    expired = session.scalars(
        select(JobRow)
        .where(JobRow.state == JobState.running, JobRow.lease_expires_at < epoch_now())
        .with_for_update(skip_locked=True)
    ).all()
    for job in expired:
        _end_attempt(
            job,
            f"worker {job.worker_id} stopped reporting (its lease expired) during attempt {job.attempts}",
            retryable=True,
            kind="lease_expired",
        )
    return len(expired)


def queued_before(session: Session, seconds: float) -> list[JobRow]:
    """Jobs queued longer than `seconds` (at most 100 at a time)."""
    cutoff = utcnow() - timedelta(seconds=seconds)
    query = select(JobRow).where(JobRow.state == JobState.queued, JobRow.created_at < cutoff)
    return list(session.scalars(query.order_by(JobRow.created_at).limit(100).with_for_update(skip_locked=True)))


def fail_unschedulable(session: Session, jobs: list[JobRow], workers: list[WorkerOut], settings: Settings) -> int:
    """Fail the queued jobs among `jobs` that no online worker can run, saying what they needed."""
    failed = 0
    for job in jobs:
        need = scheduling.Requirements.model_validate(job.requirements) if job.requirements else None
        reason = scheduling.waiting_for(need, workers)
        if reason is None or job.state != JobState.queued:
            continue
        now = utcnow()
        job.state, job.finished_at, job.updated_at = JobState.failed, now, now
        message = f"no online worker could run this job for {settings.unschedulable_seconds:g} s (setting "
        job.error = JobErrorDetail(
            message=f"{message}LRBS_UNSCHEDULABLE_SECONDS): it needs {reason}",
            kind="unschedulable",
            attempt=job.attempts,
        ).model_dump()
        failed += 1
    return failed


def _end_attempt(job: JobRow, message: str, retryable: bool, kind: str) -> None:
    """The one place that decides where a running job goes when its attempt ends without a result."""
    now = utcnow()
    job.error = JobErrorDetail.model_validate({"message": message, "kind": kind, "attempt": job.attempts}).model_dump()
    job.lease_expires_at = None
    job.updated_at = now
    if job.cancel_requested:
        job.state, job.finished_at, job.progress = JobState.cancelled, now, progress("cancelled")
    elif retryable and job.attempts < job.max_attempts:
        job.state, job.progress = JobState.queued, progress("queued")
    else:
        job.state, job.finished_at = JobState.failed, now
