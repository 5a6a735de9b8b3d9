"""/v1/datasets: upload a dataset once, then use it in jobs as {"source": "upload", "id": ...}."""

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from lrbs.contract.resources import DatasetOut, DatasetPage
from lrbs.service import dataset_store
from lrbs.service.api.deps import CallerDep, SessionsDep, SettingsDep
from lrbs.service.db import reading, transaction
from lrbs.service.tables import DatasetRow

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def to_resource(row: DatasetRow) -> DatasetOut:
    return DatasetOut.model_validate(row, from_attributes=True)


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    responses={
        200: {"description": "These bytes were uploaded before: the same dataset."},
        413: {"description": "Larger than LRBS_MAX_UPLOAD_MB."},
        422: {"description": "Not a dataset lrbs can read; `detail` says why."},
    },
    summary="Upload a dataset",
    description="Multipart field `file`: `.npz` with arrays `x` and `y` (optional `x_val`, `y_val`; no pickles), "
    "or `.csv` / `.parquet` with a `target` column (or name it in the form field `target_column`). Integer `x` "
    "and `y` of shape (N, T) are token data for language models.",
)
async def upload_dataset(
    response: Response,
    sessions: SessionsDep,
    settings: SettingsDep,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="The dataset file.")],
    target_column: Annotated[
        str | None, Form(max_length=300, description="CSV/Parquet: the label column (default target).")
    ] = None,
) -> DatasetOut:
    filename = file.filename or "upload"

    def store() -> tuple[DatasetOut, bool]:
        owner = caller.key_id
        path, sha256, size = dataset_store.receive(file.file, settings)
        try:
            with transaction(sessions) as session:
                found = dataset_store.existing(session, sha256, target_column, owner)
                if found is not None:
                    return to_resource(found), False
                if owner is not None:
                    dataset_store.check_quota(session, owner, size, settings)
            row = dataset_store.prepare(path, filename, sha256, size, target_column, settings, owner)
            try:
                with transaction(sessions) as session:
                    if (found := dataset_store.existing(session, sha256, target_column, owner)) is not None:
                        return to_resource(found), False  # a concurrent upload of the same bytes won
                    session.add(row)
            except IntegrityError:  # ... or won between our check and our insert
                with transaction(sessions) as session:
                    return to_resource(dataset_store.get(session, row.id, caller)), False
            return to_resource(row), True
        finally:
            path.unlink(missing_ok=True)

    dataset, created = await run_in_threadpool(store)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/datasets/{dataset.id}"
    return dataset


@router.get("", response_model=DatasetPage, summary="List uploaded datasets, newest first")
def list_datasets(
    sessions: SessionsDep,
    settings: SettingsDep,
    caller: CallerDep,
    page_size: Annotated[int, Query(ge=1, description="At most LRBS_MAX_PAGE_SIZE.")] = 50,
    page_token: Annotated[str | None, Query(description="next_page_token of the previous page.")] = None,
) -> DatasetPage:
    with reading(sessions) as session:
        rows, token = dataset_store.list_datasets(session, min(page_size, settings.max_page_size), page_token, caller)
        return DatasetPage(datasets=[to_resource(r) for r in rows], next_page_token=token)


@router.get("/{dataset_id}", response_model=DatasetOut, summary="Get a dataset's description")
def get_dataset(dataset_id: str, sessions: SessionsDep, caller: CallerDep) -> DatasetOut:
    with reading(sessions) as session:
        return to_resource(dataset_store.get(session, dataset_id, caller))


@router.delete("/{dataset_id}", status_code=204, summary="Delete a dataset (409 while a queued or running job uses it)")
def delete_dataset(dataset_id: str, sessions: SessionsDep, settings: SettingsDep, caller: CallerDep) -> Response:
    with transaction(sessions) as session:
        dataset_store.delete(session, dataset_id, settings, caller)
    return Response(status_code=204)
