"""Idempotency-Key on submits: the same key and body replay the first answer; the same key with another body
is refused. Keys are scoped to the API key that sent them, and go away with their job."""

from __future__ import annotations

import hashlib

from sqlalchemy.orm import Session

from lrbs.contract.job_spec import JobSpec
from lrbs.service import queue
from lrbs.service.api_keys import Caller
from lrbs.service.errors import Unprocessable
from lrbs.service.tables import IdempotencyKeyRow, JobRow


def record_id(caller: Caller, key: str) -> str:
    return hashlib.sha256(f"{caller.key_id or ''}:{key}".encode()).hexdigest()


def body_digest(spec: JobSpec) -> str:
    """What the client sent, validated: fields left at their defaults are left out, so a retry of the same body
    still matches after an upgrade adds a field with a default."""
    return hashlib.sha256(spec.model_dump_json(exclude_unset=True).encode()).hexdigest()


def replay(session: Session, caller: Caller, key: str, digest: str) -> JobRow | None:
    """The job this key created before, or None; a 422 if the key came with another body then."""
    found = session.get(IdempotencyKeyRow, record_id(caller, key))
    if found is None:
        return None
    if found.body_sha256 != digest:
        message = (
            f"Idempotency-Key {key!r} was used for another job spec (job {found.job_id}); "
            "accepted: the same key only to retry the same request, a new key for a new job"
        )
        raise Unprocessable(message, errors=[{"field": "Idempotency-Key", "message": message}])
    return queue.get(session, found.job_id, caller)


def remember(session: Session, caller: Caller, key: str, digest: str, job_id: str) -> None:
    session.add(IdempotencyKeyRow(id=record_id(caller, key), body_sha256=digest, job_id=job_id,
                                  created_at=queue.utcnow()))  # fmt: skip
