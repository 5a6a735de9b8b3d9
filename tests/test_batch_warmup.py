"""Batch-size warm-up: the noise scale's trajectory on a real tiny training, the schedule planner as a pure
function on synthetic trajectories, one real job through `advise`, and the snippet run on a tiny model."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from lrbs.contract.resources import Progress
from lrbs.contract.results import BatchStage
from lrbs.worker import batch_schedule as bs
from lrbs.worker.advise import advise
from lrbs.worker.batch_warmup import check_schedule, checkpoints, measure_trajectory
from lrbs.worker.job import JobContext
from tests.conftest import batch_job

SIZES = [8, 16, 32, 64, 128, 256, 512, 1024]
AFFINE_TIME = {b: 1e-3 + b * 1e-5 for b in SIZES}  # 1 ms a step plus 10 µs a sample


# ---- the trajectory, measured on a real training --------------------------------------------------------


def test_checkpoints_are_log_spaced_and_end_at_the_budget():
    assert checkpoints(1000) == [0, 10, 30, 100, 300, 1000]
    assert checkpoints(120) == [0, 10, 30, 100, 120]
    assert checkpoints(5) == [0, 5]


def test_the_trajectory_grows_from_initialisation_and_every_point_has_an_interval():
    reports: list[Progress] = []
    context = JobContext.build(batch_job(train_steps=120), reports.append)
    points, steps = measure_trajectory(context, [16, 256], lr=0.05, batch=32)
    assert steps == 120
    assert [p.step for p in points] == [0, 10, 30, 100, 120]
    assert [p.samples for p in points] == [32 * p.step for p in points]
    measured = [p for p in points if p.b_noise is not None]
    assert len(measured) >= 4
    for p in measured:
        assert p.low is not None and p.high is not None and p.low <= p.b_noise <= p.high
        assert p.measurements >= 24
    assert points[-1].train_loss < points[0].train_loss  # it trained
    assert measured[-1].b_noise > 2 * measured[0].b_noise  # near 0 at initialisation, then it grows
    progress = [r for r in reports if r.phase == "noise_scale"]
    assert progress and progress[-1].step == 120 and progress[-1].total == 120


def test_the_trajectory_can_be_measured_at_other_steps_than_the_jobs():
    context = JobContext.build(batch_job(train_steps=1000), lambda _p: None)
    points, steps = measure_trajectory(context, [16, 256], lr=0.05, batch=32, at=[0, 5, 40])
    assert steps == 40 and [p.step for p in points] == [0, 5, 40]


def test_a_diverging_training_ends_the_trajectory_without_failing_the_job():
    context = JobContext.build(batch_job(train_steps=100, optimizer={"name": "sgd"}), lambda _p: None)
    points, steps = measure_trajectory(context, [16, 256], lr=1e6, batch=32)
    assert points[0].step == 0 and points[0].b_noise is not None  # measured before the first step
    assert len(points) < 5 and steps < 100  # it stopped at the first checkpoint after the loss blew up


# ---- the planner, as a pure function ----------------------------------------------------------------------


def growing(step: float) -> float:
    return 4.0 + step  # B_noise keeps growing through the whole probe


def trajectory(f, spread: float = 0.1) -> list[bs.Point]:
    return [bs.Point(s, f(s), f(s) * (1 - spread), f(s) * (1 + spread)) for s in (0, 10, 30, 100, 300, 1000)]


def test_a_growing_noise_scale_gives_growing_stages_that_save_steps_without_costing_samples_or_time():
    plan = bs.plan(trajectory(growing), 32, SIZES, fixed_batch=64, train_steps=1000, step_time=AFFINE_TIME)
    assert len(plan.stages) >= 2 and plan.stages[0].from_step == 0
    assert [s.batch for s in plan.stages] == sorted({s.batch for s in plan.stages})  # strictly growing
    assert [s.from_step for s in plan.stages] == sorted({s.from_step for s in plan.stages})
    assert plan.stages[0].batch < 64 < plan.stages[-1].batch  # below the fixed batch early, above it late
    assert plan.step_saving >= bs.MIN_STEP_SAVING
    assert plan.schedule.samples <= plan.fixed.samples and plan.schedule.time_s <= plan.fixed.time_s
    assert plan.fixed.steps == pytest.approx(1000)  # the comparison is for the job's train_steps
    assert "save" in plan.reason and "→" in plan.reason
    assert plan.step_saving <= plan.bound  # candidates and the time limit only lose against any batch size


def test_a_flat_noise_scale_is_declined():
    plan = bs.plan(trajectory(lambda s: 100.0), 32, SIZES, fixed_batch=64, train_steps=1000, step_time=AFFINE_TIME)
    assert plan.stages == [] and "hardly grows" in plan.reason


def test_growth_inside_the_intervals_is_declined():
    plan = bs.plan(trajectory(lambda s: 10.0 + s / 50, spread=0.9), 32, SIZES, 64, 1000, AFFINE_TIME)
    assert plan.stages == [] and "inside its 95% intervals" in plan.reason


def test_a_fixed_batch_that_is_the_largest_candidate_is_declined():
    plan = bs.plan(trajectory(growing), 32, SIZES, fixed_batch=1024, train_steps=1000, step_time=AFFINE_TIME)
    assert plan.stages == [] and "the largest candidate" in plan.reason


def test_too_few_measurable_points_are_declined():
    points = [bs.Point(0, 5.0), bs.Point(10, None), bs.Point(30, None), bs.Point(100, 50.0)]
    plan = bs.plan(points, 32, SIZES, 64, 1000, AFFINE_TIME)
    assert plan.stages == [] and "only 2 of 4" in plan.reason


def test_a_small_predicted_saving_is_declined_with_its_figure():
    # Growth that plateaus early: most of training is at the plateau, where the fixed batch is already right
    plan = bs.plan(trajectory(lambda s: 500 * (1 - math.exp(-s / 300)) + 4), 32, SIZES, 64, 300, AFFINE_TIME)
    assert plan.stages == []
    assert plan.step_saving is not None and plan.step_saving < bs.MIN_STEP_SAVING
    assert f"saves only {plan.step_saving:.0%}" in plan.reason
    assert plan.step_saving <= plan.bound < 2 * bs.MIN_STEP_SAVING  # a plateau early leaves little to any schedule
    assert f"could save at most {plan.bound:.0%}" in plan.reason


def test_the_model_arithmetic():
    # dτ = 10 at B_noise 10, then 10 at 100: at B = 10 then 100, each cell takes 10·(1 + 1) = 20 steps
    d_tau, noise = np.array([10.0, 10.0]), np.array([10.0, 100.0])
    t = bs.totals(d_tau, noise, np.array([10.0, 100.0]), {10: 1.0, 100: 3.0})
    assert t.steps == pytest.approx(40) and t.samples == pytest.approx(10 * 20 + 10 * 200)
    assert t.time_s == pytest.approx(20 * 1.0 + 20 * 3.0)
    # A probe at B = 10 through constant B_noise 10: 100 steps advance τ by 100 / (1 + 10/10) = 50
    d_tau, noise = bs.cells([0, 100], [10.0, 10.0], probe_batch=10)
    assert d_tau.sum() == pytest.approx(50)
    # A fixed batch 40 for 500 steps: 1.25 steps per τ, so τ = 400, past the probe at the plateau
    d_tau, noise = bs.horizon(d_tau, noise, batch=40, steps=500)
    assert d_tau.sum() == pytest.approx(400) and noise[-1] == 10
    assert bs.totals(d_tau, noise, np.full(len(noise), 40.0), None).steps == pytest.approx(500)
    # and one that ends inside the probe's cells
    short, _ = bs.horizon(*bs.cells([0, 100], [10.0, 10.0], 10), batch=40, steps=25)
    assert short.sum() == pytest.approx(20)
    plan = bs.Plan([], "", schedule=bs.Totals(600, 1, 3.0), fixed=bs.Totals(1000, 1, 4.0))
    assert plan.step_saving == pytest.approx(0.4) and plan.time_saving == pytest.approx(0.25)


def test_the_saving_bound_is_the_variance_of_the_root_noise_scale():
    # Half the progress at B_noise 1, half at 100; fixed batch 10: mean 50.5, mean root 5.5, variance 20.25
    d_tau, noise = np.array([5.0, 5.0]), np.array([1.0, 100.0])
    assert bs.saving_bound(d_tau, noise, 10) == pytest.approx(20.25 / 60.5)
    # and that is what B ∝ √B_noise saves at the fixed batch's samples
    fixed = bs.totals(d_tau, noise, np.array([10.0, 10.0]), None)
    c = fixed.samples - float(d_tau @ noise)  # the samples left for the batch itself: c·Σ dτ·√B_noise of them
    best = bs.totals(d_tau, noise, c / float(d_tau @ np.sqrt(noise)) * np.sqrt(noise), None)
    assert best.samples == pytest.approx(fixed.samples)
    assert 1 - best.steps / fixed.steps == pytest.approx(bs.saving_bound(d_tau, noise, 10))
    assert bs.saving_bound(np.array([1.0, 3.0]), np.array([7.0, 7.0]), 10) == 0  # a flat noise scale: nothing


def test_isotonic_fit_pools_dips():
    assert bs.isotonic([1, 3, 2, 4]) == [1, 2.5, 2.5, 4]
    assert bs.isotonic([5, 4, 3]) == [4, 4, 4]


# ---- one real job, and the snippet ----------------------------------------------------------------------


def test_a_real_job_returns_a_trajectory_and_a_schedule_or_a_reason():
    result = advise(batch_job(batch_sizes=[16, 64, 256], lr_scaling="linear", train_steps=150))
    advice = result.batch_advice
    points = advice.noise_trajectory
    assert [p.step for p in points] == [0, 10, 30, 100, 150] and advice.trajectory_steps == 150
    assert result.phase_steps["noise_scale"] == 150  # the trajectory's training counts in the job's cost
    assert advice.noise_scale.after_steps == max(p.step for p in points if p.b_noise is not None)
    assert advice.batch_schedule_reason
    schedule = advice.batch_schedule
    if schedule is None:
        declines = ("saves only", "hardly grows", "no schedule", "inside its", "largest candidate", "measurable at",
                    "did not confirm", "could not be checked")  # fmt: skip
        assert any(w in advice.batch_schedule_reason for w in declines)
    else:
        assert schedule.stages[0].from_step == 0 and len(schedule.stages) >= 2
        assert schedule.step_saving >= bs.MIN_STEP_SAVING and schedule.fixed_batch_size == advice.batch_size
        assert all(s.lr and s.batch_size in (16, 64, 256) for s in schedule.stages)
        compile(schedule.snippet, "snippet", "exec")
        assert "a check training confirmed it" in advice.batch_schedule_reason
        assert result.phase_steps["batch_schedule"] > 0


def test_a_fixed_effective_batch_gets_no_schedule():
    advice = advise(batch_job(batch_sizes=[16, 256], target_effective_batch=512, train_steps=40)).batch_advice
    assert advice.batch_schedule is None and "target_effective_batch" in advice.batch_schedule_reason
    assert advice.noise_trajectory  # measured all the same


def test_the_snippet_trains_with_the_stages():
    code = bs.snippet([(0, 4, 0.1, 1), (3, 8, 0.2, 2)], total_steps=6)
    compile(code, "snippet", "exec")
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    seen: list[int] = []

    def loss_fn(out, y):
        seen.append(len(y))
        return nn.functional.cross_entropy(out, y)

    namespace = {
        "model": model,
        "loss_fn": loss_fn,
        "optimizer": torch.optim.SGD(model.parameters(), lr=1.0),
        "train_set": torch.utils.data.TensorDataset(torch.randn(20, 3), torch.randint(0, 2, (20,))),
    }
    before = model.weight.detach().clone()
    exec(code, namespace)
    # 3 steps of one micro-batch of 4, then 3 steps of two micro-batches of 8
    assert seen == [4, 4, 4, 8, 8, 8, 8, 8, 8] and namespace["step"] == 6
    assert namespace["optimizer"].param_groups[0]["lr"] == 0.2
    assert not torch.equal(before, model.weight)


# ---- the check training before a schedule is advised ------------------------------------------------------


def stage(from_step: int, batch: int, lr: float) -> BatchStage:
    return BatchStage(
        from_step=from_step, batch_size=batch, grad_accumulation_steps=1, effective_batch_size=batch, lr=lr, b_noise=1.0
    )


def test_a_schedule_that_trains_slower_than_the_fixed_batch_is_not_confirmed():
    reports: list[Progress] = []
    job = JobContext.build(batch_job(train_steps=60), reports.append)
    # The same batches as the fixed run but at a hundredth of its LR: it cannot reach the fixed run's loss.
    check = check_schedule(job, [stage(0, 32, 5e-4), stage(30, 64, 5e-4)], fixed_batch=64, fixed_lr=0.05, steps=60)
    assert not check.confirmed and check.schedule_steps is None
    assert 0 < check.fixed_steps <= 60 and math.isfinite(check.target)
    assert "did not confirm it" in check.describe() and f"in {check.fixed_steps} optimizer steps" in check.describe()
    assert job.report.steps["batch_schedule"] == 60 + check.fixed_steps  # the fixed run, then the schedule's
    assert any(r.phase == "batch_schedule" for r in reports)


def test_a_schedule_that_trains_faster_is_confirmed_and_stops_at_the_fixed_runs_loss():
    job = JobContext.build(batch_job(train_steps=60), lambda _p: None)
    # The fixed run crawls at a tiny LR; the schedule trains at a good one, switching batch and LR on the way.
    check = check_schedule(job, [stage(0, 32, 0.05), stage(3, 64, 0.1)], fixed_batch=64, fixed_lr=1e-4, steps=60)
    assert check.confirmed and check.schedule_steps is not None and check.schedule_steps < check.fixed_steps
    assert "a check training confirmed it" in check.describe()
    assert check.describe().endswith(f"the schedule in {check.schedule_steps}")
    assert job.report.steps["batch_schedule"] == 60 + check.schedule_steps  # it stopped once it got there


def test_a_later_training_of_the_same_model_runs_at_its_own_lr():
    """Each stage of a checked schedule is a `training` of the same model and optimizer at the stage's LR: torch's
    schedulers must start from that LR, not from the `initial_lr` an earlier scheduler left in the groups."""
    job = JobContext.build(batch_job(train_steps=10), lambda _p: None)
    model = job.fresh(0.1)
    list(job.training(0.1, 2, model=model))
    list(job.training(0.01, 2, model=model))
    assert model[1].param_groups[0]["lr"] == pytest.approx(0.01)
