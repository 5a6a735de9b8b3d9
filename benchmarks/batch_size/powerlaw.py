"""A task made for the regime a batch-size warm-up is meant for: a noise scale that grows through training, and a
step whose time grows with the batch.

Data (`regression`): noisy linear regression on Gaussian features whose covariance has a power-law spectrum
(eigenvalue i^-a) and a teacher whose signal per direction falls as i^-b. SGD learns the directions one after
another, so the loss keeps falling through the budget and the gradient's signal shrinks against its noise: the
noise scale grows by orders of magnitude (McCandlish et al. 2018, appendix on noisy quadratic models).

Model (`projected`): a frozen random projection of the features to `width` dimensions, then a trainable linear
head: still a linear regression (the projection is nearly orthogonal, so the spectrum carries over), with the
compute per sample set by `width`, so that beyond a few dozen samples a step's time grows with its batch, as on
an accelerator that the model fills.

Plugins for the batch benchmark (`{"source": "plugin", "name": "benchmarks.batch_size.powerlaw:regression"}`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def regression(
    dim: int = 256, n_train: int = 65536, n_val: int = 4096, a: float = 1.5, b: float = 1.2, noise: float = 0.3,
    seed: int = 0,
):  # fmt: skip
    """(x, y, x_val, y_val): y = x·w + noise·ε, with the teacher's signal variance 1."""
    rng = np.random.default_rng(seed)
    i = np.arange(1, dim + 1, dtype=np.float64)
    scale = i ** (-a / 2)  # feature i's standard deviation
    signal = i ** (-b / 2)  # the teacher's signal along feature i (λ_i·w_i² = i^-b)
    w = rng.choice([-1.0, 1.0], dim) * signal / scale / math.sqrt((signal**2).sum())

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((n, dim)) * scale
        y = x @ w + noise * rng.standard_normal(n)
        return x.astype(np.float32), y[:, None].astype(np.float32)

    return (*draw(n_train), *draw(n_val))


class Projected(nn.Module):
    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)  # part of the task, the same for every training seed
        self.register_buffer("projection", torch.randn(dim, width, generator=generator) / math.sqrt(width))
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x @ self.projection)


def projected(input_shape: tuple[int, ...], width: int = 2048) -> nn.Module:
    return Projected(math.prod(input_shape), width)
