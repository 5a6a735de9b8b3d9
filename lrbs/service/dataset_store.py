"""Uploaded datasets: validated once on the way in, stored content-addressed, served to workers.

Each upload is parsed by lrbs/service/uploads.py into canonical arrays (x, y, optional x_val and y_val) and
kept as `<data_dir>/datasets/<sha256 of the upload>.npz`, so workers need numpy only and never see
the user's original file format.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lrbs.contract.job_spec import UploadedDataset
from lrbs.contract.resources import JobState
from lrbs.contract.shapes import DataShape
from lrbs.files import file_sha256
from lrbs.redact import without_paths
from lrbs.service.api_keys import OPEN, Caller
from lrbs.service.errors import Conflict, NotFound, TooLarge, TooManyRequests, Unprocessable
from lrbs.service.pagination import newest_first
from lrbs.service.queue import utcnow
from lrbs.service.settings import Settings
from lrbs.service.tables import DatasetRow, JobRow
from lrbs.service.uploads import UploadError, detect_format, parse_upload, write_canonical

CHUNK = 1 << 20


def blob_path(settings: Settings, sha256: str) -> Path:
    return Path(settings.data_dir) / "datasets" / f"{sha256}.npz"


def receive(source: BinaryIO, settings: Settings) -> tuple[Path, str, int]:
    """Copy an upload to a temporary file, hashing and counting as it goes; 413 past the limit."""
    limit = int(settings.max_upload_mb * 1024 * 1024)
    incoming = Path(settings.data_dir) / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    fd, name = tempfile.mkstemp(dir=incoming)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise TooLarge(too_large(settings))
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name), digest.hexdigest(), size


def too_large(settings: Settings) -> str:
    return (
        f"the upload is larger than this service's limit of {settings.max_upload_mb:g} MiB (setting LRBS_MAX_UPLOAD_MB)"
    )


def prepare(
    path: Path,
    filename: str,
    sha256: str,
    size: int,
    target_column: str | None,
    settings: Settings,
    owner_key_id: str | None = None,
) -> DatasetRow:
    """Parse and validate the received file and write its canonical .npz; the row is not stored yet."""
    try:
        fmt = detect_format(filename)
        parsed = parse_upload(
            path,
            filename,
            target_column=target_column,
            max_array_bytes=int(settings.max_unpacked_mb * (1 << 20)),
            max_columns=settings.max_columns,
        )
    except UploadError as exc:
        message = without_paths(str(exc))
        raise Unprocessable(message, errors=[{"field": "file", "message": message}]) from None
    if parsed.shape.num_outputs > settings.max_classes:
        message = (
            f"the labels or token ids imply {parsed.shape.num_outputs} classes (largest id "
            f"{parsed.shape.num_outputs - 1}); this service accepts at most {settings.max_classes} "
            "(setting LRBS_MAX_CLASSES): number the classes 0 to C-1"
        )
        raise Unprocessable(message, errors=[{"field": "file", "message": message}])
    blob = blob_path(settings, sha256)
    blob.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(dir=blob.parent, suffix=".part")  # one per upload: concurrent ones never share
    os.close(fd)
    try:
        write_canonical(parsed, Path(staging))
        # Atomic, and never replaces: of concurrent identical uploads the first file stays, and every row
        # hashes the file that is really stored (.npz bytes differ between writes: zip timestamps).
        with contextlib.suppress(FileExistsError):
            os.link(staging, blob)
    finally:
        Path(staging).unlink(missing_ok=True)
    return DatasetRow(
        id=dataset_id(sha256, owner_key_id),
        owner_key_id=owner_key_id,
        sha256=sha256,
        data_sha256=file_sha256(blob),
        filename=filename[:300],
        format=fmt,
        target_column=target_column if fmt != "npz" else None,
        size_bytes=size,
        shapes=parsed.shapes,
        dtypes=parsed.dtypes,
        shape=parsed.shape.model_dump(mode="json"),
        created_at=utcnow(),
    )


def dataset_id(sha256: str, owner_key_id: str | None) -> str:
    """The same bytes give the same id for one owner; each API key gets its own dataset of them."""
    if owner_key_id is None:
        return sha256[:32]
    return hashlib.sha256(f"{owner_key_id}:{sha256}".encode()).hexdigest()[:32]


def existing(
    session: Session, sha256: str, target_column: str | None, owner_key_id: str | None = None
) -> DatasetRow | None:
    """The same bytes give the same dataset; with another target column they would not, so say so."""
    found = session.get(DatasetRow, dataset_id(sha256, owner_key_id))
    if found is not None and found.format != "npz" and found.target_column != target_column:
        raise Conflict(
            f"these bytes were uploaded before as dataset {found.id} with target_column "
            f"{found.target_column!r}; delete it first to use target_column {target_column!r}"
        )
    return found


def get(session: Session, dataset_id: str, caller: Caller = OPEN, for_update: bool = False) -> DatasetRow:
    """The dataset, if it exists and `caller` may see it. `for_update` locks its row: deleting a dataset and
    submitting a job on it then happen one after the other, never interleaved (PostgreSQL; SQLite's writers
    are serialised anyway)."""
    query = select(DatasetRow).where(DatasetRow.id == dataset_id)
    found = session.scalars(query.with_for_update() if for_update else query).first()
    if found is None or not caller.owns(found.owner_key_id):
        raise NotFound(f"no uploaded dataset {dataset_id!r}; upload one with POST /v1/datasets")
    return found


def list_datasets(
    session: Session, page_size: int, page_token: str | None, caller: Caller = OPEN
) -> tuple[list[DatasetRow], str | None]:
    query = select(DatasetRow)
    if not caller.admin:
        query = query.where(DatasetRow.owner_key_id == caller.key_id)
    return newest_first(session, query, DatasetRow, page_size, page_token)


def stored_bytes(session: Session, owner_key_id: str) -> int:
    return int(
        session.scalar(select(func.sum(DatasetRow.size_bytes)).where(DatasetRow.owner_key_id == owner_key_id)) or 0
    )


def memory_bytes(row: DatasetRow) -> int:
    """What the canonical arrays take in a worker's memory (float32 features, int64 labels and tokens)."""
    total = 0
    for key, dims in row.shapes.items():
        itemsize = 8 if row.dtypes.get(key, "").startswith(("int", "uint")) else 4
        total += itemsize * math.prod(dims)
    return total


