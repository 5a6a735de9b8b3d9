"""/v1/workers: who can run jobs, and what they can run (so a user sees why a job waits or fails)."""

from fastapi import APIRouter

from lrbs.contract.resources import WorkerList
from lrbs.service import worker_registry
from lrbs.service.api.deps import CallerDep, SessionsDep, SettingsDep
from lrbs.service.db import reading

router = APIRouter(prefix="/v1/workers", tags=["workers"])


@router.get("", response_model=WorkerList, summary="List workers, most recently seen first")
def list_workers(sessions: SessionsDep, settings: SettingsDep, _caller: CallerDep) -> WorkerList:
    with reading(sessions) as session:
        return WorkerList(workers=worker_registry.list_workers(session, settings))
