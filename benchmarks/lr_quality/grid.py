"""Ground truth: the final validation loss of every task and schedule over a log-spaced LR grid.

    python -m benchmarks.lr_quality.grid            # fills benchmarks/lr_quality/cache/grid.json

Expensive, so cached: each (task, schedule, lr, seed) is trained once and kept. Training runs go to
two processes with one torch thread each, which is what a 2-core machine does best with tiny models.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CACHE = Path(__file__).parent / "cache"
GRID_FILE = CACHE / "grid.json"
POINTS_PER_DECADE = 4
GRID = [float(f"{10 ** (e / POINTS_PER_DECADE):.4g}") for e in range(-5 * POINTS_PER_DECADE, 1 * POINTS_PER_DECADE + 1)]
SEEDS = (0, 1, 2)


def key(task: str, schedule: str, lr: float, seed: int) -> str:
    return f"{task}|{schedule}|{lr:.4g}|{seed}"


def load(path: Path = GRID_FILE) -> dict[str, float]:
    return json.loads(path.read_text()) if path.exists() else {}


def save(results: dict[str, float], path: Path = GRID_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=0, sort_keys=True))


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _run(job: tuple[str, str, float, int]) -> tuple[str, float]:
    from benchmarks.lr_quality.training import TASKS_BY_NAME, final_loss, untrained_loss

    task, schedule, lr, seed = job
    if schedule == "untrained":
        return key(task, schedule, 0.0, seed), untrained_loss(TASKS_BY_NAME[task], seed)
    return key(task, schedule, lr, seed), final_loss(TASKS_BY_NAME[task], schedule, lr, seed)


def train_many(jobs: list[tuple[str, str, float, int]], cache_path: Path, processes: int = 2) -> dict[str, float]:
    """Train every job not yet in the cache at `cache_path`; return the whole cache."""
    results = load(cache_path)
    todo = [j for j in dict.fromkeys(jobs) if key(*j) not in results]
    with ProcessPoolExecutor(processes, initializer=_init_worker) as pool:
        for i, (k, loss) in enumerate(pool.map(_run, todo, chunksize=4), 1):
            results[k] = loss if math.isfinite(loss) else math.inf
            if i % 50 == 0 or i == len(todo):
                save(results, cache_path)
                print(f"  {i}/{len(todo)} trained", flush=True)
    return results


def regret(loss: float, best: float, untrained: float) -> float:
    """The share of the best LR's improvement over the untrained model that `loss` loses (inf: diverged)."""
    return max(0.0, (loss - best) / (untrained - best)) if math.isfinite(loss) else math.inf


def mean_loss(results: dict[str, float], task: str, schedule: str, lr: float, seeds=SEEDS) -> float:
    return float(np.mean([results[key(task, schedule, lr, s)] for s in seeds]))


def main() -> None:
    from benchmarks.lr_quality.tasks import SCHEDULES, TASKS

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="*", default=[t.name for t in TASKS])
    args = parser.parse_args()
    jobs = [(t, "untrained", 0.0, s) for t in args.tasks for s in SEEDS]
    jobs += [(t, sch, lr, s) for t in args.tasks for sch in SCHEDULES for lr in GRID for s in SEEDS]
    print(f"{len(jobs)} runs in the grid ({len(GRID)} LRs from {GRID[0]:g} to {GRID[-1]:g}, seeds {SEEDS})")
    results = train_many(jobs, GRID_FILE, processes=os.cpu_count() or 2)
    for t in args.tasks:
        for sch in SCHEDULES:
            losses = [mean_loss(results, t, sch, lr) for lr in GRID]
            best = int(np.argmin(losses))
            print(f"{t:28s} {sch:10s} best lr {GRID[best]:.3g}  loss {losses[best]:.4f}")


if __name__ == "__main__":
    main()
