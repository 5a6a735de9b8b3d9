"""All service settings, read from LRBS_* environment variables (or passed in tests)."""

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LRBS_", extra="ignore")

    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per line, with the request id and the job id on each."
    )
    database_url: str = Field(
        "sqlite:///./lrbs.db",
        description="SQLAlchemy URL. postgresql://… uses psycopg 3; ?options=-csearch_path%3Dname picks a schema.",
    )
    database_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="How long a request waits for the database (SQLite's lock, a PostgreSQL connection) "
        "before the API answers 503 with Retry-After.",
    )
    auto_migrate: bool | None = Field(
        None, description="Apply migrations at start-up. Default: yes on SQLite, no on PostgreSQL."
    )
    data_dir: Path = Field(Path("./lrbs-data"), description="Uploaded datasets live here (share it between replicas).")
    worker_token: str | None = Field(
        None, description="Bearer token workers present. `lrbs serve` generates one when unset."
    )

    # The queue
    lease_seconds: float = Field(30.0, gt=0, description="A worker that misses heartbeats this long loses its job.")
    max_attempts: int = Field(3, ge=1, description="Claims before a job whose worker keeps dying is failed.")
    reap_interval_seconds: float = Field(2.0, gt=0, description="How often expired leases are requeued.")
    claim_grace_seconds: float = Field(
        10.0,
        gt=0,
        description="A claimed job whose worker sends no heartbeat this long goes back to the queue "
        "without using an attempt (the worker went away before it started).",
    )
    max_run_seconds: float = Field(3600.0, gt=0, description="Wall time one attempt may run before it fails.")
    unschedulable_seconds: float = Field(
        3600.0, gt=0, description="A queued job that no online worker can run fails after this long, saying why."
    )
    events_poll_seconds: float = Field(
        0.5, gt=0, description="How often a job's event stream looks for a change (one primary-key read)."
    )

    # Limits on what a job may ask for
    max_spec_bytes: int = Field(64 * 1024, gt=0)
    max_lr_steps: int = Field(10_000, gt=0)
    max_batch_size: int = Field(65_536, gt=0)
    max_batch_candidates: int = Field(32, gt=0)
    max_samples: int = Field(1_000_000, gt=0, description="Largest built-in dataset a job may generate.")
    max_page_size: int = Field(200, gt=0)
    max_upload_mb: float = Field(512, gt=0, description="Largest dataset upload, in MiB.")
    max_unpacked_mb: float = Field(8192, gt=0, description="Largest size a compressed .npz upload may unpack to.")
    max_params: int = Field(2_000_000_000, gt=0, description="Largest built-in model a job may ask for, in parameters.")
    max_data_gb: float = Field(16, gt=0, description="Largest dataset a job may hold in memory, in GB.")
    max_classes: int = Field(1_000_000, gt=0, description="Most classes (or vocabulary entries) a dataset may have.")
    retention_days: float | None = Field(
        None, gt=0, description="Ended jobs and unused uploads are deleted after this many days (unset: kept)."
    )
    api_key_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="A replica trusts a key it has found valid this long without asking the database again, so a "
        "revoked key may still work this long on a replica that saw it. 0: ask every time.",
    )
    worker_list_cache_seconds: float = Field(
        1.0,
        ge=0,
        description="A replica reuses the online workers it read (for a queued job's waiting_for and the memory "
        "check at submit) this long. A worker that registers or comes back through this replica is seen at once; "
        "through another, within this time. 0: read them every time.",
    )
    max_active_jobs_per_key: int = Field(100, gt=0, description="Queued and running jobs one API key may have.")
    max_stored_mb_per_key: float = Field(10_240, gt=0, description="Upload bytes one API key may keep stored, in MiB.")
    max_columns: int = Field(100_000, gt=0, description="Most columns a CSV or Parquet upload may have.")
    max_result_mb: float = Field(16, gt=0, description="Largest result a worker may report, in MiB.")
    worker_online_seconds: float = Field(90.0, gt=0, description="A worker not heard from this long is offline.")
