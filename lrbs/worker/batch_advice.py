"""Batch-size advice: what fits, what is fast, what is efficient, and the LR for each candidate.

The recommended batch minimises the predicted time to reach a target loss. With the gradient noise
scale B_noise (McCandlish et al. 2018), the steps needed are S = S_min·(1 + B_noise/B); each takes the
measured step time t(B) = B / throughput(B), so time ∝ (B + B_noise) / throughput(B).

Over `world_size` data-parallel devices B is the global batch (micro × accumulation × world_size) and the
throughput is the fleet's, predicted from one device's by `fleet` (a ring all-reduce per optimizer step).
"""

from __future__ import annotations

import math

from lrbs.contract.job_spec import AutoBatchSizes, JobSpec
from lrbs.contract.optimizers import ADAPTIVE_OPTIMIZERS
from lrbs.contract.resources import Progress
from lrbs.contract.results import BatchCandidate, BatchSizeAdvice, DataParallelAdvice, NoisePoint, NoiseScaleOut
from lrbs.worker import batch_warmup, fleet, suggest
from lrbs.worker.errors import JobError
from lrbs.worker.job import JobContext
from lrbs.worker.probes import batch_size as bs

MEMORY_HEADROOM = 0.10  # share of the memory budget kept free (Lightning #8028: the chosen batch OOMs later)
TARGET_OVERSHOOT = 0.10  # no micro-batch reaches the target exactly: the fastest within this share above it
TARGET_FAR_FROM_NOISE = 4.0  # a target effective batch this many times above (or below) B_noise is worth a word
MB = 2**20


def candidates_for(spec: JobSpec, n_train: int) -> list[int]:
    assert spec.batch_sizes is not None
    sizes = spec.batch_sizes.sizes() if isinstance(spec.batch_sizes, AutoBatchSizes) else list(spec.batch_sizes)
    usable = [b for b in sizes if b <= n_train]
    if not usable:
        raise JobError(f"every candidate batch size is larger than the {n_train} training samples")
    return usable


