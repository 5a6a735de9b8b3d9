"""/v1/jobs/{id}/plots: a finished job's result drawn server-side, as SVG or PNG."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response

from lrbs import plots
from lrbs.contract.results import Result
from lrbs.service import queue
from lrbs.service.api.deps import CallerDep, SessionsDep
from lrbs.service.caches import LRU
from lrbs.service.db import reading
from lrbs.service.errors import Conflict, NotFound

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
MEDIA_TYPES = {"svg": "image/svg+xml", "png": "image/png"}


class PlotName(StrEnum):
    lr_range_svg = "lr_range.svg"
    lr_range_png = "lr_range.png"
    batch_size_svg = "batch_size.svg"
    batch_size_png = "batch_size.png"


PARTS: dict[PlotName, tuple[plots.PlotKind, plots.Format]] = {
    PlotName.lr_range_svg: ("lr_range", "svg"),
    PlotName.lr_range_png: ("lr_range", "png"),
    PlotName.batch_size_svg: ("batch_size", "svg"),
    PlotName.batch_size_png: ("batch_size", "png"),
}


async def get_plot_cache(request: Request) -> LRU[bytes]:
    return request.app.state.plot_cache


PlotCacheDep = Annotated[LRU[bytes], Depends(get_plot_cache)]
IMAGE = {"schema": {"type": "string", "format": "binary"}}


@router.get(
    "/{job_id}/plots/{plot}",
    summary="Plot a finished job's result",
    description="`lr_range`: loss against LR (log scale): each sweep faint, the median and its smoothed loss "
    "bold, every rule's suggestion, the recommended LR with its safe range, where the sweep diverged and the "
    "confirmation trainings' validation loss. `batch_size`: samples/s, peak memory (with its linear fit and "
    "the largest batch that fits) and predicted time to target against the batch size, with the chosen batch "
    "and the gradient noise scale. 409 until the job has succeeded; 404 for `batch_size` when the job's spec "
    "gave no `batch_sizes`.",
    response_class=Response,
    responses={200: {"description": "The plot.", "content": {"image/svg+xml": IMAGE, "image/png": IMAGE}}},
)
def get_job_plot(
    job_id: str,
    plot: Annotated[PlotName, Path(description="Which plot, and as SVG or PNG.")],
    sessions: SessionsDep,
    caller: CallerDep,
    cache: PlotCacheDep,
) -> Response:
    with reading(sessions) as session:
        job = queue.get(session, job_id, caller)
        state, stored, updated_at = job.state, job.result, job.updated_at
    if stored is None:
        raise Conflict(f"job {job_id!r} is {state}: plots exist once it has succeeded")
    kind, fmt = PARTS[plot]
    key = (job_id, plot.value, updated_at)  # a finished result never changes; updated_at retires it if the job does
    content = cache.get(key)
    if content is None:
        try:
            content = plots.render(Result.model_validate(stored), kind, fmt)
        except plots.NoPlot as exc:
            raise NotFound(f"no {kind} plot for job {job_id!r}: {exc}") from None
        cache.put(key, content)
    return Response(content, media_type=MEDIA_TYPES[fmt], headers={"Cache-Control": "private, max-age=3600"})
