"""The service's batch-size advice against measurement.

    python -m benchmarks.batch_size.critical   # once: the empirical critical batch sizes (cached)
    python -m benchmarks.batch_size.compare    # the service's estimates beside them

For each task: the job the service would run (the task's spec, batch_sizes = the measured candidates),
through the worker's own `advise`, with several seeds. It prints
- the service's gradient noise scale B_noise (and its interval) beside the empirical B_crit of the fit
  S = S_min (1 + B_crit / B) (goal: within a factor of 2);
- the batch the service chose beside the measured fastest-to-target candidate: measured steps to the
  target × the step time the service measured for that batch on this machine;
- per target (each of critical.FRACTIONS), the empirical B_crit beside the B_noise the service's trajectory
  measured where its training loss reached that target loss (`noise_at_loss`). McCandlish et al. relate the
  critical batch at a loss to the noise scale at that loss, and B_crit grows as the target tightens, so this
  is the like-for-like comparison; the service's own `noise_scale` is the trajectory's last point, later.
"""

from __future__ import annotations

import math
import statistics

import torch

from benchmarks.batch_size.critical import FRACTION, FRACTIONS, SETUPS, TASKS, critical_batch
from lrbs.contract.results import NoisePoint
from lrbs.worker.advise import advise

SEEDS = (0, 1, 2)


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    at_loss: dict[str, dict[float, tuple[dict, list[tuple[int, float, bool] | None]]]] = {}
    for task in TASKS:
        sizes = [b for b in SETUPS[task.name].batch_sizes]
        empirical = {f: critical_batch(task.name, f) for f in FRACTIONS}
        runs = [
            advise(task.job("constant", seed=seed, train_steps=task.steps, batch_sizes=sizes)).batch_advice
            for seed in SEEDS
        ]
        at_loss[task.name] = {
            f: (empirical[f], [noise_at_loss(r.noise_trajectory or [], empirical[f]["target"]) for r in runs])
            for f in FRACTIONS
        }
        b_noise = [r.noise_scale.b_noise for r in runs if r.noise_scale and r.noise_scale.b_noise]
        fit = empirical[FRACTION]
        print(f"## {task.name}\n")
        print(
            "| batch | measured steps to target | service step time (ms) | measured time to target (s) | "
            "service relative time (seed 0) |"
        )
        print("|---|---|---|---|---|")
        step_time = {c.batch_size: c.step_time_s for c in runs[0].candidates}
        relative = {c.batch_size: c.relative_time_to_target for c in runs[0].candidates}
        measured = {}
        for b, row in sorted(fit["batches"].items()):
            if row["steps"] is not None and step_time.get(b):
                measured[b] = row["steps"] * step_time[b]
            print(
                f"| {b} | {_f(row['steps'])} | {_f(step_time.get(b) and 1000 * step_time[b])} | "
                f"{_f(measured.get(b))} | {_f(relative.get(b))} |"
            )
        fastest = min(measured, key=measured.get) if measured else None
        chosen = [r.batch_size for r in runs]
        print()
        for f in FRACTIONS:
            print(f"  empirical B_crit at {f:.0%} of the way to the best loss: {_f(empirical[f]['B_crit'])}")
        print()
        median_noise = statistics.median(b_noise) if b_noise else None
        ratio = median_noise / fit["B_crit"] if median_noise and fit["B_crit"] else None
        rows.append(
            (
                task.name,
                fit["B_crit"],
                fit["B_crit_range"],
                b_noise,
                runs[0].noise_scale,
                ratio,
                chosen,
                fastest,
                measured,
            )
        )

    print("## Summary\n")
    print(
        f"| task | empirical B_crit ({FRACTION:.0%} target; leave-one-seed-out range) | service B_noise per seed "
        "(seed 0's 95% interval) | ratio | within 2× | service's choice per seed | measured fastest | "
        "its time vs the choice's |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, b_crit, rng, noise, first, ratio, chosen, fastest, measured in rows:
        interval = f"[{_f(first.low)}, {_f(first.high)}]" if first else "—"
        within = "yes" if ratio and 0.5 <= ratio <= 2 else "no"
        slower = ", ".join(_f(measured[c] / measured[fastest]) if c in measured and fastest else "—" for c in chosen)
        print(
            f"| {name} | {_f(b_crit)} ({_f(rng[0])}–{_f(rng[1])}) | {', '.join(_f(n) for n in noise)} {interval} | "
            f"{_f(ratio)} | {within} | {', '.join(map(str, chosen))} | {fastest} | {slower} |"
        )

    print(
        "\n## B_noise where the training reached each target loss\n\n"
        "| task | target (share of the way to the best loss) | target loss | "
        "empirical B_crit (leave-one-seed-out range) | service B_noise at that loss per seed (step) | "
        "ratio of the median | within 2× |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, per_fraction in at_loss.items():
        for f, (fit, found) in per_fraction.items():
            values = [b for _, b, _ in filter(None, found)]
            median = statistics.median(values) if values else None
            ratio = median / fit["B_crit"] if median and fit["B_crit"] else None
            bound = "" if all(x and x[2] for x in found) else "≥ "
            seeds = ", ".join(f"{'' if x[2] else '≥ '}{_f(x[1])} ({x[0]})" if x else "not reached" for x in found)
            rng = fit["B_crit_range"]
            print(
                f"| {name} | {f:.0%} | {fit['target']:.4g} | {_f(fit['B_crit'])} ({_f(rng[0])}–{_f(rng[1])}) | "
                f"{seeds} | {bound}{_f(ratio)} | {'yes' if ratio and 0.5 <= ratio <= 2 and not bound else 'no'} |"
            )


def noise_at_loss(trajectory: list[NoisePoint], target: float) -> tuple[int, float, bool] | None:
    """(step, B_noise, exact) where the trajectory's training loss first fell to `target`: B_noise interpolated in
    log space between the points either side, in proportion to the loss. Where the point after is unmeasurable
    (|G|² ≤ 0: B_noise beyond any batch the probe can tell), the one before is a lower bound (exact False).
    None if the training never got there."""
    points = [p for p in trajectory if p.train_loss is not None]
    for before, after in zip(points, points[1:], strict=False):
        assert before.train_loss is not None and after.train_loss is not None
        if before.train_loss <= target:
            return (before.step, before.b_noise, True) if before.b_noise else None
        if after.train_loss <= target:
            share = (before.train_loss - target) / (before.train_loss - after.train_loss)
            step = round(before.step + share * (after.step - before.step))
            if not (before.b_noise and after.b_noise):
                return (step, before.b_noise, False) if before.b_noise else None
            b = math.exp(math.log(before.b_noise) + share * (math.log(after.b_noise) - math.log(before.b_noise)))
            return step, b, True
    return None


def _f(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


if __name__ == "__main__":
    main()
