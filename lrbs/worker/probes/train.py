"""A plain training run at one LR and schedule, scored by its final validation loss.

Used to measure advice (benchmarks/lr_quality trains at every grid point and every suggestion) and
to confirm it (short runs around a suggestion). A straight loop, like nanoGPT's train.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from lrbs.schedules import SCHEDULES
from lrbs.worker.probes.batches import forever
from lrbs.worker.probes.step import LossFn, StepSettings, TrainingStep, device_of

CHECK_EVERY = 25  # steps between divergence checks (one host sync each)


def evaluate(
    model: nn.Module,
    loss_fn: LossFn,
    val_batches: Iterable[tuple[Tensor, Tensor]],
    step_settings: StepSettings | None = None,
    device: torch.device | None = None,
) -> float:
    """Mean loss per sample over the validation set (inf if it is not finite)."""
    settings, device = step_settings or StepSettings(), device or device_of(model)
    mean = float(validation_loss(model, loss_fn, val_batches, settings, device))
    return mean if math.isfinite(mean) else math.inf


@torch.no_grad()
def validation_loss(
    model: nn.Module,
    loss_fn: LossFn,
    val_batches: Iterable[tuple[Tensor, Tensor]],
    settings: StepSettings,
    device: torch.device,
) -> Tensor:
    """Mean loss per sample over `val_batches`, in eval mode (the model's mode is restored after), without grad.

    A float64 tensor on the device, summed in batch order: nothing is read back, so a caller can keep it
    without a host sync (the range test reads its validation losses back with its chunk). 0 when empty.
    """
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for x, y in val_batches:
        x, y = settings.to_device(x, y, device)
        total += loss_fn(model(x), y).double().reshape(()) * len(x)
        count += len(x)
    model.train(was_training)
    return total / max(count, 1)


def training(
    model: nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[Tensor, Tensor]],
    val_batches: Iterable[tuple[Tensor, Tensor]],
    *,
    schedule: str,
    schedule_params: dict[str, Any],
    steps: int,
    evaluate_at: Collection[int] = (),
    on_progress: Callable[[int, int], None] | None = None,
    step_settings: StepSettings | None = None,
) -> Iterator[tuple[int, float]]:
    """Train `model` in place for `steps` optimizer steps, yielding (step, validation loss) after each step in
    `evaluate_at` and after the last. A diverged run yields (step, inf) once, at the check that saw it, and stops.

    The caller may stop early by not asking for the next checkpoint (confirmation trainings drop an LR that is
    clearly behind). Each step runs as `step_settings` say (precision, accumulation, clipping, channels-last)."""
    scheduler = SCHEDULES[schedule].scheduler(optimizer, schedule_params)
    model.train()
    step_fn = TrainingStep(model, loss_fn, optimizer, step_settings)
    data = forever(batches)
    for step in range(1, steps + 1):
        loss = step_fn(data)
        scheduler.step()
        checkpoint = step in evaluate_at or step == steps
        if step % CHECK_EVERY == 0 or checkpoint:
            if not torch.isfinite(loss).all().item():
                yield step, math.inf  # diverged: no point training on NaN
                return
            if on_progress is not None:
                on_progress(step, steps)
        if checkpoint:
            with step_fn.autocast:
                val_loss = evaluate(model, loss_fn, val_batches, step_fn.settings, step_fn.device)
            yield step, val_loss  # outside autocast: the caller runs between checkpoints
