"""LR suggestion rules over an LR range-test curve (Smith 2015, "Cyclical Learning Rates").

Each rule takes the swept learning rates and the smoothed loss of each step (lists or numpy
arrays, as `lrbs/worker/probes/lr_range.py` returns them) and gives a `Suggestion`. No rule raises on
bad input: short, flat, rising, non-finite or mismatched curves give `Suggestion(None, None, reason)`.
`choose` is the one place that turns the rules' answers into the recommended LR.

Pure numpy (and the schedule table's fitted fractions): no torch here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lrbs.schedules import FAMILY_DESCRIPTIONS, SCHEDULES

MIN_POINTS = 10  # fewer finite points than this is no curve to read (Lightning #13844 crashed on them)
MIN_RELATIVE_FALL = 0.01  # a drop under 1% of the loss level is noise, not a descent
SLIDE_THRESHOLD = 0.005  # fastai's threshold, here in units of the loss's fall per 1% of the sweep
SLIDE_WINDOW = 0.15  # fastai's lr_diff=15 on a 100-step sweep, as a fraction of the curve

ArrayLike = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class Suggestion:
    lr: float | None  # None when the rule cannot answer
    index: int | None  # index into the input arrays of the chosen point (None when lr is None)
    reason: str  # plain words: why this point, or why no answer


@dataclass(frozen=True)
class Choice:
    lr: float | None
    rule: str  # which rule was used; "none" when no rule answered
    reason: str
    lr_low: float | None = None  # the range considered safe for the schedule
    lr_high: float | None = None
    confidence: str = "low"  # "high" | "medium" | "low"


@dataclass(frozen=True)
class _Curve:
    lrs: np.ndarray
    loss: np.ndarray
    argmin: int  # index of the lowest loss
    fall: float  # highest loss before the minimum, less the minimum (> 0)
    note: str  # "" or what was cut from the input, appended to reasons


def _no(reason: str) -> Suggestion:
    return Suggestion(lr=None, index=None, reason=reason)


def _prepare(lrs: ArrayLike, smoothed: ArrayLike) -> _Curve | str:
    """Validate and clean a curve; return it, or a string saying why no rule can read it.

    The curve is cut at its first non-finite value (fastai cuts at the first NaN) rather than
    having those points dropped: everything after a blow-up is not a range test any more. Cutting
    keeps indices into the input arrays valid.
    """
    try:
        x = np.asarray(lrs, dtype=float)
        y = np.asarray(smoothed, dtype=float)
    except (TypeError, ValueError) as exc:
        return f"the curve is not numeric ({exc})"
    if x.ndim != 1 or y.ndim != 1:
        return f"lrs and losses must be flat sequences, got shapes {x.shape} and {y.shape}"
    if len(x) != len(y):
        return f"lrs and losses differ in length ({len(x)} vs {len(y)})"

    note = ""
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():
        cut = int(np.argmax(bad))
        x, y = x[:cut], y[:cut]
        note = f" (curve cut at index {cut}, its first non-finite value)"
    if len(x) < MIN_POINTS:
        return f"too few usable points: {len(x)}{note}, need at least {MIN_POINTS}"
    if (x <= 0).any():
        return "learning rates must all be positive"
    if (np.diff(x) <= 0).any():
        return "learning rates must strictly increase along the sweep"

    argmin = int(np.argmin(y))
    if argmin == 0:
        return f"the loss never fell: its first point is its lowest{note}"
    peak = float(y[: argmin + 1].max())
    fall = peak - float(y[argmin])
    level = max(abs(peak), abs(float(y[argmin])))
    if fall < MIN_RELATIVE_FALL * level:
        return (
            f"the loss never fell: it dropped by {fall / level:.2%} of its level, "
            f"under the {MIN_RELATIVE_FALL:.0%} that counts as a descent{note}"
        )
    return _Curve(lrs=x, loss=y, argmin=argmin, fall=fall, note=note)


def _trim(n: int) -> tuple[int, int]:
    """Points to skip at the start and end of an n-point curve before a rule reads it.

    pytorch-lr-finder skips the first 10 and last 5 of 100 steps; fastai the first num_it//10 and
    last 5. Scaling with n keeps the same proportion and still leaves short curves something to read.
    """
    return n // 10, n // 20


def steepest(lrs: ArrayLike, smoothed: ArrayLike) -> Suggestion:
    """The point where the smoothed loss falls fastest against log LR.

    From pytorch-lr-finder (argmin of `np.gradient(loss)`, ends trimmed). The gradient is taken
    against log LR, not raw LR: on an exponential sweep raw LR over-weights the low end (Lightning
    PR #21055, issue #21141). Only the way down to the minimum is searched, so a bump on the
    blow-up side cannot win.
    """
    curve = _prepare(lrs, smoothed)
    if isinstance(curve, str):
        return _no(curve)
    n = len(curve.loss)
    head, tail = _trim(n)
    stop = min(n - tail, curve.argmin + 1)
    if stop - head < 2:
        return _no(f"the loss bottoms out within the first {head} points, which are trimmed{curve.note}")
    grad = np.gradient(curve.loss, np.log(curve.lrs))[head:stop]
    i = int(np.argmin(grad))
    if grad[i] >= 0:
        return _no(f"the loss does not fall between the trimmed ends{curve.note}")
    idx = head + i
    return Suggestion(
        lr=float(curve.lrs[idx]),
        index=idx,
        reason=f"the smoothed loss falls fastest against log LR here (points {head}..{stop - 1})" + curve.note,
    )


def valley(lrs: ArrayLike, smoothed: ArrayLike) -> Suggestion:
    """The middle of the longest valley: fastai's default `valley` rule.

    fastai: `lds[i]` is the length of the longest decreasing subsequence ending at i (O(n^2));
    `max_end` is the first index of the largest, `max_start = max_end - lds[max_end]`, and the pick is
    `max_start + int(s) + int(s / 2)` with `s = (max_end - max_start) / 3`. Two guards: a step only
    counts as decreasing when it drops by more than fall/n (so a loss creeping down at the tiny-LR
    end, or float noise, does not stretch the valley back to the first point), and `max_start` is
    clamped at 0 (fastai can index -1 on short curves).
    """
    curve = _prepare(lrs, smoothed)
    if isinstance(curve, str):
        return _no(curve)
    n = len(curve.loss)
    head, tail = _trim(n)
    loss = curve.loss[head : n - tail]
    step = curve.fall / n
    lds = [1] * len(loss)
    for i in range(1, len(loss)):
        for j in range(i):
            if loss[j] - loss[i] > step and lds[j] + 1 > lds[i]:
                lds[i] = lds[j] + 1
    max_end = int(np.argmax(lds))  # first index of the largest
    if lds[max_end] < 3:
        return _no(f"no valley: the loss never falls for more than two points in a row{curve.note}")
    max_start = max(max_end - lds[max_end], 0)
    sections = (max_end - max_start) / 3
    idx = head + max_start + int(sections) + int(sections / 2)
    return Suggestion(
        lr=float(curve.lrs[idx]),
        index=idx,
        reason=f"middle of the longest valley (points {head + max_start}..{head + max_end}, "
        f"{lds[max_end]} falling steps)" + curve.note,
    )


def minimum(lrs: ArrayLike, smoothed: ArrayLike) -> Suggestion:
    """One tenth of the LR at the lowest smoothed loss.

    fastai's `minimum` rule (and Smith's advice to stay a decade below where the loss turns up).
    `index` is the point of the minimum itself, not of lr/10.
    """
    curve = _prepare(lrs, smoothed)
    if isinstance(curve, str):
        return _no(curve)
    idx = curve.argmin
    still_falling = " (the loss was still falling when the sweep ended)" if idx == len(curve.loss) - 1 else ""
    return Suggestion(
        lr=float(curve.lrs[idx]) / 10,
        index=idx,
        reason=f"one tenth of the LR at the lowest smoothed loss (point {idx}){still_falling}" + curve.note,
    )


LOWEST_WINDOW = 9  # points in the centred average: 0.7 decade on the default 100-step, 8-decade sweep


def lowest(lrs: ArrayLike, losses: ArrayLike) -> Suggestion:
    """The LR at the lowest point of the raw loss after a centred moving average (LOWEST_WINDOW points).

    The debiased EMA every LR finder smooths with lags: its minimum sits to the right of the loss's, by
    an amount that depends on how steeply the loss turns up. A centred average has no lag, so this is
    where the loss really bottoms out; lrbs's recommendation is a schedule-dependent fraction of it.
    """
    try:
        raw = np.asarray(losses, dtype=float)
    except (TypeError, ValueError) as exc:
        return _no(f"the curve is not numeric ({exc})")
    if raw.ndim != 1 or len(raw) < LOWEST_WINDOW:
        return _no(f"too few points for a centred average of {LOWEST_WINDOW}")
    half = LOWEST_WINDOW // 2
    centred = np.convolve(np.pad(raw, half, mode="edge"), np.ones(LOWEST_WINDOW) / LOWEST_WINDOW, mode="valid")
    curve = _prepare(lrs, centred)
    if isinstance(curve, str):
        return _no(curve)
    idx = curve.argmin
    still_falling = " (the loss was still falling when the sweep ended)" if idx == len(curve.loss) - 1 else ""
    return Suggestion(
        lr=float(curve.lrs[idx]),
        index=idx,
        reason=f"the loss bottoms out here (point {idx}, centred average of {LOWEST_WINDOW})"
        f"{still_falling}" + curve.note,
    )


def slide(lrs: ArrayLike, smoothed: ArrayLike) -> Suggestion:
    """fastai's `slide` rule, made independent of loss scale and curve length.

    fastai: `g = np.gradient(loss)`; a right index starts at the end and a left one 15 points
    before it; both walk left while `|g[r] - g[l]| > 0.005`, remembering `lrs[l]`. That threshold is
    absolute, so it means something else for every loss scale. Here the loss is divided by its fall
    (highest before the minimum less the minimum) and the gradient is per 1% of the sweep, with the
    window 15% of the sweep: multiplying the loss by 1000, adding a constant or sampling the sweep
    more finely leaves the answer alone. The walk also stops where the difference changes sign (the
    gradients matched between two steps, which fastai's test alone can step over). Where fastai
    would return an arbitrary point (the walk never starts, runs off the start, or stops past the
    minimum) this gives no answer.
    """
    curve = _prepare(lrs, smoothed)
    if isinstance(curve, str):
        return _no(curve)
    n = len(curve.loss)
    head, tail = _trim(n)
    grad = np.gradient(curve.loss / curve.fall)[head : n - tail] * (n / 100)
    window = max(1, round(SLIDE_WINDOW * n))
    right = len(grad) - 1
    left = right - window
    if left < 0:
        return _no(f"too few points after trimming for a {window}-point window{curve.note}")
    found, sign = None, 0.0
    while left >= 0:
        diff = grad[right] - grad[left]
        # Stop where the gradients match; a sign flip means they matched between two steps.
        if abs(diff) <= SLIDE_THRESHOLD or np.sign(diff) == -sign:
            break
        found, sign = left, np.sign(diff)
        right, left = right - 1, left - 1
    if found is None:
        return _no(f"the gradient is already level at the high-LR end: the loss never blows up{curve.note}")
    if left < 0:
        return _no(f"the gradient never levels out between points {window} apart{curve.note}")
    idx = head + found
    if idx >= curve.argmin:
        return _no(f"the slide stopped at or past the minimum (point {idx}), not on the way down{curve.note}")
    return Suggestion(
        lr=float(curve.lrs[idx]),
        index=idx,
        reason=f"the last point where the loss gradient still differs from {window} points later "
        f"(walking down from the high-LR end)" + curve.note,
    )


RULES: dict[str, Callable[[ArrayLike, ArrayLike], Suggestion]] = {
    "steepest": steepest,
    "valley": valley,
    "minimum": minimum,
    "slide": slide,
}

PREFERENCE = ("minimum", "valley", "steepest", "slide")  # fallbacks, in order, when `lowest` has no answer


def suggest_all(lrs: ArrayLike, smoothed: ArrayLike, losses: ArrayLike | None = None) -> dict[str, Suggestion]:
    """Every rule's suggestion for one curve, keyed by rule name; with the raw `losses`, also `lowest`."""
    found = {name: rule(lrs, smoothed) for name, rule in RULES.items()}
    if losses is not None:
        found["lowest"] = lowest(lrs, losses)
    return found


# The recommended LR is a per-schedule fraction of the LR where the median range-test curve bottoms out
# (`lowest`); the fractions and safe bands live in the schedule table (lrbs/schedules.py), fitted by
# benchmarks/lr_quality/tune.py on the benchmark's tasks.
CONFIDENT_SPREAD, UNSURE_SPREAD = 0.25, 0.5  # decades between the sweeps' minima


ADAM_FAMILY = ("adam", "adamw")


def family_of(optimizer: str | None, task: str) -> str | None:
    """The task family with LR fractions of its own: Adam or AdamW on a language model, whose best LR sits
    about 3× nearer the landmark than other tasks' (benchmarks/lr_quality), else None (the default fractions)."""
    return "adam_sequence" if optimizer in ADAM_FAMILY and task == "language_modeling" else None


def choose(
    suggestions: dict[str, Suggestion],
    schedule: str,
    sweep_minima: Sequence[float | None] = (),
    family: str | None = None,
) -> Choice:
    """The recommended LR for `schedule` (its peak: max_lr for one-cycle), with a safe range and a confidence.

    Where the loss bottoms out is the landmark a range test measures most reliably; how far below it to
    train depends on the schedule (a decaying schedule can start higher than a constant one) and, for a
    `family` of tasks with fractions of its own (`family_of`), on the kind of task. When the curve has no
    minimum to read, the single-curve rules answer instead, with low confidence.
    `sweep_minima` are the LRs at the lowest point of each sweep: how much they agree sets the confidence.
    """
    bottom = suggestions.get("lowest")
    if bottom is not None and bottom.lr is not None:
        at_min = bottom.lr
        factor = SCHEDULES[schedule].peak_per_lowest(family)
        lr = factor * at_min
        low, high = SCHEDULES[schedule].safe_band(family)
        tasks = FAMILY_DESCRIPTIONS[family] if family else "lrbs's benchmark tasks"
        found = [m for m in sweep_minima if m]
        spread = float(np.log10(max(found) / min(found))) if len(found) > 1 else None
        if spread is None:
            confidence, agreement = "medium", "one sweep, so no agreement to check"
        else:
            confidence = "high" if spread <= CONFIDENT_SPREAD else "medium" if spread <= UNSURE_SPREAD else "low"
            agreement = f"the {len(found)} sweeps' minima lie within {10**spread:.2g}× of each other"
        return Choice(
            lr=lr,
            rule="lowest×schedule",
            lr_low=lr * low,
            lr_high=min(lr * high, at_min),
            confidence=confidence,
            reason=f"{factor:g} × {at_min:.3g}, the LR where the median range-test curve bottoms out: the "
            f"ratio that trained best with a {schedule} schedule across {tasks} ({agreement})",
        )
    for name in PREFERENCE:
        s = suggestions.get(name)
        if s is not None and s.lr is not None:
            return Choice(
                lr=s.lr,
                rule=name,
                lr_low=s.lr / 3,
                lr_high=s.lr * 2,
                confidence="low",
                reason=f"the curve has no clear minimum, so the {name} rule answered: {s.reason}",
            )
    why = "; ".join(f"{name}: {s.reason}" for name, s in suggestions.items()) or "no rule was run"
    return Choice(lr=None, rule="none", reason=f"no rule could suggest an LR ({why})")