def advise_batch_size(job: JobContext, base_lr: float | None, headroom: float = MEMORY_HEADROOM) -> BatchSizeAdvice:
    spec = job.spec
    sizes = candidates_for(spec, job.data.n_train)
    lr0 = base_lr or 1e-3
    accumulation = job.step_settings.grad_accumulation_steps

    probes = []
    for i, size in enumerate(sizes):
        job.progress("batch_size", i, len(sizes))
        probes.append(job.step_probe(size, lr0))
    budget = bs.memory_budget(job.device, spec.memory_budget_gb)
    fit = bs.memory_fit(probes)
    limit = budget * (1 - headroom) if budget else None
    fits = {p.batch_size: p.ran and (limit is None or p.peak_bytes is None or p.peak_bytes <= limit) for p in probes}

    largest, verified = _largest(job, fit, budget, headroom, probes, fits, lr0)
    fitting = [p for p in probes if fits[p.batch_size]]
    if not fitting:
        raise JobError(
            f"no candidate batch size fits: {probes[0].note or 'over the memory budget'}; "
            "try smaller batch sizes or a larger memory_budget_gb"
        )

    gradient_bytes = fleet.gradient_bytes(job.fresh(lr0)[0])
    accumulations, speeds = fleet_speeds(spec, fitting, gradient_bytes)
    world = spec.world_size
    lrs, scaling = lrs_for(job, [p.batch_size for p in fitting], lr0)
    noise, trajectory, trajectory_steps, probe_batch = measure_noise(job, [p.batch_size for p in fitting], lr0)
    b_noise = noise.b_noise if noise and noise.b_noise is not None else None
    target = spec.target_effective_batch
    if target:
        # A fixed effective batch fixes the steps to a target loss: micro-batches differ only in throughput
        # (over world_size devices: one device's throughput and the all-reduce per optimizer step).
        times = {p.batch_size: time_to_target(target, speeds[p.batch_size], b_noise) for p in fitting}
        nearest = nearest_target(fitting, target, world, accumulations)
        chosen = soonest = max(nearest, key=lambda p: speeds[p.batch_size] or 0).batch_size
    else:
        # The noise scale is about the global batch: each optimizer step sees `accumulation` micro-batches on
        # each of world_size devices.
        times = {b: time_to_target(b * accumulation * world, speeds[b], b_noise) for b in speeds}
        chosen = soonest = min(times, key=lambda b: times[b])
    best_time = min(times.values())
    val_losses: dict[int, float | None] = {}
    epochs, weighed = None, None
    if spec.generalization_check:
        epochs = check_epochs([p.batch_size for p in fitting], job.data.n_train)
        val_losses = {b: equal_epoch_loss(job, b, lrs[b], epochs) for b in times}
        chosen, weighed = weigh_generalization(chosen, times, val_losses)

    costs = {b: steps_and_samples(b * accumulations[b] * world, b_noise) for b in speeds}
    candidates = [
        BatchCandidate(
            batch_size=p.batch_size, fits=fits[p.batch_size],
            peak_memory_mb=p.peak_bytes / MB if p.peak_bytes is not None else None,
            step_time_s=p.step_time_s, samples_per_s=p.samples_per_s, lr=lrs.get(p.batch_size),
            relative_time_to_target=times[p.batch_size] / best_time if p.batch_size in times else None,
            **relative_costs(costs.get(p.batch_size), costs[chosen]),
            val_loss=val_losses.get(p.batch_size), fleet_samples_per_s=speeds.get(p.batch_size),
            note=p.note or (None if fits[p.batch_size] else f"over {1 - headroom:.0%} of the memory budget"),
        )
        for p in probes
    ]  # fmt: skip
    steps_to_target = accumulations[chosen] if spec.target_effective_batch else None
    data_parallel = data_parallel_advice(
        job,
        next(p for p in fitting if p.batch_size == chosen),
        accumulations[chosen],
        gradient_bytes,
        lrs,
        scaling,
        lr0,
        b_noise,
    )
    reason = explain(soonest, chosen, b_noise, fitting, largest, steps_to_target, spec, weighed, speeds)
    if world > 1:
        reason += "; " + fleet.reason(data_parallel)
    schedule, schedule_reason = batch_warmup.schedule_advice(job, trajectory, probe_batch, fitting, lrs, chosen)
    return BatchSizeAdvice(
        batch_size=chosen, lr=lrs.get(chosen), lr_scaling=scaling, largest_fitting=largest,
        largest_fitting_verified=verified,
        memory_fit_mb=(fit[0] / MB, fit[1] / MB) if fit else None, headroom=headroom,
        memory_budget_mb=budget / MB if budget else None,
        grad_accumulation_steps=steps_to_target, noise_scale=noise, generalization_epochs=epochs,
        candidates=candidates, data_parallel=data_parallel, reason=reason,
        noise_trajectory=trajectory, trajectory_steps=trajectory_steps, batch_schedule=schedule,
        batch_schedule_reason=schedule_reason,
    )  # fmt: skip


def fleet_speeds(
    spec: JobSpec, fitting: list[bs.StepProbe], gradient_bytes: int
) -> tuple[dict[int, int], dict[int, float | None]]:
    """Per fitting micro-batch: the accumulation per device (the job's own, or what reaches target_effective_batch
    over world_size devices) and the predicted samples/s of the fleet (one device's: samples_per_s)."""
    world, target = spec.world_size, spec.target_effective_batch
    allreduce = fleet.allreduce_seconds(gradient_bytes, world, spec.interconnect_gbps)
    accumulations, speeds = {}, {}
    for p in fitting:
        a = fleet.accumulation_for(target, p.batch_size, world) if target else p.accumulation
        accumulations[p.batch_size] = a
        speeds[p.batch_size] = (
            fleet.fleet_samples_per_s(p.batch_size, a, world, p.step_time_s / p.accumulation, allreduce)
            if p.step_time_s
            else None
        )
    return accumulations, speeds


def nearest_target(
    fitting: list[bs.StepProbe], target: int, world_size: int, accumulations: dict[int, int]
) -> list[bs.StepProbe]:
    """The micro-batches whose global batch comes nearest target_effective_batch: exactly (micro × world_size
    divides it), else at most TARGET_OVERSHOOT above it, else the least above it. Over many devices one
    micro-batch per device can overshoot the target many times over."""
    over = {
        p.batch_size: fleet.global_batch(p.batch_size, accumulations[p.batch_size], world_size) - target
        for p in fitting
    }
    least = min(over.values())
    return (
        [p for p in fitting if over[p.batch_size] == 0]
        or [p for p in fitting if over[p.batch_size] <= TARGET_OVERSHOOT * target]
        or [p for p in fitting if over[p.batch_size] == least]
    )


