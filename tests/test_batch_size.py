"""Batch-size probes and advice on the CPU: real training steps, a real allocator failure, real timing."""

import pytest
import torch
from torch import nn

from lrbs.contract.job_spec import AutoBatchSizes, JobSpec
from lrbs.worker.advise import advise
from lrbs.worker.batch_advice import time_to_target
from lrbs.worker.probes.batch_size import StepProbe, largest_fitting, memory_fit, probe

CPU = torch.device("cpu")
CE = nn.functional.cross_entropy


class Greedy(nn.Module):
    """An MLP that asks the allocator for an impossible block once the batch passes a threshold."""

    def __init__(self, width: int = 1024, oom_above: int | None = None):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4)
        )
        self.oom_above = oom_above

    def forward(self, x):
        if self.oom_above is not None and len(x) > self.oom_above:
            torch.empty(2**50)  # the CPU allocator's own "can't allocate memory"
        return self.net(x)


def maker(**kw):
    def make():
        torch.manual_seed(0)
        model = Greedy(**kw)
        return model, torch.optim.SGD(model.parameters(), lr=0.01)

    return make


def batch(size):
    g = torch.Generator().manual_seed(size)
    return torch.randn(size, 64, generator=g), torch.randint(0, 4, (size,), generator=g)


def test_a_step_is_measured_and_bigger_batches_take_more_memory():
    def wide():  # cheap to run, costly to hold: 8192 activations per sample
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 8192), nn.ReLU(), nn.Linear(8192, 4))
        return model, torch.optim.SGD(model.parameters(), lr=0.01)

    probe(wide, CE, batch, 16, CPU, timed_steps=1)  # first use: one-time allocations land here
    small, big = (probe(wide, CE, batch, b, CPU, timed_steps=1) for b in (16, 1024))
    assert small.ran and big.ran and small.step_time_s > 0 and big.samples_per_s > 0
    # 1024 samples × 8192 wide × 4 bytes is 32 MiB per activation; a few of them live at once
    assert big.peak_bytes > small.peak_bytes + 32 * 2**20


def test_out_of_memory_is_caught_and_reported():
    result = probe(maker(oom_above=100), CE, batch, 128, CPU)
    assert not result.ran and "out of memory" in result.note and "can't allocate memory" in result.note
    assert probe(maker(oom_above=100), CE, batch, 64, CPU).ran  # and the next candidate runs


def test_other_errors_are_not_taken_for_memory():
    def broken():
        model = nn.Linear(3, 4)  # wrong input width: a shape error, not an OOM
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    with pytest.raises(RuntimeError, match="shapes"):
        probe(broken, CE, batch, 8, CPU)


def test_memory_fit_predicts_the_largest_batch():
    probes = [StepProbe(b, True, 100 * 2**20 + b * 2**20, 0.01) for b in (8, 16, 64)]  # 100 MiB + 1 MiB/sample
    a, b = memory_fit(probes)
    assert a == pytest.approx(100 * 2**20) and b == pytest.approx(2**20)
    # 1 GiB budget, 10% headroom: 921.6 MiB usable → 821 samples
    assert largest_fitting((a, b), 2**30, 0.10) == 821
    assert largest_fitting((a, b), None, 0.10) is None
    assert memory_fit(probes[:1]) is None


def test_time_to_target_trades_throughput_against_the_noise_scale():
    # throughput doubles with the batch up to 256, then flattens
    throughput = {64: 6400, 128: 12800, 256: 25600, 512: 30000, 1024: 32000}
    times = {b: time_to_target(b, t, b_noise=200) for b, t in throughput.items()}
    assert min(times, key=times.get) == 256  # past B_noise, doubling the batch no longer halves the time
    no_noise = {b: time_to_target(b, t, b_noise=None) for b, t in throughput.items()}
    assert min(no_noise, key=no_noise.get) == 1024


def test_each_batch_costs_steps_or_samples_by_the_noise_scale():
    from lrbs.worker.batch_advice import relative_costs, steps_and_samples

    # B_noise 40 (the character-level LM of benchmarks/batch_size/warmup.py): 32 against 16 takes 0.64x the
    # steps for 1.29x the samples
    chosen = steps_and_samples(16, 40.0)
    costs = relative_costs(steps_and_samples(32, 40.0), chosen)
    assert costs["relative_steps_to_target"] == pytest.approx(2.25 / 3.5)
    assert costs["relative_samples_to_target"] == pytest.approx(72 / 56)
    assert relative_costs(chosen, chosen) == {"relative_steps_to_target": 1.0, "relative_samples_to_target": 1.0}
    assert relative_costs(steps_and_samples(32, None), steps_and_samples(16, None))["relative_steps_to_target"] is None


def job(**parts) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model": {"name": "mlp", "params": {"hidden": [64]}},
            "dataset": {"name": "synthetic_classification", "params": {"n_samples": 2048}},
            "optimizer": {"name": "sgd", "params": {"momentum": 0.9}},
            "device": "cpu",  # the tests assume the CPU: auto picks a GPU where one is
            "lr_range": {"batch_size": 32, "num_steps": 60, "min_lr": 1e-4, "thoroughness": "quick"},
            **parts,
        }
    )


