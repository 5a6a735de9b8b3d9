"""Does the noise scale keep growing past the 1,000 steps lrbs measures? The language model, trained longer.

    python -m benchmarks.batch_size.long_trajectory     # about 2 minutes on 2 cores; cached in long_trajectory.json

lrbs measures B_noise along at most `batch_warmup.MAX_STEPS` steps and holds its last value beyond them. On the
batch benchmark's character-level language model (`text-chars-lm-adamw` of `warmup.py`, with enough text that
no window repeats), this trains the job's trajectory for longer: at the job's batch (16) and the LR its lrbs job
recommended for it, measuring B_noise with lrbs's own code at the job's checkpoints and at 2,000, 4,000 and
8,000 steps, once per seed. Then it asks the planner (`batch_schedule.plan`, step time not constrained, the most
favourable case for a schedule) what a warm-up could save over the whole training at the fixed batch 16, on the
first 1,000 steps as lrbs sees them and on the long trajectory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.batch_size.warmup import SETUPS, TASKS, advice_of, points_of
from lrbs.worker import batch_schedule as bs
from lrbs.worker import batch_warmup

TASK = "text-chars-lm-adamw"
BATCH = 16  # the task's batch: lr_range.batch_size, and the fixed batch its lrbs job chose
LATER = (2000, 4000, 8000)
CACHE_FILE = Path(__file__).parent / "long_trajectory.json"


def trajectory(seed: int, steps: int, n_train: int, lr: float) -> list[dict]:
    import torch

    from benchmarks.lr_quality.tasks import POLICY
    from lrbs.worker.job import JobContext

    torch.set_num_threads(1)
    task = TASKS[TASK]
    dataset = task.spec["dataset"]
    spec = {**task.spec, "dataset": {**dataset, "params": {**dataset["params"], "n_train": n_train}}}
    job = JobContext.build(dataclasses.replace(task, spec=spec).job("constant", device="cpu", seed=seed), policy=POLICY)
    at = sorted({*batch_warmup.checkpoints(steps), *(c for c in LATER if c < steps)})
    sizes = sorted(SETUPS[TASK].candidates)
    points, _ = batch_warmup.measure_trajectory(job, [sizes[0], sizes[-1]], lr, BATCH, at)
    return [p.model_dump() for p in points]


def planned(points: list[dict], steps: int) -> bs.Plan:
    return bs.plan(points_of(points), BATCH, list(SETUPS[TASK].candidates), BATCH, steps, None, min_saving=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--n-train", type=int, default=131072, help="training windows (8,000 × 16 = 128,000 seen)")
    args = parser.parse_args()
    lr = advice_of(TASK)["lrs"][str(BATCH)]
    cache = json.loads(CACHE_FILE.read_text()) if CACHE_FILE.exists() else {}
    keys = {seed: f"{seed}|{args.steps}|{args.n_train}|{lr:.6g}" for seed in args.seeds}
    todo = [seed for seed in args.seeds if keys[seed] not in cache]
    if todo:
        with ProcessPoolExecutor(min(2, len(todo))) as pool:
            n = len(todo)
            found = pool.map(trajectory, todo, [args.steps] * n, [args.n_train] * n, [lr] * n)
            for seed, points in zip(todo, found, strict=True):
                cache[keys[seed]] = points
        CACHE_FILE.write_text(json.dumps(cache, indent=1) + "\n")

    print(f"{TASK}: batch {BATCH}, LR {lr:.4g} (lrbs's for it), AdamW, constant LR; {args.n_train} training windows\n")
    print(
        "| step | samples | " + " | ".join(f"seed {s}: train loss, B_noise (95% interval)" for s in args.seeds) + " |"
    )
    print("|---:|---:|" + "---|" * len(args.seeds))
    runs = [cache[keys[s]] for s in args.seeds]
    for row in zip(*runs, strict=True):
        cells = [f"{p['train_loss']:.3f}, {p['b_noise']:.3g} ({p['low']:.3g}–{p['high']:.3g})" for p in row]
        print(f"| {row[0]['step']} | {row[0]['samples']} | " + " | ".join(cells) + " |")

    print(f"\nWhat a warm-up could save over {args.steps} steps at the fixed batch {BATCH} (planner, no time limit):\n")
    print("| seed | trajectory | most any schedule could save (model) | planner's best over the candidates |")
    print("|---|---|---|---|")
    for seed, points in zip(args.seeds, runs, strict=True):
        lrbs_part = [p for p in points if p["step"] <= batch_warmup.MAX_STEPS]
        for label, part in (
            (f"first {batch_warmup.MAX_STEPS} steps (lrbs's)", lrbs_part),
            (f"all {args.steps} steps", points),
        ):
            plan = planned(part, args.steps)
            path = " → ".join(f"{s.batch}@{s.from_step}" for s in plan.stages)
            best = f"{path}: {plan.step_saving:.0%} fewer steps" if plan.stages else "none beats the fixed batch"
            bound = "—" if plan.bound is None else f"{plan.bound:.0%}"
            print(f"| {seed} | {label} | {bound} | {best} |")


if __name__ == "__main__":
    main()
