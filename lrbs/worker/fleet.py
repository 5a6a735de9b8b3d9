"""Data-parallel fleets: what one device's measurement predicts for `world_size` devices.

Each of N devices (DDP ranks) runs the same micro-batch B_micro, accumulates `a` micro-batches, and the
gradients are averaged once per optimizer step, so the global batch is B_micro × a × N. Memory and step
time are measured on one device; the fleet is predicted:

* **All-reduce.** A ring all-reduce of S gradient bytes is a reduce-scatter and an all-gather: each device
  sends (and receives) 2·(N−1)/N·S bytes (Patarasuk & Yuan 2009). At a per-device bus bandwidth β it takes
  2·(N−1)/N·S/β; nccl-tests defines its "busbw" with the same factor, so a measured busbw is the β to give.
  Latency per hop and tree or hierarchical algorithms at large N are not modelled.
* **Step time.** a micro-batches at the measured time per micro-batch, then one all-reduce (DDP under
  `no_sync` skips it on the others). DDP overlaps bucketed all-reduces with the backward pass; assuming no
  overlap gives the slower end, so the predicted throughput is a lower bound where the bandwidth holds.
* **Gradient bytes.** Every parameter that requires a gradient × its element size: gradients take their
  parameter's dtype. Under bf16/fp16 autocast the parameters stay fp32, so 4 bytes each.

The arithmetic is plain functions over numbers; `gradient_bytes` reads a model, `global_lr` scales a
measured LR to the global batch, `advice` and `snippet` say it all to the user.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from lrbs.contract.job_spec import JobSpec
from lrbs.contract.results import DataParallelAdvice

GB = 1e9  # interconnect_gbps is in 10⁹ bytes per second (not gigabits)
MB = 1e6


def allreduce_bytes(gradient_bytes: int, world_size: int) -> float:
    """Bytes each device sends in a ring all-reduce: 2·(N−1)/N × the gradient bytes (0 on one device)."""
    return 2 * (world_size - 1) / world_size * gradient_bytes


def allreduce_seconds(gradient_bytes: int, world_size: int, interconnect_gbps: float) -> float:
    """One ring all-reduce of the gradients at this per-device bus bandwidth (GB/s)."""
    return allreduce_bytes(gradient_bytes, world_size) / (interconnect_gbps * GB)


def global_batch(micro_batch: int, accumulation: int, world_size: int) -> int:
    """Samples per optimizer step over the fleet."""
    return micro_batch * accumulation * world_size


def accumulation_for(target: int, micro_batch: int, world_size: int) -> int:
    """The fewest micro-batches per device per optimizer step whose global batch reaches `target`:
    ⌈target / (micro × N)⌉, at least 1. Where micro × N does not divide the target, the global batch overshoots."""
    return max(1, math.ceil(target / (micro_batch * world_size)))


def step_seconds(micro_seconds: float, accumulation: int, allreduce_s: float) -> float:
    """One optimizer step on the fleet: every device runs `accumulation` micro-batches in parallel, then one
    all-reduce (no overlap assumed)."""
    return accumulation * micro_seconds + allreduce_s


def fleet_samples_per_s(
    micro_batch: int, accumulation: int, world_size: int, micro_seconds: float, allreduce_s: float
) -> float:
    """Predicted samples per second of the fleet: the global batch over the fleet's step time."""
    return global_batch(micro_batch, accumulation, world_size) / step_seconds(micro_seconds, accumulation, allreduce_s)


