"""Keyset pagination (AIP-158): newest first on (created_at, id), stable while rows are added."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Select, or_
from sqlalchemy.orm import Session

from lrbs.service.errors import Problem


def encode_token(row: Any) -> str:
    raw = json.dumps([row.created_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created, row_id = json.loads(raw)
        return datetime.fromisoformat(created), str(row_id)
    except (ValueError, TypeError, RecursionError) as exc:
        raise Problem("page_token is not one this API issued; pass next_page_token from the previous page") from exc


def newest_first(
    session: Session, query: Select, model: Any, page_size: int, page_token: str | None, rows: bool = False
) -> tuple[list[Any], str | None]:
    """One page of `query` and the token of the next page, if any. `query` selects whole `model` objects or, with
    `rows`, columns (`model` then may be a table's columns: a Core select, plain rows)."""
    query = query.order_by(model.created_at.desc(), model.id.desc()).limit(page_size + 1)
    if page_token:
        created, last_id = decode_token(page_token)
        query = query.where(or_(model.created_at < created, (model.created_at == created) & (model.id < last_id)))
    page = list(session.execute(query).all() if rows else session.scalars(query).all())
    if len(page) > page_size:
        return page[:page_size], encode_token(page[page_size - 1])
    return page, None
