"""Admission at submit: refuse what no worker could run, before it is queued, with the estimate and the limit.

Estimates need no torch: a built-in model's parameter count is exact (`param_count`, checked against the real
networks by a test), its activation memory a rough fp32 figure per sample; the data size comes from the
built-in dataset's params or the upload's stored shapes. Plugin models and plugin data cannot be sized
before they run: their jobs rely on the worker's memory ceiling instead.
"""

from __future__ import annotations

import math

from lrbs.contract.builtins import BuiltinModelSpec
from lrbs.contract.job_spec import AutoBatchSizes, JobSpec
from lrbs.contract.shapes import DataShape
from lrbs.service.errors import Unprocessable
from lrbs.service.settings import Settings

GB = 2**30
OPTIMIZER_STATES = {"sgd": 1, "adam": 2, "adamw": 2, "rmsprop": 2, "adagrad": 1}  # tensors per parameter, at most


def data_bytes(shape: DataShape, n_samples: int) -> int:
    """x and y as workers hold them: float32 features, int64 labels and token ids."""
    sample = math.prod(shape.input_shape)
    if shape.task == "language_modeling":
        return n_samples * sample * 8 * 2
    y = 8 if shape.task == "classification" else 4 * shape.num_outputs
    return n_samples * (sample * 4 + y)


def largest_batch(spec: JobSpec) -> int:
    sizes = [spec.lr_range.batch_size]
    if isinstance(spec.batch_sizes, AutoBatchSizes):
        sizes.append(spec.batch_sizes.max)
    elif spec.batch_sizes:
        sizes.append(max(spec.batch_sizes))
    return max(sizes)


def memory_bytes(spec: JobSpec, shape: DataShape, params: int, data: int) -> int:
    """Weights, gradients and optimizer state (fp32), the largest batch's activations, and the data itself."""
    states = OPTIMIZER_STATES.get(getattr(spec.optimizer, "name", ""), 2)
    assert isinstance(spec.model, BuiltinModelSpec)
    activations = spec.model.activation_bytes(shape) * largest_batch(spec)
    return params * 4 * (2 + states) + activations + data


def check(spec: JobSpec, shape: DataShape, n_samples: int | None, settings: Settings, largest_worker_gb: float | None,
          data: int | None = None) -> int | None:  # fmt: skip
    """Raise a 422 naming each limit this job is estimated to pass; else the bytes a training step is estimated
    to need (None where it cannot be sized before it runs: plugin models)."""
    errors: list[dict[str, str]] = []
    need = None
    if data is None and n_samples is not None:
        data = data_bytes(shape, n_samples)
    if data is not None and data > settings.max_data_gb * GB:
        errors.append({
            "field": "dataset",
            "message": f"the data takes about {data / GB:.1f} GB in memory, over this service's limit of "
            f"{settings.max_data_gb:g} GB (setting LRBS_MAX_DATA_GB); use fewer or smaller samples",
        })  # fmt: skip
    if shape.num_outputs > settings.max_classes:
        errors.append({
            "field": "dataset",
            "message": f"the data has {shape.num_outputs} classes or tokens, over this service's limit of "
            f"{settings.max_classes} (setting LRBS_MAX_CLASSES)",
        })  # fmt: skip
    if isinstance(spec.model, BuiltinModelSpec) and not errors:
        params = spec.model.param_count(shape)
        if params > settings.max_params:
            errors.append({
                "field": "model.params",
                "message": f"the model has {params:,} parameters, over this service's limit of "
                f"{settings.max_params:,} (setting LRBS_MAX_PARAMS); make it smaller",
            })  # fmt: skip
        else:
            need = memory_bytes(spec, shape, params, data or 0)
            if largest_worker_gb is not None and need > largest_worker_gb * GB:
                errors.append({
                    "field": "model",
                    "message": f"a training step needs about {need / GB:.1f} GB (weights, gradients, optimizer "
                    f"state, activations at batch {largest_batch(spec)} and the data), more than the largest "
                    f"worker has ({largest_worker_gb:g} GB); use a smaller model or batch",
                })  # fmt: skip
    if errors:
        raise Unprocessable("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)
    return need