def check_quota(session: Session, owner_key_id: str, size: int, settings: Settings) -> None:
    limit = int(settings.max_stored_mb_per_key * (1 << 20))
    used = stored_bytes(session, owner_key_id)
    if used + size > limit:
        raise TooManyRequests(
            f"this key stores {used} bytes of uploads; {size} more would pass its quota of {limit} bytes "
            "(setting LRBS_MAX_STORED_MB_PER_KEY); delete datasets it no longer needs"
        )


def delete(session: Session, dataset_id: str, settings: Settings, caller: Caller = OPEN) -> None:
    dataset = get(session, dataset_id, caller, for_update=True)
    in_use = session.scalar(
        select(func.count()).where(
            JobRow.dataset_id == dataset_id, JobRow.state.in_((JobState.queued, JobState.running))
        )
    )
    if in_use:
        raise Conflict(
            f"dataset {dataset_id} is used by {in_use} queued or running job(s); cancel them or wait for them to end"
        )
    session.delete(dataset)
    session.flush()
    if not session.scalar(select(func.count()).where(DatasetRow.sha256 == dataset.sha256)):
        blob_path(settings, dataset.sha256).unlink(missing_ok=True)  # no other key's dataset shares these bytes


def shape_for_job(session: Session, dataset: UploadedDataset, caller: Caller = OPEN) -> tuple[DatasetRow, DataShape]:
    try:
        row = get(session, dataset.id, caller, for_update=True)  # held until the job is stored: see get()
    except NotFound as exc:
        raise Unprocessable(exc.detail, errors=[{"field": "dataset.id", "message": exc.detail}]) from None
    return row, DataShape.model_validate(row.shape)
