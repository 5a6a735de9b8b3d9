"""Fit lrbs's schedule-aware rule: LR = factor[schedule] × landmark, on the visible tasks.

    python -m benchmarks.lr_quality.tune            # print the fit
    python -m benchmarks.lr_quality.tune --write    # and write it to lrbs/schedule_fractions.json, which lrbs reads

For each landmark a rule could read off the median range-test curve (lrbs's own suggestions, cached by
run.py) and each schedule, it scans factors and scores each by the regret it would have, read off the
grid (loss interpolated linearly in log LR between grid points; run.py then trains at the real
suggestions). It prints the factor with the lowest worst-case regret (ties: lowest median), also
leave-one-task-out, which is the honest estimate for an unseen task.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

import numpy as np

from benchmarks.lr_quality import grid
from benchmarks.lr_quality.run import FINDER_SEEDS, SUGGESTIONS_FILE
from benchmarks.lr_quality.tasks import SCHEDULES, TASKS
from benchmarks.lr_quality.training import job_of
from lrbs.schedules import FRACTIONS_FILE

LANDMARKS = ("lowest", "minimum", "valley", "steepest", "slide")
FACTORS = [float(f"{10 ** (e / 20):.4g}") for e in range(-50, 21)]  # 0.00316 … 10, 20 per decade


def interpolated_regret(results, task: str, schedule: str, lr: float) -> float:
    logs = np.log10(grid.GRID)
    losses = np.array([grid.mean_loss(results, task, schedule, g) for g in grid.GRID])
    best, untrained = losses.min(), grid.mean_loss(results, task, "untrained", 0.0)
    x = math.log10(lr)
    if x < logs[0] or x > logs[-1]:
        return math.inf
    i = min(int(np.searchsorted(logs, x)), len(logs) - 1)
    lo = max(i - 1, 0)
    if not (np.isfinite(losses[lo]) and np.isfinite(losses[i])):
        return math.inf
    w = 0 if i == lo else (x - logs[lo]) / (logs[i] - logs[lo])
    loss = (1 - w) * losses[lo] + w * losses[i]
    return grid.regret(loss, best, untrained)


def score(results, suggestions, tasks, schedule: str, landmark: str, factor: float) -> list[float]:
    out = []
    for task in tasks:
        for fs in FINDER_SEEDS:
            lr = suggestions[f"{task}|{fs}"][f"lrbs {landmark}|constant"]["lr"]  # landmarks ignore the schedule
            out.append(math.inf if lr is None else interpolated_regret(results, task, schedule, lr * factor))
    return out


def best_factor(results, suggestions, tasks, schedule, landmark) -> tuple[float, list[float]]:
    scored = [(f, score(results, suggestions, tasks, schedule, landmark, f)) for f in FACTORS]
    return min(scored, key=lambda fr: (max(fr[1]), statistics.median(fr[1])))


def safe_band(results, suggestions, tasks, schedule, landmark, factor, worst=0.2) -> tuple[float, float]:
    """The factors around `factor` (relative to it) for which no sample's regret passes `worst`."""
    ok = [f for f in FACTORS if max(score(results, suggestions, tasks, schedule, landmark, f)) <= worst]
    i = FACTORS.index(factor)
    lo = hi = i
    while lo > 0 and FACTORS[lo - 1] in ok:
        lo -= 1
    while hi < len(FACTORS) - 1 and FACTORS[hi + 1] in ok:
        hi += 1
    return FACTORS[lo] / factor, FACTORS[hi] / factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"write the fit to {FRACTIONS_FILE}")
    args = parser.parse_args()
    results = grid.load()
    suggestions = json.loads(SUGGESTIONS_FILE.read_text())
    groups: dict[str | None, list[str]] = {}
    for task in TASKS:  # each task fits the fractions of its family (suggest.family_of), or the default ones
        groups.setdefault(job_of(task).family(), []).append(task.name)
    fitted: dict[str | None, dict] = {}
    for family, names in groups.items():
        print(f"Fitted for {family or 'the default'} ({', '.join(names)}); landmark lowest:")
        fitted[family] = {}
        for schedule in SCHEDULES:
            factor, _ = best_factor(results, suggestions, names, schedule, "lowest")
            low, high = safe_band(results, suggestions, names, schedule, "lowest", factor)
            fitted[family][schedule] = {"peak_per_lowest": factor, "safe_band": [round(low, 4), round(high, 4)]}
            print(f"  {schedule}: peak_per_lowest {factor:.4g}, safe_band ({low:.2f}, {high:.2f})")
    if args.write:
        payload = {
            "written_by": "python -m benchmarks.lr_quality.tune --write",
            "landmark": "lowest",
            "schedules": fitted[None],
            "families": {
                family: {"description": FAMILY_TEXT[family], "tasks": groups[family], "schedules": fitted[family]}
                for family in groups
                if family is not None
            },
        }
        FRACTIONS_FILE.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {FRACTIONS_FILE}")
    for family, names in groups.items():
        print(f"\n{family or 'default'}: {', '.join(names)}\n")
        table(results, suggestions, names)


FAMILY_TEXT = {"adam_sequence": "lrbs's benchmark language models trained with Adam or AdamW"}


def table(results, suggestions, names: list[str]) -> None:
    print("| schedule | landmark | factor | median regret | worst regret | leave-one-task-out median | worst |")
    print("|---|---|---|---|---|---|---|")
    for schedule in SCHEDULES:
        for landmark in LANDMARKS:
            factor, regrets = best_factor(results, suggestions, names, schedule, landmark)
            loo = []
            for held in names:
                f, _ = best_factor(results, suggestions, [n for n in names if n != held], schedule, landmark)
                loo += score(results, suggestions, [held], schedule, landmark, f)
            print(
                f"| {schedule} | {landmark} | {factor:g} | {statistics.median(regrets):.1%} | {max(regrets):.1%} | "
                f"{statistics.median(loo):.1%} | {max(loo):.1%} |"
            )


if __name__ == "__main__":
    main()
