"""The contract: the job spec a client sends and the result it gets back.

The single source of truth for the API, the worker and any client. Everything here is plain pydantic;
the only torch import (to check optimizer keywords against the real signature) is done lazily.
"""

from __future__ import annotations

import inspect
import math
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PositiveInt,
    Tag,
    field_validator,
    model_validator,
)


class Strict(BaseModel):
    """Unknown fields are rejected everywhere: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid")


def _source(value: Any) -> str:
    """Discriminates the members of a union on `source`, which defaults to builtin."""
    if isinstance(value, dict):
        return value.get("source", "builtin")
    return getattr(value, "source", "builtin")


PLUGIN_NAME = r"^([A-Za-z_][\w.]*:[A-Za-z_]\w*|[A-Za-z0-9_][\w.\-]*)$"


class PluginRef(Strict):
    """Code installed on the worker: `package.module:callable`, or an entry-point name registered under
    lrbs.models, lrbs.datasets, lrbs.losses or lrbs.optimizers. A worker imports it only if its operator
    allow-listed the module (LRBS_PLUGIN_MODULES)."""

    source: Literal["plugin"]
    name: str = Field(pattern=PLUGIN_NAME, max_length=300, examples=["team_models.vision:resnet50"])
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the factory.")


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


class SyntheticTokensParams(Strict):
    n_samples: PositiveInt = Field(1024, le=1_000_000, description="Sequences.")
    context: int = Field(32, ge=2, le=8192, description="Tokens per sequence (T).")
    vocab_size: int = Field(64, ge=2, le=1_000_000)
    seed: int = 0


class ShuffleParams(Strict):
    seed: int = Field(0, description="Shuffles the samples before the validation split.")


class _Dataset(Strict):
    validation_fraction: float = Field(
        0.2, ge=0, lt=1, description="Share of samples held out (an upload with x_val and y_val keeps its own)."
    )


class _BuiltinDataset(_Dataset):
    source: Literal["builtin"] = "builtin"


class SyntheticClassification(_BuiltinDataset):
    name: Literal["synthetic_classification"]
    params: SyntheticClassificationParams = SyntheticClassificationParams()


class SyntheticRegression(_BuiltinDataset):
    name: Literal["synthetic_regression"]
    params: SyntheticRegressionParams = SyntheticRegressionParams()


class SyntheticImages(_BuiltinDataset):
    name: Literal["synthetic_images"]
    params: SyntheticImagesParams = SyntheticImagesParams()


class SyntheticTokens(_BuiltinDataset):
    """Seeded token streams from a random sparse Markov chain: the next token is learnable."""

    name: Literal["synthetic_tokens"]
    params: SyntheticTokensParams = SyntheticTokensParams()


class Digits(_BuiltinDataset):
    """scikit-learn's bundled 8×8 digits: 1797 samples, 64 features, 10 classes (needs scikit-learn)."""

    name: Literal["digits"]
    params: ShuffleParams = ShuffleParams()


class Iris(_BuiltinDataset):
    """scikit-learn's bundled iris: 150 samples, 4 features, 3 classes (needs scikit-learn)."""

    name: Literal["iris"]
    params: ShuffleParams = ShuffleParams()


BuiltinDataset = Annotated[
    SyntheticClassification | SyntheticRegression | SyntheticImages | SyntheticTokens | Digits | Iris,
    Field(discriminator="name"),
]


class UploadedDataset(_Dataset):
    """A dataset uploaded with POST /v1/datasets."""

    source: Literal["upload"]
    id: str = Field(min_length=1, max_length=80)


class PluginDataset(PluginRef, _Dataset):
    """A factory returning `(train, val)` torch Datasets, or arrays `(x, y, x_val, y_val)`."""


DatasetSpec = Annotated[
    Annotated[BuiltinDataset, Tag("builtin")]
    | Annotated[UploadedDataset, Tag("upload")]
    | Annotated[PluginDataset, Tag("plugin")],
    Discriminator(_source),
]

