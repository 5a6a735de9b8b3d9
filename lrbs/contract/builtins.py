"""The built-in models and datasets a job spec can name: one class each, listed once in its table.

A model class says what data it reads (`input_kind`) and checks the rest itself (`fit_problem`); a dataset
class knows its shape from its params. The worker builds each one from the function of the same name in
`lrbs.worker.networks.BUILDERS` or `lrbs.worker.builtin_data.GENERATORS`; a test checks that the tables agree.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, Union

from pydantic import Field, PositiveInt, model_validator

from lrbs.contract.common import Strict
from lrbs.contract.shapes import DataShape

# ------------------------------------------------------------------------------------------------ models

_INFERRED = "Inferred from the dataset when omitted."
InputKind = Literal["features", "images", "tokens"]


class BuiltinModelSpec(Strict):
    source: Literal["builtin"] = "builtin"
    name: str
    input_kind: ClassVar[InputKind]

    def param_count(self, shape: DataShape) -> int:
        """Trainable parameters of the network the worker builds for data of this shape (exact; a test checks it
        against the real network). Admission control reads it without building anything."""
        raise NotImplementedError

    def activation_bytes(self, shape: DataShape) -> int:
        """A rough fp32 estimate of the activations one sample keeps for the backward pass."""
        raise NotImplementedError

    def fit_problem(self, shape: DataShape) -> str | None:
        """Why this model cannot read data of this shape, or None."""
        if self.input_kind == "images" and len(shape.input_shape) != 3:
            return (
                f"model {self.name} needs image data (C×H×W); the dataset gives samples of shape "
                f"{list(shape.input_shape)}: use linear or mlp, or an image dataset"
            )
        if self.input_kind == "tokens" and shape.task != "language_modeling":
            return f"model {self.name} needs token data (x and y integer (N, T)); the dataset is {shape.task} data"
        if self.input_kind != "tokens" and shape.task == "language_modeling":
            return f"model {self.name} cannot read token sequences; use transformer_lm or a plugin model"
        return None


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


class _FeatureModel(BuiltinModelSpec):
    input_kind = "features"
    params: LinearParams | MLPParams

    def fit_problem(self, shape: DataShape) -> str | None:
        given, flat = self.params.in_features, math.prod(shape.input_shape)
        if shape.task != "language_modeling" and given is not None and given != flat:
            return f"model in_features is {given} but the dataset gives {flat} features"
        return super().fit_problem(shape)


def _widths(model: _FeatureModel, shape: DataShape) -> list[int]:
    p = model.params
    hidden = list(p.hidden) if isinstance(p, MLPParams) else []
    return [p.in_features or math.prod(shape.input_shape), *hidden, p.out_features or shape.num_outputs]


class LinearModel(_FeatureModel):
    name: Literal["linear"]
    params: LinearParams = LinearParams()

    def param_count(self, shape: DataShape) -> int:
        i, o = _widths(self, shape)
        return i * o + o

    def activation_bytes(self, shape: DataShape) -> int:
        return 4 * 2 * sum(_widths(self, shape))


class MLPModel(_FeatureModel):
    name: Literal["mlp"]
    params: MLPParams = MLPParams()

    def param_count(self, shape: DataShape) -> int:
        widths = _widths(self, shape)
        linear = sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))
        return linear + (2 * sum(self.params.hidden) if self.params.batch_norm else 0)

    def activation_bytes(self, shape: DataShape) -> int:
        return 4 * 4 * sum(_widths(self, shape))  # pre-activation, activation, norm and dropout per layer


class CNNParams(Strict):
    in_channels: PositiveInt | None = Field(None, description=_INFERRED)
    num_classes: PositiveInt | None = Field(None, description=_INFERRED)
    channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [16, 32],
        min_length=1,
        max_length=8,
        description="Output channels of each conv block (conv 3×3, batch norm, ReLU, 2×2 max-pool).",
    )
    dropout: float = Field(0.0, ge=0, lt=1)


class CNNModel(BuiltinModelSpec):
    input_kind = "images"
    name: Literal["cnn"]
    params: CNNParams = CNNParams()

    def param_count(self, shape: DataShape) -> int:
        p, width, total = self.params, self.params.in_channels or shape.input_shape[0], 0
        for c in p.channels:
            total += width * c * 9 + 2 * c  # conv 3×3 without bias, batch norm
            width = c
        classes = p.num_classes or shape.num_outputs
        return total + width * classes + classes

    def activation_bytes(self, shape: DataShape) -> int:
        _, h, w = shape.input_shape
        total = 0
        for c in self.params.channels:
            total += 4 * c * h * w  # conv, norm, ReLU outputs at full size, the pooled one at a quarter
            h, w = -(-h // 2), -(-w // 2)
        return 4 * total


class ResNetParams(Strict):
    in_channels: PositiveInt | None = Field(None, description=_INFERRED)
    num_classes: PositiveInt | None = Field(None, description=_INFERRED)
    depth: int = Field(1, ge=1, le=16, description="Basic blocks per stage (1 → ResNet-8, 3 → ResNet-20).")
    width: int = Field(16, ge=1, le=1024, description="Channels of the first stage; doubled at each next one.")
    stages: int = Field(3, ge=1, le=4)


class ResNetModel(BuiltinModelSpec):
    """A CIFAR-style ResNet (He et al. 2016): 3×3 stem, stages of basic blocks, global pooling."""

    input_kind = "images"
    name: Literal["resnet"]
    params: ResNetParams = ResNetParams()

    def _plan(self, shape: DataShape) -> list[tuple[int, int, int]]:
        """(in channels, out channels, stride) of every basic block."""
        p, plan, channels = self.params, [], self.params.width
        for stage in range(p.stages):
            out = p.width * 2**stage
            for block in range(p.depth):
                plan.append((channels, out, 2 if stage > 0 and block == 0 else 1))
                channels = out
        return plan

    def param_count(self, shape: DataShape) -> int:
        p = self.params
        total = (p.in_channels or shape.input_shape[0]) * p.width * 9 + 2 * p.width  # stem conv and norm
        channels = p.width
        for cin, out, stride in self._plan(shape):
            total += cin * out * 9 + 2 * out + out * out * 9 + 2 * out
            if stride != 1 or cin != out:
                total += cin * out + 2 * out  # 1×1 projection shortcut and its norm
            channels = out
        classes = p.num_classes or shape.num_outputs
        return total + channels * classes + classes

    def activation_bytes(self, shape: DataShape) -> int:
        _, h, w = shape.input_shape
        total = 3 * self.params.width * h * w
        for _, out, stride in self._plan(shape):
            h, w = -(-h // stride), -(-w // stride)
            total += 7 * out * h * w  # two convs, two norms, ReLUs, the sum
        return 4 * total


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


class TransformerLMModel(BuiltinModelSpec):
    """A GPT-style decoder: token and position embeddings, pre-norm causal blocks, tied output head."""

    input_kind = "tokens"
    name: Literal["transformer_lm"]
    params: TransformerLMParams = TransformerLMParams()

    def param_count(self, shape: DataShape) -> int:
        p, d = self.params, self.params.d_model
        vocab, context = p.vocab_size or shape.num_outputs, p.context or shape.input_shape[0]
        hidden = p.mlp_ratio * d
        block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * hidden + hidden) + (hidden * d + d)
        return vocab * d + context * d + p.layers * block + 2 * d  # the output head is tied to the embedding

    def activation_bytes(self, shape: DataShape) -> int:
        p, t = self.params, shape.input_shape[0]
        vocab = p.vocab_size or shape.num_outputs
        per_layer = t * p.d_model * (10 + 2 * p.mlp_ratio) + p.heads * t * t  # + attention weights (math kernel)
        return 4 * (p.layers * per_layer + 2 * t * vocab)

    def fit_problem(self, shape: DataShape) -> str | None:
        problem = super().fit_problem(shape)
        context = self.params.context
        if problem is None and context is not None and context < shape.input_shape[0]:
            return f"transformer_lm context {context} is shorter than the data's {shape.input_shape[0]} tokens"
        return problem


BUILTIN_MODELS: tuple[type[BuiltinModelSpec], ...] = (
    LinearModel,
    MLPModel,
    CNNModel,
    ResNetModel,
    TransformerLMModel,
)

# ---------------------------------------------------------------------------------------------- datasets


class DatasetOptions(Strict):
    validation_fraction: float = Field(
        0.2, ge=0, lt=1, description="Share of samples held out (an upload with x_val and y_val keeps its own)."
    )


class BuiltinDatasetSpec(DatasetOptions):
    source: Literal["builtin"] = "builtin"
    name: str

    def shape(self) -> DataShape:
        raise NotImplementedError

    def n_samples(self) -> int | None:
        """Samples the worker generates (None for bundled data): what LRBS_MAX_SAMPLES limits."""
        return getattr(getattr(self, "params", None), "n_samples", None)


class SyntheticClassificationParams(Strict):
    n_samples: PositiveInt = Field(2048, le=1_000_000)
    n_features: PositiveInt = Field(20, le=100_000)
    n_classes: int = Field(4, ge=2, le=10_000)
    noise: float = Field(0.5, ge=0, description="Std of the label noise added to the teacher's logits.")
    seed: int = 0


class SyntheticClassification(BuiltinDatasetSpec):
    name: Literal["synthetic_classification"]
    params: SyntheticClassificationParams = SyntheticClassificationParams()

    def shape(self) -> DataShape:
        p = self.params
        return DataShape(task="classification", input_shape=(p.n_features,), num_outputs=p.n_classes)


class SyntheticRegressionParams(Strict):
    n_samples: PositiveInt = Field(2048, le=1_000_000)
    n_features: PositiveInt = Field(20, le=100_000)
    n_targets: PositiveInt = Field(1, le=10_000)
    noise: float = Field(0.1, ge=0, description="Std of the Gaussian noise on the targets.")
    seed: int = 0


class SyntheticRegression(BuiltinDatasetSpec):
    name: Literal["synthetic_regression"]
    params: SyntheticRegressionParams = SyntheticRegressionParams()

    def shape(self) -> DataShape:
        p = self.params
        return DataShape(task="regression", input_shape=(p.n_features,), num_outputs=p.n_targets)


class SyntheticImagesParams(Strict):
    n_samples: PositiveInt = Field(1024, le=200_000)
    channels: PositiveInt = Field(3, le=64)
    height: int = Field(16, ge=4, le=512)
    width: int = Field(16, ge=4, le=512)
    n_classes: int = Field(10, ge=2, le=10_000)
    noise: float = Field(1.0, ge=0, description="Std of the pixel noise on top of each class's template.")
    seed: int = 0


class SyntheticImages(BuiltinDatasetSpec):
    name: Literal["synthetic_images"]
    params: SyntheticImagesParams = SyntheticImagesParams()

    def shape(self) -> DataShape:
        p = self.params
        return DataShape(task="classification", input_shape=(p.channels, p.height, p.width), num_outputs=p.n_classes)


class SyntheticTokensParams(Strict):
    n_samples: PositiveInt = Field(1024, le=1_000_000, description="Sequences.")
    context: int = Field(32, ge=2, le=8192, description="Tokens per sequence (T).")
    vocab_size: int = Field(64, ge=2, le=1_000_000)
    seed: int = 0


class SyntheticTokens(BuiltinDatasetSpec):
    """Seeded token streams from a random sparse Markov chain: the next token is learnable."""

    name: Literal["synthetic_tokens"]
    params: SyntheticTokensParams = SyntheticTokensParams()

    def shape(self) -> DataShape:
        p = self.params
        return DataShape(task="language_modeling", input_shape=(p.context,), num_outputs=p.vocab_size)


class ShuffleParams(Strict):
    seed: int = Field(0, description="Shuffles the samples before the validation split.")


class Digits(BuiltinDatasetSpec):
    """scikit-learn's bundled 8×8 digits: 1797 samples, 64 features, 10 classes (needs scikit-learn)."""

    name: Literal["digits"]
    params: ShuffleParams = ShuffleParams()

    def shape(self) -> DataShape:
        return DataShape(task="classification", input_shape=(64,), num_outputs=10)


