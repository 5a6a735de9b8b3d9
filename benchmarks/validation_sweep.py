"""What `lr_range.loss: "validation"` costs: one range test on the training loss against the same test on the
validation loss, through the job context a job uses (`JobContext.range_test`), per task and `val_batches`.

    python -m benchmarks.validation_sweep --threads 1 --repeats 5
    python -m benchmarks.validation_sweep --device cuda

Every sweep runs all its steps (the LRs stay below where these tasks diverge), so the step counts match and
the ratio is the cost per step. Runs are interleaved (training, then each validation setting, `--repeats`
times) after one warm-up round, so drift on a shared machine hits every setting alike; the table gives the
median wall time of a sweep and its ratio to the training-loss sweep. A validation pass is a forward pass
over `val_batches` batches of `batch_size` samples, in eval mode without grad: it costs about a third of a
training step per batch (no backward, no optimizer step) plus a fixed cost per pass.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from lrbs.contract.job_spec import JobSpec  # noqa: E402
from lrbs.worker.job import JobContext  # noqa: E402

SWEEP = {"min_lr": 1e-5, "max_lr": 1e-2, "num_steps": 100, "batch_size": 64, "thoroughness": "quick"}
TASKS: dict[str, dict[str, Any]] = {
    "mlp / synthetic_classification": {
        "model": {"name": "mlp", "params": {"hidden": [64, 64], "dropout": 0.5}},
        "dataset": {"name": "synthetic_classification", "params": {"n_samples": 4096}},
        "optimizer": {"name": "sgd", "params": {"momentum": 0.9}},
    },
    "cnn / synthetic_images": {
        "model": {"name": "cnn"},
        "dataset": {"name": "synthetic_images", "params": {"n_samples": 2048}},
        "optimizer": {"name": "adamw"},
    },
}


def context(task: dict[str, Any], device: str, val_batches: int | None) -> JobContext:
    sweep = {**SWEEP, "loss": "training"} if val_batches is None else {**SWEEP, "loss": "validation"}
    if val_batches is not None:
        sweep["val_batches"] = val_batches
    return JobContext.build(JobSpec.model_validate({**task, "lr_range": sweep, "device": device}))


def timed(job: JobContext) -> tuple[float, int]:
    gc.collect()
    start = time.perf_counter()
    result = job.range_test(job.spec.lr_range.batch_size)
    return time.perf_counter() - start, result.steps_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--val-batches", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{SWEEP['num_steps']} steps at batch {SWEEP['batch_size']}, median of {args.repeats}\n")  # fmt: skip
    print("| task | loss | val_batches | validation samples per step | sweep wall time (s) | × training |")
    print("|---|---|---|---|---|---|")
    for name, task in TASKS.items():
        settings: list[int | None] = [None, *args.val_batches]
        jobs = {v: context(task, args.device, v) for v in settings}
        for job in jobs.values():
            timed(job)  # warm-up: allocator, kernels, first-touch of the data
        times: dict[int | None, list[float]] = {v: [] for v in settings}
        for _ in range(args.repeats):
            for v, job in jobs.items():
                seconds, steps = timed(job)
                assert steps == SWEEP["num_steps"], f"{name}: a sweep stopped at step {steps}; lower max_lr"
                times[v].append(seconds)
        base = statistics.median(times[None])
        n_val = sum(len(x) for x, _ in jobs[None].data.val_batches(1024))
        for v in settings:
            wall = statistics.median(times[v])
            samples = "-" if v is None else min(v * SWEEP["batch_size"], n_val)
            loss = "training" if v is None else "validation"
            print(f"| {name} | {loss} | {v or '-'} | {samples} | {wall:.3f} | {wall / base:.2f} |")


if __name__ == "__main__":
    main()
