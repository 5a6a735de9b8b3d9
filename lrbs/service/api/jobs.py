"""/v1/jobs: submit, read, list and cancel advice jobs."""

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, NamedTuple

from fastapi import APIRouter, Body, Header, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer, with_expression
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State

from lrbs.contract.builtins import BuiltinDatasetSpec
from lrbs.contract.job_spec import JobSpec, UploadedDataset
from lrbs.contract.resources import Job, JobPage, JobState, WorkerOut
from lrbs.service import admission, dataset_store, idempotency, queue, scheduling, worker_registry
from lrbs.service.api.deps import CallerDep, SessionsDep, SettingsDep
from lrbs.service.caches import LRU
from lrbs.service.db import reading, transaction
from lrbs.service.errors import NotFound, Unprocessable
from lrbs.service.limits import check_limits
from lrbs.service.tables import JobRow

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_BASE = {
    "model": {"name": "mlp", "params": {"hidden": [64, 64]}},
    "dataset": {"name": "synthetic_classification", "params": {"n_samples": 2048}},
    "optimizer": {"name": "sgd", "params": {"momentum": 0.9}},
}
SUBMIT_EXAMPLES: dict[str, Any] = {
    "lr_only": {"summary": "LR advice only (the minimum)", "value": _BASE},
    "lr_and_batch": {
        "summary": "LR and batch-size advice",
        "value": {
            **_BASE,
            "batch_sizes": {"auto": True, "min": 16, "max": 512},
            "lr_scaling": "auto",
            "target_effective_batch": 1024,
            "schedule": "cosine",
            "train_steps": 5000,
        },
    },
    "uploaded_dataset": {
        "summary": "On a dataset uploaded with POST /v1/datasets",
        "value": {**_BASE, "dataset": {"source": "upload", "id": "<id from POST /v1/datasets>"}},
    },
    "plugin_model": {
        "summary": "A team's own model, allow-listed on the workers",
        "value": {
            **_BASE,
            "model": {"source": "plugin", "name": "team_models.vision:small_resnet", "params": {"width": 32}},
            "dataset": {"name": "synthetic_images"},
            "precision": "bf16",
        },
    },
}


def to_resource(job: JobRow, workers: list[WorkerOut] | None = None, summary: bool = False) -> Job:
    """The API's view of a job; given the workers, a queued job says what it waits for if none can run it.
    `summary`: the job's `result_summary` (its result without the curves) stands for its result."""
    if summary:
        fields = {name: getattr(job, name) for name in Job.model_fields if name not in ("result", "waiting_for")}
        trimmed = job.result_summary
        result = {**dict.fromkeys(queue.CURVE_KEYS), **trimmed} if trimmed is not None else None
        resource = Job.model_validate({**fields, "result": result})
    else:
        resource = Job.model_validate(job, from_attributes=True)
    resource.waiting_for = waiting_for(job, workers)
    return resource


def waiting_for(job: queue.JobHead, workers: list[WorkerOut] | None) -> str | None:
    """What a queued job waits for, given the online workers (None: nothing, or the workers were not read)."""
    if workers is None or job.state != JobState.queued:
        return None
    need = scheduling.Requirements.model_validate(job.requirements) if job.requirements else None
    return scheduling.waiting_for(need, workers)


