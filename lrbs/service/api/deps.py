"""Request dependencies as Annotated aliases: routers declare what they need, nothing more."""

import secrets
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from lrbs.service import api_keys
from lrbs.service.api_keys import Caller
from lrbs.service.caches import TTLCache
from lrbs.service.db import reading
from lrbs.service.errors import Unauthorized
from lrbs.service.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions


def require_worker(request: Request) -> None:
    """Worker endpoints take `Authorization: Bearer <LRBS_WORKER_TOKEN>`."""
    expected = request.app.state.settings.worker_token
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # Compared as bytes: a token with non-ASCII characters is simply wrong, not a server error.
    given = token.encode("utf-8", "surrogateescape")
    if not expected or scheme.lower() != "bearer" or not secrets.compare_digest(given, expected.encode()):
        raise Unauthorized(
            "worker endpoints need the header 'Authorization: Bearer <worker token>' "
            "(LRBS_WORKER_TOKEN on the service; `lrbs worker --token`)"
        )


async def get_caller(request: Request) -> Caller:
    """Public endpoints: who is calling (an API key, or anyone while no key exists). Worker tokens are not keys.

    A key found valid is remembered for LRBS_API_KEY_CACHE_SECONDS, so most requests skip the database and the
    thread-pool hop here; only valid keys are remembered, so a new key closes an open API at once."""
    authorization = request.headers.get("authorization", "")
    known: TTLCache[Caller] = request.app.state.key_cache
    digest = api_keys.digest(authorization)
    if (caller := known.get(digest)) is not None:
        return caller

    def authenticate() -> Caller:
        with reading(request.app.state.sessions) as session:
            return api_keys.authenticate(session, authorization)

    caller = await run_in_threadpool(authenticate)
    if caller.key_id is not None:
        known.put(digest, caller)
    return caller


SettingsDep = Annotated[Settings, Depends(get_settings)]
CallerDep = Annotated[Caller, Depends(get_caller)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
WorkerAuth = Depends(require_worker)
