"""/v1/worker: the pull protocol workers speak. Every call needs the worker token."""

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from lrbs.contract.job_spec import JobSpec
from lrbs.contract.resources import JobState, WorkerInfo
from lrbs.contract.worker_messages import (
    Cancelled,
    ClaimRequest,
    Completion,
    Failure,
    Heartbeat,
    HeartbeatReply,
    Lease,
    Registration,
)
from lrbs.service import dataset_store, queue, worker_registry
from lrbs.service.api.deps import SessionsDep, SettingsDep, WorkerAuth
from lrbs.service.db import transaction
from lrbs.service.errors import NotFound

# Workers' own protocol: not part of the public OpenAPI document (clients never call it).
router = APIRouter(prefix="/v1/worker", tags=["worker"], dependencies=[WorkerAuth], include_in_schema=False)

# Jobs posted through another replica are not rung on this one's doorbell: look again this often.
RECHECK_SECONDS = 1.0


@router.post(
    "/claim",
    response_model=Lease,
    responses={204: {"description": "No job arrived within wait_seconds."}},
    summary="Claim the oldest queued job (long-poll)",
)
async def claim(body: ClaimRequest, request: Request, sessions: SessionsDep, settings: SettingsDep):
    def claim_once() -> Lease | None:
        while True:
            with transaction(sessions) as session:
                job = queue.claim(session, body.worker_id, settings)
                if job is None:
                    return None
                if job.started_at is not None:
                    wait = (job.started_at - job.created_at).total_seconds()
                    request.app.state.metrics.queue_wait.observe(wait)
                try:
                    spec = JobSpec.model_validate(job.spec)
                except ValidationError as exc:  # a stored spec this release cannot read fails alone
                    message = f"the stored job spec no longer validates ({len(exc.errors())} errors); submit it again"
                    queue.fail(session, job.id, job.lease_token or "", message, retryable=False, kind="invalid_job")
                    continue
                data_sha = dataset_store.get(session, job.dataset_id).data_sha256 if job.dataset_id else None
            return Lease(
                job_id=job.id,
                lease_token=job.lease_token,
                lease_seconds=settings.lease_seconds,
                attempt=job.attempts,
                max_run_seconds=settings.max_run_seconds,
                spec=spec,
                dataset_sha256=data_sha,
            )

    def release(lease: Lease) -> None:
        with transaction(sessions) as session:
            queue.release(session, lease.job_id, lease.lease_token)

    await run_in_threadpool(mark_seen, request, sessions, settings, body.worker_id)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + body.wait_seconds
    doorbell = request.app.state.doorbell
    while True:
        # Never lease a job to a worker that hung up; let a service that is stopping stop.
        if request.app.state.draining or await request.is_disconnected():
            return Response(status_code=204)
        lease = await run_in_threadpool(claim_once)
        if lease is not None:
            if await request.is_disconnected():  # the worker hung up while we claimed: hand the job back
                await run_in_threadpool(release, lease)
                request.app.state.doorbell.ring()
                return Response(status_code=204)
            return lease
        remaining = deadline - loop.time()
        if remaining <= 0:
            return Response(status_code=204)
        await doorbell.wait(min(remaining, RECHECK_SECONDS))


@router.post("/jobs/{job_id}:heartbeat", response_model=HeartbeatReply, summary="Extend the lease")
def heartbeat(job_id: str, body: Heartbeat, sessions: SessionsDep, settings: SettingsDep):
    with transaction(sessions) as session:
        cancel = queue.heartbeat(session, job_id, body.lease_token, body.progress, settings)
    return HeartbeatReply(cancel_requested=cancel)


@router.post("/jobs/{job_id}:complete", status_code=204, summary="Report the result")
def complete(job_id: str, body: Completion, request: Request, sessions: SessionsDep) -> Response:
    with transaction(sessions) as session:
        succeeded = queue.complete(session, job_id, body.lease_token, body.result)
    if succeeded:
        for phase, seconds in body.result.phase_seconds.items():
            request.app.state.metrics.phase_time.labels(phase).observe(seconds)
    return Response(status_code=204)


@router.post("/jobs/{job_id}:fail", status_code=204, summary="Report a failed attempt")
async def fail(job_id: str, body: Failure, request: Request, sessions: SessionsDep) -> Response:
    def write() -> str:
        with transaction(sessions) as session:
            return queue.fail(session, job_id, body.lease_token, body.message, body.retryable, body.kind).state

    if await run_in_threadpool(write) == JobState.queued:
        request.app.state.doorbell.ring()
    return Response(status_code=204)


@router.post("/jobs/{job_id}:cancelled", status_code=204, summary="Confirm a cancelled job stopped")
def cancelled(job_id: str, body: Cancelled, sessions: SessionsDep) -> Response:
    with transaction(sessions) as session:
        queue.mark_cancelled(session, job_id, body.lease_token)
    return Response(status_code=204)


@router.post("/register", status_code=204, summary="Say what this worker can run")
def register(body: Registration, request: Request, sessions: SessionsDep, settings: SettingsDep) -> Response:
    mark_seen(request, sessions, settings, body.worker_id, body.info)
    return Response(status_code=204)


def mark_seen(
    request: Request, sessions: SessionsDep, settings: SettingsDep, worker_id: str, info: WorkerInfo | None = None
) -> None:
    """Record that a worker called in; if that changes who is online for scheduling, this replica's list of online
    workers is dropped, after the commit, so the next request that reads them sees this one."""
    with transaction(sessions) as session:
        changed = worker_registry.seen(session, settings, worker_id, info)
    if changed:
        request.app.state.online_workers.clear()


@router.get(
    "/datasets/{dataset_id}", summary="Download an uploaded dataset as canonical .npz", response_class=FileResponse
)
def download_dataset(dataset_id: str, sessions: SessionsDep, settings: SettingsDep) -> FileResponse:
    with transaction(sessions) as session:
        row = dataset_store.get(session, dataset_id)
    blob = dataset_store.blob_path(settings, row.sha256)
    if not blob.exists():
        raise NotFound(
            f"the file of dataset {dataset_id} is missing from this service's data folder (LRBS_DATA_DIR); "
            "upload the dataset again"
        )
    return FileResponse(
        blob,
        media_type="application/octet-stream",
        headers={"X-Content-SHA256": row.data_sha256},
    )
