"""What a client submits: the job spec (v1) and its parts. Unknown fields are rejected at every level."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import ConfigDict, Discriminator, Field, PositiveInt, Tag, field_validator, model_validator

from lrbs.contract.builtins import BuiltinDataset, BuiltinDatasetSpec, BuiltinModel, BuiltinModelSpec, DatasetOptions
from lrbs.contract.common import PluginRef, Precision, Strict, source_of
from lrbs.contract.optimizers import OptimizerChoice
from lrbs.contract.shapes import DEFAULT_LOSS, LOSSES_BY_TASK, DataShape
from lrbs.schedules import SCHEDULES

if TYPE_CHECKING:
    ScheduleName = str
else:
    ScheduleName = Literal[tuple(SCHEDULES)]  # from the schedule table: adding a schedule touches only it


class UploadedDataset(DatasetOptions):
    """A dataset uploaded with POST /v1/datasets."""

    source: Literal["upload"]
    id: str = Field(min_length=1, max_length=80)


class PluginDataset(PluginRef, DatasetOptions):
    """A factory returning `(train, val)` torch Datasets, or arrays `(x, y, x_val, y_val)`."""


DatasetSpec = Annotated[
    Annotated[BuiltinDataset, Tag("builtin")]
    | Annotated[UploadedDataset, Tag("upload")]
    | Annotated[PluginDataset, Tag("plugin")],
    Discriminator(source_of),
]
ModelSpec = Annotated[
    Annotated[BuiltinModel, Tag("builtin")] | Annotated[PluginRef, Tag("plugin")], Discriminator(source_of)
]

MAX_WORLD_SIZE = 65_536
DEFAULT_INTERCONNECT_GBPS = 50.0  # GB/s of all-reduce bus bandwidth per device: a 400 Gb/s NIC per GPU
LABEL_KEY = r"^[A-Za-z0-9_.\-]{1,64}$"
LossName = Literal["cross_entropy", "mse", "l1", "bce_with_logits", "nll"]
DEFAULT_VAL_BATCHES, MAX_VAL_BATCHES = 4, 256  # lr_range.val_batches: per step of a validation-loss sweep


class PluginLoss(PluginRef):
    """A factory called with `params` that returns a callable `(output, target) -> scalar`."""


class LRRangeSpec(Strict):
    min_lr: float = Field(1e-7, gt=0, description="First learning rate of the sweep.")
    max_lr: float = Field(10.0, gt=0, description="Last learning rate of the sweep.")
    num_steps: int = Field(100, ge=5, description="Optimizer steps in the sweep, one per LR point.")
    mode: Literal["exponential", "linear"] = "exponential"
    smoothing: float = Field(0.98, ge=0, lt=1, description="β of the debiased EMA of the loss.")
    diverge_factor: float = Field(4.0, gt=1, description="Stop when the smoothed loss passes this × best.")
    batch_size: PositiveInt = Field(64, description="Micro-batch size used by the sweep.")
    thoroughness: Literal["quick", "standard", "thorough"] = Field(
        "standard",
        description="quick: one sweep; standard: the median of 3 sweeps (seeds seed, seed+1, seed+2), "
        "plus 3 short confirmation trainings when the sweeps disagree; thorough: always confirm.",
    )
    loss: Literal["training", "validation"] = Field(
        "training",
        description="The loss the curve records. training: each step's own batch loss (free). validation: "
        "after each step, the loss on the first `val_batches` validation batches, in eval mode (no dropout, "
        "running batch-norm statistics), for tasks whose training loss misleads (heavy augmentation, dropout, "
        "label noise). Costs one forward pass over those batches per step, on top of the step.",
    )
    val_batches: int | None = Field(
        None,
        ge=1,
        le=MAX_VAL_BATCHES,
        description=f"loss: validation only (default {DEFAULT_VAL_BATCHES} there; null with training). Validation "
        "batches of batch_size samples evaluated after each step, the same ones every step; the whole validation "
        "set when it is smaller. More batches, a truer validation loss; each one costs a forward pass per step.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> LRRangeSpec:
        if self.min_lr >= self.max_lr:
            raise ValueError(f"min_lr ({self.min_lr:g}) must be below max_lr ({self.max_lr:g})")
        if self.loss == "validation" and self.val_batches is None:
            self.val_batches = DEFAULT_VAL_BATCHES
        elif self.loss == "training" and self.val_batches is not None:
            raise ValueError('val_batches applies only with loss "validation"; set loss to "validation" or drop it')
        return self


class AutoBatchSizes(Strict):
    """Search the powers of two between `min` and `max`."""

    auto: Literal[True]
    min: PositiveInt = 8
    max: PositiveInt = 1024

    @model_validator(mode="after")
    def _ordered(self) -> AutoBatchSizes:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self

    def sizes(self) -> list[int]:
        first = 1 << (self.min - 1).bit_length()  # the smallest power of two ≥ min
        return [b for b in (first << k for k in range(32)) if b <= self.max]


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
                    "model": {"name": "resnet", "params": {"depth": 1, "width": 16}},
                    "dataset": {"name": "synthetic_images", "params": {"height": 16, "width": 16}},
                    "loss": "cross_entropy",
                    "optimizer": {"name": "adamw", "params": {"weight_decay": 0.01}},
                    "lr_range": {"min_lr": 1e-6, "max_lr": 1, "num_steps": 80, "batch_size": 32},
                    "batch_sizes": [16, 32, 64],
                    "schedule": "cosine",
                    "precision": "bf16",
                    "grad_accumulation_steps": 2,
                    "grad_clip_norm": 1.0,
                    "device": "auto",
                    "seed": 1,
                },
                {
                    "model": {"source": "plugin", "name": "team_models.vision:small_resnet", "params": {"width": 32}},
                    "dataset": {"source": "upload", "id": "<id from POST /v1/datasets>"},
                    "optimizer": {"name": "sgd", "params": {"momentum": 0.9, "nesterov": True}},
                },
            ]
        },
    )

    model: ModelSpec
    dataset: DatasetSpec
    loss: LossName | PluginLoss | None = Field(
        None, description="Default: cross_entropy for classification and token data, mse for regression data."
    )
    optimizer: OptimizerChoice
    lr_range: LRRangeSpec = LRRangeSpec()
    batch_sizes: list[PositiveInt] | AutoBatchSizes | None = Field(
        None,
        description='Candidate batch sizes to probe (distinct, positive), or {"auto": true, "min": 8, '
        '"max": 1024} for the powers of two between. Omitted: no batch-size advice.',
    )
    lr_scaling: Literal["auto", "probe", "linear", "sqrt"] = Field(
        "auto",
        description="The LR for each batch size: probe (a short range test at each), linear (SGD), sqrt "
        "(Adam-family), or auto (probe the smallest and largest, interpolate in log space, else the rule).",
    )
    memory_budget_gb: float | None = Field(
        None, gt=0, description="CPU: the memory a training step may use. CUDA: the GPU's memory is the budget."
    )
    target_effective_batch: PositiveInt | None = Field(
        None,
        description="The effective (global) batch you want: micro-batch × accumulation × world_size; the "
        "advice says how many accumulation steps per device reach it.",
    )
    world_size: int = Field(
        1,
        ge=1,
        le=MAX_WORLD_SIZE,
        description="Data-parallel devices (DDP ranks) you will train on. Memory and throughput are measured on "
        "one device; the global batch is micro-batch × accumulation × world_size, and the noise scale, the time "
        "to a target loss and the LR are for the global batch. The fleet's throughput is predicted from one "
        "device's step time plus a ring all-reduce of the gradients at interconnect_gbps. Needs batch_sizes "
        "(the per-device micro-batch candidates).",
    )
    interconnect_gbps: float = Field(
        DEFAULT_INTERCONNECT_GBPS,
        gt=0,
        le=100_000,
        description="Per-device all-reduce bus bandwidth in gigabytes per second (10⁹ bytes/s, not gigabits; "
        "nccl-tests all_reduce_perf reports it as busbw). A ring all-reduce of S gradient bytes over N devices "
        "takes 2·(N−1)/N·S / this. The default, 50, is about one 400 Gb/s InfiniBand link per GPU between "
        "nodes; inside one NVLink node it is often 150–450: measure yours and set it.",
    )
    generalization_check: bool = Field(
        False,
        description="Train every fitting candidate for the same number of epochs and compare validation "
        "losses, so a batch that generalises worse is seen (and avoided when it would be chosen).",
    )
    schedule: ScheduleName = Field("one_cycle", description="The LR schedule you will train with.")
    train_steps: PositiveInt | None = Field(
        None,
        le=100_000_000,
        description="Optimizer steps you will train for; sets the schedule's parameters (default 1000).",
    )
    precision: Precision = Field(
        "fp32", description="bf16 and fp16 run under autocast; fp16 needs CUDA and uses a GradScaler."
    )
    grad_accumulation_steps: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    grad_clip_norm: float | None = Field(None, gt=0, description="Clip the gradient norm to this before a step.")
    channels_last: bool = Field(False, description="Image models and data in channels-last memory format.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N.")
    seed: int = 0
    name: str | None = Field(None, max_length=200, description="A name for people: shown in lists.")
    labels: dict[Annotated[str, Field(pattern=LABEL_KEY)], Annotated[str, Field(max_length=128)]] = Field(
        default_factory=dict,
        max_length=16,
        description="Up to 16 key: value strings from your pipeline; GET /v1/jobs?label=key:value filters by them.",
        examples=[{"team": "vision", "run": "resnet-sweep-3"}],
    )

    @field_validator("batch_sizes")
    @classmethod
    def _distinct(cls, sizes: list[int] | AutoBatchSizes | None) -> list[int] | AutoBatchSizes | None:
        if isinstance(sizes, list):
            if not sizes:
                raise ValueError("give at least one batch size, or leave the field out")
            if len(set(sizes)) != len(sizes):
                raise ValueError("batch sizes must be distinct")
            sizes = sorted(sizes)
        return sizes

    @model_validator(mode="after")
    def _fleet(self) -> JobSpec:
        if self.world_size > 1 and self.batch_sizes is None:
            raise ValueError(
                f"world_size {self.world_size} shapes the batch-size advice: give batch_sizes too (the per-device "
                "micro-batch candidates), or leave world_size at 1"
            )
        if self.target_effective_batch is not None and self.target_effective_batch < self.world_size:
            raise ValueError(
                f"target_effective_batch ({self.target_effective_batch}) is below world_size ({self.world_size}): "
                "every device takes at least one sample per optimizer step; accepted: a target ≥ world_size"
            )
        return self

    @model_validator(mode="after")
    def _fits_the_data(self) -> JobSpec:
        if isinstance(self.dataset, BuiltinDatasetSpec):  # uploads are checked by the service, plugins by the worker
            self.resolve_for(self.dataset.shape())
            if self.lr_range.loss == "validation" and self.dataset.validation_fraction == 0:
                raise ValueError(
                    'lr_range.loss "validation" needs validation samples, but dataset.validation_fraction is 0; '
                    "set it above 0 (the default is 0.2)"
                )
        return self

    def resolve_for(self, shape: DataShape) -> None:
        """Fill the default loss for this data and check that model and loss fit it (ValueError if not)."""
        if self.loss is None:
            self.loss = DEFAULT_LOSS[shape.task]  # type: ignore[assignment]
        problem = self.fit_problem(shape)
        if problem:
            raise ValueError(problem)

    def fit_problem(self, shape: DataShape) -> str | None:
        """Why this model and loss cannot train on data of this shape, or None. Used by the service (for
        built-in and uploaded data) and by the worker (for plugin data, once it has the tensors)."""
        if isinstance(self.loss, str) and self.loss not in LOSSES_BY_TASK[shape.task]:
            return (
                f"loss {self.loss} does not fit {shape.task.replace('_', ' ')} data; "
                f"accepted: {', '.join(LOSSES_BY_TASK[shape.task])}"
            )
        if isinstance(self.model, BuiltinModelSpec) and (problem := self.model.fit_problem(shape)):
            return problem
        if self.channels_last and len(shape.input_shape) != 3:
            return "channels_last applies to image data (N, C, H, W) only"
        return None
