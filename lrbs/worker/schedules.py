"""The LR schedules lrbs advises for, built the way a training pipeline builds them (torch's own classes).

One place defines each schedule's parameters: the benchmark trains with `make_scheduler`, the advice
reports `schedule_params`, and `snippet` prints the same thing as code a user can paste.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    OneCycleLR,
    SequentialLR,
    StepLR,
)

# torch.optim.lr_scheduler.OneCycleLR's own defaults.
ONE_CYCLE_DIV_FACTOR, ONE_CYCLE_PCT_START, ONE_CYCLE_FINAL_DIV_FACTOR = 25.0, 0.3, 1e4
STEP_GAMMA, STEP_DECAYS = 0.1, 3  # ×0.1 at every third of training (the classic ResNet recipe)
EXPONENTIAL_END_FRACTION = 0.01  # the LR decays smoothly to 1% of its start
DEFAULT_TRAIN_STEPS = 1000


def schedule_params(schedule: str, lr: float, steps: int, warmup_steps: int = 0) -> dict[str, Any]:
    """Every parameter of the schedule, for a peak LR `lr` over `steps` optimizer steps."""
    if schedule == "one_cycle":  # has its own warm-up (pct_start)
        return {"max_lr": lr, "div_factor": ONE_CYCLE_DIV_FACTOR, "pct_start": ONE_CYCLE_PCT_START,
                "final_div_factor": ONE_CYCLE_FINAL_DIV_FACTOR, "total_steps": steps,
                "initial_lr": lr / ONE_CYCLE_DIV_FACTOR,
                "final_lr": lr / ONE_CYCLE_DIV_FACTOR / ONE_CYCLE_FINAL_DIV_FACTOR}
    params: dict[str, Any] = {"lr": lr, "warmup_steps": warmup_steps, "total_steps": steps}
    decay_steps = max(1, steps - warmup_steps)
    if schedule == "cosine":
        params["final_lr"] = 0.0
    elif schedule == "step":
        params.update(step_size=max(1, decay_steps // STEP_DECAYS), gamma=STEP_GAMMA)
    elif schedule == "exponential":
        params.update(gamma=EXPONENTIAL_END_FRACTION ** (1 / decay_steps), interval_steps=1)
    return params


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, params: dict[str, Any]) -> LRScheduler:
    """The scheduler for `schedule_params(...)`; call `.step()` after every optimizer step."""
    if schedule == "one_cycle":
        return OneCycleLR(optimizer, max_lr=params["max_lr"], total_steps=params["total_steps"],
                          pct_start=params["pct_start"], div_factor=params["div_factor"],
                          final_div_factor=params["final_div_factor"])
    for group in optimizer.param_groups:
        group["lr"] = params["lr"]
    warmup = params["warmup_steps"]
    decay_steps = max(1, params["total_steps"] - warmup)
    if schedule == "cosine":
        main: LRScheduler = CosineAnnealingLR(optimizer, T_max=decay_steps, eta_min=params["final_lr"])
    elif schedule == "step":
        main = StepLR(optimizer, step_size=params["step_size"], gamma=params["gamma"])
    elif schedule == "exponential":
        main = ExponentialLR(optimizer, gamma=params["gamma"])
    else:
        main = LambdaLR(optimizer, lambda _: 1.0)
    if not warmup:
        return main
    ramp = LinearLR(optimizer, start_factor=1 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def snippet(schedule: str, params: dict[str, Any], optimizer_class: str, optimizer_kwargs: dict[str, Any]) -> str:
    """The optimizer and scheduler as PyTorch code."""
    kwargs = "".join(f", {k}={v!r}" for k, v in optimizer_kwargs.items())
    if schedule == "one_cycle":
        return (f"optimizer = torch.optim.{optimizer_class}(model.parameters(), lr={params['max_lr']:.4g}{kwargs})\n"
                f"scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr={params['max_lr']:.4g}, "
                f"total_steps={params['total_steps']}, pct_start={params['pct_start']}, "
                f"div_factor={params['div_factor']}, final_div_factor={params['final_div_factor']:g})\n"
                "# call scheduler.step() after every optimizer.step()")
    lines = [f"optimizer = torch.optim.{optimizer_class}(model.parameters(), lr={params['lr']:.4g}{kwargs})"]
    warmup = params["warmup_steps"]
    decay_steps = max(1, params["total_steps"] - warmup)
    main = {
        "cosine": f"torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max={decay_steps}, "
                  f"eta_min={params.get('final_lr', 0.0)})",
        "step": f"torch.optim.lr_scheduler.StepLR(optimizer, step_size={params.get('step_size')}, "
                f"gamma={params.get('gamma')})",
        "exponential": f"torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma={params.get('gamma', 1):.6g})",
        "constant": "torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)",
    }[schedule]
    if warmup:
        lines.append(f"warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor={1 / (warmup + 1):.4g}, "
                     f"total_iters={warmup})")
        lines.append(f"scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, {main}], "
                     f"milestones=[{warmup}])")
    else:
        lines.append(f"scheduler = {main}")
    lines.append("# call scheduler.step() after every optimizer.step()")
    return "\n".join(lines)
