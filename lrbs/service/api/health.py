"""Liveness and readiness probes."""

from fastapi import APIRouter
from sqlalchemy import text

from lrbs.service.api.deps import SessionsDep
from lrbs.service.db import transaction

router = APIRouter(tags=["health"])


@router.head("/healthz", include_in_schema=False)  # load balancers and uptime checks often send HEAD
@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:  # on the event loop: answers at once even when every thread waits on the DB
    return {"status": "ok"}


@router.get("/readyz", summary="The database answers")
def readyz(sessions: SessionsDep) -> dict[str, str]:
    with transaction(sessions) as session:  # a writing transaction: ready means jobs can be submitted too
        session.execute(text("SELECT 1"))
    return {"status": "ready"}
