"""Per candidate batch size: does a full training step fit, how much memory does it take, how fast is it.

Plain functions over a `make` callable (a fresh model and optimizer) and a `batch` callable (a batch of
a given size), no HTTP or database, like the LR range test.

Memory: on CUDA the allocator's peak (`max_memory_allocated`) of one step, with out-of-memory caught
(torch.OutOfMemoryError and the allocators' messages, as Lightning's scale_batch_size does) and the
cache freed before the next candidate. On CPU the process's peak resident memory during the step, less
what it held before the model was built (Linux: the peak is reset through /proc/self/clear_refs).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lrbs.worker.probes.step import LossFn, StepSettings, TrainingStep

WARMUP_STEPS = 2  # excluded from timing: first-step allocations, kernel selection
TIMED_STEPS = 5
MIN_TIMED_S = 0.05  # tiny models: keep doubling the timed block until it lasts this long (≤ 64× TIMED_STEPS)
OOM_MESSAGES = ("out of memory", "DefaultCPUAllocator: can't allocate memory", "CUDNN_STATUS_NOT_SUPPORTED")

Make = Callable[[], tuple[nn.Module, torch.optim.Optimizer]]
Batch = Callable[[int], tuple[Tensor, Tensor]]


@dataclass
class StepProbe:
    batch_size: int  # the micro-batch
    ran: bool  # False: out of memory
    peak_bytes: int | None
    step_time_s: float | None  # one optimizer step: `accumulation` micro-batches
    accumulation: int = 1
    note: str | None = None
    steps_run: int = 0  # optimizer steps the probe ran

    @property
    def samples_per_s(self) -> float | None:
        return self.batch_size * self.accumulation / self.step_time_s if self.step_time_s else None


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and any(m in str(exc) for m in OOM_MESSAGES)
    )


def probe(
    make: Make,
    loss_fn: LossFn,
    batch: Batch,
    batch_size: int,
    device: torch.device,
    timed_steps: int = TIMED_STEPS,
    step_settings: StepSettings | None = None,
) -> StepProbe:
    """One candidate: a measured first step, then WARMUP_STEPS untimed and `timed_steps` timed ones.

    Each step is a full optimizer step as the job runs it (`step_settings`: precision, accumulation over
    micro-batches of `batch_size`, clipping, channels-last), so memory and speed are the job's own."""
    settings = step_settings or StepSettings()
    model = optimizer = None
    try:
        before = _memory_now(device)
        model, optimizer = make()
        micro_batches = itertools.repeat(batch(batch_size))
        step = TrainingStep(model, loss_fn, optimizer, settings)

        _reset_peak(device)
        step(micro_batches)
        peak = _peak(device, before)
        for _ in range(WARMUP_STEPS):
            step(micro_batches)
        steps, steps_run = timed_steps, 1 + WARMUP_STEPS
        while True:
            _sync(device)
            started = time.perf_counter()
            for _ in range(steps):
                step(micro_batches)
            _sync(device)  # the only syncs: at each timed block's two ends
            elapsed = time.perf_counter() - started
            steps_run += steps
            if elapsed >= MIN_TIMED_S or steps >= 64 * timed_steps:
                return StepProbe(
                    batch_size, True, peak, elapsed / steps, settings.grad_accumulation_steps, steps_run=steps_run
                )
            steps *= 2
    except Exception as exc:
        if not is_oom(exc):
            raise
        return StepProbe(batch_size, False, None, None, note=f"out of memory: {str(exc).splitlines()[0][:200]}")
    finally:
        model = optimizer = step = None  # type: ignore[assignment]  # drop the candidate's tensors before the next
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def memory_fit(probes: list[StepProbe]) -> tuple[float, float] | None:
    """Least squares memory ≈ a + b·B (bytes) over the candidates that ran; None with fewer than 2."""
    points = [(p.batch_size, p.peak_bytes) for p in probes if p.ran and p.peak_bytes is not None]
    if len({b for b, _ in points}) < 2:
        return None
    b, a = np.polyfit([p[0] for p in points], [p[1] for p in points], 1)
    return float(a), float(b)


def largest_fitting(fit: tuple[float, float] | None, budget_bytes: float | None, headroom: float) -> int | None:
    """The largest batch the fit predicts stays within (1 − headroom) × budget."""
    if fit is None or budget_bytes is None or fit[1] <= 0:
        return None
    a, b = fit
    return max(0, math.floor((budget_bytes * (1 - headroom) - a) / b))


def memory_budget(device: torch.device, budget_gb: float | None) -> float | None:
    """Bytes a step may use: the job's memory_budget_gb, on CUDA at most the GPU's memory (so a batch can be
    planned for a smaller card than the one probing); with no budget, the GPU's memory, or unbounded on the CPU."""
    asked = budget_gb * 2**30 if budget_gb else None
    if device.type == "cuda":
        total = float(torch.cuda.get_device_properties(device).total_memory)
        return min(total, asked) if asked else total
    return asked


# ------------------------------------------------------------------------------------------- measuring

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _memory_now(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    _trim()
    rss = _status_kb("VmRSS")
    return rss * 1024 if rss is not None else None


def _trim() -> None:
    """Give freed heap memory back to the OS, so the resident set is what is really in use (glibc)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        _CLEAR_REFS.write_text("5")  # Linux: resets VmHWM, the resident-set high-water mark


def _peak(device: torch.device, before: int | None) -> int | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    hwm = _status_kb("VmHWM")
    if hwm is None or before is None:
        return None
    return max(0, hwm * 1024 - before)
