"""A job spec in, a Result out: build the pieces, run the probes, turn their curves into advice."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import lrbs
from lrbs.contract.job_spec import JobSpec
from lrbs.contract.optimizers import OPTIMIZER_CLASSES, OptimizerSpec
from lrbs.contract.resources import Progress
from lrbs.contract.results import Candidate, Curve, Environment, Recommendation, Result, SuggestionOut
from lrbs.worker import registry, suggest
from lrbs.worker.batch_advice import MEMORY_HEADROOM, advise_batch_size
from lrbs.worker.errors import JobError
from lrbs.worker.plugins import PluginPolicy
from lrbs.worker.probes.lr_range import RangeResult, lr_range_test, lr_schedule
from lrbs.worker.probes.train import train
from lrbs.worker.schedules import DEFAULT_TRAIN_STEPS, schedule_params, snippet

ProgressFn = Callable[[Progress], None]

SWEEPS = {"quick": 1, "standard": 3, "thorough": 3}  # range tests per job, by lr_range.thoroughness
CONFIRM_MAX_STEPS = 1000  # thorough: longest confirmation run
ADAPTIVE_OPTIMIZERS = ("adam", "adamw")
SPIKE_RATIO = 1.5  # a raw loss this far above its smoothed value is a spike
WARMUP_SHARE = 0.05


def advise(spec: JobSpec, on_progress: ProgressFn | None = None, *, policy: PluginPolicy | None = None,
           fetch_upload: Callable[[str], Path] | None = None, memory_headroom: float = MEMORY_HEADROOM) -> Result:
    """Run the job. `policy` says which plugin modules may be imported; `fetch_upload` turns an uploaded
    dataset's id into a local .npz path (the runner downloads and caches it); `memory_headroom` is the share
    of memory the batch-size advice keeps free."""
    started = time.perf_counter()
    report = on_progress or (lambda _p: None)
    report(Progress(phase="setup"))
    policy = policy or PluginPolicy()

    device = registry.resolve_device(spec.device)
    registry.check_precision(spec.precision, device)
    torch.manual_seed(spec.seed)
    data = registry.load_data(spec.dataset, device, policy, fetch_upload)
    try:
        spec.resolve_for(data.shape)  # plugin data is first seen here: default loss, model and loss fit
    except ValueError as exc:
        raise JobError(str(exc)) from None
    loss_fn = registry.make_loss(spec.loss, policy)
    rng = spec.lr_range
    sweeps = SWEEPS[rng.thoroughness]
    total = sweeps * rng.num_steps

    curves: list[RangeResult] = []
    for sweep in range(sweeps):  # each sweep: its own initialisation and data order
        seed = spec.seed + sweep
        model, optimizer = registry.fresh(spec, data.shape, device, policy, rng.min_lr, seed)
        done = sweep * rng.num_steps

        def range_progress(step: int, _total: int, done: int = done) -> None:
            at = done + step
            report(Progress(phase="lr_range", step=at, total=total, fraction=min(1.0, at / total)))

        curves.append(lr_range_test(
            model, loss_fn, optimizer, data.batches(rng.batch_size, seed),
            min_lr=rng.min_lr, max_lr=rng.max_lr, num_steps=rng.num_steps, mode=rng.mode,
            smoothing=rng.smoothing, diverge_factor=rng.diverge_factor, on_progress=range_progress,
            precision=spec.precision, grad_accumulation_steps=spec.grad_accumulation_steps,
            grad_clip_norm=spec.grad_clip_norm, channels_last=spec.channels_last,
        ))
    curve = median_curve(curves)
    suggestions = suggest.suggest_all(curve.lrs, curve.smoothed, curve.losses)
    sweep_minima = [suggest.lowest(c.lrs, c.losses).lr for c in curves]
    choice = suggest.choose(suggestions, spec.schedule, sweep_minima)
    train_steps = spec.train_steps or DEFAULT_TRAIN_STEPS
    confirmation = None
    unsure = rng.thoroughness == "standard" and choice.confidence != "high"  # the sweeps disagreed
    if choice.lr is not None and (rng.thoroughness == "thorough" or unsure):
        choice, confirmation = confirm(choice, spec, data, loss_fn, device, policy, train_steps, report)
    batch_advice = None
    if spec.batch_sizes is not None:
        batch_advice = advise_batch_size(spec, data, loss_fn, device, policy, choice.lr, report,
                                         headroom=memory_headroom)
    return Result(
        curve=Curve(lr=curve.lrs, loss=curve.losses, smoothed_loss=curve.smoothed),
        suggestions={name: SuggestionOut(lr=g.lr, reason=g.reason) for name, g in suggestions.items()},
        recommendation=recommendation(choice, spec, min(rng.batch_size, data.n_train), curve, train_steps,
                                      confirmation),
        stop_reason=curve.stop_reason,
        diverged_at_lr=stop_lr(curve, spec),
        steps_run=sum(c.steps_run for c in curves),
        sweeps=sweeps,
        batch_advice=batch_advice,
        environment=Environment(
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


def confirm(choice: suggest.Choice, spec: JobSpec, data: registry.TrainData, loss_fn, device: torch.device,
            policy: PluginPolicy, train_steps: int, report: ProgressFn):
    """Short real trainings at the suggestion and at both ends of its safe range; the best validation loss wins.

    Always with thorough; with standard when the sweeps disagree (confidence below high). Staying inside the
    safe range keeps one noisy short run from pulling the LR far off."""
    steps = min(train_steps, CONFIRM_MAX_STEPS)
    candidates = [choice.lr_low or choice.lr / 2, choice.lr, choice.lr_high or choice.lr * 2]
    scored: list[Candidate] = []
    for i, lr in enumerate(candidates):
        model, optimizer = registry.fresh(spec, data.shape, device, policy, lr, spec.seed)

        def progress(step: int, total: int, i: int = i) -> None:
            done = i * total + step
            report(Progress(phase="confirm", step=done, total=len(candidates) * total,
                              fraction=done / (len(candidates) * total)))

        batches = data.batches(spec.lr_range.batch_size, spec.seed)
        params = schedule_params(spec.schedule, lr, steps)
        loss = train(model, loss_fn, optimizer, batches, data.val_batches(256), schedule=spec.schedule,
                     schedule_params=params, steps=steps, on_progress=progress)
        scored.append(Candidate(lr=lr, val_loss=loss if math.isfinite(loss) else None))
    finite = [c for c in scored if c.val_loss is not None]
    if not finite:
        return choice, scored
    best = min(finite, key=lambda c: c.val_loss)
    reason = (f"{choice.reason}; then confirmed by {len(candidates)} short trainings ({steps} steps each, "
              f"{spec.schedule}) at {', '.join(f'{c.lr:.3g}' for c in scored)}: {best.lr:.3g} reached the lowest "
              "validation loss")
    return replace(choice, lr=best.lr, rule=f"{choice.rule}+confirm", reason=reason), scored


def warmup_advice(spec: JobSpec, curve: RangeResult, choice: suggest.Choice, train_steps: int) -> tuple[int, str]:
    """A linear warm-up over 5% of training when the sweep was unstable early or the optimizer is Adam-family."""
    if spec.schedule == "one_cycle":
        return 0, "none needed: one_cycle starts at max_lr / div_factor and ramps up over pct_start of training"
    reasons = []
    name = getattr(spec.optimizer, "name", "")
    if getattr(spec.optimizer, "source", "builtin") == "builtin" and name in ADAPTIVE_OPTIMIZERS:
        reasons.append(f"{name} takes large, poorly estimated steps while its moment estimates warm up")
    upto = next((i for i, lr in enumerate(curve.lrs) if lr > (choice.lr_high or choice.lr)), len(curve.lrs))
    spikes = [i for i in range(min(10, upto), upto) if curve.losses[i] > SPIKE_RATIO * curve.smoothed[i]]
    if spikes:
        reasons.append(f"the range test's loss spiked {len(spikes)} time(s) below the recommended LR's safe range "
                       f"(first at LR {curve.lrs[spikes[0]]:.3g})")
    if not reasons:
        return 0, "none needed: the range test was stable up to the recommended LR"
    steps = max(1, round(WARMUP_SHARE * train_steps))
    return steps, f"warm up linearly over {steps} steps ({WARMUP_SHARE:.0%} of training): " + "; ".join(reasons)


def recommendation(choice: suggest.Choice, spec: JobSpec, batch_size: int, curve: RangeResult, train_steps: int,
                   confirmation: list[Candidate] | None = None) -> Recommendation | None:
    """Express the chosen LR in the terms of the schedule the user declared, with every parameter."""
    if choice.lr is None:
        return None
    warmup, warmup_reason = warmup_advice(spec, curve, choice, train_steps)
    params = schedule_params(spec.schedule, choice.lr, train_steps, warmup)
    extra = {}
    if spec.schedule == "one_cycle":
        extra = {"max_lr": choice.lr, "div_factor": params["div_factor"], "base_lr": params["initial_lr"]}
    if isinstance(spec.optimizer, OptimizerSpec):
        code = snippet(spec.schedule, params, OPTIMIZER_CLASSES[spec.optimizer.name], spec.optimizer.params)
    else:
        code = snippet(spec.schedule, params, "YourOptimizer", spec.optimizer.params).replace(
            "torch.optim.YourOptimizer", spec.optimizer.name.replace(":", "."))
    return Recommendation(
        schedule=spec.schedule, lr=choice.lr, lr_low=choice.lr_low or choice.lr, lr_high=choice.lr_high or choice.lr,
        confidence=choice.confidence, train_steps=train_steps, schedule_params=params, warmup_steps=warmup,
        warmup_reason=warmup_reason, snippet=code, batch_size=batch_size,
        grad_accumulation_steps=spec.grad_accumulation_steps,
        effective_batch_size=batch_size * spec.grad_accumulation_steps,
        rule=choice.rule, reason=choice.reason, confirmation=confirmation, **extra,
    )


def stop_lr(curve: RangeResult, spec: JobSpec) -> float | None:
    if curve.stopped_at is None:
        return None
    rng = spec.lr_range
    return lr_schedule(rng.min_lr, rng.max_lr, rng.num_steps, rng.mode)[curve.stopped_at]