@router.post(
    "",
    status_code=202,
    response_model=Job,
    summary="Submit a job",
    description="Queues an LR range test. Answers 202 with `Location: /v1/jobs/{id}`; poll it for "
    "`state`, `progress` and, once succeeded, `result`.",
)
async def submit_job(
    spec: Annotated[JobSpec, Body(openapi_examples=SUBMIT_EXAMPLES)],
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    caller: CallerDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=200,
            description="Retry a submit safely: the same key and body answer with the job the first request made.",
        ),
    ] = None,
):
    check_limits(spec, settings)
    digest = idempotency.body_digest(spec) if idempotency_key else ""

    def write() -> tuple[str, bytes]:
        # Only the insert holds SQLite's one write lock (every writer waits for it): a replay, the online workers and
        # a built-in dataset's size are read before it, and the answer is encoded after it. Two requests with one
        # Idempotency-Key at once: the second insert fails (IntegrityError) and its retry replays the first.
        # With no key and the online workers in memory there is nothing to read: no connection for it.
        kept_workers = request.app.state.online_workers
        online = worker_registry.kept_online_workers(kept_workers)
        if idempotency_key or online is None:
            with reading(sessions) as session:
                if idempotency_key and (earlier := idempotency.replay(session, caller, idempotency_key, digest)):
                    return earlier.id, to_resource(earlier).model_dump_json(by_alias=True).encode()
                online = worker_registry.online_workers(session, settings, kept_workers)
        largest = worker_registry.largest_memory_gb(online)
        need = None
        if isinstance(spec.dataset, BuiltinDatasetSpec):
            need = admission.check(spec, spec.dataset.shape(), spec.dataset.n_samples(), settings, largest)
        with transaction(sessions) as session:
            dataset_id = None
            if isinstance(spec.dataset, UploadedDataset):  # its shape is known only from the stored upload
                row, shape = dataset_store.shape_for_job(session, spec.dataset, caller)  # locked until stored
                try:
                    spec.resolve_for(shape)
                except ValueError as exc:
                    raise Unprocessable(str(exc), errors=[{"field": "model", "message": str(exc)}]) from None
                dataset_id = row.id
                need = admission.check(spec, shape, None, settings, largest, data=dataset_store.memory_bytes(row))
            job = queue.submit(
                session, spec, settings, dataset_id=dataset_id, owner_key_id=caller.key_id,
                requirements=scheduling.requirements(spec, need),
            )  # fmt: skip
            if idempotency_key:
                idempotency.remember(session, caller, idempotency_key, digest, job.id)
        return job.id, to_resource(job, online).model_dump_json(by_alias=True).encode()

    try:
        job_id, body = await run_in_threadpool(write)
    except IntegrityError:  # the same key arrived twice at once: the other request made the job
        job_id, body = await run_in_threadpool(write)
    request.app.state.doorbell.ring()
    return Response(body, status_code=202, media_type="application/json", headers={"Location": f"/v1/jobs/{job_id}"})


View = Literal["full", "summary"]


class KeptBody(NamedTuple):
    """A job's JSON as `serialized` built it, with what it was built from."""

    updated_at: datetime
    # The online workers it saw: the replica reuses one list for LRBS_WORKER_LIST_CACHE_SECONDS, and while a
    # queued job is polled with that same list, its waiting_for cannot have changed (no need to work it out).
    workers: list[WorkerOut] | None
    waiting_for: str | None
    body: bytes


Bodies = LRU[KeptBody]


def serialized(
    session: Session, jobs: Sequence[queue.JobHead], view: View, state: State, complete: bool = False
) -> list[bytes]:
    """The JSON of each job as the API shows it, for GET /v1/jobs/{id} and list pages alike.

    Clients poll, and a job's body changes only when its row does (its updated_at) or, while it is queued, when
    what it waits for does: each body is kept per replica with those two, so a repeat costs reading a few columns
    (still there? still theirs? the same?) and the online workers, instead of validating and encoding the spec
    and result again (tens of kB for an ended job). `jobs` come with those columns only (rows from
    queue.list_jobs, queue.get with head_only), and the rest of the rows not served from memory is read here in
    one query; or
    `complete`: whole rows (with the result for the full view). `state`: the app's, with its caches and settings."""
    cache: Bodies = state.job_bodies
    queued = any(job.state == JobState.queued for job in jobs)
    workers = worker_registry.online_workers(session, state.settings, state.online_workers) if queued else None
    bodies: dict[str, bytes] = {}
    for job in jobs:
        hit = cache.get((job.id, view))
        if hit is None or hit.updated_at != job.updated_at:
            continue
        if job.state == JobState.queued and hit.workers is not workers:
            if hit.waiting_for != waiting_for(job, workers):
                continue
            cache.put((job.id, view), hit._replace(workers=workers))  # still current with these workers
        bodies[job.id] = hit.body
    rows: Sequence[queue.JobHead] = [job for job in jobs if job.id not in bodies]
    if rows and not complete:
        query = select(JobRow).where(JobRow.id.in_([row.id for row in rows]))
        if view == "summary":
            query = query.options(
                defer(JobRow.result), with_expression(JobRow.result_summary, queue.without_curves(session))
            )
        rows = list(session.scalars(query.execution_options(populate_existing=True)))
    for row in rows:
        assert isinstance(row, JobRow)  # whole, from `complete` or the query above
        resource = to_resource(row, workers, summary=view == "summary")
        body = resource.model_dump_json(by_alias=True).encode()
        cache.put((row.id, view), KeptBody(row.updated_at, workers, resource.waiting_for, body))
        bodies[row.id] = body
    return [bodies[job.id] for job in jobs if job.id in bodies]  # a job deleted in between: left out


