"""The contract: the job spec a client sends and the result it gets back.

The single source of truth for the API, the worker and any client. Everything here is plain pydantic;
the only torch import (to check optimizer keywords against the real signature) is done lazily.
"""

from __future__ import annotations

import inspect
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator


class Strict(BaseModel):
    """Unknown fields are rejected everywhere: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------- datasets


class SyntheticClassificationParams(Strict):
    n_samples: PositiveInt = Field(2048, le=1_000_000)
    n_features: PositiveInt = Field(20, le=100_000)
    n_classes: int = Field(4, ge=2, le=10_000)
    noise: float = Field(0.5, ge=0, description="Std of the label noise added to the teacher's logits.")
    seed: int = 0


class SyntheticRegressionParams(Strict):
    n_samples: PositiveInt = Field(2048, le=1_000_000)
    n_features: PositiveInt = Field(20, le=100_000)
    n_targets: PositiveInt = Field(1, le=10_000)
    noise: float = Field(0.1, ge=0, description="Std of the Gaussian noise on the targets.")
    seed: int = 0


class SyntheticImagesParams(Strict):
    n_samples: PositiveInt = Field(1024, le=200_000)
    channels: PositiveInt = Field(3, le=64)
    height: int = Field(16, ge=4, le=512)
    width: int = Field(16, ge=4, le=512)
    n_classes: int = Field(10, ge=2, le=10_000)
    noise: float = Field(1.0, ge=0, description="Std of the pixel noise on top of each class's template.")
    seed: int = 0


class _BuiltinDataset(Strict):
    source: Literal["builtin"] = "builtin"
    validation_fraction: float = Field(0.2, ge=0, lt=1, description="Share of samples held out.")


class SyntheticClassification(_BuiltinDataset):
    name: Literal["synthetic_classification"]
    params: SyntheticClassificationParams = SyntheticClassificationParams()


class SyntheticRegression(_BuiltinDataset):
    name: Literal["synthetic_regression"]
    params: SyntheticRegressionParams = SyntheticRegressionParams()


class SyntheticImages(_BuiltinDataset):
    name: Literal["synthetic_images"]
    params: SyntheticImagesParams = SyntheticImagesParams()


# `source` is "builtin" today; uploads and plugins slot in as further members keyed by `source`.
DatasetSpec = Annotated[
    SyntheticClassification | SyntheticRegression | SyntheticImages, Field(discriminator="name")
]


class DataShape(BaseModel):
    """What a model needs to know about its data: derived from the dataset spec, never sent by clients."""

    task: Literal["classification", "regression"]
    input_shape: tuple[int, ...]
    num_outputs: int  # classes for classification, targets for regression


def data_shape(dataset: SyntheticClassification | SyntheticRegression | SyntheticImages) -> DataShape:
    p = dataset.params
    if isinstance(dataset, SyntheticClassification):
        return DataShape(task="classification", input_shape=(p.n_features,), num_outputs=p.n_classes)
    if isinstance(dataset, SyntheticRegression):
        return DataShape(task="regression", input_shape=(p.n_features,), num_outputs=p.n_targets)
    return DataShape(
        task="classification", input_shape=(p.channels, p.height, p.width), num_outputs=p.n_classes
    )


# ------------------------------------------------------------------------------------------------ models


class LinearParams(Strict):
    in_features: PositiveInt | None = Field(None, description="Inferred from the dataset when omitted.")
    out_features: PositiveInt | None = Field(None, description="Inferred from the dataset when omitted.")


class MLPParams(Strict):
    in_features: PositiveInt | None = Field(None, description="Inferred from the dataset when omitted.")
    out_features: PositiveInt | None = Field(None, description="Inferred from the dataset when omitted.")
    hidden: list[Annotated[int, Field(ge=1, le=65_536)]] = Field(
        default_factory=lambda: [64, 64], max_length=32, description="Width of each hidden layer."
    )
    activation: Literal["relu", "gelu", "tanh", "sigmoid", "silu", "leaky_relu"] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)
    batch_norm: bool = False


class CNNParams(Strict):
    in_channels: PositiveInt | None = Field(None, description="Inferred from the dataset when omitted.")
    num_classes: PositiveInt | None = Field(None, description="Inferred from the dataset when omitted.")
    channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [16, 32], min_length=1, max_length=8,
        description="Output channels of each conv block (conv 3×3, batch norm, ReLU, 2×2 max-pool).",
    )
    dropout: float = Field(0.0, ge=0, lt=1)


class _BuiltinModel(Strict):
    source: Literal["builtin"] = "builtin"


class LinearModel(_BuiltinModel):
    name: Literal["linear"]
    params: LinearParams = LinearParams()


class MLPModel(_BuiltinModel):
    name: Literal["mlp"]
    params: MLPParams = MLPParams()


class CNNModel(_BuiltinModel):
    name: Literal["cnn"]
    params: CNNParams = CNNParams()


ModelSpec = Annotated[LinearModel | MLPModel | CNNModel, Field(discriminator="name")]


# -------------------------------------------------------------------------------------- losses, optimizer

LossName = Literal["cross_entropy", "mse", "l1", "bce_with_logits", "nll"]
LOSSES_BY_TASK: dict[str, tuple[str, ...]] = {
    "classification": ("cross_entropy", "nll", "bce_with_logits"),
    "regression": ("mse", "l1"),
}
DEFAULT_LOSS = {"classification": "cross_entropy", "regression": "mse"}

OptimizerName = Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"]
OPTIMIZER_CLASSES = {
    "sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "adagrad": "Adagrad",
}


@cache
def optimizer_keywords(name: str) -> tuple[str, ...]:
    """The keyword arguments the real torch optimizer accepts, besides `params` and `lr`."""
    import torch

    cls = getattr(torch.optim, OPTIMIZER_CLASSES[name])
    return tuple(p for p in inspect.signature(cls).parameters if p not in ("params", "lr"))


class OptimizerSpec(Strict):
    name: OptimizerName
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the torch optimizer (momentum, betas, weight_decay, ...); "
        "checked against its real signature. `lr` is what lrbs searches, so it is not accepted here.",
    )

    @model_validator(mode="after")
    def _check_against_torch(self) -> OptimizerSpec:
        import torch

        accepted = optimizer_keywords(self.name)
        unknown = sorted(set(self.params) - set(accepted))
        if unknown:
            raise ValueError(
                f"{self.name} does not take {', '.join(unknown)}; accepted: {', '.join(accepted)}"
            )
        # Build it once on a dummy parameter: torch's own checks (negative momentum, betas outside
        # [0, 1), nesterov without momentum, ...) then speak for themselves.
        cls = getattr(torch.optim, OPTIMIZER_CLASSES[self.name])
        try:
            cls([torch.nn.Parameter(torch.zeros(1))], lr=1e-3, **self.params)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{self.name} rejects these params: {exc}") from None
        return self


# ------------------------------------------------------------------------------------- the range test


class LRRangeSpec(Strict):
    min_lr: float = Field(1e-7, gt=0, description="First learning rate of the sweep.")
    max_lr: float = Field(10.0, gt=0, description="Last learning rate of the sweep.")
    num_steps: int = Field(100, ge=5, description="Optimizer steps in the sweep, one per LR point.")
    mode: Literal["exponential", "linear"] = "exponential"
    smoothing: float = Field(0.98, ge=0, lt=1, description="β of the debiased EMA of the loss.")
    diverge_factor: float = Field(4.0, gt=1, description="Stop when the smoothed loss passes this × best.")
    batch_size: PositiveInt = Field(64, description="Batch size used by the sweep.")

    @model_validator(mode="after")
    def _ordered(self) -> LRRangeSpec:
        if self.min_lr >= self.max_lr:
            raise ValueError(f"min_lr ({self.min_lr:g}) must be below max_lr ({self.max_lr:g})")
        return self


Schedule = Literal["constant", "cosine", "one_cycle"]


class JobSpec(Strict):
    """What to advise on. Only `model`, `dataset` and `optimizer` are required."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": {"name": "mlp", "params": {"hidden": [64, 64]}},
                    "dataset": {"name": "synthetic_classification", "params": {"n_samples": 2048}},
                    "optimizer": {"name": "sgd", "params": {"momentum": 0.9}},
                },
                {
                    "model": {"name": "cnn", "params": {"channels": [16, 32]}},
                    "dataset": {"name": "synthetic_images", "params": {"height": 16, "width": 16}},
                    "loss": "cross_entropy",
                    "optimizer": {"name": "adamw", "params": {"weight_decay": 0.01}},
                    "lr_range": {"min_lr": 1e-6, "max_lr": 1, "num_steps": 80, "batch_size": 32},
                    "batch_sizes": [16, 32, 64],
                    "schedule": "cosine",
                    "device": "auto",
                    "seed": 1,
                },
            ]
        },
    )

    model: ModelSpec
    dataset: DatasetSpec
    loss: LossName | None = Field(
        None, description="Default: cross_entropy for classification data, mse for regression data."
    )
    optimizer: OptimizerSpec
    lr_range: LRRangeSpec = LRRangeSpec()
    batch_sizes: list[PositiveInt] | None = Field(
        None, description="Candidate batch sizes for the batch-size probes (distinct, positive)."
    )
    schedule: Schedule = Field("one_cycle", description="The LR schedule you will train with.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0

    @field_validator("batch_sizes")
    @classmethod
    def _distinct(cls, sizes: list[int] | None) -> list[int] | None:
        if sizes is not None:
            if not sizes:
                raise ValueError("give at least one batch size, or leave the field out")
            if len(set(sizes)) != len(sizes):
                raise ValueError("batch sizes must be distinct")
            sizes = sorted(sizes)
        return sizes

    @model_validator(mode="after")
    def _fits_the_data(self) -> JobSpec:
        shape = data_shape(self.dataset)
        if self.loss is None:
            self.loss = DEFAULT_LOSS[shape.task]  # type: ignore[assignment]
        elif self.loss not in LOSSES_BY_TASK[shape.task]:
            raise ValueError(
                f"loss {self.loss} does not fit {shape.task} data ({self.dataset.name}); "
                f"accepted: {', '.join(LOSSES_BY_TASK[shape.task])}"
            )
        if isinstance(self.model, CNNModel) and len(shape.input_shape) != 3:
            raise ValueError(
                f"model cnn needs image data (C×H×W); {self.dataset.name} gives vectors of shape "
                f"{list(shape.input_shape)}: use linear or mlp, or an image dataset"
            )
        if isinstance(self.model, LinearModel | MLPModel):
            flat = 1
            for d in shape.input_shape:
                flat *= d
            given = self.model.params.in_features
            if given is not None and given != flat:
                raise ValueError(f"model in_features is {given} but the dataset gives {flat} features")
        return self


# ----------------------------------------------------------------------------------------------- results


class Curve(BaseModel):
    lr: list[float]
    loss: list[float]
    smoothed_loss: list[float]


class SuggestionOut(BaseModel):
    lr: float | None
    reason: str


class Recommendation(BaseModel):
    """Settings a training pipeline can use as-is."""

    schedule: Schedule
    lr: float = Field(description="The LR to train with: the peak LR for cosine, max_lr for one_cycle.")
    base_lr: float | None = Field(None, description="one_cycle: the starting LR (max_lr / div_factor).")
    max_lr: float | None = Field(None, description="one_cycle: the peak LR.")
    div_factor: float | None = Field(None, description="one_cycle: max_lr / base_lr.")
    batch_size: int
    rule: str = Field(description="The suggestion rule that chose the LR.")
    reason: str


class Environment(BaseModel):
    device: str
    torch: str
    python: str
    lrbs: str


class Result(BaseModel):
    curve: Curve
    suggestions: dict[str, SuggestionOut]
    recommendation: Recommendation | None = Field(
        None, description="Missing only when no rule could read the curve; `suggestions` says why."
    )
    stop_reason: Literal["completed", "diverged", "non_finite"]
    diverged_at_lr: float | None = Field(None, description="The LR at which the sweep stopped early.")
    steps_run: int
    environment: Environment
    wall_time_s: float


# ---------------------------------------------------------------------------------------------- resources

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATES = ("succeeded", "failed", "cancelled")


class Progress(BaseModel):
    phase: str = Field(description="What the worker is doing: queued, setup, lr_range, done.")
    step: int = 0
    total: int = 0
    fraction: float = Field(0.0, ge=0, le=1)


class JobError(BaseModel):
    message: str
    attempt: int


class Job(BaseModel):
    id: str
    state: JobState
    progress: Progress
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = Field(description="How many times a worker has claimed this job.")
    worker_id: str | None = Field(None, description="The worker that ran (or runs) the latest attempt.")
    cancel_requested: bool = False
    spec: JobSpec
    result: Result | None = None
    error: JobError | None = None


class JobPage(BaseModel):
    jobs: list[Job]
    next_page_token: str | None = Field(None, description="Pass as page_token for the next page.")


# ------------------------------------------------------------------------------------------ worker wire


class ClaimRequest(Strict):
    worker_id: str = Field(min_length=1, max_length=200)
    wait_seconds: float = Field(20.0, ge=0, le=60, description="Long-poll: how long to wait for a job.")


class Lease(BaseModel):
    job_id: str
    lease_token: str
    lease_seconds: float
    attempt: int
    max_run_seconds: float
    spec: JobSpec


class Heartbeat(Strict):
    lease_token: str
    progress: Progress | None = None


class HeartbeatReply(BaseModel):
    cancel_requested: bool


class Completion(Strict):
    lease_token: str
    result: Result


class Failure(Strict):
    lease_token: str
    message: str = Field(max_length=10_000)
    retryable: bool = Field(
        False, description="True when another attempt may succeed (e.g. the worker is shutting down)."
    )


class Cancelled(Strict):
    lease_token: str
