"""A batch-size warm-up planned from the gradient noise scale's trajectory (pure functions; numpy only).

The noise scale B_noise is near 0 at initialisation and grows as the loss falls (McCandlish et al. 2018,
"An Empirical Model of Large-Batch Training"; Merrill et al. 2025, "Critical Batch Size Revisited", trained
OLMo 1B with a batch-size warm-up to a slightly better loss in 43% fewer steps). The model, piecewise along
training: with τ the progress in "minimal steps" (S_min units, which the loss is a function of), a step at
batch B advances τ by dτ = 1 / (1 + B_noise(τ)/B), so

    steps S = ∫ (1 + B_noise/B) dτ,    samples E = ∫ (B + B_noise) dτ,    time T = ∫ (1 + B_noise/B)·t(B) dτ

with t(B) the measured time of one optimizer step at B. A fixed batch is never the best trade of steps for
samples when B_noise changes: minimising S for a given E pointwise (a Lagrange multiplier λ) gives
B(τ) = argmin_B B_noise(τ)/B + λ·B, which grows with B_noise (∝ √B_noise over a continuum of batches).

Over a continuum of batch sizes, at the samples of a fixed batch B, the best schedule (B ∝ √B_noise) saves
T·Var(√B_noise)/B of the fixed batch's S = T·(1 + mean(B_noise)/B) steps, with means and variance over the
progress τ (T = ∫dτ): a share Var(√B_noise)/(B + mean(B_noise)) (`saving_bound`). It is large only when B_noise
spans orders of magnitude over the progress the run makes; a noise scale that levels off early leaves little.

`plan` compares such a schedule with the fixed batch the advice chose, over the same progress as the job's
`train_steps` at that fixed batch: the schedule with the fewest steps that uses no more samples and no more
predicted wall time than the fixed batch. It declines (returns no stages, with a reason) when the trajectory
is unmeasurable, does not grow beyond its own noise, or the predicted saving is under MIN_STEP_SAVING.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_STEP_SAVING = 0.10  # below this the prediction is inside the spread of B_noise estimates and seeds
MIN_GROWTH = 2.0  # the fitted noise scale must grow at least this much over the trajectory
MIN_POINTS = 3  # measured points needed to speak of a trajectory
MIN_STAGE_SHARE = 0.03  # a stage shorter than this share of the schedule's steps is merged into the next
SUBSTEPS = 32  # integration cells per measured segment
LAMBDAS = 400  # multipliers tried


@dataclass(frozen=True)
class Point:
    step: int  # optimizer steps trained at `batch` before the measurement
    b_noise: float | None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Stage:
    from_step: int
    batch: int  # effective batch
    b_noise: float  # fitted noise scale where the stage starts


@dataclass(frozen=True)
class Totals:
    steps: float
    samples: float
    time_s: float | None


@dataclass(frozen=True)
class Plan:
    stages: list[Stage]  # empty: declined
    reason: str
    schedule: Totals | None = None
    fixed: Totals | None = None
    bound: float | None = None  # saving_bound: the most any schedule could save, with batches of any size

    @property
    def step_saving(self) -> float | None:
        if self.schedule is None or self.fixed is None:
            return None
        return 1 - self.schedule.steps / self.fixed.steps

    @property
    def time_saving(self) -> float | None:
        if self.schedule is None or self.fixed is None or not self.schedule.time_s or not self.fixed.time_s:
            return None
        return 1 - self.schedule.time_s / self.fixed.time_s


def isotonic(values: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest in least squares (pool-adjacent-violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, n2 = blocks.pop()
            m1, n1 = blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(int(n))]


def fitted(points: Sequence[Point]) -> tuple[list[int], list[float]]:
    """(steps, B_noise) of the measured points, made non-decreasing by an isotonic fit in log space.

    The noise scale is taken to grow during training: a dip is measurement noise, averaged with its
    neighbours rather than planned for."""
    ok = [p for p in points if p.b_noise is not None and p.b_noise > 0 and math.isfinite(p.b_noise)]
    logs = isotonic([math.log(p.b_noise) for p in ok if p.b_noise])
    return [p.step for p in ok], [math.exp(v) for v in logs]


def cells(steps: list[int], b_noise: list[float], probe_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Progress cells of the probe run: (dτ, B_noise) per cell, B_noise linear in steps within a segment."""
    d_tau: list[float] = []
    noise: list[float] = []
    for i in range(len(steps) - 1):
        (s0, b0), (s1, b1) = (steps[i], b_noise[i]), (steps[i + 1], b_noise[i + 1])
        edges = np.linspace(s0, s1, SUBSTEPS + 1)
        mids = (edges[:-1] + edges[1:]) / 2
        bn = b0 + (b1 - b0) * (mids - s0) / max(s1 - s0, 1)
        d_tau.extend(np.diff(edges) / (1 + bn / probe_batch))
        noise.extend(bn)
    return np.asarray(d_tau), np.asarray(noise)


