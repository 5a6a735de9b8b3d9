"""LR range test (Smith 2015, "Cyclical Learning Rates for Training Neural Networks").

Train for `num_steps` optimizer steps while the learning rate sweeps from `min_lr` to `max_lr`,
record the loss of every step, and stop once the loss blows up. The curve feeds the suggestion
rules in `lrbs/worker/suggest.py`.

A plain function over (model, loss_fn, optimizer, batches): no HTTP, no database. It trains a
copy, so the caller's model and optimizer come back bit-for-bit as they went in, even when the
run is aborted by an exception (on_progress raising is how the worker cancels a job). A caller that
hands over a model it will not use again (the worker builds a fresh one per sweep) passes
`in_place=True`: no copy, so no second set of parameters and optimizer state on the device (a model
that fills half a GPU still gets its range test) and none of the copy's time (up to 1% of a short
sweep of a small model).

Speed: the loop costs what a bare training loop costs. A step only adds keeping a reference to its
(detached, on-device) loss in a list; once every `check_every` steps the chunk's losses are stacked
and read back in one go (one stack, one sync), and smoothing and the stop rules run on the host.

The step itself is the one a training pipeline would run (`probes/step.py`: precision, gradient
accumulation, clipping, channels-last), so the curve is the one it will see. With accumulation, a
point's loss is the mean over its micro-batches.

Validation loss (Smith's original test; pytorch-lr-finder's `val_loader`): given `val_batches`, a point's
loss is instead the mean loss per sample over those batches right after its step, in eval mode and
without grad (`probes/train.py` `validation_loss`), for tasks whose training loss misleads (dropout,
heavy augmentation, label noise). It costs a forward pass over `val_batches` per step; it stays on the
device like the training loss, so it adds no host sync either. It is smoothed and checked for divergence
exactly as the training loss is (pytorch-lr-finder smooths it too, with its default `smooth_f`).
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lrbs.worker.probes.batches import forever
from lrbs.worker.probes.step import LossFn, StepSettings, TrainingStep, device_of
from lrbs.worker.probes.train import validation_loss

# on_progress(steps_done, total, latest_lr, latest_smoothed_loss); the last two are None before the first point.
RangeProgress = Callable[[int, int, float | None, float | None], None]


@dataclass
class RangeResult:
    lrs: list[float]  # lr of each recorded step
    losses: list[float]  # raw loss per step: the step's training loss, or the validation loss after it
    smoothed: list[float]  # debiased EMA per step
    stop_reason: str  # "completed" | "diverged" | "non_finite"
    stopped_at: int | None  # step that triggered the stop (curve includes it for diverged, not non_finite)
    steps_run: int  # optimizer steps actually taken (can pass stopped_at: the stop is seen per chunk)
    wall_time_s: float
    loss_kind: str  # "training" | "validation": which loss `losses` and `smoothed` are


def lr_schedule(min_lr: float, max_lr: float, num_steps: int, mode: str = "exponential") -> list[float]:
    """`num_steps` learning rates from `min_lr` to `max_lr`, both included.

    "exponential" spaces them geometrically (the usual choice: lr spans decades),
    "linear" spaces them evenly.
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2, got {num_steps}")
    if not 0 < min_lr < max_lr:
        raise ValueError(f"need 0 < min_lr < max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    last = num_steps - 1
    if mode == "exponential":
        lrs = [min_lr * (max_lr / min_lr) ** (i / last) for i in range(num_steps)]
    elif mode == "linear":
        lrs = [min_lr + (max_lr - min_lr) * i / last for i in range(num_steps)]
    else:
        raise ValueError(f"mode must be 'exponential' or 'linear', got {mode!r}")
    lrs[0], lrs[-1] = min_lr, max_lr  # exact endpoints, whatever the rounding
    return lrs


def lr_range_test(
    model: nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[Any, Any]],
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 100,
    mode: str = "exponential",
    smoothing: float = 0.98,
    diverge_factor: float = 4.0,
    check_every: int = 10,
    on_progress: RangeProgress | None = None,
    step_settings: StepSettings | None = None,
    val_batches: Iterable[tuple[Any, Any]] | None = None,
    in_place: bool = False,
) -> RangeResult:
    """Run the LR range test on a copy of `model` and `optimizer`; see the module docstring.

    Stops early when the smoothed loss exceeds `diverge_factor` × the best smoothed loss so far
    (from the second step on), or when a loss is not finite. `on_progress(step_done, total, lr, smoothed_loss)` is
    called once per chunk of `check_every` steps; an exception it raises propagates.
    Each of the `num_steps` LR points is one optimizer step, run as `step_settings` say. With `val_batches`
    (re-iterable, evaluated whole after every step: pass a few batches), each point's loss is the
    validation loss after its step. `in_place`: train `model` and `optimizer` themselves, not a copy.
    """
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if check_every < 1:
        raise ValueError(f"check_every must be at least 1, got {check_every}")
    step_settings = step_settings or StepSettings()
    step_settings.check_device(device_of(model))
    lrs = lr_schedule(min_lr, max_lr, num_steps, mode)
    if val_batches is not None and not any(True for _ in val_batches):
        raise ValueError("val_batches yielded nothing; pass a re-iterable (list, DataLoader) with at least one batch")

    t0 = time.perf_counter()
    if not in_place:
        model, optimizer = _copy_for_probe(model, optimizer)
    model.train()
    step_fn = TrainingStep(model, loss_fn, optimizer, step_settings)
    data = forever(batches)
    chunk: list[torch.Tensor] = []  # this chunk's losses, one device tensor per LR point, until it ends

    curve_lrs: list[float] = []
    curve_losses: list[float] = []
    curve_smoothed: list[float] = []
    avg, best = 0.0, math.inf
    stop_reason, stopped_at = "completed", None
    chunk_start = 0
    steps_run = 0
    for step, lr in enumerate(lrs):
        step_fn.set_lr(lr)
        loss = step_fn(data)
        if val_batches is not None:
            with step_fn.autocast:
                loss = validation_loss(model, loss_fn, val_batches, step_fn.settings, step_fn.device)
        chunk.append(loss)
        steps_run = step + 1

        if steps_run % check_every and steps_run < num_steps:
            continue
        # End of a chunk: one readback, then smoothing and stop rules on the host. One row per LR
        # point, one column per micro-batch; a point's loss is the mean over its micro-batches.
        chunk_losses = torch.stack(chunk).float()
        chunk.clear()
        if chunk_losses.dim() > 1:
            chunk_losses = chunk_losses.reshape(len(chunk_losses), -1).mean(dim=1)
        for i, raw in enumerate(chunk_losses.tolist(), start=chunk_start):
            if not math.isfinite(raw):  # explicit: a NaN compares False and would slip past the rule below
                stop_reason, stopped_at = "non_finite", i
                break
            avg = smoothing * avg + (1 - smoothing) * raw
            smoothed = avg / (1 - smoothing ** (i + 1))  # debias: avg starts at 0
            curve_lrs.append(lrs[i])
            curve_losses.append(raw)
            curve_smoothed.append(smoothed)
            if i > 0 and smoothed > diverge_factor * best:
                stop_reason, stopped_at = "diverged", i
                break
            best = min(best, smoothed)
        chunk_start = steps_run
        if on_progress is not None:
            latest_lr, latest_loss = (curve_lrs[-1], curve_smoothed[-1]) if curve_lrs else (None, None)
            on_progress(steps_run, num_steps, latest_lr, latest_loss)
        if stopped_at is not None:
            break

    if step_fn.device.type == "cuda":
        torch.cuda.synchronize(step_fn.device)
    return RangeResult(
        lrs=curve_lrs,
        losses=curve_losses,
        smoothed=curve_smoothed,
        stop_reason=stop_reason,
        stopped_at=stopped_at,
        steps_run=steps_run,
        wall_time_s=time.perf_counter() - t0,
        loss_kind="training" if val_batches is None else "validation",
    )