class Iris(BuiltinDatasetSpec):
    """scikit-learn's bundled iris: 150 samples, 4 features, 3 classes (needs scikit-learn)."""

    name: Literal["iris"]
    params: ShuffleParams = ShuffleParams()

    def shape(self) -> DataShape:
        return DataShape(task="classification", input_shape=(4,), num_outputs=3)


BUILTIN_DATASETS: tuple[type[BuiltinDatasetSpec], ...] = (
    SyntheticClassification,
    SyntheticRegression,
    SyntheticImages,
    SyntheticTokens,
    Digits,
    Iris,
)


def names(table: tuple[type[BuiltinModelSpec], ...] | tuple[type[BuiltinDatasetSpec], ...]) -> list[str]:
    """The `name` each class of a table accepts."""
    return [cls.model_fields["name"].annotation.__args__[0] for cls in table]  # type: ignore[union-attr]


# The discriminated unions the job spec accepts, built from the tables above (type checkers see the base).
if TYPE_CHECKING:
    BuiltinModel = BuiltinModelSpec
    BuiltinDataset = BuiltinDatasetSpec
else:
    BuiltinModel = Annotated[Union[BUILTIN_MODELS], Field(discriminator="name")]  # noqa: UP007
    BuiltinDataset = Annotated[Union[BUILTIN_DATASETS], Field(discriminator="name")]  # noqa: UP007