def horizon(d_tau: np.ndarray, noise: np.ndarray, batch: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The cells a fixed `batch` covers in `steps` optimizer steps; past the measured trajectory B_noise stays
    at its last value."""
    per_cell = d_tau * (1 + noise / batch)
    done = np.cumsum(per_cell)
    if done[-1] >= steps:
        n = int(np.searchsorted(done, steps))  # the cell the budget ends in: take the part of it that fits
        before = done[n - 1] if n else 0.0
        tau = d_tau[: n + 1].copy()
        tau[-1] *= (steps - before) / per_cell[n]
        return tau, noise[: n + 1]
    rest = (steps - done[-1]) / (1 + noise[-1] / batch)  # a plateau past the last measurement
    return np.append(d_tau, rest), np.append(noise, noise[-1])


def totals(d_tau: np.ndarray, noise: np.ndarray, batch: np.ndarray, step_time: dict[int, float] | None) -> Totals:
    steps = d_tau * (1 + noise / batch)
    time = None
    if step_time is not None:
        time = float(sum(s * step_time[int(b)] for s, b in zip(steps, batch, strict=True)))
    return Totals(float(steps.sum()), float((d_tau * (batch + noise)).sum()), time)


def saving_bound(d_tau: np.ndarray, noise: np.ndarray, batch: float) -> float:
    """The share of a fixed batch's steps the best schedule saves at its samples with batches of any size
    (B ∝ √B_noise): Var(√B_noise) / (batch + mean B_noise) over the progress. Candidates, the merging of short
    stages and a wall-time limit can only make the saving smaller."""
    w = d_tau / d_tau.sum()
    mean, mean_root = float(w @ noise), float(w @ np.sqrt(noise))
    return max(0.0, mean - mean_root**2) / (batch + mean)


def _for_lambda(noise: np.ndarray, sizes: np.ndarray, lam: float) -> np.ndarray:
    cost = noise[:, None] / sizes[None, :] + lam * sizes[None, :]
    return sizes[np.argmin(cost, axis=1)]


def merge_short(batch: np.ndarray, d_tau: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Merge stages shorter than MIN_STAGE_SHARE of the steps into the next (larger) stage."""
    batch = batch.copy()
    while True:
        steps = d_tau * (1 + noise / batch)
        starts = [0] + [i for i in range(1, len(batch)) if batch[i] != batch[i - 1]]
        ends = starts[1:] + [len(batch)]
        short = [(a, b) for a, b in zip(starts, ends, strict=True) if steps[a:b].sum() < MIN_STAGE_SHARE * steps.sum()]
        short = [(a, b) for a, b in short if b < len(batch)]  # the last stage has no next to merge into
        if not short:
            return batch
        a, b = short[0]
        batch[a:b] = batch[b]


def stages_of(batch: np.ndarray, d_tau: np.ndarray, noise: np.ndarray) -> list[Stage]:
    steps = np.cumsum(d_tau * (1 + noise / batch))
    out = [Stage(0, int(batch[0]), float(noise[0]))]
    for i in range(1, len(batch)):
        if batch[i] != batch[i - 1]:
            out.append(Stage(int(round(steps[i - 1])), int(batch[i]), float(noise[i])))
    return out


def plan(
    points: Sequence[Point],
    probe_batch: int,
    candidates: Sequence[int],
    fixed_batch: int,
    train_steps: int,
    step_time: dict[int, float] | None = None,
    min_saving: float = MIN_STEP_SAVING,
) -> Plan:
    """A batch-size schedule over `candidates` (effective batches) against `fixed_batch` for `train_steps`.

    `points`: the noise scale measured during a training at `probe_batch`. `step_time`: seconds per optimizer
    step of each candidate (None: wall time is not predicted or constrained). A schedule saving less than
    `min_saving` of the steps is declined.
    """
    steps, noise_fit = fitted(points)
    if len(steps) < MIN_POINTS:
        return Plan([], f"the noise scale was measurable at only {len(steps)} of {len(points)} points")
    growth = noise_fit[-1] / noise_fit[0]
    ok = [p for p in points if p.b_noise is not None and p.b_noise > 0]
    first, last = ok[0], ok[-1]
    if growth < MIN_GROWTH:
        flat = f"{noise_fit[0]:.3g} → {noise_fit[-1]:.3g} over {steps[-1]} steps"
        return Plan([], f"the noise scale hardly grows ({flat}): a fixed batch loses little")
    if first.high is not None and last.low is not None and last.low <= first.high:
        intervals = f"[{first.low:.3g}, {first.high:.3g}] and [{last.low:.3g}, {last.high:.3g}]"
        return Plan([], f"the noise scale's growth ({first.b_noise:.3g} → {last.b_noise:.3g}) is inside its 95% "
                    f"intervals ({intervals})")  # fmt: skip
    if fixed_batch >= max(candidates):
        return Plan([], f"the fixed batch {fixed_batch} is the largest candidate: any schedule through smaller "
                    "batches takes more optimizer steps")  # fmt: skip
    sizes = np.array(sorted({*candidates, fixed_batch}), dtype=float)
    times = step_time if step_time and all(step_time.get(int(b)) for b in sizes) else None
    d_tau, noise = horizon(*cells(steps, noise_fit, probe_batch), fixed_batch, train_steps)
    fixed = totals(d_tau, noise, np.full(len(noise), float(fixed_batch)), times)
    bound = saving_bound(d_tau, noise, fixed_batch)
    at_most = f"; with batches of any size a schedule could save at most {bound:.0%} here"

    best: tuple[Totals, np.ndarray] | None = None
    lo, hi = noise.min() / sizes.max() ** 2 / 10, noise.max() / sizes.min() ** 2 * 10
    for lam in np.geomspace(lo, hi, LAMBDAS):
        batch = merge_short(_for_lambda(noise, sizes, lam), d_tau, noise)
        t = totals(d_tau, noise, batch, times)
        affordable = t.samples <= fixed.samples * (1 + 1e-9)
        if times is not None and t.time_s is not None and fixed.time_s is not None:
            affordable = affordable and t.time_s <= fixed.time_s * (1 + 1e-9)
        if affordable and (best is None or t.steps < best[0].steps):
            best = (t, batch)
    if best is None or best[0].steps >= fixed.steps * (1 - 1e-9):
        return Plan([], f"no schedule over these batch sizes beats the fixed batch {fixed_batch} in steps without "
                    f"more samples or time{at_most}", fixed=fixed, bound=bound)  # fmt: skip
    schedule, batch = best
    stages = stages_of(batch, d_tau, noise)
    found = Plan(stages, "", schedule, fixed, bound)
    saving = found.step_saving or 0.0
    grew = f"the noise scale grows from {noise_fit[0]:.3g} to {noise_fit[-1]:.3g} over {steps[-1]} steps"
    if len(stages) < 2 or saving < min_saving:
        return Plan([], f"{grew}, but the best schedule saves only {saving:.0%} of the optimizer steps against "
                    f"the fixed batch {fixed_batch} (advised from {min_saving:.0%}){at_most}", schedule, fixed,
                    bound)  # fmt: skip
    path = " → ".join(str(s.batch) for s in stages)
    time = f" and {found.time_saving:.0%} of the wall time" if found.time_saving is not None else ""
    reason = (
        f"{grew}: growing the batch {path} with it is predicted to save {saving:.0%} of the optimizer steps"
        f"{time} against the fixed batch {fixed_batch}, with no more samples (McCandlish et al.'s model "
        "S = S_min(1 + B_noise/B), piecewise along the measured trajectory)"
    )
    return Plan(stages, reason, schedule, fixed, bound)


def snippet(stages: Sequence[tuple[int, int, float | None, int]], total_steps: int) -> str:
    """PyTorch code that trains with the stages (from_step, micro-batch, lr, accumulation): a batch sampler whose
    micro-batches follow the stages as optimizer steps go by, and a loop that sets each stage's LR and
    accumulation. Expects `model`, `loss_fn`, `optimizer` and a map-style `train_set`."""
    rows = ",\n".join(f"    ({s}, {b}, {lr if lr is None else float(f'{lr:.4g}')!r}, {a})" for s, b, lr, a in stages)
    return f'''import torch
from torch.utils.data import DataLoader, Sampler

# lrbs batch-size warm-up: (from optimizer step, micro-batch, LR, gradient accumulation steps)
STAGES = [
{rows},
]
TOTAL_STEPS = {total_steps}


def stage_at(step):
    return [s for s in STAGES if s[0] <= step][-1]


class StagedBatchSampler(Sampler):
    """Shuffled micro-batches whose size follows STAGES, counting optimizer steps as they are drawn."""

    def __init__(self, n, seed=0):
        self.n, self.seed = n, seed

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        step, micro = 0, 0
        while step < TOTAL_STEPS:
            order, i = torch.randperm(self.n, generator=generator).tolist(), 0
            while step < TOTAL_STEPS:
                _, batch, _, accumulation = stage_at(step)
                if i + batch > self.n:
                    break  # the rest of this epoch is too short for a full batch: reshuffle
                yield order[i : i + batch]
                i, micro = i + batch, micro + 1
                if micro == accumulation:
                    step, micro = step + 1, 0


loader = DataLoader(train_set, batch_sampler=StagedBatchSampler(len(train_set)))
step, micro = 0, 0
optimizer.zero_grad(set_to_none=True)
for x, y in loader:
    _, _, lr, accumulation = stage_at(step)
    (loss_fn(model(x), y) / accumulation).backward()
    micro += 1
    if micro == accumulation:
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr  # with an LR schedule too, multiply its factor in here
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step, micro = step + 1, 0
'''
