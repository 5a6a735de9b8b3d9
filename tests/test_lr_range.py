"""The LR range test on tiny real PyTorch models (CPU, seeded)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from lrbs.worker.probes.lr_range import RangeResult, lr_range_test, lr_schedule
from lrbs.worker.probes.step import StepSettings
from lrbs.worker.probes.train import evaluate

CE = nn.functional.cross_entropy


def make_batches(n_batches: int = 4, batch_size: int = 32, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """Two Gaussian blobs per class, 3 classes, 8 features: easy, learnable, deterministic."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 8, generator=g) * 2
    batches = []
    for _ in range(n_batches):
        y = torch.randint(0, 3, (batch_size,), generator=g)
        x = centers[y] + torch.randn(batch_size, 8, generator=g)
        batches.append((x, y))
    return batches


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def warmed_up(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, list]:
    """Model + SGD with momentum after a few real steps, so momentum buffers and BN stats are non-trivial."""
    model = make_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    batches = make_batches()
    for x, y in batches:
        opt.zero_grad()
        CE(model(x), y).backward()
        opt.step()
    return model, opt, batches


class ScriptedLoss:
    """Returns the given loss values in order (the gradient is zero, the model still runs)."""

    def __init__(self, values: list[float]) -> None:
        self.values = values
        self.calls = 0

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return out.sum() * 0 + value


