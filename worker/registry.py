"""Built-in datasets, models, losses and optimizers, built from the job spec."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service import spec as s


class JobError(Exception):
    """The job asks for something this worker cannot do: fail it with this message, do not retry."""


# -------------------------------------------------------------------------------------------- datasets


@dataclass
class Data:
    x: Tensor
    y: Tensor
    x_val: Tensor
    y_val: Tensor


def make_dataset(dataset: s.DatasetSpec) -> Data:
    """Seeded synthetic data: the same spec gives the same tensors on every worker."""
    p = dataset.params
    g = torch.Generator().manual_seed(p.seed)
    if isinstance(dataset, s.SyntheticClassification):
        # A random linear teacher with noisy logits: learnable, but not to zero loss.
        x = torch.randn(p.n_samples, p.n_features, generator=g)
        teacher = torch.randn(p.n_features, p.n_classes, generator=g) * (3 / math.sqrt(p.n_features))
        logits = x @ teacher + p.noise * torch.randn(p.n_samples, p.n_classes, generator=g)
        y = logits.argmax(dim=1)
    elif isinstance(dataset, s.SyntheticRegression):
        x = torch.randn(p.n_samples, p.n_features, generator=g)
        teacher = torch.randn(p.n_features, p.n_targets, generator=g) / math.sqrt(p.n_features)
        y = x @ teacher + p.noise * torch.randn(p.n_samples, p.n_targets, generator=g)
    else:
        # One random template per class, seen through pixel noise.
        templates = torch.randn(p.n_classes, p.channels, p.height, p.width, generator=g)
        y = torch.randint(p.n_classes, (p.n_samples,), generator=g)
        x = templates[y] + p.noise * torch.randn(p.n_samples, p.channels, p.height, p.width, generator=g)
    n_val = int(round(p.n_samples * dataset.validation_fraction))
    n_train = p.n_samples - n_val
    if n_train < 1:
        raise JobError(f"validation_fraction {dataset.validation_fraction} leaves no training samples")
    return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


class Batches:
    """Re-iterable shuffled mini-batches over in-memory tensors; each pass is one seeded epoch."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int) -> None:
        self.x, self.y = x, y
        self.batch_size = min(batch_size, len(x))
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(self.x), generator=self.generator).to(self.x.device)
        for start in range(0, len(order) - self.batch_size + 1, self.batch_size):  # full batches only
            idx = order[start : start + self.batch_size]
            yield self.x[idx], self.y[idx]


# ---------------------------------------------------------------------------------------------- models

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


def make_model(model: s.ModelSpec, shape: s.DataShape, loss: str) -> nn.Module:
    p = model.params
    if isinstance(model, s.CNNModel):
        net = cnn(p.in_channels or shape.input_shape[0], p.num_classes or shape.num_outputs, p.channels,
                  p.dropout)
    else:
        in_features = p.in_features or math.prod(shape.input_shape)
        out_features = p.out_features or shape.num_outputs
        if isinstance(model, s.LinearModel):
            net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, out_features))
        else:
            net = mlp(in_features, out_features, p.hidden, p.activation, p.dropout, p.batch_norm)
    if loss == "nll":  # nll_loss takes log-probabilities; built-in models end in logits
        net = nn.Sequential(net, nn.LogSoftmax(dim=-1))
    return net


def mlp(in_features: int, out_features: int, hidden: list[int], activation: str, dropout: float,
        batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(ACTIVATIONS[activation]())
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def cnn(in_channels: int, num_classes: int, channels: list[int], dropout: float) -> nn.Sequential:
    """Conv 3×3 → BatchNorm → ReLU → 2×2 max-pool per block, then global average pooling."""
    layers: list[nn.Module] = []
    width = in_channels
    for c in channels:
        layers += [nn.Conv2d(width, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                   nn.MaxPool2d(2, ceil_mode=True)]
        width = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------- losses


def make_loss(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    if name == "cross_entropy":
        return cross_entropy
    if name == "nll":
        return lambda out, y: F.nll_loss(out.flatten(0, -2), y.flatten())
    if name == "bce_with_logits":
        return bce_with_logits
    if name == "mse":
        return F.mse_loss
    if name == "l1":
        return F.l1_loss
    raise JobError(f"unknown loss {name!r}")


def cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    """Logits (N, C) against (N,), or language-model logits (N, T, V) against (N, T)."""
    return F.cross_entropy(out.flatten(0, -2), y.flatten())


def bce_with_logits(out: Tensor, y: Tensor) -> Tensor:
    """Class labels become one-hot targets: one independent sigmoid per class."""
    if y.dtype in (torch.int64, torch.int32) and y.shape != out.shape:
        y = F.one_hot(y, out.shape[-1]).to(out.dtype)
    return F.binary_cross_entropy_with_logits(out, y)


# ----------------------------------------------------------------------------------- optimizer, device


def make_optimizer(optimizer: s.OptimizerSpec, params, lr: float) -> torch.optim.Optimizer:
    cls = getattr(torch.optim, s.OPTIMIZER_CLASSES[optimizer.name])
    return cls(params, lr=lr, **optimizer.params)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise JobError("the job asks for device cuda, but this worker has no CUDA GPU; use auto or cpu")
    return torch.device(device)
