"""A job spec in, a Result out: build the pieces, run the probes, turn their curves into advice."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

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
    model = registry.make_model(spec.model, data.shape, spec.loss if isinstance(spec.loss, str) else None, policy)
    model = model.to(device)
    loss_fn = registry.make_loss(spec.loss, policy)
    rng = spec.lr_range
    optimizer = registry.make_optimizer(spec.optimizer, model.parameters(), rng.min_lr, policy)
    batches = data.batches(rng.batch_size, spec.seed)

    def range_progress(step: int, total: int) -> None:
        report(s.Progress(phase="lr_range", step=step, total=total, fraction=min(1.0, step / total)))

    curve = lr_range_test(
        model, loss_fn, optimizer, batches,
        min_lr=rng.min_lr, max_lr=rng.max_lr, num_steps=rng.num_steps, mode=rng.mode,
        smoothing=rng.smoothing, diverge_factor=rng.diverge_factor, on_progress=range_progress,
        precision=spec.precision, grad_accumulation_steps=spec.grad_accumulation_steps,
        grad_clip_norm=spec.grad_clip_norm, channels_last=spec.channels_last,
    )
    suggestions = suggest.suggest_all(curve.lrs, curve.smoothed)
    choice = suggest.choose(suggestions, spec.schedule)
    return s.Result(
        curve=s.Curve(lr=curve.lrs, loss=curve.losses, smoothed_loss=curve.smoothed),
        suggestions={name: s.SuggestionOut(lr=g.lr, reason=g.reason) for name, g in suggestions.items()},
        recommendation=recommendation(choice, spec, min(rng.batch_size, data.n_train)),
        stop_reason=curve.stop_reason,
        diverged_at_lr=stop_lr(curve, spec),
        steps_run=curve.steps_run,
        environment=s.Environment(
            device=str(device), torch=torch.__version__, python=platform.python_version(),
            lrbs=lrbs.__version__,
        ),
        wall_time_s=time.perf_counter() - started,
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
