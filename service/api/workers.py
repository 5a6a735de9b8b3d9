"""/v1/workers: who can run jobs, and what they can run (so a user sees why a job waits or fails)."""

from fastapi import APIRouter

from service import spec as s
from service import workers
from service.api.deps import SessionsDep, SettingsDep
from service.db import transaction

router = APIRouter(prefix="/v1/workers", tags=["workers"])


@router.get("", response_model=s.WorkerList, summary="List workers, most recently seen first")
def list_workers(sessions: SessionsDep, settings: SettingsDep) -> s.WorkerList:
    with transaction(sessions) as session:
        return s.WorkerList(workers=workers.list_workers(session, settings))
