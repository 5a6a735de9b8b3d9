"""What the LR range test costs over a bare training loop.

Both run the same model (same initial weights), data, number of steps and lr per step, with the
same optimizer flags. The bare loop is the least a training loop does: set lr, zero_grad, forward,
loss, backward, step; no loss readback, and with fp32 no autocast context or GradScaler calls.
With `--precision bf16|fp16` and `--accumulation K` both do the same autocast, GradScaler (fp16)
and K micro-batches per optimizer step. The bare loop's model is built (same seed, same weights)
outside the clock. The range test runs both ways (`--modes`): "in place", as the worker runs it (on
the fresh model it builds per sweep, `in_place=True`), and "copy", the library's default for a
caller who keeps its model, whose time includes copying the model and optimizer.

Robust against a shared machine: both paths are warmed up first, the Python garbage collector runs
before every timed run (never during one), runs are interleaved in ABBA order (bare, test, test,
bare, ...) so drift and order effects hit both alike, and each repeat gives a paired ratio
(test / bare of adjacent runs). The table reports the median paired ratio and its spread (quartiles
over the repeats); on a CPU also the ratio of process CPU time (blind to waiting for a core) and,
where Linux lets a process count its own instructions, the ratio of user-space instructions (blind
to contention altogether: the work each path does). On glibc, `--malloc steady` (the default) stops
malloc from returning freed heap to the system between steps. Otherwise the ~20 MB of activations
a convnet step allocates are page-faulted in again on some steps and not others, up to ~5000 faults
and half a step's time, coming and going with the heap's layout rather than with what either loop
computes: one run's range test gets 5x the bare loop's faults, the next run the two match (the fault
counts per step are printed for each model). `--malloc default` measures with glibc as it comes.

    python -m benchmarks.range_overhead --device cpu --steps 200 --repeats 11 --threads 1
    python -m benchmarks.range_overhead --device cpu --models tiny --repeats 61   # the loop's own µs per step
    python -m benchmarks.range_overhead --device cuda --batch-size 256 --check-every 200
    python -m benchmarks.range_overhead --device cuda --precision fp16 --accumulation 4
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import itertools
import os
import platform
import resource
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from lrbs.worker.probes.lr_range import lr_range_test, lr_schedule  # noqa: E402
from lrbs.worker.probes.step import AUTOCAST_DTYPES, StepSettings  # noqa: E402

MIN_LR, MAX_LR = 1e-5, 1e-2  # small enough that nothing diverges: both loops take every step
GOAL = 1.02


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


def tiny() -> tuple[nn.Module, torch.Size, int]:
    """Almost no arithmetic: its step is torch's per-call cost, so the extra µs per step it shows is the
    range test's own Python, measured where a µs is not lost in a shared machine's noise."""
    return nn.Sequential(nn.Linear(4, 2)), torch.Size([4]), 2


MODELS: dict[str, Callable[[], tuple[nn.Module, torch.Size, int]]] = {"mlp": mlp, "convnet": convnet, "tiny": tiny}


def make_batches(shape: torch.Size, classes: int, batch_size: int, n: int = 8) -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(batch_size, *shape, generator=g) for _ in range(n)]
    return [(x, torch.randint(0, classes, (batch_size,), generator=g)) for x in xs]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- measurement helpers --------------------------------------------------------------------------


def steady_malloc() -> bool:
    """glibc only: keep freed heap (no trimming, no mmap for buffers under 32 MiB). True if it took."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_trim_threshold, 2**30)) and bool(libc.mallopt(m_mmap_threshold, 32 * 2**20))


class _PerfEventAttr(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64), ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64), ("rest", ctypes.c_uint64 * 8),
    ]  # fmt: skip


