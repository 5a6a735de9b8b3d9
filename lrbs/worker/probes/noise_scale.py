"""The gradient noise scale B_simple = tr(Σ) / |G|² (McCandlish et al. 2018, "An Empirical Model of
Large-Batch Training"), from squared gradient norms measured at two batch sizes.

E|G_B|² = |G|² + tr(Σ)/B, so from a small batch b and a big batch B:
    |G|²  ≈ (B·|G_B|² − b·|G_b|²) / (B − b)
    tr(Σ) ≈ (|G_b|² − |G_B|²) / (1/b − 1/B)
Each is unbiased; their ratio is not, so the two are averaged separately over many measurements and the
ratio is taken last (the paper's appendix A.1). The interval comes from a bootstrap over measurements.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from lrbs.worker.probes.step import LossFn, StepSettings, device_of


@dataclass(frozen=True)
class NoiseScale:
    b_simple: float | None  # None when |G|² is not positive: the gradient is all noise at this point
    grad_sq: float  # |G|²
    trace_sigma: float  # tr(Σ), per-sample gradient covariance
    low: float | None  # bootstrap interval of b_simple (2.5% and 97.5%)
    high: float | None
    measurements: int


def estimate(
    small_sq: Iterable[float], big_sq: Iterable[float], b_small: int, b_big: int, resamples: int = 1000, seed: int = 0
) -> NoiseScale:
    """B_simple from paired squared norms |G_b|² (batch b_small) and |G_B|² (batch b_big)."""
    small, big = np.asarray(list(small_sq), float), np.asarray(list(big_sq), float)
    if b_big <= b_small or len(small) == 0 or len(small) != len(big):
        raise ValueError("need b_big > b_small and as many big-batch norms as small-batch ones")
    g2 = (b_big * big - b_small * small) / (b_big - b_small)
    tr = (small - big) / (1 / b_small - 1 / b_big)

    def ratio(i: np.ndarray) -> float:
        g, t = g2[i].mean(), tr[i].mean()
        return t / g if g > 0 else np.nan

    whole = ratio(np.arange(len(g2)))
    rng = np.random.default_rng(seed)
    boots = np.array([ratio(rng.integers(0, len(g2), len(g2))) for _ in range(resamples)])
    boots = boots[np.isfinite(boots)]
    low, high = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))) if len(boots) else (None, None)
    return NoiseScale(
        b_simple=float(whole) if np.isfinite(whole) else None,
        grad_sq=float(g2.mean()),
        trace_sigma=float(tr.mean()),
        low=low,
        high=high,
        measurements=len(g2),
    )


def squared_grad_norm(
    model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, step_settings: StepSettings | None = None
) -> Tensor:
    """|∇L|² of the mean loss over this batch (forward as the job's steps run it), left on the device."""
    settings = step_settings or StepSettings()
    x, y = settings.to_device(x, y, device_of(model))
    model.zero_grad(set_to_none=True)
    with settings.autocast(device_of(model)):
        loss = loss_fn(model(x), y)
    loss.backward()
    grads = [p.grad.detach().float() for p in model.parameters() if p.grad is not None]
    return torch.stack([(g**2).sum() for g in grads]).sum()


def measure(
    model: nn.Module,
    loss_fn: LossFn,
    big_batches: Iterator[tuple[Tensor, Tensor]],
    b_small: int,
    measurements: int,
    step_settings: StepSettings | None = None,
) -> tuple[list[float], list[float], int]:
    """Norms at the model's current weights: each big batch gives |G_B|², and its first b_small samples |G_b|².

    The model is not stepped. Returns (small norms, big norms, big batch size); one host sync at the end.
    """
    small, big, b_big = [], [], 0
    for _ in range(measurements):
        x, y = next(big_batches)
        b_big = len(x)
        big.append(squared_grad_norm(model, loss_fn, x, y, step_settings))
        small.append(squared_grad_norm(model, loss_fn, x[:b_small], y[:b_small], step_settings))
    model.zero_grad(set_to_none=True)
    return torch.stack(small).tolist(), torch.stack(big).tolist(), b_big
