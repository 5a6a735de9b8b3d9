"""Built-in datasets, and the in-memory batching every tensor dataset goes through."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lrbs.contract.builtins import BuiltinDatasetSpec


@dataclass
class Data:
    x: Tensor
    y: Tensor
    x_val: Tensor
    y_val: Tensor


def split(x: Tensor, y: Tensor, validation_fraction: float) -> Data:
    """Hold out the last share of samples (callers shuffle first where order means something)."""
    n_val = int(round(len(x) * validation_fraction))
    n_train = len(x) - n_val
    if n_train < 1:
        raise ValueError(f"validation_fraction {validation_fraction} leaves no training samples of {len(x)}")
    return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def builtin(dataset: BuiltinDatasetSpec) -> Data:
    """Seeded data: the same spec gives the same tensors on every worker."""
    generate = GENERATORS.get(dataset.name)
    if generate is None:
        raise NotImplementedError(f"built-in dataset {dataset.name} is not available on this worker")
    x, y = generate(dataset.params, torch.Generator().manual_seed(dataset.params.seed))  # type: ignore[attr-defined]
    return split(x, y, dataset.validation_fraction)


def synthetic_classification(p: Any, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """A random linear teacher with noisy logits: learnable, but not to zero loss."""
    x = torch.randn(p.n_samples, p.n_features, generator=g)
    teacher = torch.randn(p.n_features, p.n_classes, generator=g) * (3 / math.sqrt(p.n_features))
    logits = x @ teacher + p.noise * torch.randn(p.n_samples, p.n_classes, generator=g)
    return x, logits.argmax(dim=1)


def synthetic_regression(p: Any, g: torch.Generator) -> tuple[Tensor, Tensor]:
    x = torch.randn(p.n_samples, p.n_features, generator=g)
    teacher = torch.randn(p.n_features, p.n_targets, generator=g) / math.sqrt(p.n_features)
    return x, x @ teacher + p.noise * torch.randn(p.n_samples, p.n_targets, generator=g)


def synthetic_images(p: Any, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """One random template per class, seen through pixel noise."""
    templates = torch.randn(p.n_classes, p.channels, p.height, p.width, generator=g)
    y = torch.randint(p.n_classes, (p.n_samples,), generator=g)
    return templates[y] + p.noise * torch.randn(p.n_samples, p.channels, p.height, p.width, generator=g), y


def synthetic_tokens(p: Any, g: torch.Generator) -> tuple[Tensor, Tensor]:
    seq = markov_tokens(p.n_samples, p.context + 1, p.vocab_size, g)
    return seq[:, :-1], seq[:, 1:]  # y is x shifted by one: the next token at every position


def bundled(name: str) -> Callable[[Any, torch.Generator], tuple[Tensor, Tensor]]:
    def load(p: Any, g: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = sklearn_dataset(name)
        order = torch.randperm(len(x), generator=g)  # sklearn's files are sorted by class
        return x[order], y[order]

    return load


def markov_tokens(n: int, length: int, vocab_size: int, g: torch.Generator) -> Tensor:
    """(n, length) int64 walks on a random sparse Markov chain: each token has 2–4 likely successors.

    The best possible next-token loss is at most log(4) nats, well below the log(vocab) of guessing,
    so a language model's loss curve has somewhere to go.
    """
    successors = torch.randint(vocab_size, (vocab_size, 4), generator=g)
    weights = torch.rand(vocab_size, 4, generator=g) + 0.1
    n_likely = torch.randint(2, 5, (vocab_size, 1), generator=g)
    weights[torch.arange(4).expand(vocab_size, 4) >= n_likely] = 0  # keep 2–4 successors per token
    seq = torch.empty(n, length, dtype=torch.int64)
    seq[:, 0] = torch.randint(vocab_size, (n,), generator=g)
    for t in range(1, length):
        prev = seq[:, t - 1]
        choice = torch.multinomial(weights[prev], 1, generator=g).squeeze(1)
        seq[:, t] = successors[prev, choice]
    return seq


def sklearn_dataset(name: str) -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled digits or iris (no download): standardised float32 x, int64 y."""
    try:
        from sklearn import datasets as sk  # optional: only workers that serve these datasets need it
    except ImportError as exc:
        raise ImportError(f"the {name} dataset needs scikit-learn on the worker: pip install 'lrbs[sklearn]'") from exc
    bunch = sk.load_digits() if name == "digits" else sk.load_iris()
    x = torch.as_tensor(bunch.data, dtype=torch.float32)
    std = x.std(dim=0)
    x = (x - x.mean(dim=0)) / torch.where(std > 0, std, 1.0)  # digits has always-blank border pixels
    return x, torch.as_tensor(bunch.target, dtype=torch.int64)


# The table of built-in datasets by name (`lrbs.contract.builtins.BUILTIN_DATASETS` lists the same names).
GENERATORS: dict[str, Callable[[Any, torch.Generator], tuple[Tensor, Tensor]]] = {
    "synthetic_classification": synthetic_classification,
    "synthetic_regression": synthetic_regression,
    "synthetic_images": synthetic_images,
    "synthetic_tokens": synthetic_tokens,
    "digits": bundled("digits"),
    "iris": bundled("iris"),
}


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