class NanAtCall:
    """Cross-entropy that turns NaN from call `k` (0-based) on."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.calls = 0

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = CE(out, y)
        self.calls += 1
        return loss * math.nan if self.calls > self.k else loss


# --- lr_schedule -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["exponential", "linear"])
def test_schedule_hits_both_endpoints_and_increases(mode: str) -> None:
    lrs = lr_schedule(1e-6, 3.0, 50, mode)
    assert len(lrs) == 50
    assert lrs[0] == 1e-6 and lrs[-1] == 3.0
    assert all(a < b for a, b in zip(lrs, lrs[1:], strict=False))


def test_exponential_schedule_is_geometric_and_linear_is_even() -> None:
    exp = lr_schedule(1e-4, 1.0, 5, "exponential")
    assert exp == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    lin = lr_schedule(0.1, 0.5, 5, "linear")
    assert lin == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


@pytest.mark.parametrize(
    "args",
    [
        (0.0, 1.0, 10, "exponential"),
        (1.0, 0.1, 10, "linear"),
        (1e-3, 1.0, 1, "linear"),
        (1e-3, 1.0, 10, "cos"),
    ],
)
def test_schedule_rejects_bad_arguments(args: tuple) -> None:
    with pytest.raises(ValueError):
        lr_schedule(*args)


# --- the caller's model and optimizer are left alone ---------------------------------------------


def snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    return {
        "model": copy.deepcopy(model.state_dict()),  # parameters and buffers (BN running stats, counters)
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "opt": copy.deepcopy(opt.state_dict()),
        "lrs": [g["lr"] for g in opt.param_groups],
        "training": model.training,
    }


def assert_unchanged(before: dict, model: nn.Module, opt: torch.optim.Optimizer) -> None:
    after = snapshot(model, opt)
    assert before["model"].keys() == after["model"].keys()
    for name, tensor in before["model"].items():
        assert torch.equal(tensor, after["model"][name]), name
    for g0, g1 in zip(before["grads"], after["grads"], strict=True):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    assert before["opt"]["state"].keys() == after["opt"]["state"].keys()
    for idx, state in before["opt"]["state"].items():
        assert torch.equal(state["momentum_buffer"], after["opt"]["state"][idx]["momentum_buffer"])
    assert before["opt"]["param_groups"] == after["opt"]["param_groups"]
    assert before["lrs"] == after["lrs"] == [0.05]
    assert before["training"] == model.training


def test_caller_state_is_untouched_after_a_run() -> None:
    model, opt, batches = warmed_up()
    assert len(opt.state) == 6  # momentum buffers exist, so the check below means something
    before = snapshot(model, opt)
    result = lr_range_test(model, CE, opt, batches, min_lr=1e-4, max_lr=50.0, num_steps=40)
    assert result.steps_run > 0
    assert_unchanged(before, model, opt)


@pytest.mark.parametrize(
    "cls", [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adagrad]
)
def test_every_supported_optimizer_is_copied(cls) -> None:
    """Each optimizer's `defaults` round-trips into a fresh one (AdamW's holds a key its constructor lacks)."""
    model, batches = make_model(), make_batches()
    opt = cls(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    state_before = copy.deepcopy(opt.state_dict()["state"])
    result = lr_range_test(model, CE, opt, batches, min_lr=1e-5, max_lr=1e-1, num_steps=10)
    assert result.steps_run == 10
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    state_after = opt.state_dict()["state"]
    assert state_after.keys() == state_before.keys()  # Adagrad's sums exist from the start; others' not yet
    for idx, entry in state_before.items():
        assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(state_after[idx][k])) for k, v in entry.items())


def loss_after_one_step_by_hand(
    model: nn.Module, opt: torch.optim.Optimizer, batches, lr: float, drop_state: bool = False
) -> float:
    """On copies of the caller's model and optimizer: one step on batch 0 at `lr`, then the loss on batch 1 (what
    the range test records as its second point). `drop_state`: the copy starts without momentum or moments."""
    by_hand_model, by_hand_opt = copy.deepcopy((model, opt))  # one deepcopy keeps params and state linked
    if drop_state:
        by_hand_opt.state.clear()
    by_hand_opt.param_groups[0]["lr"] = lr
    (x0, y0), (x1, y1) = batches[0], batches[1]
    by_hand_opt.zero_grad(set_to_none=True)
    CE(by_hand_model(x0), y0).backward()
    by_hand_opt.step()
    return CE(by_hand_model(x1), y1).item()


def test_a_tensor_lr_is_the_copys_own() -> None:
    """Optimizers may keep lr as a tensor, which set_lr fills in place: it must be a copy's tensor, not the caller's."""
    model, batches = make_model(), make_batches()
    lr = torch.tensor(1e-3)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    result = lr_range_test(model, CE, opt, batches, min_lr=1e-5, max_lr=1e-1, num_steps=10)
    assert result.steps_run == 10
    assert opt.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(1e-3)


@pytest.mark.parametrize(("cls", "kwargs"), [(torch.optim.SGD, {"momentum": 0.9}), (torch.optim.Adam, {})])
def test_the_copy_steps_exactly_like_the_callers_optimizer(cls, kwargs: dict) -> None:
    """The copy's first step is the caller's next step (its momentum or moments and step count), to the bit."""
    model, batches = make_model(), make_batches()
    opt = cls(model.parameters(), lr=0.01, weight_decay=1e-4, **kwargs)
    for x, y in batches[:3]:
        opt.zero_grad()
        CE(model(x), y).backward()
        opt.step()
    result = lr_range_test(model, CE, opt, batches, min_lr=1e-3, max_lr=1e-2, num_steps=2, smoothing=0.0)

    assert result.losses[1] == loss_after_one_step_by_hand(model, opt, batches, result.lrs[0])


def test_caller_state_is_untouched_when_on_progress_aborts() -> None:
    model, opt, batches = warmed_up()
    before = snapshot(model, opt)

    def cancel(step_done: int, total: int, lr: float | None, loss: float | None) -> None:
        raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        lr_range_test(model, CE, opt, batches, num_steps=30, check_every=5, on_progress=cancel)
    assert_unchanged(before, model, opt)


def test_probe_continues_from_the_callers_optimizer_state() -> None:
    """Step 1's loss must reflect a first step that used the caller's momentum buffers."""
    model, opt, batches = warmed_up()
    result = lr_range_test(model, CE, opt, batches, min_lr=1e-2, max_lr=1.0, num_steps=10)

    assert result.losses[1] == loss_after_one_step_by_hand(model, opt, batches, result.lrs[0])

    # Without the momentum buffers the step (and so the loss) differs: the comparison above is not vacuous.
    assert result.losses[1] != loss_after_one_step_by_hand(model, opt, batches, result.lrs[0], drop_state=True)


# --- stopping ---------------------------------------------------------------------------------------


def test_large_max_lr_stops_early() -> None:
    model, opt, batches = warmed_up()
    result = lr_range_test(model, CE, opt, batches, min_lr=1e-3, max_lr=100.0, num_steps=100)
    assert result.stop_reason == "diverged"  # the smoothed loss passes 4× its best before any NaN
    assert result.stopped_at is not None and result.stopped_at < 100
    assert result.smoothed[-1] > 4 * min(result.smoothed[:-1])  # the curve ends at the point that tripped
    assert result.lrs == lr_schedule(1e-3, 100.0, 100)[: len(result.lrs)]


def test_small_max_lr_completes() -> None:
    model, opt, batches = warmed_up()
    result = lr_range_test(model, CE, opt, batches, min_lr=1e-5, max_lr=1e-2, num_steps=25)
    assert (result.stop_reason, result.stopped_at, result.steps_run) == ("completed", None, 25)
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) == 25
    assert result.wall_time_s > 0


def test_nan_loss_stops_with_non_finite_and_a_clean_curve() -> None:
    k = 13
    model, opt, batches = warmed_up()
    result = lr_range_test(model, NanAtCall(k), opt, batches, min_lr=1e-4, max_lr=1e-2, num_steps=50, check_every=10)
    assert (result.stop_reason, result.stopped_at) == ("non_finite", k)
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) == k
    assert not any(math.isnan(v) for v in result.losses + result.smoothed)
    assert result.steps_run == 20  # the stop is seen at the end of the chunk holding step 13


def test_smoothed_is_the_debiased_ema() -> None:
    model, opt, batches = warmed_up()
    result = lr_range_test(
        model,
        ScriptedLoss([4.0, 2.0, 1.0]),
        opt,
        batches,
        num_steps=3,
        smoothing=0.5,
        diverge_factor=math.inf,
    )
    # avg: 0.5*0 + 0.5*4 = 2     -> 2 / (1 - 0.5)   = 4
    #      0.5*2 + 0.5*2 = 2     -> 2 / (1 - 0.25)  = 8/3
    #      0.5*2 + 0.5*1 = 1.5   -> 1.5 / (1 - 0.125) = 12/7
    assert result.losses == [4.0, 2.0, 1.0]
    assert result.smoothed == pytest.approx([4.0, 8 / 3, 12 / 7])


def test_no_smoothing_gives_the_raw_losses() -> None:
    model, opt, batches = warmed_up()
    result = lr_range_test(model, CE, opt, batches, num_steps=12, max_lr=1e-2, smoothing=0.0)
    assert result.smoothed == result.losses


def test_divergence_inside_a_chunk_is_caught_at_the_same_step() -> None:
    # Raw losses (no smoothing) jump past 4 x best at step 10, the 4th step of the chunk 7..13.
    script = [1.0] * 10 + [5.0] * 30
    results = {}
    for check_every in (1, 7):
        model, opt, batches = warmed_up()
        results[check_every] = lr_range_test(
            model, ScriptedLoss(script), opt, batches, num_steps=30, smoothing=0.0, check_every=check_every
        )
    for result in results.values():
        assert (result.stop_reason, result.stopped_at) == ("diverged", 10)
        assert result.losses == script[:11]  # the diverging step is part of the curve
    assert results[1].steps_run == 11
    assert results[7].steps_run == 14


def test_real_divergence_index_does_not_depend_on_check_every() -> None:
    runs = []
    for check_every in (1, 7):
        model, opt, batches = warmed_up()
        runs.append(lr_range_test(model, CE, opt, batches, min_lr=1e-3, max_lr=100.0, check_every=check_every))
    assert runs[0].stopped_at is not None
    assert (runs[0].stopped_at + 1) % 7 != 0  # the stop falls inside a chunk of 7, not on its edge
    assert (runs[0].stop_reason, runs[0].stopped_at) == (runs[1].stop_reason, runs[1].stopped_at)
    assert runs[0].losses == runs[1].losses


# --- progress and determinism -----------------------------------------------------------------------


def test_on_progress_reports_increasing_steps_ending_at_steps_run() -> None:
    model, opt, batches = warmed_up()
    calls: list[tuple[int, int, float | None, float | None]] = []
    result = lr_range_test(
        model,
        CE,
        opt,
        batches,
        max_lr=1e-2,
        num_steps=23,
        check_every=5,
        on_progress=lambda done, total, lr, loss: calls.append((done, total, lr, loss)),
    )
    assert [(done, total) for done, total, _, _ in calls] == [(5, 23), (10, 23), (15, 23), (20, 23), (23, 23)]
    assert calls[-1][0] == result.steps_run
    # each report carries the latest point of the curve: what a live progress view shows
    assert [(lr, loss) for _, _, lr, loss in calls] == [(result.lrs[d - 1], result.smoothed[d - 1]) for d, *_ in calls]


def test_curve_does_not_depend_on_check_every() -> None:
    curves = []
    for check_every in (1, 100):
        model, opt, batches = warmed_up(seed=3)
        result = lr_range_test(model, CE, opt, batches, min_lr=1e-4, max_lr=1.0, num_steps=60, check_every=check_every)
        assert result.stop_reason == "completed"
        curves.append((result.lrs, result.losses, result.smoothed))
    assert curves[0] == curves[1]


def test_batches_must_be_re_iterable() -> None:
    model, opt, batches = warmed_up()
    with pytest.raises(ValueError, match="re-iterable"):
        lr_range_test(model, CE, opt, iter(batches), num_steps=10, max_lr=1e-2)


# --- precision, accumulation, clipping, memory format ----------------------------------------------


class CountingBatches:
    """A re-iterable over `batches` that counts how many it has handed out."""

    def __init__(self, batches: list) -> None:
        self.batches = batches
        self.pulled = 0

    def __iter__(self):
        for batch in self.batches:
            self.pulled += 1
            yield batch


def watch_params(model: nn.Module) -> list[torch.Tensor]:
    """Record the parameters (flattened into one vector) the model holds at each forward.

    The hook is copied along with the model, so it reports on the probe's private copy.
    """
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(
        lambda module, args: seen.append(torch.cat([p.detach().flatten() for p in module.parameters()]))
    )
    return seen


def linear_setup(k: int, b: int, seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, list]:
    """No batch-dependent layers and a mean loss: k micro-batches of b give the gradient of one batch of k·b."""
    torch.manual_seed(seed)
    model = nn.Linear(8, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # no momentum: a step is exactly -lr · grad
    return model, opt, make_batches(n_batches=4 * k, batch_size=b, seed=seed)


def conv_batches(n_batches: int = 4, batch_size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """8×8 images in 3 channels; the label is the brightest channel (learnable, so the curve falls)."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(batch_size, 3, 8, 8, generator=g) for _ in range(n_batches)]
    return [(x, x.mean(dim=(2, 3)).argmax(dim=1)) for x in xs]


