"""A job spec in, a Result out: build the pieces, run the probes, turn their curves into advice."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import lrbs
from service import spec as s
from worker import registry, suggest
from worker.errors import JobError
from worker.plugins import PluginPolicy
from worker.probes.lr_range import RangeResult, lr_range_test, lr_schedule

ProgressFn = Callable[[s.Progress], None]

# torch.optim.lr_scheduler.OneCycleLR's default: the cycle starts at max_lr / 25.
ONE_CYCLE_DIV_FACTOR = 25.0
SWEEPS = {"quick": 1, "standard": 3, "thorough": 3}  # range tests per job, by lr_range.thoroughness


def advise(spec: s.JobSpec, on_progress: ProgressFn | None = None, *, policy: PluginPolicy | None = None,
           fetch_upload: Callable[[str], Path] | None = None) -> s.Result:
    """Run the job. `policy` says which plugin modules may be imported; `fetch_upload` turns an uploaded
    dataset's id into a local .npz path (the runner downloads and caches it)."""
    started = time.perf_counter()
    report = on_progress or (lambda _p: None)
    report(s.Progress(phase="setup"))
    policy = policy or PluginPolicy()

    device = registry.resolve_device(spec.device)
    registry.check_precision(spec.precision, device)
    torch.manual_seed(spec.seed)
    data = registry.load_data(spec.dataset, device, policy, fetch_upload)
    try:
        spec.resolve_for(data.shape)  # plugin data is first seen here: default loss, model and loss fit
    except ValueError as exc:
        raise JobError(str(exc)) from None
    loss_name = spec.loss if isinstance(spec.loss, str) else None
    loss_fn = registry.make_loss(spec.loss, policy)
    rng = spec.lr_range
    sweeps = SWEEPS[rng.thoroughness]
    total = sweeps * rng.num_steps

    curves: list[RangeResult] = []
    for sweep in range(sweeps):  # each sweep: its own initialisation and data order
        seed = spec.seed + sweep
        torch.manual_seed(seed)
        model = registry.make_model(spec.model, data.shape, loss_name, policy).to(device)
        optimizer = registry.make_optimizer(spec.optimizer, model.parameters(), rng.min_lr, policy)
        done = sweep * rng.num_steps

        def range_progress(step: int, _total: int, done: int = done) -> None:
            at = done + step
            report(s.Progress(phase="lr_range", step=at, total=total, fraction=min(1.0, at / total)))

        curves.append(lr_range_test(
            model, loss_fn, optimizer, data.batches(rng.batch_size, seed),
            min_lr=rng.min_lr, max_lr=rng.max_lr, num_steps=rng.num_steps, mode=rng.mode,
            smoothing=rng.smoothing, diverge_factor=rng.diverge_factor, on_progress=range_progress,
            precision=spec.precision, grad_accumulation_steps=spec.grad_accumulation_steps,
            grad_clip_norm=spec.grad_clip_norm, channels_last=spec.channels_last,
        ))
    curve = median_curve(curves)
    suggestions = suggest.suggest_all(curve.lrs, curve.smoothed)
    choice = suggest.choose(suggestions, spec.schedule)
    return s.Result(
        curve=s.Curve(lr=curve.lrs, loss=curve.losses, smoothed_loss=curve.smoothed),
        suggestions={name: s.SuggestionOut(lr=g.lr, reason=g.reason) for name, g in suggestions.items()},
        recommendation=recommendation(choice, spec, min(rng.batch_size, data.n_train)),
        stop_reason=curve.stop_reason,
        diverged_at_lr=stop_lr(curve, spec),
        steps_run=sum(c.steps_run for c in curves),
        sweeps=sweeps,
        environment=s.Environment(
            device=str(device), torch=torch.__version__, python=platform.python_version(),
            lrbs=lrbs.__version__,
        ),
        wall_time_s=time.perf_counter() - started,
    )


def median_curve(curves: list[RangeResult]) -> RangeResult:
    """Several sweeps → one curve: the per-step median over the steps every sweep reached.

    One sweep's curve swings with its initialisation and data order (fastai #3295); the median of a few
    keeps the shape they share. A sweep that stopped early cuts the others there: past that point at
    least one run had blown up.
    """
    if len(curves) == 1:
        return curves[0]
    shortest = min(curves, key=lambda c: len(c.lrs))
    n = len(shortest.lrs)
    return RangeResult(
        lrs=shortest.lrs,
        losses=[float(v) for v in np.median([c.losses[:n] for c in curves], axis=0)] if n else [],
        smoothed=[float(v) for v in np.median([c.smoothed[:n] for c in curves], axis=0)] if n else [],
        stop_reason=shortest.stop_reason,
        stopped_at=shortest.stopped_at,
        steps_run=sum(c.steps_run for c in curves),
        wall_time_s=sum(c.wall_time_s for c in curves),
    )


def recommendation(choice: suggest.Choice, spec: s.JobSpec, batch_size: int) -> s.Recommendation | None:
    """Express the chosen LR in the terms of the schedule the user declared."""
    if choice.lr is None:
        return None
    extra = {}
    if spec.schedule == "one_cycle":
        extra = {"max_lr": choice.lr, "div_factor": ONE_CYCLE_DIV_FACTOR,
                 "base_lr": choice.lr / ONE_CYCLE_DIV_FACTOR}
    return s.Recommendation(
        schedule=spec.schedule, lr=choice.lr, batch_size=batch_size,
        grad_accumulation_steps=spec.grad_accumulation_steps,
        effective_batch_size=batch_size * spec.grad_accumulation_steps,
        rule=choice.rule, reason=choice.reason, **extra,
    )


def stop_lr(curve: RangeResult, spec: s.JobSpec) -> float | None:
    if curve.stopped_at is None:
        return None
    rng = spec.lr_range
    return lr_schedule(rng.min_lr, rng.max_lr, rng.num_steps, rng.mode)[curve.stopped_at]
