"""API keys: who is calling, and what they may see.

A key is `lrbs_<id>_<secret>`: 256 random bits, printed once by `lrbs keys create` and stored only as its
sha256 (a random token needs no slow hash). Once any key exists every public request needs one; a key sees
only the jobs and datasets it created, an admin key sees all. With no key at all the API is open (the
embedded default on loopback), and every caller is treated as an admin.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from lrbs.service.errors import Conflict, NotFound, Unauthorized
from lrbs.service.tables import ApiKeyRow

PREFIX = "lrbs_"


@dataclass(frozen=True)
class Caller:
    key_id: str | None  # None: the API is open (no key exists)
    admin: bool

    def owns(self, owner_key_id: str | None) -> bool:
        return self.admin or owner_key_id == self.key_id


OPEN = Caller(key_id=None, admin=True)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def create(session: Session, name: str, admin: bool = False) -> tuple[ApiKeyRow, str]:
    """A new key; the plain key is returned here and never again."""
    if session.scalars(select(ApiKeyRow).where(ApiKeyRow.name == name, ApiKeyRow.revoked_at.is_(None))).first():
        raise Conflict(f"an active key is already named {name!r}; revoke it first or pick another name")
    key_id = secrets.token_hex(6)
    plain = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    row = ApiKeyRow(id=key_id, name=name, key_sha256=digest(plain), admin=admin, created_at=datetime.now(UTC))
    session.add(row)
    session.flush()
    return row, plain


def list_keys(session: Session) -> list[ApiKeyRow]:
    return list(session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)))


def revoke(session: Session, name_or_id: str) -> ApiKeyRow:
    row = session.scalars(
        select(ApiKeyRow).where(
            or_(ApiKeyRow.id == name_or_id, ApiKeyRow.name == name_or_id), ApiKeyRow.revoked_at.is_(None)
        )
    ).first()
    if row is None:
        raise NotFound(f"no active key with id or name {name_or_id!r}; `lrbs keys list` shows them")
    row.revoked_at = datetime.now(UTC)
    return row


def any_active(session: Session) -> bool:
    return session.scalars(select(ApiKeyRow.id).where(ApiKeyRow.revoked_at.is_(None)).limit(1)).first() is not None


def authenticate(session: Session, authorization: str) -> Caller:
    """The caller behind an `Authorization` header value (401 when keys exist and it names none).

    A key is looked up first, so a keyed request costs one query; only a request without a known key asks
    whether any key exists (none: the API is open)."""
    scheme, _, key = authorization.partition(" ")
    found = None
    if scheme.lower() == "bearer" and key.startswith(PREFIX):
        found = session.scalars(
            select(ApiKeyRow).where(ApiKeyRow.key_sha256 == digest(key.strip()), ApiKeyRow.revoked_at.is_(None))
        ).first()
    if found is None:
        if not any_active(session):
            return OPEN
        raise Unauthorized(
            "this service needs an API key: send 'Authorization: Bearer <key>' "
            "(an operator creates one with `lrbs keys create --name <team>`)"
        )
    return Caller(key_id=found.id, admin=found.admin)