def conv_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip


def test_bf16_on_cpu_gives_a_finite_curve_close_to_fp32() -> None:
    results = {}
    for precision in ("fp32", "bf16"):
        model, opt, batches = warmed_up()
        results[precision] = lr_range_test(
            model,
            CE,
            opt,
            batches,
            min_lr=1e-5,
            max_lr=1e-2,
            num_steps=20,
            step_settings=StepSettings(precision=precision),
        )
    fp32, bf16 = results["fp32"], results["bf16"]
    assert (bf16.stop_reason, bf16.steps_run) == ("completed", 20)
    assert all(math.isfinite(v) for v in bf16.losses + bf16.smoothed)
    assert bf16.losses[:5] == pytest.approx(fp32.losses[:5], rel=0.05)
    assert bf16.losses != fp32.losses  # autocast really ran: bf16 rounding moves the losses


def test_fp16_needs_cuda_and_says_so_before_running_anything() -> None:
    model, opt, batches = warmed_up()
    loss = ScriptedLoss([1.0])
    with pytest.raises(ValueError, match="CUDA"):
        lr_range_test(model, loss, opt, batches, num_steps=10, step_settings=StepSettings(precision="fp16"))
    assert loss.calls == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"precision": "fp8"}, {"grad_accumulation_steps": 0}, {"grad_clip_norm": 0.0}, {"grad_clip_norm": -1.0}],
)
def test_bad_step_settings_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        StepSettings(**kwargs)


