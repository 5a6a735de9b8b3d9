"""Operator limits on what one job may ask for (settings), checked on top of the spec's own validation."""

from lrbs.contract.job_spec import AutoBatchSizes, JobSpec
from lrbs.service.errors import Unprocessable
from lrbs.service.settings import Settings


def check_limits(spec: JobSpec, settings: Settings) -> None:
    errors: list[dict[str, str]] = []

    def over(field: str, value: int, limit: int, setting: str) -> None:
        if value > limit:
            errors.append(
                {
                    "field": field,
                    "message": f"{value} is over this service's limit of {limit} (setting LRBS_{setting})",
                }
            )

    over("lr_range.num_steps", spec.lr_range.num_steps, settings.max_lr_steps, "MAX_LR_STEPS")
    over("lr_range.batch_size", spec.lr_range.batch_size, settings.max_batch_size, "MAX_BATCH_SIZE")
    if isinstance(spec.batch_sizes, AutoBatchSizes):
        over("batch_sizes.max", spec.batch_sizes.max, settings.max_batch_size, "MAX_BATCH_SIZE")
        candidates = spec.batch_sizes.sizes()
    else:
        candidates = spec.batch_sizes or []
        for i, size in enumerate(candidates):
            over(f"batch_sizes.{i}", size, settings.max_batch_size, "MAX_BATCH_SIZE")
    over("batch_sizes", len(candidates), settings.max_batch_candidates, "MAX_BATCH_CANDIDATES")
    n_samples = getattr(getattr(spec.dataset, "params", None), "n_samples", None)  # generated built-ins only
    if isinstance(n_samples, int):
        over("dataset.params.n_samples", n_samples, settings.max_samples, "MAX_SAMPLES")
    if errors:
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise Unprocessable(detail, errors=errors)
