"""Tests for the LR suggestion rules in lrbs/worker/suggest.py, on hand-made range-test curves."""

import math

import numpy as np
import pytest

from lrbs.schedules import SCHEDULES
from lrbs.worker.suggest import (
    RULES,
    Suggestion,
    choose,
    lowest,
    minimum,
    slide,
    steepest,
    suggest_all,
    valley,
)

FALL_LOW, FALL_HIGH = 1e-4, 1e-2  # where the synthetic loss falls steeply


def range_curve(n: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Exponential sweep 1e-7..10: flat near 2.3, falls to ~0.3 between 1e-4 and 1e-2, then explodes.

    The flat part still creeps down by a hair (a sigmoid never quite levels), as real curves do.
    """
    lrs = np.logspace(-7, 1, n)
    x = np.log10(lrs)
    loss = 2.3 - 2.0 / (1 + np.exp(-(x + 3) / 0.3)) + 0.05 * np.exp(5 * (x + 1.5))
    return lrs, loss


def cut_at_divergence(lrs: np.ndarray, loss: np.ndarray, factor: float = 4.0):
    """Keep the curve up to and including the first point above factor × best, as the probe stops."""
    stop = int(np.argmax(loss > factor * np.minimum.accumulate(loss)))
    return lrs[: stop + 1], loss[: stop + 1]


def assert_in_fall(s: Suggestion) -> None:
    assert s.lr is not None, s.reason
    assert FALL_LOW <= s.lr <= FALL_HIGH, (s.lr, s.reason)
    assert s.reason


def assert_no_answer(s: Suggestion) -> None:
    assert s.lr is None and s.index is None
    assert isinstance(s.reason, str) and s.reason.strip()


# --- curves with known answers ---------------------------------------------------------------


@pytest.mark.parametrize("n", [40, 100, 400])
@pytest.mark.parametrize("name", ["steepest", "valley", "slide"])
def test_rules_land_in_the_falling_region(name, n):
    lrs, loss = range_curve(n)
    s = RULES[name](lrs, loss)
    assert_in_fall(s)
    assert s.lr == lrs[s.index]


def test_steepest_uses_log_lr():
    # Against raw LR the creeping flat part at 1e-7 would win (Lightning #21141); against log LR the
    # steepest point is the sigmoid's centre, 1e-3.
    lrs, loss = range_curve()
    s = steepest(lrs, loss)
    assert 10**-3.2 <= s.lr <= 10**-2.8


def test_minimum_is_a_tenth_of_the_lr_at_the_lowest_loss():
    lrs, loss = range_curve()
    s = minimum(lrs, loss)
    at_min = int(np.argmin(loss))
    assert s.index == at_min
    assert s.lr == pytest.approx(lrs[at_min] / 10)


def test_rules_on_a_curve_stopped_at_divergence():
    lrs, loss = cut_at_divergence(*range_curve())
    assert len(lrs) < 100  # the cut happened
    for name in ("steepest", "valley", "slide"):
        assert_in_fall(RULES[name](lrs, loss))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_noisy_curve_still_lands_in_the_falling_region(seed):
    lrs, loss = range_curve()
    noisy = loss + np.random.default_rng(seed).normal(0, 0.02, loss.shape)
    for name in ("steepest", "valley", "slide"):
        assert_in_fall(RULES[name](lrs, noisy))
    assert minimum(lrs, noisy).index == int(np.argmin(noisy))


@pytest.mark.parametrize(("scale", "shift"), [(1000.0, 0.0), (0.001, 0.0), (1.0, 5.0), (1000.0, -3000.0)])
def test_rules_ignore_the_loss_scale_and_offset(scale, shift):
    lrs, loss = range_curve()
    plain = suggest_all(lrs, loss)
    moved = suggest_all(lrs, loss * scale + shift)
    for name in RULES:
        assert plain[name].lr is not None
        assert moved[name].index == plain[name].index, name
        assert moved[name].lr == pytest.approx(plain[name].lr), name


def test_slide_ignores_the_loss_scale_on_a_noisy_stopped_curve():
    lrs, loss = cut_at_divergence(*range_curve())
    loss = loss + np.random.default_rng(7).normal(0, 0.02, loss.shape)
    assert slide(lrs, loss * 1000).index == slide(lrs, loss).index
    assert slide(lrs, loss).lr is not None


def test_valley_is_not_stretched_by_the_creeping_flat_part():
    # fastai's strict "smaller than" would start the valley at the first point and pick ~1e-5.
    lrs, loss = range_curve()
    s = valley(lrs, loss)
    assert s.lr > 10**-3.5


def test_lists_work_like_arrays():
    lrs, loss = range_curve()
    from_lists = suggest_all(lrs.tolist(), loss.tolist())
    assert from_lists == suggest_all(lrs, loss)


@pytest.mark.parametrize("where", ["loss", "lr"])
def test_nan_late_in_the_curve_cuts_it_there(where):
    lrs, loss = range_curve()
    if where == "loss":
        loss[70:] = np.nan  # a blow-up after the minimum at 65
        loss[80] = 1.0  # a finite point after the NaN must not be used
    else:
        lrs[70] = np.nan
    for name, s in suggest_all(lrs, loss).items():
        assert s.lr is not None, (name, s.reason)
        assert s.index < 70
        assert "cut at index 70" in s.reason


def test_minimum_says_when_the_loss_was_still_falling():
    lrs = np.logspace(-5, 0, 50)
    s = minimum(lrs, np.linspace(2.0, 1.0, 50))
    assert s.index == 49
    assert s.lr == pytest.approx(0.1)
    assert "still falling" in s.reason


# --- curves no rule can read --------------------------------------------------------------------


def _pathological():
    lrs, loss = range_curve()
    nan3 = loss.copy()
    nan3[3] = np.nan
    inf_lr = lrs.copy()
    inf_lr[2] = np.inf
    return {
        "empty": ([], []),
        "single point": ([1e-3], [1.0]),
        "two points": ([1e-3, 1e-2], [1.0, 0.5]),
        "three points": ([1e-3, 1e-2, 1e-1], [1.0, 0.5, 2.0]),
        "five points": (list(lrs[::20]), list(loss[::20])),
        "flat": (lrs, np.full(100, 2.3)),
        "flat within 1%": (lrs, 2.3 - 0.01 * np.linspace(0, 1, 100)),
        "all rising": (lrs, np.linspace(1.0, 5.0, 100)),
        "rising exponentially": (lrs, np.exp(np.linspace(0, 5, 100))),
        "NaN at step 3": (lrs, nan3),
        "inf at step 0": (lrs, np.r_[np.inf, loss[1:]]),
        "inf lr at step 2": (inf_lr, loss),
        "all NaN": (lrs, np.full(100, np.nan)),
        "mismatched lengths": (lrs, loss[:50]),
        "zero lr": (np.r_[0.0, lrs[1:]], loss),
        "negative lrs": (-lrs, loss),
        "lrs not increasing": (lrs[::-1], loss),
        "2-d": (np.tile(lrs, (2, 1)), np.tile(loss, (2, 1))),
        "scalars": (1e-3, 1.0),
        "None": (None, None),
        "strings": (["a", "b"], ["c", "d"]),
    }


@pytest.mark.parametrize("case", list(_pathological()))
@pytest.mark.parametrize("name", [*RULES, "lowest"])
def test_unreadable_curves_give_no_answer_and_a_reason(name, case):
    lrs, loss = _pathological()[case]
    assert_no_answer({**RULES, "lowest": lowest}[name](lrs, loss))


def test_flat_curve_says_the_loss_never_fell():
    lrs, _ = range_curve()
    for s in suggest_all(lrs, np.full(100, 2.3)).values():
        assert "never fell" in s.reason


def test_short_curve_says_how_many_points():
    s = valley([1e-3, 1e-2, 1e-1], [1.0, 0.5, 2.0])
    assert "3" in s.reason


def test_mismatched_lengths_say_so():
    s = steepest([1e-3, 1e-2], [1.0])
    assert "length" in s.reason


# --- choose -------------------------------------------------------------------------------------


def _s(lr: float | None, reason: str = "because") -> Suggestion:
    return Suggestion(lr=lr, index=None if lr is None else 0, reason=reason)


def test_choose_reads_where_the_loss_bottoms_out_and_scales_it_by_schedule():
    at_min = 3e-2
    suggestions = {
        "steepest": _s(1e-3),
        "valley": _s(2e-3),
        "minimum": _s(3e-3),
        "slide": _s(4e-3),
        "lowest": _s(at_min),
    }
    constant, cosine = choose(suggestions, "constant"), choose(suggestions, "cosine")
    assert constant.rule == "lowest×schedule"
    assert constant.lr == pytest.approx(SCHEDULES["constant"].peak_per_lowest() * at_min)
    assert cosine.lr > constant.lr  # a decaying schedule can start higher
    for c in (constant, cosine):
        assert c.lr_low < c.lr < c.lr_high <= at_min
    assert "cosine" in cosine.reason


def test_adam_on_a_language_model_has_fractions_of_its_own():
    """Its best LR sits nearer the landmark (benchmarks/lr_quality: about 0.32–0.40× against 0.07–0.35×)."""
    from lrbs.worker.suggest import family_of

    assert family_of("adamw", "language_modeling") == family_of("adam", "language_modeling") == "adam_sequence"
    assert family_of("sgd", "language_modeling") is None and family_of("adamw", "classification") is None
    suggestions = {"lowest": _s(3e-2)}
    for schedule in SCHEDULES:
        default, family = choose(suggestions, schedule), choose(suggestions, schedule, family="adam_sequence")
        assert family.lr == pytest.approx(SCHEDULES[schedule].peak_per_lowest("adam_sequence") * 3e-2)
        assert family.lr >= default.lr and family.lr_high <= 3e-2
        assert "Adam" in family.reason


def test_confidence_follows_how_well_the_sweeps_agree():
    suggestions = {"lowest": _s(3e-2)}
    assert choose(suggestions, "constant", [3e-2, 3.5e-2, 2.8e-2]).confidence == "high"
    assert choose(suggestions, "constant", [1e-2, 3e-2]).confidence == "medium"
    assert choose(suggestions, "constant", [3e-3, 3e-2, 3e-1]).confidence == "low"
    assert choose(suggestions, "constant").confidence == "medium"  # one sweep: nothing to compare


@pytest.mark.parametrize(
    ("answers", "rule"),
    [
        ({"lowest": None, "minimum": 3e-3, "valley": 2e-3, "steepest": 1e-3, "slide": 4e-3}, "minimum"),
        ({"lowest": None, "minimum": None, "valley": 2e-3, "steepest": 1e-3, "slide": 4e-3}, "valley"),
        ({"lowest": None, "minimum": None, "valley": None, "steepest": 1e-3, "slide": 4e-3}, "steepest"),
        ({"lowest": None, "minimum": None, "valley": None, "steepest": None, "slide": 4e-3}, "slide"),
    ],
)
def test_without_a_bottom_the_single_curve_rules_answer_with_low_confidence(answers, rule):
    c = choose({name: _s(lr) for name, lr in answers.items()}, "constant")
    assert c.rule == rule and c.lr == answers[rule] and c.confidence == "low"
    assert c.lr_low < c.lr < c.lr_high


def test_choose_with_no_answer_lists_every_reason():
    suggestions = {name: _s(None, f"{name} could not") for name in RULES}
    c = choose(suggestions, "one_cycle")
    assert c.lr is None and c.rule == "none"
    for name in RULES:
        assert f"{name} could not" in c.reason


def test_choose_on_real_suggestions():
    lrs, loss = range_curve()
    c = choose(suggest_all(lrs, loss, loss), "one_cycle")
    assert c.rule == "lowest×schedule"
    at_min = lrs[int(np.argmin(loss))]  # this hand-made curve is smooth: no average moves its minimum
    assert c.lr == pytest.approx(SCHEDULES["one_cycle"].peak_per_lowest() * at_min) and math.isfinite(c.lr)
    nothing = choose(suggest_all([], []), "one_cycle")
    assert nothing.lr is None and nothing.rule == "none"


def test_lowest_finds_the_bottom_without_the_ema_lag():
    lrs, loss = range_curve()
    noisy = np.asarray(loss) * (1 + 0.05 * np.random.default_rng(0).standard_normal(len(loss)))
    truth = lrs[int(np.argmin(loss))]
    found = lowest(lrs, noisy)
    assert found.lr is not None and abs(math.log10(found.lr / truth)) < 0.25  # within a quarter decade
    assert lowest(lrs[:5], noisy[:5]).lr is None
    assert lowest(lrs, [math.nan] * len(lrs)).lr is None