def test_each_lr_point_pulls_k_micro_batches() -> None:
    k = 3
    model, opt, batches = warmed_up()
    counting = CountingBatches(batches)
    result = lr_range_test(
        model, CE, opt, counting, max_lr=1e-2, num_steps=10, step_settings=StepSettings(grad_accumulation_steps=k)
    )
    assert result.steps_run == 10 and len(result.losses) == 10
    assert counting.pulled == 10 * k


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize(
    "loss_fn",
    [lambda out, y: CE(out, y).double(), lambda out, y: CE(out, y).reshape(1)],
    ids=["float64", "shape-1"],
)
def test_a_loss_of_another_dtype_or_shape_gives_the_same_curve(loss_fn: Callable, k: int) -> None:
    """The step hands back the loss as the loss function made it; the chunk readback makes it a float per point."""
    settings = StepSettings(grad_accumulation_steps=k)
    model, opt, batches = warmed_up()
    reference = lr_range_test(model, CE, opt, batches, max_lr=1e-2, num_steps=12, check_every=5, step_settings=settings)
    result = lr_range_test(
        model, loss_fn, opt, batches, max_lr=1e-2, num_steps=12, check_every=5, step_settings=settings
    )
    assert result.steps_run == 12
    assert result.losses == pytest.approx(reference.losses, rel=1e-6)