def data_parallel_advice(
    job: JobContext,
    chosen: bs.StepProbe,
    accumulation: int,
    gradient_bytes: int,
    lrs: dict[int, float],
    scaling: str,
    lr0: float,
    b_noise: float | None,
) -> DataParallelAdvice:
    """The chosen micro-batch as each of world_size ranks runs it, with the LR for the global batch."""
    spec = job.spec
    total = fleet.global_batch(chosen.batch_size, accumulation, spec.world_size)
    adaptive = getattr(spec.optimizer, "name", "") in ADAPTIVE_OPTIMIZERS
    lr, rule = fleet.global_lr(
        scaling, lrs, lr0, spec.lr_range.batch_size, spec.grad_accumulation_steps, adaptive, total, b_noise
    )
    micro_seconds = chosen.step_time_s / chosen.accumulation if chosen.step_time_s else None
    return fleet.advice(spec, chosen.batch_size, accumulation, micro_seconds, gradient_bytes, lr, rule)


GENERALIZATION_TOLERANCE = 0.05  # a validation loss this much above the best candidate's counts as worse
MIN_CHECK_STEPS, MAX_CHECK_EPOCHS = 20, 20


def check_epochs(sizes: list[int], n_train: int) -> int:
    """Enough epochs that the largest candidate still takes MIN_CHECK_STEPS steps."""
    return min(MAX_CHECK_EPOCHS, max(1, math.ceil(MIN_CHECK_STEPS * max(sizes) / n_train)))


