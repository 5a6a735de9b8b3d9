"""Does lrbs's warm-up advice pay? Adam-family tasks trained with and without the advised linear warm-up.

    python -m benchmarks.lr_quality.warmup      # needs the caches of grid.py and run.py; fills cache/warmup.json

lrbs advises a linear warm-up over WARMUP_SHARE of training for Adam and AdamW (their moment estimates are
poor over the first steps) under every schedule but one_cycle, which ramps up by itself, on runs at least as long
as Adam's untuned warm-up (advise.adam_warmup_horizon: 2 / (1 - beta2) steps); shorter runs get none (unless the
range test spiked). lr_quality's regret tables train without it. Here, for each Adam-family task and for constant
and cosine, with a warm-up over WARMUP_SHARE of its steps:

- at lrbs's recommended LR (each finder seed's, from run.py's cache), the mean final validation loss over the
  grid's training seeds without the warm-up (run.py's runs) and with it;
- the grid around the best LR (±1 decade of the best grid point without warm-up), trained with the warm-up, so
  the best LR with and without it can be compared: a warm-up often allows a higher LR.

Regret as in run.py, (L − L_best) / (L_untrained − L_best), against the best of both grids: a warm-up that helps
lowers the recommended LR's regret; one that hurts raises it. Runs use the worker's own training code
(JobContext.train with warmup_steps), one torch thread per process.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

from benchmarks.lr_quality import grid
from benchmarks.lr_quality.run import FINDER_SEEDS, SUGGESTIONS_FILE, TRAINED_FILE, rounded
from benchmarks.lr_quality.tasks import TASKS, Task
from lrbs.worker.advise import WARMUP_OPTIMIZERS, WARMUP_SHARE, adam_warmup_horizon

WARMUP_FILE = grid.CACHE / "warmup.json"
SCHEDULES = ("constant", "cosine")
NEAR_BEST = 4  # grid points each side of the best one (4 per decade: ±1 decade)

Run = tuple[str, str, float, int, int]  # task, schedule, lr, seed, warm-up steps


def warmup_tasks() -> list[Task]:
    return [t for t in TASKS if t.spec["optimizer"]["name"] in WARMUP_OPTIMIZERS]


def warmup_steps(task: Task) -> int:
    return max(1, round(WARMUP_SHARE * task.steps))  # what advise.warmup_advice gives a long enough run


def advised(task: Task) -> bool:
    """Whether advise.warmup_advice gives this task's run a warm-up for its optimizer (range-test spikes aside)."""
    return task.steps >= adam_warmup_horizon(task.spec["optimizer"].get("params", {}))


def key(run: Run) -> str:
    task, schedule, lr, seed, warmup = run
    return f"{grid.key(task, schedule, lr, seed)}|warmup {warmup}"


def _train(run: Run) -> tuple[str, float]:
    import torch

    from benchmarks.lr_quality.training import TASKS_BY_NAME, job_of

    torch.set_num_threads(1)
    task, schedule, lr, seed, warmup = run
    t = TASKS_BY_NAME[task]
    loss = job_of(t).train(lr, t.steps, schedule=schedule, warmup_steps=warmup, batch_size=t.batch_size, seed=seed)
    return key(run), loss if math.isfinite(loss) else math.inf


