"""A job spec in, a Result out: run the range tests (and the batch-size advice), turn their curves into advice."""

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
from lrbs.contract.results import Candidate, Curve, Environment, Recommendation, Result, SuggestionOut
from lrbs.schedules import DEFAULT_TRAIN_STEPS, SCHEDULES
from lrbs.worker import suggest
from lrbs.worker.batch_advice import MEMORY_HEADROOM, advise_batch_size
from lrbs.worker.job import JobContext, ProgressFn
from lrbs.worker.plugins import PluginPolicy
from lrbs.worker.probes.lr_range import RangeResult, lr_schedule

SWEEPS = {"quick": 1, "standard": 3, "thorough": 3}  # range tests per job, by lr_range.thoroughness
CONFIRM_MAX_STEPS = 1000  # thorough: longest confirmation run
# Where a clearly worse LR is stopped: shares of a confirmation run. Not under a schedule that rises to its peak
# (one_cycle): a higher peak trails through the rise and the high-LR middle, then wins in the anneal, so a loss
# part-way through does not rank the runs (benchmarks/lr_quality: stopping at 1/9 or just after the peak both cost
# the best LR on images-cnn-momentum).
CONFIRM_CHECKPOINTS = (1 / 9, 1 / 3)
CLEARLY_BEHIND = 0.1  # of the progress from the untrained loss: a gap this large at a checkpoint stops a run
WARMUP_OPTIMIZERS = ("adam", "adamw")  # Adam-family: moment estimates need a warm-up
SPIKE_RATIO = 1.5  # a raw loss this far above its smoothed value is a spike
WARMUP_SHARE = 0.05
ADAM_BETA2 = 0.999  # torch's default betas[1]


def advise(
    spec: JobSpec,
    on_progress: ProgressFn | None = None,
    *,
    policy: PluginPolicy | None = None,
    fetch_upload: Callable[[str], Path] | None = None,
    memory_headroom: float = MEMORY_HEADROOM,
) -> Result:
    """Run the job. `policy` says which plugin modules may be imported; `fetch_upload` turns an uploaded
    dataset's id into a local .npz path (the runner downloads and caches it); `memory_headroom` is the share
    of memory the batch-size advice keeps free."""
    started = time.perf_counter()
    job = JobContext.build(spec, on_progress, policy=policy, fetch_upload=fetch_upload)
    sweep = spec.lr_range
    curves = sweeps(job)
    curve = median_curve(curves)
    suggestions = suggest.suggest_all(curve.lrs, curve.smoothed, curve.losses)
    sweep_minima = [suggest.lowest(c.lrs, c.losses).lr for c in curves]
    choice = suggest.choose(suggestions, spec.schedule, sweep_minima, family=job.family())
    train_steps = spec.train_steps or DEFAULT_TRAIN_STEPS
    confirmation = None
    unsure = sweep.thoroughness == "standard" and choice.confidence != "high"  # the sweeps disagreed
    if choice.lr is not None and (sweep.thoroughness == "thorough" or unsure):
        choice, confirmation = confirm(job, choice, train_steps)
    batch_advice = None
    if spec.batch_sizes is not None:
        batch_advice = advise_batch_size(job, choice.lr, headroom=memory_headroom)
    return Result(
        curve=as_curve(curve),
        sweep_curves=[as_curve(c) for c in curves],
        suggestions={name: SuggestionOut(lr=g.lr, reason=g.reason) for name, g in suggestions.items()},
        recommendation=recommendation(
            choice, spec, min(sweep.batch_size, job.data.n_train), curve, train_steps, confirmation
        ),
        stop_reason=curve.stop_reason,
        diverged_at_lr=stop_lr(curve, spec),
        steps_run=sum(c.steps_run for c in curves),
        sweeps=len(curves),
        batch_advice=batch_advice,
        environment=Environment(
            device=str(job.device),
            torch=torch.__version__,
            python=platform.python_version(),
            lrbs=lrbs.__version__,
            cpu_threads=torch.get_num_threads(),
        ),
        wall_time_s=time.perf_counter() - started,
        phase_seconds=job.report.totals(),
        phase_steps=dict(job.report.steps),
    )


def sweeps(job: JobContext) -> list[RangeResult]:
    """The range tests of the job's thoroughness, each with its own initialisation and data order."""
    sweep = job.spec.lr_range
    count = SWEEPS[sweep.thoroughness]
    total = count * sweep.num_steps
    curves = []
    for i in range(count):
        done = i * sweep.num_steps

        def range_progress(step: int, _total: int, lr: float | None, loss: float | None, done: int = done) -> None:
            job.progress("lr_range", done + step, total, lr=lr, loss=loss)

        curves.append(job.range_test(sweep.batch_size, seed=job.spec.seed + i, on_progress=range_progress))
    return curves


def as_curve(result: RangeResult) -> Curve:
    return Curve(lr=result.lrs, loss=result.losses, smoothed_loss=result.smoothed, loss_kind=result.loss_kind)


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
        loss_kind=shortest.loss_kind,
    )


