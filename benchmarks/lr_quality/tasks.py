"""The benchmark's tasks: small, CPU-friendly, and spread over data, models, optimizers and batch sizes.

Each task is a job spec as a user would send it (lr_range.batch_size = the batch they train with) plus
the training budget the advice is judged on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lrbs.contract.job_spec import JobSpec
from lrbs.schedules import SCHEDULES as ALL_SCHEDULES
from lrbs.worker.plugins import PluginPolicy

SCHEDULES = tuple(ALL_SCHEDULES)  # every schedule in the table
# The plugins of the benchmarks: real text, scikit-learn's tabular sets, the batch benchmark's power-law regression.
POLICY = PluginPolicy(
    ("benchmarks.lr_quality.text_data", "benchmarks.lr_quality.sklearn_data", "benchmarks.batch_size.powerlaw")
)


@dataclass(frozen=True)
class Task:
    name: str
    spec: dict[str, Any]  # model, dataset, optimizer (and loss) as a JobSpec takes them
    batch_size: int
    steps: int  # the real training budget

    def job(self, schedule: str = "one_cycle", **overrides: Any) -> JobSpec:
        lr_range = {"batch_size": self.batch_size, **overrides.pop("lr_range", {})}
        return JobSpec.model_validate({**self.spec, "schedule": schedule, "lr_range": lr_range, **overrides})


def _task(name, model, dataset, optimizer, batch_size, steps) -> Task:
    return Task(name, {"model": model, "dataset": dataset, "optimizer": optimizer}, batch_size, steps)


TASKS = [
    _task(
        "blobs-mlp-sgd",
        {"name": "mlp", "params": {"hidden": [64]}},
        {"name": "synthetic_classification", "params": {"n_samples": 1024, "n_classes": 4}},
        {"name": "sgd"},
        32,
        300,
    ),
    _task(
        "blobs-mlp-adam",
        {"name": "mlp", "params": {"hidden": [64, 64]}},
        {
            "name": "synthetic_classification",
            "params": {"n_samples": 1024, "n_features": 32, "n_classes": 8, "seed": 1},
        },
        {"name": "adam"},
        64,
        300,
    ),
    _task(
        "regression-linear-momentum",
        {"name": "linear"},
        {"name": "synthetic_regression", "params": {"n_samples": 1024, "noise": 0.3}},
        {"name": "sgd", "params": {"momentum": 0.9}},
        32,
        200,
    ),
    _task(
        "regression-mlp-rmsprop",
        {"name": "mlp", "params": {"hidden": [64], "activation": "tanh"}},
        {"name": "synthetic_regression", "params": {"n_samples": 1024, "n_targets": 2, "seed": 2}},
        {"name": "rmsprop"},
        32,
        300,
    ),
    _task(
        "iris-mlp-adamw",
        {"name": "mlp", "params": {"hidden": [32]}},
        {"name": "iris"},
        {"name": "adamw", "params": {"weight_decay": 0.01}},
        16,
        300,
    ),
    _task(
        "digits-mlp-momentum",
        {"name": "mlp", "params": {"hidden": [64]}},
        {"name": "digits"},
        {"name": "sgd", "params": {"momentum": 0.9}},
        64,
        300,
    ),
    _task(
        "images-cnn-momentum",
        {"name": "cnn", "params": {"channels": [8, 16]}},
        {"name": "synthetic_images", "params": {"n_samples": 1024, "height": 12, "width": 12, "noise": 1.5}},
        {"name": "sgd", "params": {"momentum": 0.9}},
        32,
        200,
    ),
    _task(
        "tokens-transformer-adamw",
        {"name": "transformer_lm", "params": {"layers": 1, "d_model": 32, "heads": 2}},
        {"name": "synthetic_tokens", "params": {"n_samples": 512, "context": 16, "vocab_size": 32}},
        {"name": "adamw"},
        16,
        200,
    ),  # Two more sequence models, so the fractions for Adam-family optimizers on them are not fitted on one task.
    _task(
        "tokens-transformer2-adam",
        {"name": "transformer_lm", "params": {"layers": 2, "d_model": 32, "heads": 4}},
        {"name": "synthetic_tokens", "params": {"n_samples": 1024, "context": 16, "vocab_size": 48, "seed": 3}},
        {"name": "adam"},
        16,
        200,
    ),
    _task(
        "text-chars-transformer-adamw",
        {"name": "transformer_lm", "params": {"layers": 1, "d_model": 32, "heads": 2}},
        {"source": "plugin", "name": "benchmarks.lr_quality.text_data:chars", "params": {"context": 24}},
        {"name": "adamw", "params": {"weight_decay": 0.01}},
        16,
        200,
    ),
]
# Tasks no rule or fraction was fitted on (tune.py reads TASKS only); `python -m benchmarks.lr_quality.run --held-out`
# scores them apart. The power-law regression was built for the batch benchmark (benchmarks/batch_size/powerlaw.py):
# an ill-conditioned linear regression, a kind the tasks above lack.
HELD_OUT = [
    Task(
        "powerlaw-regression-sgd",
        {
            "model": {
                "source": "plugin",
                "name": "benchmarks.batch_size.powerlaw:projected",
                "params": {"width": 2048},
            },
            "dataset": {"source": "plugin", "name": "benchmarks.batch_size.powerlaw:regression", "params": {}},
            "optimizer": {"name": "sgd"},
        },
        batch_size=64,
        steps=1000,
    ),
    # Real tabular data from scikit-learn (benchmarks/lr_quality/sklearn_data.py), with optimizers and models
    # the visible tasks pair differently.
    _task(
        "wine-mlp-sgd",
        {"name": "mlp", "params": {"hidden": [32]}},
        {"source": "plugin", "name": "benchmarks.lr_quality.sklearn_data:tabular", "params": {"name": "wine"}},
        {"name": "sgd"},
        16,
        300,
    ),
    _task(
        "breast-cancer-mlp-adam",
        {"name": "mlp", "params": {"hidden": [64, 32]}},
        {"source": "plugin", "name": "benchmarks.lr_quality.sklearn_data:tabular", "params": {"name": "breast_cancer"}},
        {"name": "adam"},
        32,
        300,
    ),
    _task(
        "diabetes-linear-momentum",
        {"name": "linear"},
        {"source": "plugin", "name": "benchmarks.lr_quality.sklearn_data:tabular", "params": {"name": "diabetes"}},
        {"name": "sgd", "params": {"momentum": 0.9}},
        32,
        300,
    ),
]