Task = Literal["classification", "regression", "language_modeling"]


class DataShape(BaseModel):
    """What a model needs to know about its data. Derived from the data, never sent by clients."""

    task: Task
    input_shape: tuple[int, ...]  # one sample; (T,) token ids for language modelling
    num_outputs: int  # classes (classification), targets (regression) or vocabulary (language modelling)


def builtin_shape(dataset: Any) -> DataShape | None:
    """The shape of a built-in dataset, known from its params; None for uploads and plugins."""
    p = getattr(dataset, "params", None)
    match dataset:
        case SyntheticClassification():
            return DataShape(task="classification", input_shape=(p.n_features,), num_outputs=p.n_classes)
        case SyntheticRegression():
            return DataShape(task="regression", input_shape=(p.n_features,), num_outputs=p.n_targets)
        case SyntheticImages():
            return DataShape(task="classification", input_shape=(p.channels, p.height, p.width),
                             num_outputs=p.n_classes)
        case SyntheticTokens():
            return DataShape(task="language_modeling", input_shape=(p.context,), num_outputs=p.vocab_size)
        case Digits():
            return DataShape(task="classification", input_shape=(64,), num_outputs=10)
        case Iris():
            return DataShape(task="classification", input_shape=(4,), num_outputs=3)
    return None


def infer_shape(x_shape: tuple[int, ...], x_integer: bool, y_shape: tuple[int, ...], y_integer: bool,
                largest_id: int) -> DataShape:
    """The one rule that reads a task off arrays (uploads on the service, plugin data on the worker).

    - integer x and integer y of the same shape (N, T): language modelling, vocabulary largest_id + 1;
    - integer y of shape (N,): classification, classes largest_id + 1;
    - float y of shape (N,) or (N, k): regression with 1 or k targets.
    `largest_id` is the largest token id (x and y) or label. Raises ValueError saying what is accepted.
    """
    accepted = ("accepted: integer x and y of equal shape (N, T) for language modelling, integer labels y (N,) "
                "for classification, float targets y (N,) or (N, k) for regression")
    if len(x_shape) < 2:
        raise ValueError(f"x must hold one row per sample, shape (N, ...); got {list(x_shape)}")
    if x_integer and y_integer and x_shape == y_shape and len(x_shape) == 2:
        return DataShape(task="language_modeling", input_shape=x_shape[1:], num_outputs=largest_id + 1)
    if y_integer:
        if len(y_shape) != 1:
            raise ValueError(f"integer labels y must have shape (N,); got {list(y_shape)}; {accepted}")
        if largest_id < 1:
            raise ValueError("classification needs at least two classes (labels 0 and 1)")
        return DataShape(task="classification", input_shape=x_shape[1:], num_outputs=largest_id + 1)
    if len(y_shape) not in (1, 2):
        raise ValueError(f"float targets y must have shape (N,) or (N, k); got {list(y_shape)}; {accepted}")
    return DataShape(task="regression", input_shape=x_shape[1:], num_outputs=1 if len(y_shape) == 1 else y_shape[1])


# ------------------------------------------------------------------------------------------------ models

_INFERRED = "Inferred from the dataset when omitted."


class LinearParams(Strict):
    in_features: PositiveInt | None = Field(None, description=_INFERRED)
    out_features: PositiveInt | None = Field(None, description=_INFERRED)


class MLPParams(Strict):
    in_features: PositiveInt | None = Field(None, description=_INFERRED)
    out_features: PositiveInt | None = Field(None, description=_INFERRED)
    hidden: list[Annotated[int, Field(ge=1, le=65_536)]] = Field(
        default_factory=lambda: [64, 64], max_length=32, description="Width of each hidden layer."
    )
    activation: Literal["relu", "gelu", "tanh", "sigmoid", "silu", "leaky_relu"] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)
    batch_norm: bool = False


