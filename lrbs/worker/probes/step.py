"""One optimizer step, as the training pipeline the advice is for would run it.

Every probe (the LR range test, the short trainings, the batch-size memory and speed probes, the noise
scale's gradients) steps through here, so a job's `precision` ("fp32", or "bf16" / "fp16" under autocast;
fp16 with a GradScaler, CUDA only), `grad_accumulation_steps` (one optimizer step over that many
micro-batches), `grad_clip_norm` (the total gradient norm, after unscaling) and `channels_last` apply
to all of them alike. The loop follows nanoGPT's train.py. Nothing here reads a value back to the host:
fp16 adds the one sync per step that GradScaler.step makes to decide whether to skip.

Over a bare loop a step adds only the detached loss it returns: no GradScaler calls unless fp16, no
dtype cast or copy of the loss (a caller that keeps losses converts them in bulk, as the range test does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # "fp32" runs without autocast
PRECISIONS = ("fp32", "bf16", "fp16")

LossFn = Callable[[Any, Any], Tensor]


@dataclass(frozen=True)
class StepSettings:
    """How each optimizer step runs: the part of a job spec every probe must honour."""

    precision: str = "fp32"
    grad_accumulation_steps: int = 1
    grad_clip_norm: float | None = None
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {self.precision!r}")
        if self.grad_accumulation_steps < 1:
            raise ValueError(f"grad_accumulation_steps must be at least 1, got {self.grad_accumulation_steps}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ValueError(f"grad_clip_norm must be > 0 (or None for no clipping), got {self.grad_clip_norm}")

    def check_device(self, device: torch.device) -> None:
        if self.precision == "fp16" and device.type != "cuda":
            raise ValueError(
                f"fp16 needs a CUDA device (GradScaler), but the model is on {device.type}; use 'bf16' or 'fp32'"
            )

    def autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def prepare(self, model: nn.Module) -> nn.Module:
        """In place (an optimizer over the model keeps its parameters): channels-last memory if asked."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return model

    def to_device(self, x: Tensor, y: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        if self.channels_last and x.dim() == 4:
            x = x.to(device, memory_format=torch.channels_last, non_blocking=True)
        else:
            x = x.to(device, non_blocking=True)
        return x, y.to(device, non_blocking=True)


def device_of(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


class TrainingStep:
    """`step(batches)`: one optimizer step over `grad_accumulation_steps` micro-batches drawn from `batches`.

    Returns the micro-batches' losses, detached, as a device tensor: the loss itself (0-dim) with one
    micro-batch, their stack (one per micro-batch) with more; in the loss function's dtype (float32 for
    the usual losses, also under autocast); never read back here.
    """

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, optimizer: torch.optim.Optimizer, settings: StepSettings | None = None
    ) -> None:
        self.settings = settings or StepSettings()
        self.device = device_of(model)
        self.settings.check_device(self.device)
        self.model, self.loss_fn, self.optimizer = self.settings.prepare(model), loss_fn, optimizer
        self.autocast = self.settings.autocast(self.device)
        # Only fp16 needs loss scaling; a disabled GradScaler would still cost three calls a step.
        self.scaler = torch.amp.GradScaler(self.device.type) if self.settings.precision == "fp16" else None
        # The last micro-batch's loss with its graph (its saved tensors already freed by backward), kept until the
        # next step's replaces it, as a plain loop's `loss` variable is. Freeing the graph on return instead, before
        # the next step's allocations, cost the MLP of benchmarks/range_overhead.py 4-6 µs a step on a CPU.
        self._last_loss: Tensor | None = None

    def __call__(self, batches: Iterator[tuple[Tensor, Tensor]]) -> Tensor:
        accum, settings, scaler = self.settings.grad_accumulation_steps, self.settings, self.scaler
        self.optimizer.zero_grad(set_to_none=True)
        losses = []
        for _ in range(accum):
            x, y = settings.to_device(*next(batches), self.device)
            with self.autocast:
                loss = self.loss_fn(self.model(x), y)
            losses.append(loss.detach())  # stays on the device: no host sync here
            loss = loss / accum if accum > 1 else loss  # skip a no-op divide and its backward
            (loss if scaler is None else scaler.scale(loss)).backward()
            self._last_loss = loss
        if settings.grad_clip_norm is not None:
            if scaler is not None:
                scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), settings.grad_clip_norm)  # the norm stays on device
        if scaler is None:
            self.optimizer.step()
        else:
            scaler.step(self.optimizer)
            scaler.update()
        return losses[0] if accum == 1 else torch.stack(losses)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(lr)  # capturable/fused optimizers keep lr as a tensor
            else:
                group["lr"] = lr
