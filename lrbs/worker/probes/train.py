"""A plain training run at one LR and schedule, scored by its final validation loss.

Used to measure advice (benchmarks/lr_quality trains at every grid point and every suggestion) and
to confirm it (short runs around a suggestion). A straight loop, like nanoGPT's train.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from lrbs.worker.probes.batches import forever
from lrbs.worker.schedules import make_scheduler

CHECK_EVERY = 25  # steps between divergence checks (one host sync each)


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
             val_batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Mean loss per sample over the validation set (inf if it is not finite)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in val_batches:
        total += float(loss_fn(model(x), y)) * len(x)
        count += len(x)
    model.train(was_training)
    mean = total / max(count, 1)
    return mean if math.isfinite(mean) else math.inf


def train(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], optimizer: torch.optim.Optimizer,
          batches: Iterable[tuple[Tensor, Tensor]], val_batches: Iterable[tuple[Tensor, Tensor]], *,
          schedule: str, schedule_params: dict[str, Any], steps: int,
          on_progress: Callable[[int, int], None] | None = None) -> float:
    """Train `model` in place for `steps` optimizer steps; return the final validation loss (inf if diverged)."""
    scheduler = make_scheduler(optimizer, schedule, schedule_params)
    model.train()
    data = forever(batches)
    for step in range(steps):
        x, y = next(data)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (step + 1) % CHECK_EVERY == 0 or step + 1 == steps:
            if not math.isfinite(loss.detach().item()):
                return math.inf  # diverged: no point training on NaN
            if on_progress is not None:
                on_progress(step + 1, steps)
    return evaluate(model, loss_fn, val_batches)