def test_batch_size_advice_end_to_end_in_process():
    result = advise(
        job(batch_sizes={"auto": True, "min": 16, "max": 256}, target_effective_batch=1000, lr_scaling="linear")
    )
    advice = result.batch_advice
    sizes = [c.batch_size for c in advice.candidates]
    assert sizes == [16, 32, 64, 128, 256] and all(c.fits for c in advice.candidates)
    assert advice.batch_size in sizes and advice.lr_scaling == "linear"
    lrs = {c.batch_size: c.lr for c in advice.candidates}
    assert lrs[64] == pytest.approx(2 * lrs[32]) and lrs[32] == pytest.approx(result.recommendation.lr)
    assert advice.grad_accumulation_steps == -(-1000 // advice.batch_size)
    assert min(c.relative_time_to_target for c in advice.candidates) == 1.0
    assert advice.noise_scale.batch_sizes == (16, 256) and advice.noise_scale.measurements > 0
    # A fixed effective batch fixes the steps to target: the fastest micro-batch that fits wins. None of these
    # divides 1000, so the reason says how the remainder is handled.
    fastest = max((c for c in advice.candidates if c.fits), key=lambda c: c.samples_per_s)
    assert advice.batch_size == fastest.batch_size
    assert "the choice is throughput" in advice.reason and "no fitting micro-batch divides 1000" in advice.reason


def test_without_a_target_the_noise_scale_decides():
    advice = advise(job(batch_sizes=[16, 64], lr_scaling="linear")).batch_advice
    small, large = advice.candidates
    if advice.noise_scale.b_noise is not None:  # the reason names what decided: the noise scale, else throughput
        assert "reaches a target loss soonest" in advice.reason and "B_noise" in advice.reason
        chosen = small if advice.batch_size == 16 else large
        assert chosen.relative_steps_to_target == chosen.relative_samples_to_target == 1.0
        # the larger batch takes fewer steps and more samples to the same loss
        assert large.relative_steps_to_target < small.relative_steps_to_target
        assert large.relative_samples_to_target > small.relative_samples_to_target
    else:
        assert "highest throughput" in advice.reason
        assert small.relative_steps_to_target is None and large.relative_samples_to_target is None


def test_a_fixed_effective_batch_prefers_the_fastest_divisor_and_weighs_the_target_against_the_noise():
    from types import SimpleNamespace

    from lrbs.worker.batch_advice import _fixed_effective_batch

    probes = [SimpleNamespace(batch_size=b, samples_per_s=s) for b, s in ((16, 373.0), (256, 410.0))]
    far_above = _fixed_effective_batch(256, probes, b_noise=50.0, steps=2, target=512)
    assert "micro-batch 256 is the fastest (410 samples/s) of those that fit and divide the target" in far_above[0]
    assert "10× the gradient noise scale" in far_above[1]
    below = _fixed_effective_batch(256, probes, b_noise=5000.0, steps=2, target=512)
    assert "10× below the gradient noise scale" in below[1]
    assert len(_fixed_effective_batch(256, probes, b_noise=600.0, steps=2, target=512)) == 1  # near: no remark


@pytest.mark.parametrize("scaling", ["auto", "probe"])
def test_lrs_from_short_range_tests_at_other_batch_sizes(scaling):
    advice = advise(job(batch_sizes=[16, 64, 256], lr_scaling=scaling)).batch_advice
    lrs = [c.lr for c in advice.candidates]
    assert all(lr and lr > 0 for lr in lrs)
    if scaling == "auto":  # probed at 16 and 256, interpolated in log space for 64
        assert advice.lr_scaling.startswith("interpolated")
        assert lrs[1] == pytest.approx((lrs[0] * lrs[2]) ** 0.5)
    else:
        assert advice.lr_scaling == "probe"


def test_no_candidate_fitting_fails_with_a_message():
    from lrbs.worker.errors import JobError

    with pytest.raises(JobError, match="no candidate batch size fits"):
        advise(job(batch_sizes=[16, 64], memory_budget_gb=1e-9))


def test_auto_sizes_and_their_bounds():
    assert AutoBatchSizes(auto=True, min=6, max=100).sizes() == [8, 16, 32, 64]
    with pytest.raises(ValueError, match="must not exceed"):
        AutoBatchSizes(auto=True, min=64, max=8)


def test_weighing_generalization_keeps_or_replaces_the_fastest_batch():
    from lrbs.worker.batch_advice import weigh_generalization

    times = {64: 2.0, 256: 1.0, 1024: 1.5}
    kept, why = weigh_generalization(256, times, {64: 0.50, 256: 0.51, 1024: 0.60})
    assert kept == 256 and "as well as the best" in why
    replaced, why = weigh_generalization(256, times, {64: 0.50, 256: 0.70, 1024: 0.52})
    assert replaced == 1024 and "generalised worse" in why and "instead" in why  # the fastest of those that held up


def test_generalization_check_trains_every_candidate_for_the_same_epochs():
    advice = advise(job(batch_sizes=[16, 128], lr_scaling="linear", generalization_check=True)).batch_advice
    assert advice.generalization_epochs >= 1
    assert all(c.val_loss is not None and c.val_loss > 0 for c in advice.candidates)
    assert "equal-epoch check" in advice.reason


def test_the_memory_budget_also_bounds_a_gpu(monkeypatch):
    """memory_budget_gb plans for a smaller card than the one probing: on CUDA the budget is the smaller of the
    two. (The device's size is stubbed here: this machine has no GPU.)"""
    from types import SimpleNamespace

    from lrbs.worker.probes import batch_size as bs

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _d: SimpleNamespace(total_memory=80 * 2**30))
    gpu = torch.device("cuda:0")
    assert bs.memory_budget(gpu, 24) == 24 * 2**30
    assert bs.memory_budget(gpu, None) == 80 * 2**30
    assert bs.memory_budget(gpu, 200) == 80 * 2**30
    assert bs.memory_budget(torch.device("cpu"), 2) == 2 * 2**30 and bs.memory_budget(torch.device("cpu"), None) is None
