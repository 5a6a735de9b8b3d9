"""The empirical critical batch size (McCandlish et al. 2018), to judge the service's gradient noise scale against.

    python -m benchmarks.batch_size.critical      # fills benchmarks/batch_size/cache.json, prints the tables

For each task and batch size B: train at a constant LR (no schedule) with the worker's own code and count
the optimizer steps until the validation loss first reaches a target; tune the LR for the fewest steps
(mean over SEEDS) → S(B). Then fit S = S_min (1 + B_crit / B), which is the straight line
S = S_min + S_min·B_crit · (1/B) in (1/B, S), and report S_min, B_crit and E_min = S_min·B_crit samples.
The fit is least squares on relative residuals (weights 1/S): seed noise in S grows with S, and plain least
squares (also reported) lets the few-hundred-step small batches swamp the flat end that fixes S_min. The
spread of B_crit over the fits that leave one seed out is reported beside it.

The target: L(untrained) − FRACTION · (L(untrained) − L(best)), L the validation loss (mean per sample),
L(untrained) the mean over seeds at initialisation and L(best) the lowest mean-over-seeds minimum of the
validation curve in a reference sweep (the task's own batch size, REF_STEPS steps, every LR in REF_LRS).
FRACTION is 0.95, not 0.7–0.8: on these tasks the large batches reach 80% in 3–10 steps, the transient
after initialisation, not the noise-limited phase that a B_noise measured after a warm-up describes.
B_crit grows as the target tightens (the gradient noise scale grows during training), so the table of
B_crit against the fraction says which part of training a B_noise estimate should be compared with:
measure B_noise near the target loss.

The validation loss is evaluated at step 0 and then every max(1, ⌊EVAL_GAP · step⌋) steps: every step
at first, never more than 5% apart later, so S is read to ±5% whether it is 10 steps or 3,000. A run
stops at the tightest target, at max_steps (never reached: None) or when it diverges (loss not finite or
above DIVERGED × its untrained loss: None). A mean over seeds with a None in it is infinite.

The LR grid has 6 points per decade; each (task, B) starts with FIRST_LRS LRs around a guess that scales
linearly with B (SGD's rule) and grows by 2 LRs past any end that holds the best LR for some reported
target, until every best is inside (at most MAX_ROUNDS rounds).

Every run is cached in cache.json (one run a line) by (task, batch, lr, seed, max_steps, stop loss), as the
points where its validation loss set a new low: all a first-crossing count needs. Runs go to two processes
with one torch thread each. About 2.5 minutes from an empty cache on a shared 2-core CPU, instant after.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from benchmarks.lr_quality.grid import GRID as LR_QUALITY_GRID
from benchmarks.lr_quality.tasks import TASKS as LR_TASKS
from benchmarks.lr_quality.tasks import Task
from lrbs.worker.probes.batches import forever

CACHE_FILE = Path(__file__).parent / "cache.json"
SEEDS = (0, 1, 2, 3)
BATCH_SIZES = (4, 8, 16, 32, 64, 128, 256, 512)  # 512: under both training sets
FRACTION = 0.95  # the main target: 95% of the way from untrained to best
FRACTIONS = (0.8, 0.9, 0.95, 0.98)  # also reported; runs stop at the tightest
EVAL_GAP = 0.05
DIVERGED = 3.0
VAL_BATCH = 1024
REF_STEPS = 2000
REF_LRS = [lr for lr in LR_QUALITY_GRID if 1e-3 <= lr <= 3.0]
POINTS_PER_DECADE = 6
GRID = [float(f"{10 ** (e / POINTS_PER_DECADE):.4g}") for e in range(-5 * POINTS_PER_DECADE, POINTS_PER_DECADE + 1)]
FIRST_LRS = 6
MAX_ROUNDS = 6


@dataclass(frozen=True)
class Setup:
    lr_at_32: float  # a guess at the fastest LR for B = 32; the search centres B's first LRs on lr_at_32·B/32
    max_steps: int
    batch_sizes: tuple[int, ...] = BATCH_SIZES


_BY_NAME = {t.name: t for t in LR_TASKS}
# Not regression-linear-momentum: its 95% target takes 1–40 steps even at B = 4, too few to read S from.
TASKS: list[Task] = [_BY_NAME["blobs-mlp-sgd"], _BY_NAME["digits-mlp-momentum"]]
SETUPS = {
    "blobs-mlp-sgd": Setup(lr_at_32=0.5, max_steps=3000),  # plain SGD, 819 training samples
    "digits-mlp-momentum": Setup(lr_at_32=0.1, max_steps=3000),  # SGD + momentum 0.9, 1438 training samples
}
TASKS_BY_NAME = {t.name: t for t in TASKS}


# ---- one run -------------------------------------------------------------------------------------------


def _next_eval(step: int) -> int:
    return step + max(1, int(EVAL_GAP * step))


def loss_curve(
    task: Task, batch_size: int, lr: float, seed: int, max_steps: int, stop_at: float = -math.inf
) -> tuple[list[int], list[float], bool]:
    """(steps, validation losses, diverged) at the eval points, until the loss is ≤ stop_at or max_steps."""
    from benchmarks.lr_quality.training import build
    from lrbs.worker.probes.train import evaluate

    _, data, model, loss_fn, optimizer = build(task, seed, lr)
    val = data.val_batches(VAL_BATCH)
    steps, losses = [0], [evaluate(model, loss_fn, val)]
    model.train()
    batches = forever(data.batches(batch_size, seed))
    due = _next_eval(0)
    for step in range(1, max_steps + 1):
        x, y = next(batches)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step in (due, max_steps):
            due = _next_eval(step)
            steps.append(step)
            losses.append(evaluate(model, loss_fn, val))
            if not losses[-1] <= DIVERGED * losses[0]:  # inf or NaN too
                return steps, losses, True
            if losses[-1] <= stop_at:
                break
    return steps, losses, False


def first_crossing(steps: list[int], losses: list[float], target: float) -> int | None:
    return next((s for s, loss in zip(steps, losses, strict=True) if loss <= target), None)


def steps_to_target(task: Task, batch_size: int, lr: float, target: float, seed: int, max_steps: int) -> int | None:
    """Steps at a constant LR until the validation loss is ≤ target; None if not within max_steps or diverged."""
    steps, losses, _ = loss_curve(task, batch_size, lr, seed, max_steps, stop_at=target)
    return first_crossing(steps, losses, target)


# ---- cache and pool ----------------------------------------------------------------------------------

Job = tuple[str, int, float, int, int, float]  # task, batch, lr, seed, max_steps, stop_at


def key(task: str, batch: int, lr: float, seed: int, max_steps: int, stop_at: float) -> str:
    return f"{task}|{batch}|{lr:.4g}|{seed}|{max_steps}|{stop_at:.5g}"


def load() -> dict[str, dict]:
    return json.loads(CACHE_FILE.read_text()) if CACHE_FILE.exists() else {}


def save(results: dict[str, dict]) -> None:
    lines = (f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in sorted(results.items()))
    CACHE_FILE.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one run a line


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _run(job: Job) -> tuple[str, dict]:
    task, batch, lr, seed, max_steps, stop_at = job
    steps, losses, diverged = loss_curve(TASKS_BY_NAME[task], batch, lr, seed, max_steps, stop_at)
    record_steps, record_losses = [], []  # the running minimum's new lows: enough for any first crossing
    for s, loss in zip(steps, losses, strict=True):
        if not record_losses or loss < record_losses[-1]:
            record_steps.append(s)
            record_losses.append(float(f"{loss:.5g}"))
    return key(*job), {"steps": record_steps, "loss": record_losses, "last": steps[-1], "diverged": diverged}


def train_many(jobs: list[Job], processes: int = 2) -> dict[str, dict]:
    """Run every job not yet in the cache; return the whole cache."""
    results = load()
    todo = [j for j in dict.fromkeys(jobs) if key(*j) not in results]
    if not todo:
        return results
    print(f"  {len(todo)} runs to train", flush=True)
    with ProcessPoolExecutor(processes, initializer=_init_worker) as pool:
        for i, (k, run) in enumerate(pool.map(_run, todo, chunksize=2), 1):
            results[k] = run
            if i % 100 == 0 or i == len(todo):
                save(results)
    return results


# ---- targets, tuning, fit ----------------------------------------------------------------------------


def _ref_jobs(name: str) -> list[Job]:
    return [(name, TASKS_BY_NAME[name].batch_size, lr, s, REF_STEPS, -math.inf) for lr in REF_LRS for s in SEEDS]


def reference(name: str, results: dict[str, dict]) -> tuple[float, float]:
    """(L(untrained), L(best)) from the reference sweep."""
    runs = {j: results[key(*j)] for j in _ref_jobs(name)}
    untrained = float(np.mean([runs[j]["loss"][0] for j in runs if j[2] == REF_LRS[0]]))  # step 0: the init's
    best = min(float(np.mean([runs[j]["loss"][-1] for j in runs if j[2] == lr])) for lr in REF_LRS)  # new lows
    return untrained, best


def targets(name: str, results: dict[str, dict]) -> dict[float, float]:
    untrained, best = reference(name, results)
    return {f: float(f"{untrained - f * (untrained - best):.5g}") for f in FRACTIONS}


def _grid_jobs(
    name: str, batch: int, indices: Iterable[int], stop_at: float, seeds: tuple[int, ...] = SEEDS
) -> list[Job]:
    setup = SETUPS[name]
    return [(name, batch, GRID[i], s, setup.max_steps, stop_at) for i in sorted(indices) for s in seeds]


def mean_steps(results: dict[str, dict], job_keys: list[str], target: float) -> float:
    counts = [first_crossing(results[k]["steps"], results[k]["loss"], target) for k in job_keys]
    return math.inf if None in counts else float(np.mean(counts))


def _by_lr(
    name: str,
    batch: int,
    indices: Iterable[int],
    stop_at: float,
    results: dict[str, dict],
    target: float,
    seeds: tuple[int, ...] = SEEDS,
) -> dict[int, float]:
    """GRID index → mean steps to target over seeds."""
    return {
        i: mean_steps(results, [key(*j) for j in _grid_jobs(name, batch, [i], stop_at, seeds)], target)
        for i in sorted(indices)
    }


def _first_window(name: str, batch: int) -> set[int]:
    guess = SETUPS[name].lr_at_32 * batch / 32
    centre = int(np.argmin([abs(math.log(lr / guess)) for lr in GRID]))
    lo = min(max(centre - FIRST_LRS // 2, 0), len(GRID) - FIRST_LRS)
    return set(range(lo, lo + FIRST_LRS))


def _grow(window: set[int], by_fraction: list[dict[int, float]]) -> set[int]:
    """LRs to add: 2 past an end that holds the best LR of some target (both ends if no LR reaches one)."""
    lo, hi = min(window), max(window)
    add: set[int] = set()
    for by_lr in by_fraction:
        best = min(by_lr.values())
        ends = {lo, hi} if math.isinf(best) else {i for i, v in by_lr.items() if v == best} & {lo, hi}
        if lo in ends:
            add |= {lo - 1, lo - 2}
        if hi in ends:
            add |= {hi + 1, hi + 2}
    return {i for i in add if 0 <= i < len(GRID)} - window


def measure(names: list[str], processes: int = 2) -> dict[str, dict]:
    """Train what the named tasks need (cached) and return the cache."""
    results = train_many([j for n in names for j in _ref_jobs(n)], processes)
    stops = {n: min(targets(n, results).values()) for n in names}
    windows = {(n, b): _first_window(n, b) for n in names for b in SETUPS[n].batch_sizes}
    for _ in range(MAX_ROUNDS):
        results = train_many([j for (n, b), w in windows.items() for j in _grid_jobs(n, b, w, stops[n])], processes)
        grown = False
        for (n, b), w in windows.items():
            by_fraction = [_by_lr(n, b, w, stops[n], results, t) for t in targets(n, results).values()]
            add = _grow(w, by_fraction)
            if add:
                w |= add
                grown = True
        if not grown:
            break
    return results


def fit(batches: list[int], steps: list[float], relative: bool = True) -> tuple[float, float]:
    """(S_min, B_crit) of S = S_min (1 + B_crit/B): least squares of the line S = S_min + S_min·B_crit · (1/B).

    relative: each point's residual is divided by its S (weighted least squares, weights 1/S), as seed noise
    in S grows with S; plain least squares lets the few-hundred-step small batches swamp the flat end that
    fixes S_min. nan where the fit makes no sense (fewer than 2 points, S_min ≤ 0).
    """
    ok = [(b, s) for b, s in zip(batches, steps, strict=True) if math.isfinite(s) and s > 0]
    if len(ok) < 2:
        return math.nan, math.nan
    x = np.array([1 / b for b, _ in ok])
    y = np.array([s for _, s in ok])
    w = 1 / y if relative else np.ones_like(y)
    intercept, slope = np.linalg.lstsq(np.stack([np.ones_like(x), x], 1) * w[:, None], y * w, rcond=None)[0]
    if intercept <= 0:
        return float(intercept), math.nan
    return float(intercept), float(slope / intercept)


def _indices_tried(name: str, batch: int, stop_at: float, results: dict[str, dict]) -> list[int]:
    return [i for i in range(len(GRID)) if all(key(*j) in results for j in _grid_jobs(name, batch, [i], stop_at))]


@cache
def _results() -> dict[str, dict]:
    return load()


def _rows(
    name: str, target: float, stop_at: float, results: dict[str, dict], seeds: tuple[int, ...] = SEEDS
) -> dict[int, dict]:
    """Per batch size the tuned LR (fewest mean steps; ties: the lower LR), its mean steps and samples."""
    rows = {}
    for b in SETUPS[name].batch_sizes:
        by_lr = _by_lr(name, b, _indices_tried(name, b, stop_at, results), stop_at, results, target, seeds)
        i = min(by_lr, key=lambda i: (by_lr[i], i))
        s = by_lr[i] if math.isfinite(by_lr[i]) else None
        rows[b] = {"lr": GRID[i], "steps": s, "samples": s * b if s is not None else None}
    return rows


def _fit_rows(rows: dict[int, dict], relative: bool = True) -> tuple[float, float]:
    return fit(list(rows), [r["steps"] if r["steps"] is not None else math.inf for r in rows.values()], relative)


def critical_batch(task_name: str, fraction: float = FRACTION, results: dict[str, dict] | None = None) -> dict:
    """The fit for one task and target, from the cache (training whatever is missing).

    {"task", "fraction", "target", "untrained", "best", "S_min", "B_crit", "E_min" (relative fit),
    "B_crit_range" ((lowest, highest) B_crit of the fits that leave one seed out), "S_min_plain",
    "B_crit_plain" (plain least squares), "fastest" (the batch size with the fewest mean steps),
    "batches": {B: {"lr", "steps", "samples"}}} — steps None: no LR reached the target.
    """
    results = results if results is not None else _results()
    if any(key(*j) not in results for j in _ref_jobs(task_name)):
        results = measure([task_name])
    tgts = targets(task_name, results)
    stop_at = min(tgts.values())
    if not all(_indices_tried(task_name, b, stop_at, results) for b in SETUPS[task_name].batch_sizes):
        results = measure([task_name])
    target = tgts[fraction]
    rows = _rows(task_name, target, stop_at, results)
    s_min, b_crit = _fit_rows(rows)
    s_min_plain, b_crit_plain = _fit_rows(rows, relative=False)
    left_out = (
        [
            _fit_rows(_rows(task_name, target, stop_at, results, tuple(x for x in SEEDS if x != seed)))[1]
            for seed in SEEDS
        ]
        if len(SEEDS) > 2
        else [b_crit]
    )
    finite = {b: r["steps"] for b, r in rows.items() if r["steps"] is not None}
    untrained, best = reference(task_name, results)
    return {
        "task": task_name,
        "fraction": fraction,
        "target": target,
        "untrained": untrained,
        "best": best,
        "S_min": s_min,
        "B_crit": b_crit,
        "E_min": s_min * b_crit,
        "B_crit_range": (float(np.nanmin(left_out)), float(np.nanmax(left_out))),
        "S_min_plain": s_min_plain,
        "B_crit_plain": b_crit_plain,
        "fastest": min(finite, key=finite.get) if finite else None,
        "batches": rows,
    }


# ---- report ------------------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def _range(lo_hi: tuple[float, float]) -> str:
    return f"{_fmt(lo_hi[0])}–{_fmt(lo_hi[1])}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", default=[t.name for t in TASKS])
    args = parser.parse_args()
    started = time.perf_counter()
    results = measure(args.tasks)
    summary = []
    for name in args.tasks:
        c = critical_batch(name, results=results)
        summary.append(c)
        print(
            f"\n## {name}\n\ntarget {c['target']:.4g} = {FRACTION:g} of the way from untrained "
            f"{c['untrained']:.4g} to best {c['best']:.4g}; seeds {SEEDS}\n"
        )
        print("| batch | tuned LR | steps to target (mean) | samples to target | fit S_min(1+B_crit/B) |")
        print("|---:|---:|---:|---:|---:|")
        for b, r in c["batches"].items():
            fitted = c["S_min"] * (1 + c["B_crit"] / b)
            print(
                f"| {b} | {r['lr']:.3g} | {_fmt(r['steps'], '.1f')} | {_fmt(r['samples'], '.0f')} "
                f"| {_fmt(fitted, '.1f')} |"
            )
        print("\nB_crit against the target (LR re-tuned per target from the same runs):\n")
        print(
            "| fraction | target | S(B) for B = "
            + ", ".join(map(str, SETUPS[name].batch_sizes))
            + " | S_min | B_crit | B_crit, one seed left out | E_min | B_crit (plain LS) |"
        )
        print("|---:|---:|---|---:|---:|---:|---:|---:|")
        for f in FRACTIONS:
            cf = critical_batch(name, f, results=results)
            curve = " ".join(_fmt(r["steps"], ".0f") for r in cf["batches"].values())
            print(
                f"| {f:g} | {cf['target']:.4g} | {curve} | {_fmt(cf['S_min'])} | {_fmt(cf['B_crit'])} "
                f"| {_range(cf['B_crit_range'])} | {_fmt(cf['E_min'])} | {_fmt(cf['B_crit_plain'])} |"
            )
    print("\n## Summary\n")
    print(
        "| task | target | S_min | B_crit (fit) | B_crit, one seed left out | E_min (samples) | B_crit (plain LS) "
        "| fewest steps at B |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for c in summary:
        print(
            f"| {c['task']} | {c['target']:.4g} | {_fmt(c['S_min'])} | {_fmt(c['B_crit'])} "
            f"| {_range(c['B_crit_range'])} | {_fmt(c['E_min'])} | {_fmt(c['B_crit_plain'])} | {c['fastest']} |"
        )
    print(f"\ntotal {time.perf_counter() - started:.0f} s ({len(results)} runs in the cache)")


if __name__ == "__main__":
    main()
