"""The LR schedules lrbs advises for: one table, one entry per schedule.

Each entry knows everything about its schedule: its parameters for a peak LR and a training length, the
torch scheduler that trains with them, the same scheduler as code a user can paste, and the fraction of
the range test's landmark it starts at (fitted against grid search by `benchmarks/lr_quality/tune.py`,
which writes `schedule_fractions.json` beside this file). The contract reads the names from `SCHEDULES`
and the worker everything else, so adding a schedule is one class here (see the README).

Torch is imported inside `scheduler()` only: the service reads this table without loading torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch.optim.lr_scheduler import LRScheduler

DEFAULT_TRAIN_STEPS = 1000
FRACTIONS_FILE = Path(__file__).with_name("schedule_fractions.json")
_FRACTIONS: dict[str, Any] = json.loads(FRACTIONS_FILE.read_text())
_FITTED: dict[str, dict[str, Any]] = _FRACTIONS["schedules"]
# Kinds of task whose best LR sits elsewhere relative to the landmark, each with fractions of its own.
FAMILY_FITTED: dict[str, dict[str, dict[str, Any]]] = {
    name: family["schedules"] for name, family in _FRACTIONS.get("families", {}).items()
}
FAMILY_DESCRIPTIONS: dict[str, str] = {
    name: family["description"] for name, family in _FRACTIONS.get("families", {}).items()
}


class Schedule:
    """A warm-up (optional, linear) followed by a main schedule over the remaining steps."""

    name: ClassVar[str]
    description: ClassVar[str]
    rising_share: ClassVar[float] = 0.0  # of the steps, where the schedule itself still raises the LR to its peak

    def peak_per_lowest(self, family: str | None = None) -> float:
        """The recommended LR is this × the LR where the median range-test curve bottoms out."""
        return float(self._fitted(family)["peak_per_lowest"])

    def safe_band(self, family: str | None = None) -> tuple[float, float]:
        """Factors, relative to the recommended LR, inside which no benchmark task lost over 20% of the best."""
        low, high = self._fitted(family)["safe_band"]
        return float(low), float(high)

    def _fitted(self, family: str | None) -> dict[str, Any]:
        return FAMILY_FITTED[family][self.name] if family else _FITTED[self.name]

    # Subclasses define these three for their main schedule.
    def main_params(self, decay_steps: int) -> dict[str, Any]:
        return {}

    def main_scheduler(self, optimizer: torch.optim.Optimizer, params: dict[str, Any]) -> LRScheduler:
        from torch.optim.lr_scheduler import LambdaLR

        return LambdaLR(optimizer, lambda _: 1.0)

    def main_code(self, params: dict[str, Any]) -> str:
        return "torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)"

    def params(self, lr: float, steps: int, warmup_steps: int = 0) -> dict[str, Any]:
        """Every parameter of the schedule, for a peak LR `lr` over `steps` optimizer steps."""
        decay_steps = max(1, steps - warmup_steps)
        return {"lr": lr, "warmup_steps": warmup_steps, "total_steps": steps, **self.main_params(decay_steps)}

    def recommendation_fields(self, params: dict[str, Any]) -> dict[str, float]:
        """Extra top-level fields of the Recommendation (one_cycle names its LRs the way torch does)."""
        return {}

    def scheduler(self, optimizer: torch.optim.Optimizer, params: dict[str, Any]) -> LRScheduler:
        """The scheduler for `params(...)`; call `.step()` after every optimizer step."""
        from torch.optim.lr_scheduler import LinearLR, SequentialLR

        for group in optimizer.param_groups:
            group["lr"] = params["lr"]
            group.pop("initial_lr", None)  # else torch's schedulers start from an earlier scheduler's LR
        main = self.main_scheduler(optimizer, params)
        warmup = params["warmup_steps"]
        if not warmup:
            return main
        ramp = LinearLR(optimizer, start_factor=1 / (warmup + 1), end_factor=1.0, total_iters=warmup)
        return SequentialLR(optimizer, [ramp, main], milestones=[warmup])

    def snippet(self, params: dict[str, Any], optimizer_class: str, optimizer_kwargs: dict[str, Any]) -> str:
        """The optimizer and scheduler as PyTorch code."""
        kwargs = "".join(f", {k}={v!r}" for k, v in optimizer_kwargs.items())
        lines = [f"optimizer = {optimizer_class}(model.parameters(), lr={params['lr']:.4g}{kwargs})"]
        main, warmup = self.main_code(params), params["warmup_steps"]
        if warmup:
            lines.append(
                f"warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor={1 / (warmup + 1):.4g}, "
                f"total_iters={warmup})"
            )
            lines.append(
                f"scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, {main}], milestones=[{warmup}])"
            )
        else:
            lines.append(f"scheduler = {main}")
        lines.append("# call scheduler.step() after every optimizer.step()")
        return "\n".join(lines)


class Constant(Schedule):
    name = "constant"
    description = "the same LR throughout"


class Cosine(Schedule):
    name = "cosine"
    description = "cosine decay from the peak LR to final_lr"

    def main_params(self, decay_steps: int) -> dict[str, Any]:
        return {"final_lr": 0.0}

    def main_scheduler(self, optimizer: torch.optim.Optimizer, params: dict[str, Any]) -> LRScheduler:
        from torch.optim.lr_scheduler import CosineAnnealingLR

        return CosineAnnealingLR(optimizer, T_max=_decay_steps(params), eta_min=params["final_lr"])

    def main_code(self, params: dict[str, Any]) -> str:
        return (
            f"torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max={_decay_steps(params)}, "
            f"eta_min={params['final_lr']})"
        )


class StepDecay(Schedule):
    name = "step"
    description = "×gamma at every third of training (the classic ResNet recipe)"
    gamma, decays = 0.1, 3

    def main_params(self, decay_steps: int) -> dict[str, Any]:
        return {"step_size": max(1, decay_steps // self.decays), "gamma": self.gamma}

    def main_scheduler(self, optimizer: torch.optim.Optimizer, params: dict[str, Any]) -> LRScheduler:
        from torch.optim.lr_scheduler import StepLR

        return StepLR(optimizer, step_size=params["step_size"], gamma=params["gamma"])

    def main_code(self, params: dict[str, Any]) -> str:
        return f"torch.optim.lr_scheduler.StepLR(optimizer, step_size={params['step_size']}, gamma={params['gamma']})"


class Exponential(Schedule):
    name = "exponential"
    description = "smooth decay to 1% of the peak LR by the end of training"
    end_fraction = 0.01

    def main_params(self, decay_steps: int) -> dict[str, Any]:
        return {"gamma": self.end_fraction ** (1 / decay_steps), "interval_steps": 1}

    def main_scheduler(self, optimizer: torch.optim.Optimizer, params: dict[str, Any]) -> LRScheduler:
        from torch.optim.lr_scheduler import ExponentialLR

        return ExponentialLR(optimizer, gamma=params["gamma"])

    def main_code(self, params: dict[str, Any]) -> str:
        return f"torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma={params['gamma']:.6g})"


class OneCycle(Schedule):
    """torch's OneCycleLR with its own defaults; it has its own warm-up (pct_start)."""

    name = "one_cycle"
    description = "torch's OneCycleLR: up from max_lr / div_factor over pct_start, then down"
    div_factor, pct_start, final_div_factor = 25.0, 0.3, 1e4
    rising_share = pct_start

    def params(self, lr: float, steps: int, warmup_steps: int = 0) -> dict[str, Any]:
        return {
            "max_lr": lr,
            "div_factor": self.div_factor,
            "pct_start": self.pct_start,
            "final_div_factor": self.final_div_factor,
            "total_steps": steps,
            "initial_lr": lr / self.div_factor,
            "final_lr": lr / self.div_factor / self.final_div_factor,
        }

    def recommendation_fields(self, params: dict[str, Any]) -> dict[str, float]:
        return {"max_lr": params["max_lr"], "div_factor": params["div_factor"], "base_lr": params["initial_lr"]}

    def scheduler(self, optimizer: torch.optim.Optimizer, params: dict[str, Any]) -> LRScheduler:
        from torch.optim.lr_scheduler import OneCycleLR

        return OneCycleLR(
            optimizer,
            max_lr=params["max_lr"],
            total_steps=params["total_steps"],
            pct_start=params["pct_start"],
            div_factor=params["div_factor"],
            final_div_factor=params["final_div_factor"],
        )

    def snippet(self, params: dict[str, Any], optimizer_class: str, optimizer_kwargs: dict[str, Any]) -> str:
        kwargs = "".join(f", {k}={v!r}" for k, v in optimizer_kwargs.items())
        return (
            f"optimizer = {optimizer_class}(model.parameters(), lr={params['max_lr']:.4g}{kwargs})\n"
            f"scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr={params['max_lr']:.4g}, "
            f"total_steps={params['total_steps']}, pct_start={params['pct_start']}, "
            f"div_factor={params['div_factor']}, final_div_factor={params['final_div_factor']:g})\n"
            "# call scheduler.step() after every optimizer.step()"
        )


def _decay_steps(params: dict[str, Any]) -> int:
    return max(1, params["total_steps"] - params["warmup_steps"])


SCHEDULES: dict[str, Schedule] = {s.name: s for s in (Constant(), Cosine(), OneCycle(), StepDecay(), Exponential())}

missing = set(SCHEDULES) ^ set(_FITTED) | {s for f in FAMILY_FITTED.values() for s in set(SCHEDULES) ^ set(f)}
if missing:  # a schedule without fitted fractions (or fractions for no schedule) is a packaging mistake
    raise RuntimeError(f"{FRACTIONS_FILE.name} and SCHEDULES disagree on {sorted(missing)}: run the tuning script")