class CNNParams(Strict):
    in_channels: PositiveInt | None = Field(None, description=_INFERRED)
    num_classes: PositiveInt | None = Field(None, description=_INFERRED)
    channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [16, 32], min_length=1, max_length=8,
        description="Output channels of each conv block (conv 3×3, batch norm, ReLU, 2×2 max-pool).",
    )
    dropout: float = Field(0.0, ge=0, lt=1)


class ResNetParams(Strict):
    in_channels: PositiveInt | None = Field(None, description=_INFERRED)
    num_classes: PositiveInt | None = Field(None, description=_INFERRED)
    depth: int = Field(1, ge=1, le=16, description="Basic blocks per stage (1 → ResNet-8, 3 → ResNet-20).")
    width: int = Field(16, ge=1, le=1024, description="Channels of the first stage; doubled at each next one.")
    stages: int = Field(3, ge=1, le=4)


class TransformerLMParams(Strict):
    vocab_size: PositiveInt | None = Field(None, description=_INFERRED)
    context: PositiveInt | None = Field(None, le=65_536, description="Longest sequence; default: the data's T.")
    layers: int = Field(2, ge=1, le=96)
    d_model: int = Field(64, ge=8, le=16_384)
    heads: int = Field(4, ge=1, le=256)
    mlp_ratio: int = Field(4, ge=1, le=16)
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerLMParams:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        return self


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


class ResNetModel(_BuiltinModel):
    """A CIFAR-style ResNet (He et al. 2016): 3×3 stem, stages of basic blocks, global pooling."""

    name: Literal["resnet"]
    params: ResNetParams = ResNetParams()


class TransformerLMModel(_BuiltinModel):
    """A GPT-style decoder: token and position embeddings, pre-norm causal blocks, tied output head."""

    name: Literal["transformer_lm"]
    params: TransformerLMParams = TransformerLMParams()


BuiltinModel = Annotated[
    LinearModel | MLPModel | CNNModel | ResNetModel | TransformerLMModel, Field(discriminator="name")
]
ModelSpec = Annotated[
    Annotated[BuiltinModel, Tag("builtin")] | Annotated[PluginRef, Tag("plugin")], Discriminator(_source)
]

# -------------------------------------------------------------------------------------- losses, optimizer

LossName = Literal["cross_entropy", "mse", "l1", "bce_with_logits", "nll"]
LOSSES_BY_TASK: dict[str, tuple[str, ...]] = {
    "classification": ("cross_entropy", "nll", "bce_with_logits"),
    "regression": ("mse", "l1"),
    "language_modeling": ("cross_entropy", "nll"),
}
DEFAULT_LOSS = {"classification": "cross_entropy", "regression": "mse", "language_modeling": "cross_entropy"}

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
    source: Literal["builtin"] = "builtin"
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


class PluginOptimizer(PluginRef):
    """A factory called as `factory(params, lr, **params)` that returns a torch optimizer."""


OptimizerChoice = Annotated[
    Annotated[OptimizerSpec, Tag("builtin")] | Annotated[PluginOptimizer, Tag("plugin")], Discriminator(_source)
]


class PluginLoss(PluginRef):
    """A factory called with `params` that returns a callable `(output, target) -> scalar`."""


# ------------------------------------------------------------------------------------- the range test