def gradient_bytes(model: nn.Module) -> int:
    """Bytes of gradient a data-parallel step all-reduces: parameters that require a gradient × element size."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def global_lr(
    scaling: str,
    lrs: dict[int, float],
    lr0: float,
    range_batch: int,
    accumulation: int,
    adaptive: bool,
    batch: int,
    b_noise: float | None = None,
) -> tuple[float, str]:
    """The LR for the global batch `batch`, by the scaling rule the per-candidate LRs used, and why.

    `lrs` are the LRs per micro-batch (run with the job's `accumulation`), `lr0` the range test's LR at
    micro-batch `range_batch`. linear or sqrt: scale lr0 from the range test's batch. Interpolated: the
    fitted power law through the two probed batches. probe (or a rule standing in for a failed probe): the
    optimizer's rule (sqrt for Adam-family, linear otherwise) from the nearest batch whose LR was measured."""
    rule, rule_power = ("sqrt", 0.5) if adaptive else ("linear", 1.0)
    if scaling in ("linear", "sqrt"):
        name, power, anchors = f"the {scaling} rule", 1.0 if scaling == "linear" else 0.5, {range_batch: lr0}
    elif scaling.startswith("interpolated") and len(lrs) >= 2:
        low, high = min(lrs), max(lrs)
        power = math.log(lrs[high] / lrs[low]) / math.log(high / low)
        name, anchors = "the power law interpolated between the probes", {low: lrs[low], high: lrs[high]}
    elif scaling == "probe" and lrs:
        name, power, anchors = f"the {rule} rule", rule_power, dict(lrs)
    else:
        name, power, anchors = f"the {rule} rule", rule_power, {range_batch: lr0}
    micro = batch / accumulation  # in the units of `lrs`: micro-batches at the job's accumulation
    anchor = min(anchors, key=lambda b: abs(math.log(b / micro)))
    lr = anchors[anchor] * (micro / anchor) ** power
    measured = sorted(b * accumulation for b in anchors)
    why = (
        f"{name} (LR ∝ B^{power:.2f}) from the LR measured at batch {anchor * accumulation} to the global batch {batch}"
    )
    if batch > measured[-1]:
        why += (
            f"; that is {batch / measured[-1]:.3g}× the largest batch whose LR was measured ({measured[-1]}), so "
            "the LR is extrapolated: warm up to it (Goyal et al. 2017) and watch the first steps"
        )
    elif batch < measured[0]:
        why += f"; below the smallest batch whose LR was measured ({measured[0]}), so the LR is extrapolated"
    else:
        why += " (within the batches whose LR was measured)"
    if adaptive and b_noise and batch > b_noise and power > 0:
        why += (
            f"; for Adam-family optimizers the best LR stops rising near the noise scale (B_noise ≈ {b_noise:.3g}; "
            "Li et al. 2024), so past it the rule may overshoot"
        )
    return lr, why


def advice(
    spec: JobSpec,
    micro_batch: int,
    accumulation: int,
    micro_seconds: float | None,
    gradient_bytes: int,
    lr: float | None,
    lr_rule: str,
) -> DataParallelAdvice:
    """The recommendation as each rank runs it. `micro_seconds`: one device's measured time per micro-batch."""
    world = spec.world_size
    allreduce = allreduce_seconds(gradient_bytes, world, spec.interconnect_gbps)
    step = step_seconds(micro_seconds, accumulation, allreduce) if micro_seconds else None
    total = global_batch(micro_batch, accumulation, world)
    return DataParallelAdvice(
        world_size=world,
        micro_batch_size=micro_batch,
        grad_accumulation_steps=accumulation,
        global_batch_size=total,
        global_lr=lr,
        global_lr_rule=lr_rule,
        device_samples_per_s=micro_batch / micro_seconds if micro_seconds else None,
        fleet_samples_per_s=total / step if step else None,
        step_time_s=step,
        allreduce_s=allreduce,
        gradient_bytes=gradient_bytes,
        interconnect_gbps=spec.interconnect_gbps,
        snippet=snippet(world, micro_batch, accumulation, lr, spec.optimizer.class_path, spec.optimizer.params),
    )


def reason(dp: DataParallelAdvice) -> str:
    """One clause for the advice's reason: the fleet, and that its speed is a prediction."""
    text = (
        f"on {dp.world_size} devices each runs micro-batch {dp.micro_batch_size} × {dp.grad_accumulation_steps} "
        f"accumulation step(s): global batch {dp.global_batch_size}"
    )
    if dp.global_lr is not None:
        text += f" at LR {dp.global_lr:.4g}"
    if dp.fleet_samples_per_s and dp.device_samples_per_s:
        efficiency = dp.fleet_samples_per_s / (dp.world_size * dp.device_samples_per_s)
        text += (
            f"; predicted, not measured: {dp.fleet_samples_per_s:.4g} samples/s over the fleet ({efficiency:.0%} of "
            f"{dp.world_size}× one device's measured {dp.device_samples_per_s:.4g}/s), with a ring all-reduce of "
            f"{dp.gradient_bytes / MB:.3g} MB of gradients taking {dp.allreduce_s * 1e3:.3g} ms per optimizer step at "
            f"{dp.interconnect_gbps:g} GB/s (set interconnect_gbps to your measured bus bandwidth)"
        )
    return text


def snippet(
    world_size: int,
    micro_batch: int,
    accumulation: int,
    lr: float | None,
    optimizer_class: str,
    optimizer_kwargs: dict[str, Any],
) -> str:
    """Per-rank PyTorch code: one process per device (torchrun), DistributedSampler, the micro-batch, accumulation
    under no_sync (the all-reduce runs once per optimizer step) and the LR for the global batch."""
    kwargs = "".join(f", {k}={v!r}" for k, v in optimizer_kwargs.items())
    total = global_batch(micro_batch, accumulation, world_size)
    lr_text = f"{lr:.4g}" if lr is not None else "lr  # no LR was found: set it"
    return "\n".join(
        [
            f"# torchrun --nproc_per_node=<devices per node> --nnodes=<nodes> train.py  ({world_size} ranks in all)",
            "import contextlib, os",
            "import torch",
            "import torch.distributed as dist",
            "from torch.nn.parallel import DistributedDataParallel as DDP",
            "from torch.utils.data import DataLoader, DistributedSampler",
            "",
            'dist.init_process_group("nccl")  # "gloo" on CPUs',
            f"assert dist.get_world_size() == {world_size}, 'the batch and LR below are for {world_size} ranks'",
            'local_rank = int(os.environ["LOCAL_RANK"])',
            "torch.cuda.set_device(local_rank)",
            f"micro_batch, accumulation = {micro_batch}, {accumulation}  # per rank: global batch "
            f"{micro_batch} × {accumulation} × {world_size} = {total}",
            "model = DDP(model.cuda(), device_ids=[local_rank])",
            f"optimizer = {optimizer_class}(model.parameters(), lr={lr_text}{kwargs})  # the LR for the global batch",
            "sampler = DistributedSampler(train_set, shuffle=True, drop_last=True)  # each rank its own shard",
            "loader = DataLoader(train_set, batch_size=micro_batch, sampler=sampler, drop_last=True)",
            "for epoch in range(epochs):",
            "    sampler.set_epoch(epoch)",
            "    for i, (x, y) in enumerate(loader):",
            "        last = (i + 1) % accumulation == 0",
            "        with contextlib.nullcontext() if last else model.no_sync():  # all-reduce once per optimizer step",
            "            loss = loss_fn(model(x.cuda()), y.cuda()) / accumulation",
            "            loss.backward()",
            "        if last:",
            "            optimizer.step()",
            "            optimizer.zero_grad(set_to_none=True)",
            "            # scheduler.step(): the scheduler of the recommendation's snippet, on this optimizer",
        ]
    )