def confirm(job: JobContext, choice: suggest.Choice, train_steps: int) -> tuple[suggest.Choice, list[Candidate]]:
    """Short real trainings at the suggestion and at both ends of its safe range; the best validation loss wins.

    Always with thorough; with standard when the sweeps disagree (confidence below high). Staying inside the
    safe range keeps one noisy short run from pulling the LR far off. The suggestion trains first; a later run
    at a higher LR than the best so far stops at a checkpoint (CONFIRM_CHECKPOINTS of the run; none with one_cycle)
    where it is clearly behind that run at the same step, as in successive halving. Only a higher LR is stopped:
    early in a run the higher LR is usually ahead (short-horizon bias, Wu et al. 2018), so one that trails is
    worse, while a lower LR that trails early often wins at the end. When the runner-up is not clearly behind
    the best at the end, the two train again on the next seed and the lower mean wins (`again`)."""
    assert choice.lr is not None
    schedule = job.spec.schedule
    steps = min(train_steps, CONFIRM_MAX_STEPS)
    checkpoints = confirm_checkpoints(schedule, steps)
    untrained = job.untrained_loss()
    candidates = [choice.lr, choice.lr_low or choice.lr / 2, choice.lr_high or choice.lr * 2]
    best_at: dict[int, tuple[float, float]] = {}  # per checkpoint: the lowest validation loss so far, and its LR
    scored: list[Candidate] = []
    for i, lr in enumerate(candidates):

        def progress(step: int, total: int, i: int = i) -> None:
            job.progress("confirm", i * total + step, len(candidates) * total)

        seen: dict[int, float] = {}
        for step, loss in job.training(lr, steps, schedule=schedule, evaluate_at=checkpoints, on_progress=progress):
            seen[step] = loss
            leader = best_at.get(step)
            if step < steps and leader is not None and lr > leader[1] and clearly_behind(loss, leader[0], untrained):
                break
        for step, loss in seen.items():
            if loss < best_at.get(step, (math.inf, lr))[0]:
                best_at[step] = (loss, lr)
        last = max(seen)
        scored.append(Candidate(lr=lr, val_loss=seen[last] if math.isfinite(seen[last]) else None, steps=last))
    finished = [c for c in scored if c.val_loss is not None and c.steps == steps]
    if not finished:
        return choice, scored
    ranked = sorted(finished, key=lambda c: c.val_loss or math.inf)
    best, verdict = ranked[0], f"{ranked[0].lr:.3g} reached the lowest validation loss"
    if len(ranked) > 1 and not clearly_behind(ranked[1].val_loss or math.inf, ranked[0].val_loss or 0.0, untrained):
        # A close call. One training seed moves these losses as much as the LR does, so the two best train
        # again on another seed and the mean of the two decides.
        seed, close = job.spec.seed + 1, ranked[:2]
        repeats = [Candidate(lr=c.lr, val_loss=again(job, c.lr, steps, seed), steps=steps, seed=seed) for c in close]
        means = [((c.val_loss or math.inf) + (r.val_loss or math.inf)) / 2 for c, r in zip(close, repeats, strict=True)]
        best = close[means.index(min(means))]
        scored += repeats
        verdict = (
            f"{ranked[0].lr:.3g} and {ranked[1].lr:.3g} were close, so both trained again on another seed: "
            f"{best.lr:.3g} had the lower mean validation loss"
        )
    stopped = [c for c in scored if c.steps != steps and c.val_loss is not None]
    reason = (
        f"{choice.reason}; then confirmed by short trainings ({steps} steps each, {schedule}) at "
        f"{', '.join(f'{c.lr:.3g}' for c in scored if c.seed is None)}: {verdict}"
        + (
            f" ({', '.join(f'{c.lr:.3g} stopped at step {c.steps}' for c in stopped)}, clearly behind by then)"
            if stopped
            else ""
        )
    )
    return replace(choice, lr=best.lr, rule=f"{choice.rule}+confirm", reason=reason), scored


def again(job: JobContext, lr: float, steps: int, seed: int) -> float | None:
    """The final validation loss (None: diverged) of one more confirmation training at `lr`, on `seed`."""
    final = math.inf
    for _, loss in job.training(lr, steps, schedule=job.spec.schedule, seed=seed):
        final = loss
    return final if math.isfinite(final) else None


def confirm_checkpoints(schedule: str, steps: int) -> list[int]:
    """The steps of a confirmation run at which a clearly worse LR may be stopped (CONFIRM_CHECKPOINTS)."""
    if SCHEDULES[schedule].rising_share:
        return []
    return sorted({max(1, round(f * steps)) for f in CONFIRM_CHECKPOINTS} - {steps})


