"""The service's batch-size advice against measurement.

    python -m benchmarks.batch_size.critical   # once: the empirical critical batch sizes (cached)
    python -m benchmarks.batch_size.compare    # the service's estimates beside them

For each task: the job the service would run (the task's spec, batch_sizes = the measured candidates),
through the worker's own `advise`, with several seeds. It prints
- the service's gradient noise scale B_noise (and its interval) beside the empirical B_crit of the fit
  S = S_min (1 + B_crit / B) (goal: within a factor of 2);
- the batch the service chose beside the measured fastest-to-target candidate: measured steps to the
  target × the step time the service measured for that batch on this machine.
"""

from __future__ import annotations

import math
import statistics

import torch

from benchmarks.batch_size.critical import FRACTION, FRACTIONS, SETUPS, TASKS, critical_batch
from lrbs.worker.advise import advise

SEEDS = (0, 1, 2)


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for task in TASKS:
        sizes = [b for b in SETUPS[task.name].batch_sizes]
        empirical = {f: critical_batch(task.name, f) for f in FRACTIONS}
        runs = [
            advise(task.job("constant", seed=seed, train_steps=task.steps, batch_sizes=sizes)).batch_advice
            for seed in SEEDS
        ]
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


def _f(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


if __name__ == "__main__":
    main()
