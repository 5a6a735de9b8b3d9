"""The batch-size advice for a data-parallel fleet, as a table: a GPT-like model advised for 1, 8 and 64 devices.

    python -m benchmarks.batch_size.fleet_arithmetic                       # default interconnect (50 GB/s)
    python -m benchmarks.batch_size.fleet_arithmetic --interconnect-gbps 5 # a slower fabric

Each row is a real job through the worker's own `advise` on this machine's CPU: the built-in transformer_lm
(a tiny GPT-style decoder) on synthetic_tokens with AdamW, the same seed, world_size 1, 8 or 64. Memory and
the per-device speed are measured; the all-reduce time and the fleet's throughput are predicted (ring
all-reduce: 2·(N−1)/N × gradient bytes / interconnect_gbps, once per optimizer step). Two tables: without a
target (the noise scale and the fleet's speed pick the micro-batch, so the global batch grows with N) and
with target_effective_batch (the global batch is fixed; micro × accumulation × N reaches it).

The last table is arithmetic only (no run): the all-reduce per optimizer step for larger GPT-like gradients.
"""

from __future__ import annotations

import argparse

import torch

from lrbs.contract.job_spec import DEFAULT_INTERCONNECT_GBPS, JobSpec
from lrbs.worker import fleet
from lrbs.worker.advise import advise

WORLD_SIZES = (1, 8, 64)
TARGET = 512  # sequences per optimizer step over the fleet


def spec(world_size: int, interconnect_gbps: float, target: int | None) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model": {"name": "transformer_lm", "params": {"layers": 2, "d_model": 64, "heads": 4}},
            "dataset": {"name": "synthetic_tokens", "params": {"n_samples": 4096, "context": 32, "vocab_size": 64}},
            "optimizer": {"name": "adamw", "params": {"weight_decay": 0.01}},
            "lr_range": {"batch_size": 16, "num_steps": 40, "min_lr": 1e-5, "max_lr": 1, "thoroughness": "quick"},
            "batch_sizes": [8, 16, 32, 64],
            "lr_scaling": "sqrt",
            "schedule": "cosine",
            "world_size": world_size,
            "interconnect_gbps": interconnect_gbps,
            "target_effective_batch": target,
            "device": "cpu",
            "seed": 0,
        }
    )


def table(interconnect_gbps: float, target: int | None) -> None:
    print(f"### {'target_effective_batch ' + str(target) if target else 'no target'}, {interconnect_gbps:g} GB/s\n")
    print(
        "| world_size | micro-batch per device | accumulation | global batch | LR for the global batch | "
        "device samples/s (measured) | all-reduce ms/step (predicted) | fleet samples/s (predicted) | "
        "scaling efficiency |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    b_noise, rules, gradient = [], {}, 0
    for world in WORLD_SIZES:
        advice = advise(spec(world, interconnect_gbps, target)).batch_advice
        assert advice is not None and advice.data_parallel is not None
        dp = advice.data_parallel
        device, speed = dp.device_samples_per_s or 0, dp.fleet_samples_per_s or 0
        print(
            f"| {world} | {dp.micro_batch_size} | {dp.grad_accumulation_steps} | {dp.global_batch_size} | "
            f"{dp.global_lr:.3g} | {device:.4g} | {dp.allreduce_s * 1e3:.3g} | {speed:.4g} | "
            f"{speed / (world * device):.1%} |"
        )
        noise = advice.noise_scale.b_noise if advice.noise_scale else None
        b_noise.append(f"{noise:.3g}" if noise else "not measured")
        rules[world], gradient = dp.global_lr_rule, dp.gradient_bytes
    print()
    print(
        f"- B_noise per run: {', '.join(b_noise)}; gradient {gradient / 1e6:.3g} MB ({gradient // 4:,} fp32 parameters)"
    )
    print(f"- the LR for world_size {WORLD_SIZES[-1]}: {rules[WORLD_SIZES[-1]]}")
    print()


def arithmetic(interconnect_gbps: float) -> None:
    print(f"### All-reduce per optimizer step, fp32 gradients, {interconnect_gbps:g} GB/s (arithmetic, no run)\n")
    print(
        "| parameters | gradient MB | "
        + " | ".join(f"{n} device{'s' if n > 1 else ''} (ms)" for n in WORLD_SIZES)
        + " |"
    )
    print("|---|---|" + "---|" * len(WORLD_SIZES))
    for params in (124_000_000, 1_300_000_000, 7_000_000_000):
        grad = 4 * params
        cells = " | ".join(f"{fleet.allreduce_seconds(grad, n, interconnect_gbps) * 1e3:.4g}" for n in WORLD_SIZES)
        print(f"| {params / 1e6:,.0f}M | {grad / 1e6:,.0f} | {cells} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interconnect-gbps", type=float, default=DEFAULT_INTERCONNECT_GBPS)
    parser.add_argument("--target", type=int, default=TARGET, help="target_effective_batch of the second table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table(args.interconnect_gbps, None)
    table(args.interconnect_gbps, args.target)
    arithmetic(args.interconnect_gbps)


if __name__ == "__main__":
    main()