def _copy_for_probe(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A deep copy of the model and a fresh optimizer of the same class over the copy's parameters,
    carrying deep copies of the caller's param-group settings and per-parameter state (momentum
    buffers, Adam moments, step counts).
    """
    model_copy = copy.deepcopy(model)
    # deepcopy keeps parameter order and sharing, so parameters match by position.
    twin = {id(p): q for p, q in zip(model.parameters(), model_copy.parameters(), strict=True)}
    groups = []
    for group in optimizer.param_groups:
        missing = [p for p in group["params"] if id(p) not in twin]
        if missing:
            raise ValueError(f"optimizer holds {len(missing)} parameter(s) that are not in the model")
        hyper = copy.deepcopy({k: v for k, v in group.items() if k != "params"})  # a tensor lr becomes the copy's own
        groups.append({**hyper, "params": [twin[id(p)] for p in group["params"]]})
    # `defaults` can hold keys the constructor does not take (AdamW's decoupled_weight_decay).
    accepted = inspect.signature(type(optimizer)).parameters
    optimizer_copy = type(optimizer)(groups, **{k: v for k, v in optimizer.defaults.items() if k in accepted})
    # The state goes straight into the fresh optimizer, not through load_state_dict: that rebuilds the
    # optimizer's __dict__, after which (CPython 3.11) every attribute read in step() and zero_grad() is
    # slower, about 5k instructions a step. One deepcopy keeps any tensors the states share, shared.
    states = copy.deepcopy({id(p): state for p, state in optimizer.state.items() if id(p) in twin})
    for key, state in states.items():
        optimizer_copy.state[twin[key]] = state
    return model_copy, optimizer_copy
