"""SQLAlchemy tables. Times shown to users are UTC datetimes; lease expiry is Unix seconds by the DB clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, MetaData, String, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, query_expression

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """Stored naive in UTC (SQLite has no time zones), always returned time-zone aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Not a column: the result without its curves, computed by the database when a list asks for the summary view
    # (queue.list_jobs), so the service neither reads nor decodes the curves.
    result_summary: Mapped[dict[str, Any] | None] = query_expression()
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(default=0)
    # Heartbeats of the current attempt: a claimed job whose worker never beats is handed out again.
    heartbeats: Mapped[int] = mapped_column(default=0, server_default="0")
    max_attempts: Mapped[int]
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)  # Unix seconds, database clock
    worker_id: Mapped[str | None] = mapped_column(String(200))
    # What a worker needs to run it (lrbs.service.scheduling.Requirements); null: any worker.
    requirements: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Set for jobs on an uploaded dataset, so a dataset in use cannot be deleted.
    dataset_id: Mapped[str | None] = mapped_column(String(80), ForeignKey("datasets.id", ondelete="SET NULL"))
    owner_key_id: Mapped[str | None] = mapped_column(String(40))  # the API key that submitted it (None: no keys)

    __table_args__ = (
        Index("ix_jobs_created", "created_at", "id"),
        Index("ix_jobs_state_created", "state", "created_at", "id"),
        Index("ix_jobs_dataset_state", "dataset_id", "state"),
        Index("ix_jobs_owner_created", "owner_key_id", "created_at", "id"),
        Index("ix_jobs_owner_state", "owner_key_id", "state"),  # a submit counts its key's active jobs
    )


class DatasetRow(Base):
    """An uploaded dataset. Its id derives from the sha256 of the uploaded bytes: same bytes, same id."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    data_sha256: Mapped[str] = mapped_column(String(64))  # of the canonical .npz workers download
    filename: Mapped[str] = mapped_column(String(300))
    format: Mapped[str] = mapped_column(String(16))
    target_column: Mapped[str | None] = mapped_column(String(300))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    shapes: Mapped[dict[str, Any]] = mapped_column(JSON)
    dtypes: Mapped[dict[str, Any]] = mapped_column(JSON)
    shape: Mapped[dict[str, Any]] = mapped_column(JSON)  # spec.DataShape: task, input_shape, num_outputs
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    owner_key_id: Mapped[str | None] = mapped_column(String(40))  # the API key that uploaded it (None: no keys)

    __table_args__ = (
        Index("ix_datasets_created", "created_at", "id"),
        Index("ix_datasets_owner_created", "owner_key_id", "created_at", "id"),
    )


class WorkerRow(Base):
    """A worker that has connected: what it can run, and when it was last heard from."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    info: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiKeyRow(Base):
    """An API key: only its sha256 is stored (keys are 256-bit random tokens, shown once at creation)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IdempotencyKeyRow(Base):
    """A submit's Idempotency-Key (scoped to the API key that sent it) and the job it created."""

    __tablename__ = "idempotency_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of (API key id, Idempotency-Key)
    body_sha256: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobLabelRow(Base):
    """One label of a job (from its spec's `labels`), for filtering lists by label."""

    __tablename__ = "job_labels"

    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))

    __table_args__ = (Index("ix_job_labels_key_value", "key", "value"),)
