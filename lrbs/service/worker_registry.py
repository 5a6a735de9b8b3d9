"""Workers the service has heard from: what they can run and whether they are still there."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from lrbs.contract.resources import JobState, WorkerInfo, WorkerOut
from lrbs.service.caches import TTLCache
from lrbs.service.queue import utcnow
from lrbs.service.settings import Settings
from lrbs.service.tables import JobRow, WorkerRow


def seen(session: Session, settings: Settings, worker_id: str, info: WorkerInfo | None = None) -> bool:
    """Record that a worker called in (registering it on first sight). True if that changes the online workers as
    scheduling sees them: a new worker, one back from offline, or new capabilities."""
    now = utcnow()
    worker = session.get(WorkerRow, worker_id)
    changed = worker is None or worker.last_seen_at < now - timedelta(seconds=settings.worker_online_seconds)
    if worker is None:
        worker = WorkerRow(id=worker_id, first_seen_at=now, last_seen_at=now)
        session.add(worker)
    worker.last_seen_at = now
    if info is not None:
        stored = info.model_dump(mode="json")
        changed = changed or worker.info != stored
        worker.info = stored
    session.flush()
    return changed


def online_workers(session: Session, settings: Settings, cache: TTLCache[list[WorkerOut]]) -> list[WorkerOut]:
    """The online workers as scheduling sees them (a queued job's waiting_for, the admission check), reused for
    LRBS_WORKER_LIST_CACHE_SECONDS: a fleet changes slowly, and a polled queued job would read them every time.
    A worker that registers or comes back through this replica clears it (`seen` says when)."""
    found = kept_online_workers(cache)
    if found is None:
        found = list_workers(session, settings, online_only=True)
        cache.put(ONLINE, found)
    return found


def kept_online_workers(cache: TTLCache[list[WorkerOut]]) -> list[WorkerOut] | None:
    """The online workers this replica read within LRBS_WORKER_LIST_CACHE_SECONDS, if it still keeps them."""
    return cache.get(ONLINE)


ONLINE = "online"


def largest_memory_gb(workers: list[WorkerOut]) -> float | None:
    """The most memory one job can have on any online worker (its largest device), None if none reported."""
    sizes = [
        device.memory_gb
        for worker in workers
        if worker.online and worker.info is not None
        for device in worker.info.devices
        if device.memory_gb
    ]
    return max(sizes) if sizes else None


def list_workers(session: Session, settings: Settings, online_only: bool = False) -> list[WorkerOut]:
    """Every worker heard from, newest first, each with the job it runs; `online_only`: those seen within
    LRBS_WORKER_ONLINE_SECONDS (all that scheduling looks at: a long-lived fleet leaves many offline rows)."""
    cutoff = utcnow() - timedelta(seconds=settings.worker_online_seconds)
    rows = session.execute(_ONLINE_WORKERS, {"cutoff": cutoff}) if online_only else session.execute(_WORKERS)
    return [
        WorkerOut(
            id=w.id,
            online=w.last_seen_at >= cutoff,
            running_job_id=job_id,
            info=w.info,
            first_seen_at=w.first_seen_at,
            last_seen_at=w.last_seen_at,
        )
        for w, job_id in rows.all()
    ]


# Built once (a submit reads the online workers): a statement's cache key is computed per statement object.
_RUNNING_JOB = (
    select(JobRow.id)
    .where(JobRow.worker_id == WorkerRow.id, JobRow.state == JobState.running)
    .limit(1)
    .scalar_subquery()
)
_WORKERS = select(WorkerRow, _RUNNING_JOB).order_by(WorkerRow.last_seen_at.desc())
_ONLINE_WORKERS = _WORKERS.where(WorkerRow.last_seen_at >= bindparam("cutoff"))