def instruction_counter() -> Callable[[], int] | None:
    """Reads this thread's user-space instruction count (Linux perf_event_open); None where not allowed."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return None
    attr = _PerfEventAttr(type=0, size=112, config=1)  # PERF_TYPE_HARDWARE, PERF_COUNT_HW_INSTRUCTIONS
    attr.flags = (1 << 5) | (1 << 6)  # exclude_kernel, exclude_hv: allowed at perf_event_paranoid 2
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(298, ctypes.byref(attr), 0, -1, -1, 0)  # SYS_perf_event_open: this thread, any CPU
    if fd < 0:
        return None
    return lambda: struct.unpack("q", os.read(fd, 8))[0]


def timed(run: Callable[[], object], device: torch.device, instructions: Callable[[], int] | None) -> dict:
    gc.collect()  # the previous run's garbage is not this run's cost
    sync(device)
    faults, cpu, n = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time(), instructions
    i0 = n() if n else 0
    t0 = time.perf_counter()
    run()
    sync(device)
    wall = time.perf_counter() - t0
    return {
        "wall": wall,
        "cpu": time.process_time() - cpu,
        "instructions": n() - i0 if n else None,
        "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
    }


# --- the two loops -------------------------------------------------------------------------------


def bare_loop(
    model: nn.Module, opt: torch.optim.Optimizer, batches: list, lrs: list[float], device, precision: str, accum: int
) -> None:
    autocast = precision != "fp32"
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    data = itertools.cycle(batches)
    for lr in lrs:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        for _ in range(accum):
            x, y = next(data)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if autocast:
                with torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision]):
                    loss = nn.functional.cross_entropy(model(x), y)
            else:
                loss = nn.functional.cross_entropy(model(x), y)
            loss = loss / accum if accum > 1 else loss
            (loss if scaler is None else scaler.scale(loss)).backward()
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()


def range_test(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batches: list,
    steps: int,
    precision: str,
    accum: int,
    check_every: int,
    in_place: bool,
) -> None:
    result = lr_range_test(
        model,
        nn.functional.cross_entropy,
        opt,
        batches,
        min_lr=MIN_LR,
        max_lr=MAX_LR,
        num_steps=steps,
        check_every=check_every,
        step_settings=StepSettings(precision=precision, grad_accumulation_steps=accum),
        in_place=in_place,
    )
    assert result.steps_run == steps, f"range test stopped early ({result.stop_reason}): lower MAX_LR"


def measure(name: str, mode: str, device: torch.device, args: argparse.Namespace) -> dict:
    def build() -> nn.Module:
        torch.manual_seed(0)  # the same initial weights every time
        return MODELS[name]()[0].to(device)

    def sgd(m: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(m.parameters(), lr=MIN_LR, momentum=0.9)  # the same flags for both loops

    torch.manual_seed(0)
    model, shape, classes = MODELS[name]()
    model.to(device)
    opt = sgd(model)
    batches = make_batches(shape, classes, args.batch_size)
    lrs = lr_schedule(MIN_LR, MAX_LR, args.steps)
    counter = instruction_counter() if device.type == "cpu" and torch.get_num_threads() == 1 else None

    def bare(steps: list[float]) -> Callable[[], None]:
        # Built as a user builds it (not a deepcopy, whose modules are a little slower to call), outside
        # the clock, with the same weights as the model the range test copies: every run starts alike.
        bare_model = build()
        same = zip(bare_model.state_dict().values(), model.state_dict().values(), strict=True)
        assert all(torch.equal(a, b) for a, b in same), "the bare loop's model must start from the same weights"
        bare_opt = sgd(bare_model)
        return lambda: bare_loop(bare_model, bare_opt, batches, steps, device, args.precision, args.accumulation)

    def probe(steps: int) -> Callable[[], None]:
        in_place = mode == "in place"  # the worker's way: a model of its own, built outside the clock like the bare's
        m = build() if in_place else model
        o = sgd(m) if in_place else opt
        return lambda: range_test(m, o, batches, steps, args.precision, args.accumulation, args.check_every, in_place)

    # Warm up both paths (allocator, kernels, lazy init) before anything is timed.
    for _ in range(2):
        timed(bare(lrs[:20]), device, None)
        timed(probe(20), device, None)

    runs: dict[str, list[dict]] = {"bare": [], "probe": []}
    for i in range(args.repeats):
        order = ("bare", "probe") if i % 2 == 0 else ("probe", "bare")  # ABBA: order effects cancel
        for which in order:
            run = bare(lrs) if which == "bare" else probe(args.steps)
            runs[which].append(timed(run, device, counter))

    def ratios(key: str) -> list[float]:
        return [p[key] / b[key] for b, p in zip(runs["bare"], runs["probe"], strict=True)]

    def per_step(which: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[which]) / args.steps

    wall = ratios("wall")
    q1, _, q3 = statistics.quantiles(wall, n=4, method="inclusive") if len(wall) > 1 else (wall[0], None, wall[0])
    print(
        f"{name}, {mode}: wall s bare {[round(r['wall'], 3) for r in runs['bare']]}, "
        f"range test {[round(r['wall'], 3) for r in runs['probe']]}; "
        f"page faults/step bare {per_step('bare', 'faults'):.0f}, range test {per_step('probe', 'faults'):.0f}",
        flush=True,
    )
    return {
        "model": name,
        "mode": mode,
        "bare": statistics.median(r["wall"] for r in runs["bare"]),
        "probe": statistics.median(r["wall"] for r in runs["probe"]),
        "ratio": statistics.median(wall),
        "extra_us": statistics.median(p["wall"] - b["wall"] for b, p in zip(runs["bare"], runs["probe"], strict=True))
        / args.steps
        * 1e6,
        "spread": (q1, q3, min(wall), max(wall)),
        "cpu": statistics.median(ratios("cpu")) if device.type == "cpu" else None,
        "instructions": statistics.median(ratios("instructions")) if counter else None,
        "extra_per_step": (per_step("probe", "instructions") - per_step("bare", "instructions")) if counter else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=11, help="paired runs per model (ABBA order)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--models", default="mlp,convnet", help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--modes", default="in place,copy", help="comma-separated: in place (the worker's), copy")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="fp16 needs CUDA")
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--check-every", type=int, default=10, help="the range test's readback interval, in steps")
    parser.add_argument(
        "--malloc",
        choices=["steady", "default"],
        default="steady",
        help="steady: glibc keeps freed heap (no page faults between steps); default: as glibc comes",
    )
    args = parser.parse_args()
    if args.accumulation < 1 or args.check_every < 1 or args.steps < 20 or args.repeats < 1:
        parser.error("need --accumulation ≥ 1, --check-every ≥ 1, --steps ≥ 20, --repeats ≥ 1")

    if args.threads:
        torch.set_num_threads(args.threads)  # fewer threads: steadier timings on a shared machine
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    if args.precision == "fp16" and device.type != "cuda":
        parser.error("--precision fp16 needs a CUDA device (GradScaler); use bf16 on CPU")
    malloc = "steady" if args.malloc == "steady" and steady_malloc() else "default"
    rows = [measure(m, mode, device, args) for m in args.models.split(",") for mode in args.modes.split(",")]

    print(
        f"\ntorch {torch.__version__} on {machine(device)}, {torch.get_num_threads()} CPU thread(s), {args.precision}, "
        f"accumulation {args.accumulation}, check_every {args.check_every}, malloc {malloc}; "
        f"{args.repeats} paired runs in ABBA order, medians\n"
    )
    columns = ["model", "range test", "device", "batch", "steps", "bare s", "range test s", "ratio"]
    columns += ["spread q1–q3 (min–max)", "extra µs/step"]
    columns += ["CPU-time ratio", "instructions ratio (+/step)", "goal"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        q1, q3, lo, hi = r["spread"]
        cells = [
            r["model"],
            r["mode"],
            device.type,
            str(args.batch_size),
            str(args.steps),
            f"{r['bare']:.3f}",
            f"{r['probe']:.3f}",
        ]
        cells += [f"{r['ratio']:.3f}×", f"{q1:.3f}–{q3:.3f} ({lo:.3f}–{hi:.3f})", f"{r['extra_us']:+.1f}"]
        cells.append(f"{r['cpu']:.3f}×" if r["cpu"] is not None else "n/a")
        extra = r["extra_per_step"]
        cells.append(f"{r['instructions']:.4f}× (+{extra / 1e3:.0f}k)" if r["instructions"] is not None else "n/a")
        cells.append(f"≤ {GOAL:.2f}× ({'ok' if r['ratio'] <= GOAL else 'over'})")
        print("| " + " | ".join(cells) + " |")


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
