"""Plots of a finished job's result, as SVG or PNG bytes: the LR range test and the batch-size probes.

Figures are built with matplotlib's object API, never pyplot: pyplot keeps global figures, and the service
renders in a thread pool. rcParams are global too, so renders take a lock (they hold the GIL anyway).
"""

from __future__ import annotations

import io
import math
import threading
from typing import Literal

import numpy as np
from matplotlib import style
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from lrbs.contract.results import BatchSizeAdvice, Candidate, Result

PlotKind = Literal["lr_range", "batch_size"]
Format = Literal["svg", "png"]
SIZES: dict[str, tuple[float, float]] = {"lr_range": (11, 6), "batch_size": (11, 10)}  # inches
DPI = 100  # PNG pixels = SIZES × DPI
RC = {
    "svg.hashsalt": "lrbs",  # the same result renders the same bytes (ids are otherwise random)
    "svg.fonttype": "none",  # text stays text: smaller, selectable, searchable
    "font.size": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
RULE_MARKERS = "ovs^DPX*hp"
YLABELS = {"training": "training loss", "validation": "validation loss (after each step)"}  # by Curve.loss_kind
_lock = threading.Lock()


class NoPlot(ValueError):
    """This result cannot give that plot; the message says why."""


def render(result: Result, plot: PlotKind, fmt: Format) -> bytes:
    draw = {"lr_range": lr_range, "batch_size": batch_size}.get(plot)
    if draw is None or fmt not in ("svg", "png"):
        raise ValueError(f"no plot {plot!r} as {fmt!r}; accepted: lr_range or batch_size, as svg or png")
    with _lock, style.context(["default", RC]):  # defaults first: a user's matplotlibrc must not change the bytes
        fig = Figure(figsize=SIZES[plot], dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        draw(fig, result)
        buf = io.BytesIO()
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=metadata)
        return buf.getvalue()


def lr_range(fig: Figure, result: Result) -> None:
    """Loss against LR: the sweeps faint, the median bold, every rule's pick, the advice and its safe range."""
    curve = result.curve
    if curve is None or not curve.lr:
        raise NoPlot("this result has no range-test curve to plot")
    ax = fig.add_subplot()
    ax.set_xscale("log")
    lrs, loss, smoothed = np.asarray(curve.lr), np.asarray(curve.loss), np.asarray(curve.smoothed_loss)
    for i, sweep in enumerate(result.sweep_curves or []):
        label = f"each sweep ({len(result.sweep_curves or [])})" if i == 0 else None
        ax.plot(sweep.lr, sweep.loss, color="0.55", lw=0.7, alpha=0.45, label=label)
    ax.plot(lrs, loss, color="C0", lw=1, alpha=0.55, label="median loss")
    ax.plot(lrs, smoothed, color="C0", lw=2.4, label="median, smoothed")

    rec = result.recommendation
    if rec is not None:
        ax.axvspan(
            rec.lr_low, rec.lr_high, color="C2", alpha=0.15, label=f"safe range {rec.lr_low:.3g}–{rec.lr_high:.3g}"
        )
    picks = [(name, s.lr) for name, s in result.suggestions.items() if s.lr is not None]
    for i, (name, lr) in enumerate(picks):  # on the smoothed curve, one marker shape per rule
        y = np.interp(math.log(lr), np.log(lrs), smoothed)
        ax.plot([lr], [y], RULE_MARKERS[i % len(RULE_MARKERS)], ms=8, mec="black", mew=0.6,
                color=f"C{(i + 3) % 10}", label=f"{name}: {lr:.3g}", zorder=4)  # fmt: skip
    if rec is not None:
        ax.axvline(rec.lr, color="C3", lw=2.4, label=f"recommended {rec.lr:.3g}", zorder=3)
    if result.diverged_at_lr is not None:
        ax.axvline(
            result.diverged_at_lr, color="black", ls=":", lw=1.5, label=f"diverged at {result.diverged_at_lr:.3g}"
        )
    low, high = _loss_limits(loss, smoothed)
    ax.set_ylim(low, high)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel(YLABELS[curve.loss_kind])
    if rec is not None:
        ax.set_title(f"LR range test: {rec.lr:.3g} recommended ({rec.schedule} schedule)\n"
                     f"rule {rec.rule}, {rec.confidence} confidence", loc="left")  # fmt: skip
    else:
        ax.set_title("LR range test: no rule could read the curve (no recommendation)", loc="left")

    handles, labels = ax.get_legend_handles_labels()
    if rec is not None and rec.confirmation:
        handles2, labels2 = _confirmation(ax, rec.confirmation)
        handles, labels = handles + handles2, labels + labels2
    fig.legend(handles, labels, loc="outside right upper", fontsize=9)


def _loss_limits(loss: np.ndarray, smoothed: np.ndarray) -> tuple[float, float]:
    """The descent in full, the diverged tail cut: the top is a little above the smoothed loss before its minimum."""
    finite = np.concatenate([loss[np.isfinite(loss)], smoothed[np.isfinite(smoothed)]])
    if not finite.size:
        return 0.0, 1.0
    clean = np.where(np.isfinite(smoothed), smoothed, np.nan)
    descent = clean[: np.nanargmin(clean) + 1] if np.isfinite(clean).any() else finite
    best, before = float(np.nanmin(descent)), float(np.nanmax(descent))
    high = min(float(finite.max()), before + 0.4 * (before - best)) if before > best else float(finite.max())
    low = float(finite.min())
    pad = 0.05 * (high - low or 1.0)
    return low - pad, high + pad


def _confirmation(ax: Axes, confirmation: list[Candidate]) -> tuple[list, list[str]]:
    """The short confirmation trainings: validation loss at each candidate LR, on its own y axis."""
    twin = ax.twinx()
    twin.grid(False)
    done = [(c.lr, c.val_loss) for c in confirmation if c.val_loss is not None and c.seed is None]  # first runs
    if done:
        xs, ys = zip(*done, strict=True)
        twin.plot(xs, ys, "D--", color="C4", ms=7, lw=1, label="confirmation: validation loss")
        for x, y in done:
            twin.annotate(f"{y:.3g}", (x, y), xytext=(6, 6), textcoords="offset points", color="C4", fontsize=9)
        span = (max(ys) - min(ys)) or abs(max(ys)) or 1.0
        twin.set_ylim(min(ys) - 0.6 * span, max(ys) + 0.6 * span)
    for c in confirmation:
        if c.val_loss is None:  # diverged: no loss to place, so a cross at the top
            twin.plot([c.lr], [0.97], "x", color="C4", ms=9, mew=2, transform=twin.get_xaxis_transform(),
                      label="confirmation: diverged")  # fmt: skip
    twin.set_ylabel("validation loss after confirmation training", color="C4")
    twin.tick_params(axis="y", colors="C4")
    handles, labels = twin.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # one "diverged" entry however many diverged
    return list(unique.values()), list(unique)


def batch_size(fig: Figure, result: Result) -> None:
    """Throughput, memory and predicted time to target against the batch size; the chosen batch on each."""
    advice = result.batch_advice
    if advice is None:
        raise NoPlot("this job has no batch-size advice: its spec gave no batch_sizes")
    axes = fig.subplots(3, 1, sharex=True)
    sizes = [c.batch_size for c in advice.candidates]
    right = max([*sizes, advice.largest_fitting or 0])
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlim(min(sizes) / 1.3, right * 1.3)
        ticks = {*sizes, advice.batch_size, *([advice.largest_fitting] if advice.largest_fitting else [])}
        ax.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:.0f}")

    speed, memory, time = axes
    _series(speed, advice, "samples_per_s", "samples / s")
    _series(memory, advice, "peak_memory_mb", "peak memory (MiB)")
    if advice.memory_fit_mb is not None:
        a, b = advice.memory_fit_mb
        xs = np.geomspace(min(sizes), right, 50)
        memory.plot(xs, a + b * xs, "--", color="0.4", lw=1, label=f"fit: {a:.3g} + {b:.3g}·B MiB")
    budget = advice.memory_budget_mb
    if budget is not None:
        peaks = [c.peak_memory_mb for c in advice.candidates if c.peak_memory_mb is not None]
        if peaks and budget > 4 * max(peaks):  # a line far above the probes would flatten them: name it only
            memory.plot([], [], " ", label=f"budget: {budget:.4g} MiB (off the scale)")
        else:
            memory.axhline(budget, color="C1", lw=1.2, label=f"budget: {budget:.4g} MiB")
            memory.axhline(budget * (1 - advice.headroom), color="C1", lw=0.8, ls=":",
                           label=f"budget less {advice.headroom:.0%} headroom")  # fmt: skip
    if advice.largest_fitting is not None:
        how = "verified" if advice.largest_fitting_verified else "predicted"
        label = f"largest that fits ({advice.headroom:.0%} headroom): {advice.largest_fitting}, {how}"
        memory.axvline(advice.largest_fitting, color="C1", lw=1.8, ls="-.", label=label)
    _series(time, advice, "relative_time_to_target", "time to target (× fastest)")
    noise = advice.noise_scale
    if noise is not None and noise.b_noise is not None:
        if noise.low is not None and noise.high is not None:
            time.axvspan(noise.low, noise.high, color="C4", alpha=0.15,
                         label=f"B_noise 95% interval {noise.low:.3g}–{noise.high:.3g}")  # fmt: skip
        time.axvline(noise.b_noise, color="C4", lw=1.5, label=f"B_noise ≈ {noise.b_noise:.3g}")
    for ax in axes:
        ax.axvline(advice.batch_size, color="C3", lw=2.2, alpha=0.8, label=f"chosen: {advice.batch_size}", zorder=1)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside: never over the data
    time.set_xlabel("batch size (log₂ scale)")
    lr = f" with LR {advice.lr:.3g}" if advice.lr is not None else ""
    speed.set_title(
        f"Batch size: {advice.batch_size} recommended{lr}\nLR per batch size: {advice.lr_scaling}", loc="left"
    )


def _series(ax: Axes, advice: BatchSizeAdvice, field: str, ylabel: str) -> None:
    """One measurement per candidate: those that fit joined by a line, the rest in red."""
    points = [(c.batch_size, getattr(c, field), c.fits) for c in advice.candidates]
    fit = [(b, v) for b, v, ok in points if ok and v is not None]
    if fit:
        ax.plot(*zip(*fit, strict=True), "o-", color="C0", lw=1.6, ms=6, label="fits")
    over = [(b, v) for b, v, ok in points if not ok]
    measured = [(b, v) for b, v in over if v is not None]
    if measured:
        ax.plot(*zip(*measured, strict=True), "x", color="red", ms=9, mew=2, label="does not fit")
    unmeasured = [b for b, v in over if v is None]
    if unmeasured:  # no step ran (out of memory): nothing to place, so a hollow marker on the bottom edge
        ax.plot(unmeasured, [0.04] * len(unmeasured), "v", color="red", mfc="none", ms=9, mew=2,
                transform=ax.get_xaxis_transform(), label="does not fit (not measured)")  # fmt: skip
    ax.set_ylabel(ylabel)
