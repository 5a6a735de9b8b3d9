"""The gradient-noise-scale estimator on a problem whose G and Σ are known exactly."""

import numpy as np
import pytest
import torch
from torch import nn

from lrbs.worker.probes.noise_scale import estimate, measure


def linear_regression_truth(d: torch.Tensor, sigma: float) -> float:
    """Loss ½(x·w − y)², x ~ N(0, I), y = x·w* + ε, ε ~ N(0, σ²), at w = w* + d. The per-sample gradient
    is g = x(x·d − ε): G = d and Σ = (|d|² + σ²) I + d dᵀ, so tr(Σ) = n(|d|² + σ²) + |d|²."""
    n, d2 = len(d), float(d @ d)
    return (n * (d2 + sigma**2) + d2) / d2


def test_estimate_recovers_b_simple_within_10_percent():
    torch.manual_seed(0)
    n, sigma = 16, 2.0
    w_star = torch.randn(n)
    d = 0.5 * torch.randn(n)
    model = nn.Linear(n, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_((w_star + d).unsqueeze(0))

    def batches(size):
        while True:
            x = torch.randn(size, n)
            yield x, (x @ w_star + sigma * torch.randn(size)).unsqueeze(1)

    def loss_fn(out, y):
        return 0.5 * ((out - y) ** 2).mean()

    small, big, b_big = measure(model, loss_fn, batches(256), b_small=8, measurements=400)
    found = estimate(small, big, 8, b_big)
    truth = linear_regression_truth(d, sigma)
    assert found.b_simple == pytest.approx(truth, rel=0.10)
    assert found.grad_sq == pytest.approx(float(d @ d), rel=0.15)
    assert found.low < truth < found.high  # the bootstrap interval covers it


def test_estimate_refuses_bad_pairs_and_reports_pure_noise():
    with pytest.raises(ValueError):
        estimate([1.0], [0.5], 32, 8)
    with pytest.raises(ValueError):
        estimate([1.0, 2.0], [0.5], 8, 32)
    noise_only = estimate(np.full(10, 4.0), np.full(10, 1.0), 8, 32)  # |G_B|² shrinks exactly as 1/B
    assert noise_only.b_simple is None and noise_only.grad_sq == pytest.approx(0.0, abs=1e-12)
