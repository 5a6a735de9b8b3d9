"""/v1/jobs: submit, read, list and cancel advice jobs."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Request, Response
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from lrbs.contract.builtins import BuiltinDatasetSpec
from lrbs.contract.job_spec import JobSpec, UploadedDataset
from lrbs.contract.resources import Job, JobPage, JobState, WorkerOut
from lrbs.service import admission, dataset_store, idempotency, queue, scheduling, worker_registry
from lrbs.service.api.deps import CallerDep, SessionsDep, SettingsDep
from lrbs.service.db import reading, transaction
from lrbs.service.errors import Unprocessable
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
    `summary`: a row read by queue.list_jobs(summary=True), whose result comes without its curves."""
    if summary:
        fields = {name: getattr(job, name) for name in Job.model_fields if name not in ("result", "waiting_for")}
        trimmed = job.result_summary
        result = {**dict.fromkeys(queue.CURVE_KEYS), **trimmed} if trimmed is not None else None
        resource = Job.model_validate({**fields, "result": result})
    else:
        resource = Job.model_validate(job, from_attributes=True)
    if workers is not None and job.state == JobState.queued:
        need = scheduling.Requirements.model_validate(job.requirements) if job.requirements else None
        resource.waiting_for = scheduling.waiting_for(need, workers)
    return resource


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
    response: Response,
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
) -> Job:
    check_limits(spec, settings)
    digest = idempotency.body_digest(spec)

    def write() -> Job:
        with transaction(sessions) as session:
            if idempotency_key and (earlier := idempotency.replay(session, caller, idempotency_key, digest)):
                return to_resource(earlier)
            dataset_id, need = None, None
            workers = worker_registry.list_workers(session, settings)
            largest = worker_registry.largest_memory_gb(workers)
            if isinstance(spec.dataset, UploadedDataset):  # its shape is known only from the stored upload
                row, shape = dataset_store.shape_for_job(session, spec.dataset, caller)
                try:
                    spec.resolve_for(shape)
                except ValueError as exc:
                    raise Unprocessable(str(exc), errors=[{"field": "model", "message": str(exc)}]) from None
                dataset_id = row.id
                need = admission.check(spec, shape, None, settings, largest, data=dataset_store.memory_bytes(row))
            elif isinstance(spec.dataset, BuiltinDatasetSpec):
                need = admission.check(spec, spec.dataset.shape(), spec.dataset.n_samples(), settings, largest)
            job = queue.submit(
                session, spec, settings, dataset_id=dataset_id, owner_key_id=caller.key_id,
                requirements=scheduling.requirements(spec, need),
            )  # fmt: skip
            if idempotency_key:
                idempotency.remember(session, caller, idempotency_key, digest, job.id)
            return to_resource(job, workers)

    try:
        job = await run_in_threadpool(write)
    except IntegrityError:  # the same key arrived twice at once: the other request made the job
        job = await run_in_threadpool(write)
    request.app.state.doorbell.ring()
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


@router.get("/{job_id}", response_model=Job, summary="Get a job")
def get_job(job_id: str, sessions: SessionsDep, settings: SettingsDep, caller: CallerDep) -> Job:
    with reading(sessions) as session:
        job = queue.get(session, job_id, caller)
        return to_resource(
            job, worker_registry.list_workers(session, settings) if job.state == JobState.queued else None
        )


@router.get("", response_model=JobPage, summary="List jobs, newest first")
def list_jobs(
    sessions: SessionsDep,
    settings: SettingsDep,
    caller: CallerDep,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    label: Annotated[
        list[str], Query(description="Only jobs with this label, as key:value; repeat to require several.")
    ] = [],  # noqa: B006 (FastAPI copies the default)
    view: Annotated[
        Literal["full", "summary"], Query(description="summary leaves each result's curves out: lists stay small.")
    ] = "full",
    page_size: Annotated[int, Query(ge=1, description="Jobs per page (at most LRBS_MAX_PAGE_SIZE).")] = 50,
    page_token: Annotated[str | None, Query(description="next_page_token of the previous page.")] = None,
) -> JobPage:
    labels = {}
    for item in label:
        key, sep, value = item.partition(":")
        if not sep or not key:
            message = f"label {item!r} is not key:value; accepted: e.g. label=team:vision"
            raise Unprocessable(message, errors=[{"field": "label", "message": message}])
        labels[key] = value
    page_size = min(page_size, settings.max_page_size)
    with reading(sessions) as session:
        summary = view == "summary"
        jobs, token = queue.list_jobs(session, state, page_size, page_token, caller, labels, summary=summary)
        workers = (
            worker_registry.list_workers(session, settings) if any(j.state == JobState.queued for j in jobs) else None
        )
        resources = [to_resource(j, workers, summary=summary) for j in jobs]
    return JobPage(jobs=resources, next_page_token=token)


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
