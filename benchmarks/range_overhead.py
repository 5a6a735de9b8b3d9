"""What the LR range test costs over a bare training loop.

Both run the same model, data, number of steps and the same lr per step; the bare loop is the
least a training loop does (set lr, zero_grad, forward, loss, backward, step; no loss readback).
With `--precision bf16|fp16` and `--accumulation K` both do the same autocast, GradScaler (fp16)
and K micro-batches per optimizer step. Runs are interleaved (bare, probe, bare, probe, ...) so
drift in clocks and caches hits both alike, and the table reports medians. Goal: probe ≤ 1.05 × bare.

    python benchmarks/range_overhead.py --device auto --steps 300 --repeats 11 --threads 1
    python benchmarks/range_overhead.py --device cuda --precision fp16 --accumulation 4
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from lrbs.worker.probes.lr_range import lr_range_test, lr_schedule  # noqa: E402
from lrbs.worker.probes.step import AUTOCAST_DTYPES, StepSettings  # noqa: E402

MIN_LR, MAX_LR = 1e-5, 1e-2  # small enough that nothing diverges: both loops take every step
GOAL = 1.05


def mlp() -> tuple[nn.Module, torch.Size, int]:
    model = nn.Sequential(
        nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    return model, torch.Size([64]), 10


def convnet() -> tuple[nn.Module, torch.Size, int]:
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip
    return model, torch.Size([3, 32, 32]), 10


MODELS: dict[str, Callable[[], tuple[nn.Module, torch.Size, int]]] = {"mlp": mlp, "convnet": convnet}


def make_batches(shape: torch.Size, classes: int, batch_size: int, n: int = 8) -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(batch_size, *shape, generator=g) for _ in range(n)]
    return [(x, torch.randint(0, classes, (batch_size,), generator=g)) for x in xs]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(
    model: nn.Module, opt: torch.optim.Optimizer, batches: list, lrs: list[float], device, precision: str, accum: int
) -> float:
    ctx = nullcontext() if precision == "fp32" else torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    data = itertools.cycle(batches)
    sync(device)
    t0 = time.perf_counter()
    for lr in lrs:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        for _ in range(accum):
            x, y = next(data)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with ctx:
                loss = nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss / accum if accum > 1 else loss).backward()
        scaler.step(opt)
        scaler.update()
    sync(device)
    return time.perf_counter() - t0


def probe(
    model: nn.Module, opt: torch.optim.Optimizer, batches: list, steps: int, device, precision: str, accum: int
) -> float:
    sync(device)
    t0 = time.perf_counter()
    result = lr_range_test(
        model,
        nn.functional.cross_entropy,
        opt,
        batches,
        min_lr=MIN_LR,
        max_lr=MAX_LR,
        num_steps=steps,
        step_settings=StepSettings(precision=precision, grad_accumulation_steps=accum),
    )
    elapsed = time.perf_counter() - t0  # includes the model/optimizer copy the probe makes
    assert result.steps_run == steps, f"probe stopped early ({result.stop_reason}): lower MAX_LR"
    return elapsed


def measure(
    name: str, device: torch.device, steps: int, repeats: int, batch_size: int, precision: str, accum: int
) -> dict:
    torch.manual_seed(0)
    model, shape, classes = MODELS[name]()
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=MIN_LR, momentum=0.9)
    batches = make_batches(shape, classes, batch_size)
    lrs = lr_schedule(MIN_LR, MAX_LR, steps)

    # Warm up both paths (allocator, kernels, lazy init) before anything is timed.
    warm = copy.deepcopy(model)
    warm_opt = torch.optim.SGD(warm.parameters(), lr=MIN_LR, momentum=0.9)
    bare_loop(warm, warm_opt, batches, lrs[:20], device, precision, accum)
    probe(model, opt, batches, 20, device, precision, accum)

    bare, probed = [], []
    for _ in range(repeats):
        # The bare loop gets its own fresh copy (made outside the clock) so every run starts alike.
        bare_model = copy.deepcopy(model)
        bare_opt = torch.optim.SGD(bare_model.parameters(), lr=MIN_LR, momentum=0.9)
        bare.append(bare_loop(bare_model, bare_opt, batches, lrs, device, precision, accum))
        probed.append(probe(model, opt, batches, steps, device, precision, accum))
    print(f"{name} runs, s: bare {[round(t, 3) for t in bare]}, probe {[round(t, 3) for t in probed]}")
    bare_s, probe_s = statistics.median(bare), statistics.median(probed)
    return {
        "model": name, "device": device.type, "precision": precision, "accum": accum, "steps": steps,
        "bare": bare_s, "probe": probe_s,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--models", default="mlp,convnet", help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="fp16 needs CUDA")
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step")
    args = parser.parse_args()
    if args.accumulation < 1:
        parser.error("--accumulation must be at least 1")

    if args.threads:
        torch.set_num_threads(args.threads)  # fewer threads: steadier timings on a shared machine
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    if args.precision == "fp16" and device.type != "cuda":
        parser.error("--precision fp16 needs a CUDA device (GradScaler); use bf16 on CPU")
    rows = [
        measure(m, device, args.steps, args.repeats, args.batch_size, args.precision, args.accumulation)
        for m in args.models.split(",")
    ]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.batch_size}, "
          f"{args.repeats} interleaved repeats (medians)\n")  # fmt: skip
    print("| model | device | precision | accumulation | steps | bare median s | probe median s | ratio | goal |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["probe"] / r["bare"]
        verdict = "ok" if ratio <= GOAL else "over"
        print(f"| {r['model']} | {r['device']} | {r['precision']} | {r['accum']} | {r['steps']} | "
              f"{r['bare']:.4f} | {r['probe']:.4f} | {ratio:.3f}× | ≤ {GOAL:.2f}× ({verdict}) |")  # fmt: skip


if __name__ == "__main__":
    main()