def test_accumulated_step_equals_one_step_on_the_whole_batch() -> None:
    k, b = 4, 8
    model, opt, batches = linear_setup(k, b)
    seen = watch_params(model)
    result = lr_range_test(
        model,
        CE,
        opt,
        batches,
        min_lr=0.5,
        max_lr=1.0,
        num_steps=2,
        smoothing=0.0,
        step_settings=StepSettings(grad_accumulation_steps=k),
    )
    assert len(seen) == 2 * k  # one forward per micro-batch
    assert all(torch.equal(seen[0], s) for s in seen[1:k])  # no step inside the accumulation
    after_probe_step = seen[k]

    first = [batches[i] for i in range(k)]
    x_big, y_big = torch.cat([x for x, _ in first]), torch.cat([y for _, y in first])
    # The point's loss is the mean of its micro-batch losses: here, the loss on the whole k·b batch.
    assert result.losses[0] == pytest.approx(CE(model(x_big), y_big).item(), rel=1e-6)

    def one_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        by_hand = copy.deepcopy(model)
        by_hand_opt = torch.optim.SGD(by_hand.parameters(), lr=result.lrs[0])
        CE(by_hand(x), y).backward()
        by_hand_opt.step()
        return torch.cat([p.detach().flatten() for p in by_hand.parameters()])

    assert torch.allclose(after_probe_step, one_step(x_big, y_big), rtol=1e-5, atol=1e-6)
    # Not vacuous: a step on the first micro-batch alone lands elsewhere.
    assert not torch.allclose(after_probe_step, one_step(*first[0]), rtol=1e-5, atol=1e-6)