def train_all(runs: list[Run], processes: int) -> dict[str, float]:
    results = json.loads(WARMUP_FILE.read_text()) if WARMUP_FILE.exists() else {}
    todo = [r for r in dict.fromkeys(runs) if key(r) not in results]
    print(f"{len(todo)} of {len(runs)} runs to train", flush=True)
    with ProcessPoolExecutor(processes) as pool:
        for i, (k, loss) in enumerate(pool.map(_train, todo, chunksize=2), 1):
            results[k] = loss
            if i % 20 == 0 or i == len(todo):
                WARMUP_FILE.write_text(json.dumps(results, indent=0, sort_keys=True))
                print(f"  {i}/{len(todo)} trained", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    plain = grid.load()
    plain.update(grid.load(TRAINED_FILE))
    suggestions = json.loads(SUGGESTIONS_FILE.read_text())
    rows, runs = [], []
    for task in warmup_tasks():
        for schedule in SCHEDULES:
            recommended = [
                rounded(suggestions[f"{task.name}|{fs}"][f"lrbs recommended|{schedule}"]["lr"]) for fs in FINDER_SEEDS
            ]
            best_index = min(
                range(len(grid.GRID)), key=lambda i: grid.mean_loss(plain, task.name, schedule, grid.GRID[i])
            )
            near = grid.GRID[max(0, best_index - NEAR_BEST) : best_index + NEAR_BEST + 1]
            lrs = [lr for lr in recommended if lr is not None] + near
            runs += [(task.name, schedule, lr, seed, warmup_steps(task)) for lr in lrs for seed in grid.SEEDS]
            rows.append((task, schedule, recommended, near))
    warm = train_all(runs, args.processes)

    def mean_warm(task: str, schedule: str, lr: float, warmup: int) -> float:
        return statistics.mean(warm[key((task, schedule, lr, seed, warmup))] for seed in grid.SEEDS)

    print(
        f"\n{len(rows)} (task, schedule) pairs; warm-up = {WARMUP_SHARE:.0%} of each task's steps, linear; "
        f"finder seeds {FINDER_SEEDS}, training seeds {grid.SEEDS}; regret against the best of both grids\n"
    )
    columns = ["task", "schedule", "warm-up steps", "best grid LR: without / with warm-up",
               "best grid loss: without / with", "recommended LR (per finder seed)",
               "regret without warm-up (per finder seed)", "regret with the warm-up", "verdict",
               "lrbs advises"]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    changes, rule, everywhere = [], [], []
    for task, schedule, recommended, near in rows:
        w = warmup_steps(task)
        untrained = grid.mean_loss(plain, task.name, "untrained", 0.0)
        best_plain_lr = min(near, key=lambda lr: grid.mean_loss(plain, task.name, schedule, lr))
        best_warm_lr = min(near, key=lambda lr: mean_warm(task.name, schedule, lr, w))
        best_plain = grid.mean_loss(plain, task.name, schedule, best_plain_lr)
        best_warm = mean_warm(task.name, schedule, best_warm_lr, w)
        best = min(best_plain, best_warm)

        def regret(loss: float, best: float = best, untrained: float = untrained) -> float:
            return grid.regret(loss, best, untrained)

        without = [regret(grid.mean_loss(plain, task.name, schedule, lr)) if lr else math.inf for lr in recommended]
        with_ = [regret(mean_warm(task.name, schedule, lr, w)) if lr else math.inf for lr in recommended]
        changes += [b - a for a, b in zip(without, with_, strict=True) if math.isfinite(a) and math.isfinite(b)]
        rule += with_ if advised(task) else without
        everywhere += with_
        better = sum(b < a for a, b in zip(without, with_, strict=True))
        verdict = (
            "warm-up helps"
            if better == len(recommended)
            else "warm-up hurts"
            if better == 0
            else f"mixed ({better} of {len(recommended)} better)"
        )
        print(
            f"| {task.name} | {schedule} | {w} | {best_plain_lr:g} / {best_warm_lr:g} | {best_plain:.4f} / "
            f"{best_warm:.4f} | {', '.join(f'{lr:.3g}' for lr in recommended if lr)} | {_pcts(without)} "
            f"| {_pcts(with_)} | {verdict} | {f'{w} steps' if advised(task) else 'none: a short run'} |"
        )
    print(
        f"\nregret with the warm-up minus without, over {len(changes)} samples: median "
        f"{100 * statistics.median(changes):+.1f} points, mean {100 * statistics.mean(changes):+.1f}, "
        f"best {100 * min(changes):+.1f}, worst {100 * max(changes):+.1f}"
    )
    for name, regrets in (("lrbs's advice", rule), ("the warm-up on every run", everywhere)):
        finite = [r for r in regrets if math.isfinite(r)]
        print(
            f"regret with {name}: median {100 * statistics.median(finite):.1f}%, "
            f"mean {100 * statistics.mean(finite):.1f}%, worst {100 * max(regrets):.1f}%"
        )
    print(f"(total {time.perf_counter() - started:.0f} s)")


def _pcts(values: list[float]) -> str:
    return " ".join("∞" if not math.isfinite(v) else f"{100 * v:.1f}%" for v in values)


if __name__ == "__main__":
    main()