def clearly_behind(loss: float, best: float, untrained: float) -> bool:
    """A run is clearly behind when its validation loss trails the best at the same step by more than
    CLEARLY_BEHIND of the progress the best had made from the untrained loss (or when it diverged)."""
    if not math.isfinite(loss):
        return True
    if not math.isfinite(best):
        return False
    return loss - best > CLEARLY_BEHIND * max(untrained - best, 0.0)


def adam_warmup_horizon(optimizer_params: dict) -> int:
    """Ma & Yarats 2021's untuned warm-up for Adam: 2 / (1 − β2) steps, about as long as the second-moment estimate
    takes to settle (2,000 steps at the default β2)."""
    beta2 = (optimizer_params.get("betas") or (0.9, ADAM_BETA2))[1]
    return round(2 / (1 - beta2))


def warmup_advice(spec: JobSpec, curve: RangeResult, choice: suggest.Choice, train_steps: int) -> tuple[int, str]:
    """A linear warm-up over 5% of training when the sweep was unstable early, or for an Adam-family optimizer on a
    run that outlasts its untuned warm-up (`adam_warmup_horizon`).

    Shorter Adam runs get none: the recommended LR is chosen and confirmed without a warm-up, and on runs of
    200–300 steps one over 5% of training did not pay (benchmarks/lr_quality/warmup.py: a median 0 points of regret,
    and 2–6 points lost on a character-level transformer whose loss was still falling fast). On a 2,000-step run
    of a character-level LM (the horizon at default betas) it paid a little (benchmarks/lr_quality/long_warmup.py:
    median regret 1.3% → 0.6%), mostly by keeping LRs above the best from hurting."""
    if spec.schedule == "one_cycle":
        return 0, "none needed: one_cycle starts at max_lr / div_factor and ramps up over pct_start of training"
    reasons, stable = [], "the range test was stable up to the recommended LR"
    name = getattr(spec.optimizer, "name", "")
    if getattr(spec.optimizer, "source", "builtin") == "builtin" and name in WARMUP_OPTIMIZERS:
        horizon = adam_warmup_horizon(spec.optimizer.params)
        if train_steps >= horizon:
            reasons.append(
                f"{name} takes large, poorly estimated steps while its moment estimates warm up "
                f"(over about 2 / (1 - beta2) = {horizon} steps)"
            )
        else:
            stable += (
                f"; and the run ({train_steps} steps) is shorter than {name}'s moment estimates take to warm up "
                f"(2 / (1 - beta2) = {horizon} steps), where a warm-up's slow steps are not made up and the LR was "
                "chosen without one"
            )
    high = choice.lr_high or choice.lr or math.inf
    upto = next((i for i, lr in enumerate(curve.lrs) if lr > high), len(curve.lrs))
    spikes = [i for i in range(min(10, upto), upto) if curve.losses[i] > SPIKE_RATIO * curve.smoothed[i]]
    if spikes:
        reasons.append(
            f"the range test's loss spiked {len(spikes)} time(s) below the recommended LR's safe range "
            f"(first at LR {curve.lrs[spikes[0]]:.3g})"
        )
    if not reasons:
        return 0, f"none needed: {stable}"
    steps = max(1, round(WARMUP_SHARE * train_steps))
    return steps, f"warm up linearly over {steps} steps ({WARMUP_SHARE:.0%} of training): " + "; ".join(reasons)


def recommendation(
    choice: suggest.Choice,
    spec: JobSpec,
    batch_size: int,
    curve: RangeResult,
    train_steps: int,
    confirmation: list[Candidate] | None = None,
) -> Recommendation | None:
    """Express the chosen LR in the terms of the schedule the user declared, with every parameter."""
    if choice.lr is None:
        return None
    warmup, warmup_reason = warmup_advice(spec, curve, choice, train_steps)
    schedule = SCHEDULES[spec.schedule]
    params = schedule.params(choice.lr, train_steps, warmup)
    extra = schedule.recommendation_fields(params)
    code = schedule.snippet(params, spec.optimizer.class_path, spec.optimizer.params)
    return Recommendation(
        schedule=spec.schedule,
        lr=choice.lr,
        lr_low=choice.lr_low or choice.lr,
        lr_high=choice.lr_high or choice.lr,
        confidence=choice.confidence,
        train_steps=train_steps,
        schedule_params=params,
        warmup_steps=warmup,
        warmup_reason=warmup_reason,
        snippet=code,
        optimizer_class=spec.optimizer.class_path,
        optimizer_params=spec.optimizer.params,
        batch_size=batch_size,
        grad_accumulation_steps=spec.grad_accumulation_steps,
        effective_batch_size=batch_size * spec.grad_accumulation_steps,
        rule=choice.rule,
        reason=choice.reason,
        confirmation=confirmation,
        **extra,
    )


def stop_lr(curve: RangeResult, spec: JobSpec) -> float | None:
    if curve.stopped_at is None:
        return None
    sweep = spec.lr_range
    return lr_schedule(sweep.min_lr, sweep.max_lr, sweep.num_steps, sweep.mode)[curve.stopped_at]
