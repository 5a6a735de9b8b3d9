"""The long-run half of lrbs's warm-up rule, measured: a run as long as Adam's untuned warm-up horizon.

    python -m benchmarks.lr_quality.long_warmup     # fills cache/long_warmup.json, prints the table (~20 min, 2 cores)

lrbs advises Adam and AdamW a linear warm-up over WARMUP_SHARE of training only on runs of at least
`2 / (1 - beta2)` steps (advise.adam_warmup_horizon: 2,000 at torch's default betas); benchmarks/lr_quality/
warmup.py measured the short-run half (no warm-up) on runs of 200–300 steps. Here the long-run half, on the
character-level transformer LM on real text of benchmarks/batch_size/warmup.py (AdamW, batch 16, 2,000 steps:
exactly the horizon), under constant and cosine:

- lrbs's job with its default settings, once per finder seed: the recommended LR and the warm-up it advises;
- at each recommended LR, the final validation loss (mean over SEEDS) trained without a warm-up and with the
  advised one;
- a grid of LRs (4 per decade) trained both ways, so the best LR with and without a warm-up can be compared.

Regret as in run.py, (L − L_best) / (L_untrained − L_best), against the best mean loss of both grids. Runs use
the worker's own training code (JobContext.train with warmup_steps), one torch thread per process.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from concurrent.futures import ProcessPoolExecutor

from benchmarks import harness
from benchmarks.batch_size.warmup import TASKS as BATCH_TASKS
from benchmarks.lr_quality import grid
from benchmarks.lr_quality.run import FINDER_SEEDS
from benchmarks.lr_quality.tasks import POLICY
from benchmarks.lr_quality.warmup import warmup_steps

TASK = BATCH_TASKS["text-chars-lm-adamw"]
CACHE_FILE = grid.CACHE / "long_warmup.json"
SCHEDULES = ("constant", "cosine")
SEEDS = (0, 1)
GRID = tuple(10 ** (k / 4) for k in range(-14, -7))  # 3.2e-4 ... 1e-2

Run = tuple[str, float, int, int]  # schedule, lr, seed, warm-up steps


def run_key(run: Run) -> str:
    schedule, lr, seed, warmup = run
    return f"train|{schedule}|{lr:.6g}|{seed}|{warmup}"


def _advise(job: tuple[str, int]) -> tuple[str, dict]:
    import torch

    from lrbs.worker.advise import advise

    torch.set_num_threads(1)
    schedule, finder_seed = job
    result = advise(TASK.job(schedule, device="cpu", seed=finder_seed, train_steps=TASK.steps), policy=POLICY)
    rec = result.recommendation
    assert rec is not None, f"no recommendation for {schedule} (finder seed {finder_seed})"
    found = {"lr": rec.lr, "warmup_steps": rec.warmup_steps, "warmup_reason": rec.warmup_reason,
             "steps": sum(result.phase_steps.values()), "wall_time_s": result.wall_time_s}  # fmt: skip
    return f"advice|{schedule}|{finder_seed}", found


def _train(run: Run) -> tuple[str, float]:
    import torch

    from benchmarks.lr_quality.training import job_of

    torch.set_num_threads(1)
    schedule, lr, seed, warmup = run
    loss = job_of(TASK).train(lr, TASK.steps, schedule=schedule, warmup_steps=warmup, batch_size=TASK.batch_size,
                              seed=seed)  # fmt: skip
    return run_key(run), loss if math.isfinite(loss) else math.inf


def _untrained(seed: int) -> tuple[str, float]:
    from benchmarks.lr_quality.training import untrained_loss

    return f"untrained|{seed}", untrained_loss(TASK, seed)


def fill(cache: dict, work: list, fn, processes: int) -> None:
    """Run `fn` over the `work` items whose results are not cached yet; save after each."""
    with ProcessPoolExecutor(processes) as pool:
        for key, value in pool.map(fn, work):
            cache[key] = value
            CACHE_FILE.write_text(json.dumps(cache, indent=0, sort_keys=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    cache: dict = json.loads(CACHE_FILE.read_text()) if CACHE_FILE.exists() else {}

    jobs = [(s, fs) for s in SCHEDULES for fs in FINDER_SEEDS if f"advice|{s}|{fs}" not in cache]
    fill(cache, jobs, _advise, args.processes)
    fill(cache, [s for s in SEEDS if f"untrained|{s}" not in cache], _untrained, args.processes)
    advice = {(s, fs): cache[f"advice|{s}|{fs}"] for s in SCHEDULES for fs in FINDER_SEEDS}
    warmups = {a["warmup_steps"] for a in advice.values()} - {0}
    warmup = max(warmups) if warmups else warmup_steps(TASK)
    runs = [
        (s, lr, seed, w)
        for s in SCHEDULES
        for lr in [*GRID, *(advice[(s, fs)]["lr"] for fs in FINDER_SEEDS)]
        for seed in SEEDS
        for w in (0, warmup)
    ]
    todo = [r for r in dict.fromkeys(runs) if run_key(r) not in cache]
    print(f"{len(todo)} of {len(runs)} trainings to run", flush=True)
    fill(cache, todo, _train, args.processes)

    def loss(schedule: str, lr: float, w: int) -> float:
        return statistics.mean(cache[run_key((schedule, lr, seed, w))] for seed in SEEDS)

    untrained = statistics.mean(cache[f"untrained|{seed}"] for seed in SEEDS)
    print(f"\n{TASK.name}: AdamW, batch {TASK.batch_size}, {TASK.steps} steps; warm-up {warmup} steps; "
          f"training seeds {SEEDS}; untrained validation loss {untrained:.4f}\n")  # fmt: skip
    rows, summary = [], []
    for s in SCHEDULES:
        best = {w: min(GRID, key=lambda lr, w=w: loss(s, lr, w)) for w in (0, warmup)}
        l_best = min(loss(s, best[w], w) for w in best)

        def regret(lr: float, w: int, s: str = s, l_best: float = l_best) -> float:
            return grid.regret(loss(s, lr, w), l_best, untrained)

        recs = [advice[(s, fs)] for fs in FINDER_SEEDS]
        without = [regret(a["lr"], 0) for a in recs]
        with_ = [regret(a["lr"], warmup) for a in recs]
        advised = sorted({a["warmup_steps"] for a in recs})
        better = sum(b < a for a, b in zip(without, with_, strict=True))
        summary += [(a, b, rec["warmup_steps"]) for a, b, rec in zip(without, with_, recs, strict=True)]
        rows.append((
            s, " / ".join(f"{best[w]:.4g}" for w in (0, warmup)),
            " / ".join(f"{loss(s, best[w], w):.4f}" for w in (0, warmup)),
            ", ".join(f"{a['lr']:.3g}" for a in recs), ", ".join(str(w) for w in advised),
            " ".join(f"{x:.1%}" for x in without), " ".join(f"{x:.1%}" for x in with_),
            f"warm-up better for {better} of {len(recs)}",
        ))  # fmt: skip
    headers = ["schedule", "best grid LR: without / with warm-up", "best grid loss: without / with",
               "recommended LR (per finder seed)", "warm-up lrbs advises (steps)",
               "regret without warm-up (per finder seed)", "regret with the warm-up", "verdict"]  # fmt: skip
    print(harness.table(headers, rows))
    advised_regret = [b if w else a for a, b, w in summary]
    none_regret = [a for a, _, _ in summary]
    print(f"\nregret with lrbs's advice: median {statistics.median(advised_regret):.1%}, worst "
          f"{max(advised_regret):.1%}; with no warm-up: median {statistics.median(none_regret):.1%}, worst "
          f"{max(none_regret):.1%}")  # fmt: skip
    for s in SCHEDULES:
        print(f"{s} grid (mean final loss; without / with warm-up): " + ", ".join(
            f"{lr:.3g}: {loss(s, lr, 0):.4f} / {loss(s, lr, warmup):.4f}" for lr in GRID))  # fmt: skip


if __name__ == "__main__":
    main()