def test_grad_clip_bounds_each_step_to_lr_times_clip() -> None:
    """With SGD (no momentum) a clipped step moves the parameters by exactly lr · clip when the gradient is larger."""
    clip = 1e-3
    moves = {}
    for grad_clip_norm in (None, clip):
        model, opt, batches = linear_setup(k=1, b=32)
        seen = watch_params(model)
        result = lr_range_test(
            model,
            CE,
            opt,
            batches,
            min_lr=0.1,
            max_lr=10.0,
            num_steps=8,
            diverge_factor=math.inf,
            step_settings=StepSettings(grad_clip_norm=grad_clip_norm),
        )
        assert result.steps_run == 8
        steps = zip(seen, seen[1:], result.lrs, strict=False)
        moves[grad_clip_norm] = [((after - before).norm().item(), lr) for before, after, lr in steps]
    for move, lr in moves[clip]:
        assert move == pytest.approx(lr * clip, rel=1e-3)
    assert all(move > 10 * lr * clip for move, lr in moves[None])  # unclipped gradients are far above the clip


def test_channels_last_gives_the_same_curve() -> None:
    curves, layouts = {}, {}
    for channels_last in (False, True):
        model, batches = conv_model(), conv_batches()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        seen = watch_params(model)
        model.register_forward_pre_hook(
            lambda module, args, cl=channels_last: layouts.setdefault(cl, []).append(
                (
                    args[0].is_contiguous(memory_format=torch.channels_last),
                    module[0].weight.is_contiguous(memory_format=torch.channels_last),
                )
            )
        )
        result = lr_range_test(
            model,
            CE,
            opt,
            batches,
            min_lr=1e-2,
            max_lr=0.3,
            num_steps=12,
            step_settings=StepSettings(channels_last=channels_last),
        )
        assert result.steps_run == 12
        assert not torch.equal(seen[0], seen[-1])  # the optimizer still steps the converted copy
        assert model[0].weight.is_contiguous()  # the caller's model keeps its layout
        curves[channels_last] = result.losses
    assert layouts[True] == [(True, True)] * 12
    assert layouts[False] == [(False, False)] * 12
    assert curves[True] == pytest.approx(curves[False], rel=1e-4)


def test_channels_last_leaves_non_4d_inputs_alone() -> None:
    curves = []
    for channels_last in (False, True):
        model, opt, batches = warmed_up()
        curves.append(
            lr_range_test(
                model,
                CE,
                opt,
                batches,
                max_lr=1e-1,
                num_steps=15,
                step_settings=StepSettings(channels_last=channels_last),
            )
        )
    assert curves[0].losses == curves[1].losses


def test_caller_state_is_untouched_with_every_option_on() -> None:
    model, opt, batches = warmed_up()
    before = snapshot(model, opt)
    result = lr_range_test(
        model,
        CE,
        opt,
        batches,
        min_lr=1e-4,
        max_lr=50.0,
        num_steps=40,
        step_settings=StepSettings(precision="bf16", grad_accumulation_steps=2, grad_clip_norm=1.0, channels_last=True),
    )
    assert result.steps_run > 0
    assert_unchanged(before, model, opt)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 needs CUDA")
def test_fp16_on_cuda_gives_a_finite_curve_close_to_fp32() -> None:
    results = {}
    for precision in ("fp32", "fp16"):
        model, opt, batches = warmed_up()
        model.cuda()
        opt.load_state_dict(opt.state_dict())  # moves the momentum buffers to the parameters' device
        results[precision] = lr_range_test(
            model,
            CE,
            opt,
            batches,
            min_lr=1e-5,
            max_lr=1e-2,
            num_steps=20,
            step_settings=StepSettings(grad_accumulation_steps=2, grad_clip_norm=1.0, precision=precision),
        )
    assert results["fp16"].steps_run == 20
    assert all(math.isfinite(v) for v in results["fp16"].losses)
    assert results["fp16"].losses[:5] == pytest.approx(results["fp32"].losses[:5], rel=0.05)


