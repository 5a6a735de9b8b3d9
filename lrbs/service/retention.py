"""Retention: ended jobs and the uploads no job needs any more are removed after LRBS_RETENTION_DAYS."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from lrbs.contract.resources import TERMINAL_STATES
from lrbs.service import dataset_store
from lrbs.service.db import rowcount
from lrbs.service.queue import utcnow
from lrbs.service.settings import Settings
from lrbs.service.tables import DatasetRow, JobRow


def purge(session: Session, settings: Settings) -> tuple[int, int]:
    """Delete ended jobs finished before the cut-off, then uploads older than it that no job refers to."""
    if settings.retention_days is None:
        return 0, 0
    cutoff = utcnow() - timedelta(days=settings.retention_days)
    jobs = rowcount(
        session.execute(
            delete(JobRow)
            .where(JobRow.state.in_(TERMINAL_STATES), JobRow.finished_at < cutoff)
            .execution_options(synchronize_session=False)
        )
    )
    unused = session.scalars(
        select(DatasetRow)
        .where(DatasetRow.created_at < cutoff, ~exists().where(JobRow.dataset_id == DatasetRow.id))
        .with_for_update(skip_locked=True)
    ).all()
    for row in unused:
        dataset_store.delete(session, row.id, settings)
    return jobs, len(unused)