@router.get("/{job_id}", response_model=Job, summary="Get a job")
async def get_job(job_id: str, request: Request, sessions: SessionsDep, settings: SettingsDep, caller: CallerDep):
    # One thread-pool hop for all the work; the body is built by `serialized`, as FastAPI would build it.
    def read() -> bytes:
        state = request.app.state
        with reading(sessions) as session:
            known = state.job_bodies.get((job_id, "full")) is not None  # then its head may be enough
            job = queue.get(session, job_id, caller, head_only=known)
            found = serialized(session, [job], "full", state, complete=not known)
            if not found:  # deleted since it was looked up
                raise NotFound(f"no job {job_id!r}")
            return found[0]

    return Response(await run_in_threadpool(read), media_type="application/json")


@router.get("", response_model=JobPage, summary="List jobs, newest first")
async def list_jobs(
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    caller: CallerDep,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    label: Annotated[
        list[str], Query(description="Only jobs with this label, as key:value; repeat to require several.")
    ] = [],  # noqa: B006 (FastAPI copies the default)
    view: Annotated[View, Query(description="summary leaves each result's curves out: lists stay small.")] = "full",
    page_size: Annotated[int, Query(ge=1, description="Jobs per page (at most LRBS_MAX_PAGE_SIZE).")] = 50,
    page_token: Annotated[str | None, Query(description="next_page_token of the previous page.")] = None,
):
    labels = {}
    for item in label:
        key, sep, value = item.partition(":")
        if not sep or not key:
            message = f"label {item!r} is not key:value; accepted: e.g. label=team:vision"
            raise Unprocessable(message, errors=[{"field": "label", "message": message}])
        labels[key] = value
    page_size = min(page_size, settings.max_page_size)

    def read() -> bytes:
        with reading(sessions) as session:
            jobs, token = queue.list_jobs(session, state, page_size, page_token, caller, labels)
            bodies = serialized(session, jobs, view, request.app.state)
        # JobPage's JSON, assembled from the bodies in one copy: {"jobs": [...], "next_page_token": ...}. (Adding
        # up the parts instead copied a full page, up to 1.3 MB, three times: 2.8 ms against 0.04 ms.)
        separated = [part for body in bodies for part in (b",", body)][1:]
        tail = b'],"next_page_token":' + json.dumps(token).encode() + b"}"
        return b"".join([b'{"jobs":[', *separated, tail])

    return Response(await run_in_threadpool(read), media_type="application/json")


@router.post(
    "/{job_id}:cancel",
    response_model=Job,
    summary="Cancel a job",
    description="A queued job ends `cancelled` at once; a running one at its next step "
    "(`cancel_requested` is true meanwhile). A job that already ended answers 409.",
)
def cancel_job(job_id: str, sessions: SessionsDep, caller: CallerDep) -> Job:
    with transaction(sessions) as session:
        return to_resource(queue.cancel(session, job_id, caller))


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Delete an ended job",
    description="Removes a succeeded, failed or cancelled job and its result. A queued or running job answers "
    "409: cancel it first.",
)
def delete_job(job_id: str, sessions: SessionsDep, caller: CallerDep) -> Response:
    with transaction(sessions) as session:
        queue.delete(session, job_id, caller)
    return Response(status_code=204)