# --- validation loss (lr_range.loss: "validation") -------------------------------------------------


def noisy_task(noise: float = 0.4, seed: int = 0) -> tuple[list, list]:
    """The blobs of make_batches: 8 training batches with `noise` of their labels redrawn at random, and 2
    clean validation batches. The training loss cannot fall below the noise's entropy; the validation loss can."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 8, generator=g) * 2

    def draw(noisy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 3, (32,), generator=g)
        x = centers[y] + torch.randn(32, 8, generator=g)
        if noisy:
            y = torch.where(torch.rand(32, generator=g) < noise, torch.randint(0, 3, (32,), generator=g), y)
        return x, y

    return [draw(True) for _ in range(8)], [draw(False) for _ in range(2)]


def dropout_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 3))


def sweep(loss: str, **kwargs) -> RangeResult:
    """One sweep of dropout_model on noisy_task, on the training or the validation loss."""
    model, (train, val) = dropout_model(), noisy_task()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return lr_range_test(model, CE, opt, train, val_batches=val if loss == "validation" else None, **kwargs)


def test_the_training_loss_is_the_default_and_says_so() -> None:
    model, opt, batches = warmed_up()
    result = lr_range_test(model, CE, opt, batches, max_lr=1e-2, num_steps=10)
    assert result.loss_kind == "training"
    assert lr_range_test(model, CE, opt, batches, max_lr=1e-2, num_steps=10, val_batches=batches).loss_kind == (
        "validation"
    )


def test_each_validation_point_is_the_validation_loss_after_its_step() -> None:
    """Replayed by hand: step at each LR (batch-norm in training mode), then evaluate the validation batches."""
    model, opt, batches = warmed_up()
    val = make_batches(n_batches=2, batch_size=24, seed=1)
    result = lr_range_test(
        model, CE, opt, batches, min_lr=1e-2, max_lr=1.0, num_steps=6, smoothing=0.0, val_batches=val
    )
    assert (result.loss_kind, result.steps_run) == ("validation", 6)

    by_hand_model, by_hand_opt = copy.deepcopy((model, opt))  # one deepcopy keeps params and state linked
    before_each_step, expected = [], []
    for i, lr in enumerate(result.lrs):
        x, y = batches[i % len(batches)]
        before_each_step.append(evaluate(by_hand_model, CE, val))
        by_hand_opt.param_groups[0]["lr"] = lr
        by_hand_opt.zero_grad(set_to_none=True)
        CE(by_hand_model(x), y).backward()
        by_hand_opt.step()
        expected.append(evaluate(by_hand_model, CE, val))
    assert by_hand_model.training  # evaluate gives the mode back
    assert result.losses == pytest.approx(expected, rel=1e-6)
    assert result.smoothed == result.losses  # smoothing 0
    # Not vacuous: the LRs move the validation loss, so a point taken before its step would not match.
    assert result.losses[1:] != pytest.approx(before_each_step[1:], rel=1e-3)


def test_validation_passes_run_in_eval_mode_without_grad_between_training_steps() -> None:
    k = 2
    model, opt, batches = warmed_up()
    before = snapshot(model, opt)
    seen: list[tuple[bool, bool]] = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append((module.training, torch.is_grad_enabled())))
    val = make_batches(n_batches=3, seed=1)
    result = lr_range_test(
        model, CE, opt, batches, max_lr=1e-2, num_steps=4, val_batches=val,
        step_settings=StepSettings(grad_accumulation_steps=k),
    )  # fmt: skip
    hook.remove()
    assert result.steps_run == 4
    step = [(True, True)] * k + [(False, False)] * len(val)  # k training micro-batches, then every validation batch
    assert seen == step * 4
    assert_unchanged(before, model, opt)  # the caller's model and optimizer, as ever, untouched


def test_the_validation_loss_has_no_dropout_noise() -> None:
    """At LRs too small to move the weights, the validation points agree (dropout off, the same batches every
    step), while the training losses swing with dropout and the batch."""
    tiny = {"min_lr": 1e-8, "max_lr": 1e-7, "num_steps": 20, "smoothing": 0.0}
    validation, training = sweep("validation", **tiny), sweep("training", **tiny)
    assert max(validation.losses) - min(validation.losses) < 1e-3
    assert max(training.losses) - min(training.losses) > 0.1


def test_with_noisy_labels_and_dropout_the_validation_curve_falls_below_the_training_curve() -> None:
    """The case the option is for: the training loss stays at the label noise's floor, the validation loss
    (clean labels, no dropout) shows how far the model really got, and where it turns."""
    wide = {"min_lr": 1e-3, "max_lr": 10.0, "num_steps": 60}
    validation, training = sweep("validation", **wide), sweep("training", **wide)
    assert min(validation.smoothed) < 0.7 * min(training.smoothed)
    assert min(validation.losses) < 0.4 < 0.6 < min(training.losses)


def test_a_validation_sweep_still_stops_when_it_diverges() -> None:
    result = sweep("validation", min_lr=1e-3, max_lr=100.0, num_steps=80)
    assert (result.stop_reason, result.loss_kind) == ("diverged", "validation")
    assert result.stopped_at is not None and result.stopped_at < 79
    assert result.smoothed[-1] > 4 * min(result.smoothed[:-1])


def test_a_validation_loss_that_turns_nan_stops_with_non_finite() -> None:
    """The loss function turns NaN at its 7th call: the 4th step's validation pass (each step: 1 training
    call, then 1 validation call). That step's point is the first not recorded."""
    model, opt, batches = warmed_up()
    result = lr_range_test(
        model, NanAtCall(6), opt, batches, max_lr=1e-2, num_steps=10, val_batches=batches[:1], check_every=5
    )
    assert (result.stop_reason, result.stopped_at, len(result.losses)) == ("non_finite", 3, 3)