class LRRangeSpec(Strict):
    min_lr: float = Field(1e-7, gt=0, description="First learning rate of the sweep.")
    max_lr: float = Field(10.0, gt=0, description="Last learning rate of the sweep.")
    num_steps: int = Field(100, ge=5, description="Optimizer steps in the sweep, one per LR point.")
    mode: Literal["exponential", "linear"] = "exponential"
    smoothing: float = Field(0.98, ge=0, lt=1, description="β of the debiased EMA of the loss.")
    diverge_factor: float = Field(4.0, gt=1, description="Stop when the smoothed loss passes this × best.")
    batch_size: PositiveInt = Field(64, description="Micro-batch size used by the sweep.")
    thoroughness: Literal["quick", "standard", "thorough"] = Field(
        "standard", description="quick: one sweep; standard: the median of 3 sweeps (seeds seed, seed+1, seed+2), "
        "plus 3 short confirmation trainings when the sweeps disagree; thorough: always confirm.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> LRRangeSpec:
        if self.min_lr >= self.max_lr:
            raise ValueError(f"min_lr ({self.min_lr:g}) must be below max_lr ({self.max_lr:g})")
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


Schedule = Literal["constant", "cosine", "one_cycle", "step", "exponential"]
Precision = Literal["fp32", "bf16", "fp16"]

IMAGE_MODELS = (CNNModel, ResNetModel)


def fit_problem(spec: JobSpec, shape: DataShape) -> str | None:
    """Why this model and loss cannot train on data of this shape, or None. Used by the service (for
    built-in and uploaded data) and by the worker (for plugin data, once it has the tensors)."""
    loss = spec.loss if isinstance(spec.loss, str) else None
    if loss is not None and loss not in LOSSES_BY_TASK[shape.task]:
        return (f"loss {loss} does not fit {shape.task.replace('_', ' ')} data; "
                f"accepted: {', '.join(LOSSES_BY_TASK[shape.task])}")
    model = spec.model
    kind = getattr(model, "name", None)
    if isinstance(model, IMAGE_MODELS) and len(shape.input_shape) != 3:
        return (f"model {kind} needs image data (C×H×W); the dataset gives samples of shape "
                f"{list(shape.input_shape)}: use linear or mlp, or an image dataset")
    if isinstance(model, TransformerLMModel) and shape.task != "language_modeling":
        return f"model transformer_lm needs token data (x and y integer (N, T)); the dataset is {shape.task} data"
    if isinstance(model, LinearModel | MLPModel | CNNModel | ResNetModel) and shape.task == "language_modeling":
        return f"model {kind} cannot read token sequences; use transformer_lm or a plugin model"
    if isinstance(model, TransformerLMModel) and model.params.context is not None \
            and model.params.context < shape.input_shape[0]:
        return f"transformer_lm context {model.params.context} is shorter than the data's {shape.input_shape[0]} tokens"
    if isinstance(model, LinearModel | MLPModel):
        given, flat = model.params.in_features, math.prod(shape.input_shape)
        if given is not None and given != flat:
            return f"model in_features is {given} but the dataset gives {flat} features"
    if spec.channels_last and len(shape.input_shape) != 3:
        return "channels_last applies to image data (N, C, H, W) only"
    return None


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
                    "model": {"source": "plugin", "name": "team_models.vision:small_resnet",
                              "params": {"width": 32}},
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
        None, description="Candidate batch sizes to probe (distinct, positive), or {\"auto\": true, \"min\": 8, "
        "\"max\": 1024} for the powers of two between. Omitted: no batch-size advice.",
    )
    lr_scaling: Literal["auto", "probe", "linear", "sqrt"] = Field(
        "auto", description="The LR for each batch size: probe (a short range test at each), linear (SGD), sqrt "
        "(Adam-family), or auto (probe the smallest and largest, interpolate in log space, else the rule).",
    )
    memory_budget_gb: float | None = Field(
        None, gt=0, description="CPU: the memory a training step may use. CUDA: the GPU's memory is the budget."
    )
    target_effective_batch: PositiveInt | None = Field(
        None, description="The effective batch you want: the advice says how many accumulation steps reach it."
    )
    generalization_check: bool = Field(
        False, description="Train every fitting candidate for the same number of epochs and compare validation "
        "losses, so a batch that generalises worse is seen (and avoided when it would be chosen).",
    )
    schedule: Schedule = Field("one_cycle", description="The LR schedule you will train with.")
    train_steps: PositiveInt | None = Field(
        None, le=100_000_000,
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
    def _fits_the_data(self) -> JobSpec:
        shape = builtin_shape(self.dataset)
        if shape is not None:  # uploads are checked by the service, plugin data by the worker
            self.resolve_for(shape)
        return self

    def resolve_for(self, shape: DataShape) -> None:
        """Fill the default loss for this data and check that model and loss fit it (ValueError if not)."""
        if self.loss is None:
            self.loss = DEFAULT_LOSS[shape.task]  # type: ignore[assignment]
        problem = fit_problem(self, shape)
        if problem:
            raise ValueError(problem)


# ----------------------------------------------------------------------------------------------- results


class Curve(BaseModel):
    lr: list[float]
    loss: list[float]
    smoothed_loss: list[float]


class SuggestionOut(BaseModel):
    lr: float | None
    reason: str


class Candidate(BaseModel):
    lr: float
    val_loss: float | None = Field(description="Final validation loss of the short confirmation run (null: diverged).")


class Recommendation(BaseModel):
    """Settings a training pipeline can use as-is."""

    schedule: Schedule
    lr: float = Field(description="The LR to train with: the peak LR for cosine, step and exponential, "
                      "max_lr for one_cycle, the LR for constant.")
    lr_low: float = Field(description="Lower end of the range lrbs considers safe for this schedule.")
    lr_high: float = Field(description="Upper end of the safe range: past it training degrades or diverges.")
    confidence: Literal["high", "medium", "low"] = Field(
        description="How much the range-test sweeps agreed (and whether a fallback rule had to answer)."
    )
    train_steps: int = Field(description="The training length the schedule parameters are for.")
    schedule_params: dict[str, float | int] = Field(
        description="Every parameter of the schedule: cosine peak LR, warm-up steps and final LR; one-cycle "
        "max_lr, div_factor, pct_start, final_div_factor; step and exponential initial LR, decay and interval."
    )
    warmup_steps: int = 0
    warmup_reason: str | None = Field(None, description="Why a warm-up is (or is not) advised.")
    snippet: str = Field(description="PyTorch code that builds this optimizer and scheduler.")
    base_lr: float | None = Field(None, description="one_cycle: the starting LR (max_lr / div_factor).")
    max_lr: float | None = Field(None, description="one_cycle: the peak LR.")
    div_factor: float | None = Field(None, description="one_cycle: max_lr / base_lr.")
    batch_size: int = Field(description="The micro-batch the range test ran at.")
    grad_accumulation_steps: int = 1
    effective_batch_size: int = Field(0, description="batch_size × grad_accumulation_steps.")
    rule: str = Field(description="The rule that chose the LR.")
    reason: str = Field(description="How the LR was chosen, in plain words.")
    confirmation: list[Candidate] | None = Field(
        None, description="The short trainings that confirmed the LR (thorough, or standard when the sweeps "
        "disagreed), one per candidate."
    )


class BatchCandidate(BaseModel):
    batch_size: int
    fits: bool = Field(description="A full training step ran within the memory budget, with headroom.")
    peak_memory_mb: float | None = Field(None, description="Peak memory of one training step (CUDA: allocated; "
                                         "CPU: resident-set growth).")
    step_time_s: float | None = None
    samples_per_s: float | None = None
    lr: float | None = Field(None, description="The LR to train this batch size with.")
    relative_time_to_target: float | None = Field(
        None, description="Predicted wall time to reach a target loss, relative to the best candidate (1.0).")
    val_loss: float | None = Field(None, description="generalization_check: validation loss after the equal-epoch "
                                   "training (null: not run, or diverged).")
    note: str | None = Field(None, description="Why it does not fit, for example.")


class NoiseScaleOut(BaseModel):
    b_noise: float | None = Field(description="B_simple = tr(Σ)/|G|² (McCandlish et al. 2018); the critical batch.")
    low: float | None = Field(description="95% bootstrap interval.")
    high: float | None
    measured_at_lr: float
    after_steps: int = Field(description="Warm-up steps at that LR before measuring (B_noise grows in training).")
    batch_sizes: tuple[int, int] = Field(description="The small and big batch the norms were measured at.")
    measurements: int


class BatchSizeAdvice(BaseModel):
    batch_size: int = Field(description="The recommended batch size.")
    lr: float | None = Field(description="The LR that goes with it.")
    lr_scaling: str = Field(description="How the LR was set per batch size (probe, linear, sqrt, interpolated).")
    largest_fitting: int | None = Field(description="The largest batch that fits with headroom (predicted from the "
                                        "memory fit and verified with a real step where one was run).")
    largest_fitting_verified: bool = False
    memory_fit_mb: tuple[float, float] | None = Field(None, description="(a, b) of memory ≈ a + b·B, in MiB.")
    headroom: float = Field(description="Share of the memory budget kept free.")
    grad_accumulation_steps: int | None = Field(None, description="To reach target_effective_batch.")
    noise_scale: NoiseScaleOut | None = None
    generalization_epochs: int | None = Field(None, description="Epochs each candidate trained in the check.")
    candidates: list[BatchCandidate]
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
    steps_run: int = Field(description="Optimizer steps over all sweeps.")
    sweeps: int = Field(1, description="Range tests run; the curve is their per-step median.")
    batch_size: BatchSizeAdvice | None = Field(None, description="Batch-size advice, when batch_sizes was given.")
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


class DatasetOut(BaseModel):
    id: str = Field(description="Use as {\"source\": \"upload\", \"id\": ...} in a job's dataset.")
    sha256: str = Field(description="Of the uploaded bytes: the same bytes always give the same id.")
    filename: str
    format: Literal["npz", "csv", "parquet"]
    target_column: str | None = None
    size_bytes: int
    shapes: dict[str, list[int]]
    dtypes: dict[str, str]
    shape: DataShape = Field(description="The task lrbs reads off the arrays, and the sizes a model gets.")
    created_at: datetime


class DatasetPage(BaseModel):
    datasets: list[DatasetOut]
    next_page_token: str | None = None


class DeviceInfo(BaseModel):
    name: str = Field(description="cpu, cuda:0, ...")
    model: str | None = None
    memory_gb: float | None = None


class WorkerInfo(BaseModel):
    """What a worker reports when it connects: what it can run."""

    hostname: str
    lrbs: str
    torch: str
    python: str
    devices: list[DeviceInfo]
    precisions: list[Precision]
    builtins: dict[str, list[str]] = Field(description="Built-in models, datasets, losses and optimizers.")
    plugin_modules: list[str] = Field(description="Module prefixes the operator allows (LRBS_PLUGIN_MODULES).")
    plugins: dict[str, list[str]] = Field(description="Installed entry points per kind, with their modules allowed.")


class WorkerOut(BaseModel):
    id: str
    online: bool = Field(description="Heard from within LRBS_WORKER_ONLINE_SECONDS.")
    running_job_id: str | None = None
    info: WorkerInfo | None = None
    first_seen_at: datetime
    last_seen_at: datetime


class WorkerList(BaseModel):
    workers: list[WorkerOut]


class JobPage(BaseModel):
    jobs: list[Job]
    next_page_token: str | None = Field(None, description="Pass as page_token for the next page.")


# ------------------------------------------------------------------------------------------ worker wire


class ClaimRequest(Strict):
    worker_id: str = Field(min_length=1, max_length=200)
    wait_seconds: float = Field(20.0, ge=0, le=60, description="Long-poll: how long to wait for a job.")


class Registration(Strict):
    worker_id: str = Field(min_length=1, max_length=200)
    info: WorkerInfo


class Lease(BaseModel):
    job_id: str
    lease_token: str
    lease_seconds: float
    attempt: int
    max_run_seconds: float
    spec: JobSpec
    dataset_sha256: str | None = Field(None, description="For an uploaded dataset: the sha256 of its .npz.")


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