def equal_epoch_loss(job: JobContext, batch: int, lr: float | None, epochs: int) -> float | None:
    """Validation loss after `epochs` epochs at this batch size and its LR (constant schedule)."""
    job.report(Progress(phase="generalization_check", step=batch, total=0))
    if lr is None:
        return None
    steps = max(1, epochs * job.data.n_train // batch)
    loss = job.train(lr, steps, batch_size=batch)
    return loss if math.isfinite(loss) else None


def weigh_generalization(chosen: int, times: dict[int, float], val_losses: dict[int, float | None]):
    """Keep the fastest batch unless it generalised worse than the best candidate; then the fastest that did not."""
    finite = {b: v for b, v in val_losses.items() if v is not None}
    if not finite:
        return chosen, "the generalisation check diverged for every candidate, so it was not weighed"
    best = min(finite.values())
    ok = [b for b, v in finite.items() if v <= best * (1 + GENERALIZATION_TOLERANCE)]
    if chosen in ok:
        return chosen, (
            f"in an equal-epoch check batch {chosen} generalised as well as the best candidate "
            f"(validation loss {finite[chosen]:.4g} against {best:.4g})"
        )
    better = min(ok, key=lambda b: times[b])
    worse = f"{finite[chosen]:.4g}" if chosen in finite else "diverged"
    return better, (
        f"batch {chosen} would be fastest, but in an equal-epoch check it generalised worse "
        f"(validation loss {worse} against the best {best:.4g}), so batch {better} is advised instead"
    )


def steps_and_samples(global_batch: int, b_noise: float | None) -> tuple[float, float] | None:
    """McCandlish et al.'s S = S_min·(1 + B_noise/B) and E = E_min·(1 + B/B_noise) ∝ B + B_noise: what a global
    batch costs in optimizer steps and in samples to a target loss, up to the task's constants (None: no noise
    scale)."""
    if b_noise is None:
        return None
    return 1 + b_noise / global_batch, global_batch + b_noise


def relative_costs(cost: tuple[float, float] | None, chosen: tuple[float, float] | None) -> dict[str, float | None]:
    """A candidate's steps and samples to a target, relative to the chosen batch's."""
    if cost is None or chosen is None:
        return {"relative_steps_to_target": None, "relative_samples_to_target": None}
    return {"relative_steps_to_target": cost[0] / chosen[0], "relative_samples_to_target": cost[1] / chosen[1]}


def time_to_target(batch: int, samples_per_s: float | None, b_noise: float | None) -> float:
    """∝ (B + B_noise) / throughput. Without a noise scale (unmeasured, or a gradient that is all noise) every
    batch is taken to need the same number of samples, so time ∝ 1 / throughput."""
    if not samples_per_s:
        return math.inf
    cost = steps_and_samples(batch, b_noise)
    return (1.0 if cost is None else cost[1]) / samples_per_s


def _largest(
    job: JobContext,
    fit: tuple[float, float] | None,
    budget: float | None,
    headroom: float,
    probes: list[bs.StepProbe],
    fits: dict[int, bool],
    lr: float,
) -> tuple[int | None, bool]:
    """The largest batch that fits: predicted from the memory fit, then checked with one real step."""
    predicted = bs.largest_fitting(fit, budget, headroom)
    ran = [p.batch_size for p in probes if fits[p.batch_size]]
    if predicted is None or budget is None:
        return (max(ran) if ran else None), bool(ran)
    predicted = min(predicted, job.data.n_train)
    if predicted in ran or predicted <= 0:
        return predicted or None, predicted > 0
    check = job.step_probe(predicted, lr, timed_steps=1)
    ok = check.ran and (check.peak_bytes is None or check.peak_bytes <= budget * (1 - headroom))
    return (predicted if ok else max(ran, default=None)), ok


def lrs_for(job: JobContext, sizes: list[int], lr0: float) -> tuple[dict[int, float], str]:
    """The LR for each batch size, by spec.lr_scaling."""
    spec, b0 = job.spec, job.spec.lr_range.batch_size
    rule = "sqrt" if getattr(spec.optimizer, "name", "") in ADAPTIVE_OPTIMIZERS else "linear"
    scaling = spec.lr_scaling

    def by_rule(kind: str) -> dict[int, float]:
        power = 0.5 if kind == "sqrt" else 1.0
        return {b: lr0 * (b / b0) ** power for b in sizes}

    if scaling in ("linear", "sqrt"):
        return by_rule(scaling), scaling
    probed = {b: probe_lr(job, b) for b in (sizes if scaling == "probe" else sorted({sizes[0], sizes[-1]}))}
    if scaling == "probe":
        fallback = by_rule(rule)
        return {b: probed[b] or fallback[b] for b in sizes}, "probe"
    low, high = sizes[0], sizes[-1]
    lr_low, lr_high = probed.get(low), probed.get(high)
    if lr_low and lr_high and high > low:
        slope = math.log(lr_high / lr_low) / math.log(high / low)
        return {b: lr_low * (b / low) ** slope for b in sizes}, f"interpolated (LR ∝ B^{slope:.2f} between probes)"
    return by_rule(rule), f"{rule} rule (a probe found no LR)"


def probe_lr(job: JobContext, batch: int) -> float | None:
    """A quick range test (one sweep) at this batch size, read with the same rule as the job's advice."""
    curve = job.range_test(batch)
    suggestions = suggest.suggest_all(curve.lrs, curve.smoothed, curve.losses)
    return suggest.choose(suggestions, job.spec.schedule, family=job.family()).lr


def measure_noise(
    job: JobContext, sizes: list[int], lr: float
) -> tuple[NoiseScaleOut | None, list[NoisePoint] | None, int | None, int]:
    """B_noise along one short training at the recommended LR (`batch_warmup.measure_trajectory`), from the
    smallest and largest fitting batch: (its last measurable point, the trajectory, steps trained, the batch
    trained at)."""
    batch = min(job.spec.lr_range.batch_size, job.data.n_train)
    small, big = sizes[0], sizes[-1]
    if big < 2 * small:
        return None, None, None, batch  # two batch sizes too close to tell noise from signal
    trajectory, steps = batch_warmup.measure_trajectory(job, sizes, lr, batch)
    # The last measurable point: late in a short run on a small task the gradient can be all noise (|G|² ≤ 0)
    last = next((p for p in reversed(trajectory) if p.b_noise is not None), trajectory[-1])
    return (
        NoiseScaleOut(
            b_noise=last.b_noise, low=last.low, high=last.high, measured_at_lr=lr, after_steps=last.step,
            batch_sizes=(small, big), measurements=last.measurements,
        ),
        trajectory, steps, batch,
    )  # fmt: skip


def explain(
    soonest: int,
    chosen: int,
    b_noise: float | None,
    fitting,
    largest: int | None,
    accumulation: int | None,
    spec: JobSpec,
    weighed: str | None,
    speeds: dict[int, float | None] | None = None,
) -> str:
    fastest = max(fitting, key=lambda p: p.samples_per_s or 0)
    parts = []
    if spec.target_effective_batch:
        parts = _fixed_effective_batch(
            chosen, fitting, b_noise, accumulation or 1, spec.target_effective_batch, spec.world_size, speeds
        )
        parts += [weighed] if weighed else []
        parts += [f"the largest batch that fits with headroom is {largest}"] if largest is not None else []
        return "; ".join(parts)
    if b_noise is not None:
        parts.append(
            f"batch {soonest} reaches a target loss soonest: with the gradient noise scale B_noise ≈ "
            f"{b_noise:.3g}, steps fall as S_min·(1 + B_noise/B), so batches far above B_noise buy little "
            "per step while costing time per step"
        )
    else:
        parts.append(
            f"batch {soonest} has the highest throughput (the noise scale could not be measured, so every "
            "batch size is taken to need the same number of samples)"
        )
    if fastest.batch_size != soonest:
        parts.append(
            f"batch {fastest.batch_size} processes the most samples per second "
            f"({fastest.samples_per_s:.3g}/s) but needs more of them"
        )
    if weighed:
        parts.append(weighed)
    if largest is not None:
        parts.append(f"the largest batch that fits with headroom is {largest}")
    if accumulation:
        parts.append(
            f"{accumulation} accumulation steps of {chosen} reach the effective batch "
            f"{spec.target_effective_batch} you asked for"
        )
    return "; ".join(parts)


def _fixed_effective_batch(
    chosen: int,
    fitting,
    b_noise: float | None,
    steps: int,
    target: int,
    world_size: int = 1,
    speeds: dict[int, float | None] | None = None,
) -> list[str]:
    """Why this micro-batch, when the effective batch is fixed; and whether the target itself suits the noise."""
    picked = next(p for p in fitting if p.batch_size == chosen)
    divides = target % (chosen * world_size) == 0
    parts = [
        f"with target_effective_batch {target}, every micro-batch takes the same optimizer steps to a target loss, "
        f"so the choice is throughput: micro-batch {chosen} is the fastest ({picked.samples_per_s:.3g} samples/s) "
        f"of those that fit{' and divide the target' if divides else ' and come nearest it'}; "
        f"{steps} accumulation steps of {chosen}"
    ]
    if world_size > 1:  # the target is the global batch: micro × accumulation × world_size
        parts = _fixed_global_batch(chosen, divides, steps, target, world_size, (speeds or {}).get(chosen))
    elif not divides:
        parts.append(
            f"no fitting micro-batch divides {target}: {steps} × {chosen} = {steps * chosen} samples per optimizer "
            f"step, {steps * chosen - target} more than the target (scale the LR for {steps * chosen})"
        )
    if b_noise:
        ratio = target / b_noise
        if ratio > TARGET_FAR_FROM_NOISE:
            parts.append(
                f"the target is {ratio:.0f}× the gradient noise scale (B_noise ≈ {b_noise:.3g}): past B_noise a "
                "bigger batch saves few steps, so a smaller effective batch would reach the loss with less compute"
            )
        elif ratio < 1 / TARGET_FAR_FROM_NOISE:
            parts.append(
                f"the target is {1 / ratio:.0f}× below the gradient noise scale (B_noise ≈ {b_noise:.3g}): a "
                "larger effective batch would need far fewer steps for few more samples"
            )
    return parts


def _fixed_global_batch(
    chosen: int, divides: bool, steps: int, target: int, world_size: int, speed: float | None
) -> list[str]:
    """_fixed_effective_batch over world_size devices: the target is the global batch, micro × accumulation × N."""
    total = fleet.global_batch(chosen, steps, world_size)
    parts = [
        f"with target_effective_batch {target} over {world_size} devices, every micro-batch takes the same "
        "optimizer steps to a target loss, so the choice is the fleet's throughput: micro-batch "
        f"{chosen} is the fastest (predicted {speed or 0:.4g} samples/s over the fleet) of those that fit"
        f"{f' and, times {world_size} devices, divide the target' if divides else ' and come nearest it'}; "
        f"{steps} accumulation step(s) of {chosen} on each of {world_size} devices: {steps} × {chosen} × "
        f"{world_size} = {total}"
    ]
    if not divides:
        why = (
            f"even one micro-batch of {chosen} per device is {total} samples"
            if steps == 1
            else f"no fitting micro-batch × {world_size} devices divides {target}"
        )
        parts.append(
            f"{why}: {total} samples per optimizer step, {total - target} more than the target "
            f"(global_lr is for {total})"
        )
    return parts