def test_empty_validation_batches_are_refused() -> None:
    model, opt, batches = warmed_up()
    with pytest.raises(ValueError, match="val_batches yielded nothing"):
        lr_range_test(model, CE, opt, batches, num_steps=10, val_batches=[])


def test_evaluate_is_the_mean_loss_per_sample_in_eval_mode() -> None:
    """The confirmation trainings and the benchmarks score with evaluate: its numbers must not move."""
    model, _, _ = warmed_up()
    val = [*make_batches(n_batches=2, batch_size=24, seed=1), *make_batches(n_batches=1, batch_size=7, seed=2)]
    model.eval()
    with torch.no_grad():
        by_hand = sum(float(CE(model(x), y)) * len(x) for x, y in val) / sum(len(x) for x, _ in val)
    model.train()
    assert evaluate(model, CE, val) == by_hand  # to the bit: summed in float64, in batch order
    assert model.training


def test_in_place_trains_the_given_model_and_gives_the_copys_curve() -> None:
    """The worker hands over a fresh model (`in_place=True`): no copy of it or its optimizer state is made (half the
    device memory for a large model), it is the model that trains, and the curve is the one a copy would give."""
    curves = {}
    for in_place in (False, True):
        model, opt, batches = warmed_up()
        before = [p.detach().clone() for p in model.parameters()]
        result = lr_range_test(model, CE, opt, batches, min_lr=1e-4, max_lr=1.0, num_steps=20, in_place=in_place)
        assert result.steps_run == 20
        moved = not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        assert moved == in_place  # the caller's own parameters trained only when handed over
        assert bool(opt.state) and (opt.param_groups[0]["lr"] == 0.05) != in_place  # its optimizer stepped too
        curves[in_place] = result.losses
    assert curves[True] == curves[False]
