"""Batch-size warm-up: the gradient noise scale along one short training, and the schedule it makes pay.

One model trains at the job's batch (lr_range.batch_size) and the recommended LR, at a constant LR, for
min(train_steps, MAX_STEPS) optimizer steps; at log-spaced steps (0, 10, 30, 100, 300, 1000, and the last)
training pauses and B_noise is measured at the current weights from the smallest and largest fitting batch,
each with its bootstrap interval (`probes.noise_scale`). The cost: those training steps, plus
MEASUREMENTS big-batch and small-batch gradients per point (twice that where |G|² first comes out ≤ 0).

`schedule_advice` turns the trajectory into the result's batch schedule (planned by `batch_schedule.plan`)
or a reason for declining. A planned schedule is advised only once a check training confirms it
(`check_schedule`): the plan rests on B_noise, which can sit far below the batch a task really tolerates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lrbs.contract.results import BatchSchedule, BatchStage, NoisePoint
from lrbs.schedules import DEFAULT_TRAIN_STEPS
from lrbs.worker import batch_schedule
from lrbs.worker.job import JobContext
from lrbs.worker.probes import noise_scale
from lrbs.worker.probes.batch_size import StepProbe
from lrbs.worker.probes.batches import forever
from lrbs.worker.probes.step import TrainingStep

CHECKPOINTS = (0, 10, 30, 100, 300, 1000)  # about half a decade apart: B_noise moves fastest early
MAX_STEPS = 1000  # the trajectory's training never runs longer than this
MEASUREMENTS = 24  # big/small gradient pairs per point
CHECK_EVALUATIONS = 20  # validation losses along each check training: every 5% of its steps


def checkpoints(steps: int) -> list[int]:
    """The steps to measure at for a training of `steps` steps: the log-spaced ones inside it and the last."""
    return [c for c in CHECKPOINTS if c < steps] + [steps]


def horizon(job: JobContext) -> int:
    return min(job.spec.train_steps or DEFAULT_TRAIN_STEPS, MAX_STEPS)


def measure_trajectory(
    job: JobContext, sizes: list[int], lr: float, batch: int, at: list[int] | None = None
) -> tuple[list[NoisePoint], int]:
    """(points, optimizer steps trained): B_noise at checkpoints of one training at `batch` and `lr`.

    The noise scale is measured from the smallest and largest of `sizes`, at the steps `at` (default: the
    job's `checkpoints` up to its `horizon`); the training stops early (and the trajectory with it) if its
    loss stops being finite."""
    small, big = sizes[0], sizes[-1]
    at = at if at is not None else checkpoints(horizon(job))
    total = at[-1]
    model, optimizer = job.fresh(lr)
    step = TrainingStep(model, job.loss_fn, optimizer, job.step_settings)
    seed = job.spec.seed
    train_batches = forever(job.data.batches(batch, seed))
    big_batches = forever(job.data.batches(big, seed + 1))
    per_step = batch * job.step_settings.grad_accumulation_steps
    points: list[NoisePoint] = []
    done = 0
    for target in at:
        while done < target:
            loss = step(train_batches)
            done += 1
            if done % 25 == 0 or done == target:
                mean = float(loss.float().mean())
                job.progress("noise_scale", done, total, lr=lr, loss=mean if math.isfinite(mean) else None)
        if done and not torch.isfinite(loss).all():
            break  # diverged: later points would measure NaN
        points.append(_point(job, model, big_batches, small, done, per_step))
    model.zero_grad(set_to_none=True)
    job.report.add_steps(done)  # this loop steps its own model: count its steps as the job's trainings do
    return points, done


def _point(job: JobContext, model: torch.nn.Module, big_batches, small: int, step: int, per_step: int) -> NoisePoint:
    settings = job.step_settings
    small_sq, big_sq, b_big = noise_scale.measure(model, job.loss_fn, big_batches, small, MEASUREMENTS, settings)
    found = noise_scale.estimate(small_sq, big_sq, small, b_big)
    if found.b_simple is None:  # |G|² came out ≤ 0: the signal is small against the noise, so measure longer
        more = noise_scale.measure(model, job.loss_fn, big_batches, small, 2 * MEASUREMENTS, settings)
        found = noise_scale.estimate(small_sq + more[0], big_sq + more[1], small, b_big)
    return NoisePoint(
        step=step,
        samples=step * per_step,
        train_loss=_loss(job, model, big_batches),
        b_noise=found.b_simple,
        low=found.low,
        high=found.high,
        measurements=found.measurements,
    )


@torch.no_grad()
def _loss(job: JobContext, model: torch.nn.Module, big_batches) -> float | None:
    """The training loss on the next big batch, as the job's steps compute it."""
    settings = job.step_settings
    x, y = next(big_batches)
    x, y = settings.to_device(x, y, job.device)
    was_training = model.training
    with settings.autocast(job.device):
        loss = float(job.loss_fn(model(x), y))
    model.train(was_training)
    return loss if math.isfinite(loss) else None


def schedule_advice(
    job: JobContext,
    trajectory: list[NoisePoint] | None,
    probe_batch: int,
    fitting: list[StepProbe],
    lrs: dict[int, float],
    chosen: int,
) -> tuple[BatchSchedule | None, str]:
    """The batch schedule against the fixed `chosen` micro-batch, or why there is none."""
    spec = job.spec
    if spec.target_effective_batch:
        return None, "target_effective_batch fixes the effective batch, so no batch-size schedule is planned"
    if spec.world_size > 1:
        return None, (
            "a batch-size schedule is planned for one device; with world_size above 1 it is not planned yet "
            "(the fixed global batch above stands)"
        )
    if not trajectory:
        return None, "the noise scale was not measured (the largest fitting batch must be at least twice the smallest)"
    accumulation = job.step_settings.grad_accumulation_steps
    by_effective = {p.batch_size * accumulation: p for p in fitting}
    step_time = {b: p.step_time_s for b, p in by_effective.items() if p.step_time_s}
    points = [batch_schedule.Point(p.step, p.b_noise, p.low, p.high) for p in trajectory]
    train_steps = spec.train_steps or DEFAULT_TRAIN_STEPS
    found = batch_schedule.plan(
        points, probe_batch * accumulation, list(by_effective), chosen * accumulation, train_steps, step_time
    )
    if not found.stages or found.schedule is None or found.fixed is None:
        return None, found.reason
    stages = [
        BatchStage(
            from_step=s.from_step, batch_size=by_effective[s.batch].batch_size, grad_accumulation_steps=accumulation,
            effective_batch_size=s.batch, lr=lrs.get(by_effective[s.batch].batch_size), b_noise=s.b_noise,
        )
        for s in found.stages
    ]  # fmt: skip
    fixed_lr = lrs.get(chosen)
    if fixed_lr is None or any(s.lr is None for s in stages):
        return None, f"{found.reason}; not advised: without an LR for every batch it could not be checked by training"
    check = check_schedule(job, stages, chosen, fixed_lr, min(train_steps, MAX_STEPS))
    if not check.confirmed:
        return None, f"{found.reason}; not advised: {check.describe()}"
    total = max(1, round(found.schedule.steps))
    code = batch_schedule.snippet([(s.from_step, s.batch_size, s.lr, accumulation) for s in stages], total)
    return BatchSchedule(
        stages=stages, total_steps=total, fixed_batch_size=chosen, fixed_steps=train_steps,
        step_saving=found.step_saving or 0.0, samples=round(found.schedule.samples),
        fixed_samples=round(found.fixed.samples), time_s=found.schedule.time_s, fixed_time_s=found.fixed.time_s,
        time_saving=found.time_saving, snippet=code,
    ), f"{found.reason}; {check.describe()}"  # fmt: skip


@dataclass(frozen=True)
class ScheduleCheck:
    fixed_batch: int
    fixed_steps: int  # when the fixed batch's training reached its lowest validation loss
    target: float  # that loss
    schedule_steps: int | None  # when the schedule's training first reached it; None: not within fixed_steps

    @property
    def confirmed(self) -> bool:
        return self.schedule_steps is not None and self.schedule_steps < self.fixed_steps

    def describe(self) -> str:
        schedule = f"in {self.schedule_steps}" if self.schedule_steps is not None else f"not within {self.fixed_steps}"
        return (
            f"a check training {'confirmed' if self.confirmed else 'did not confirm'} it: from the same "
            f"initialisation the fixed batch {self.fixed_batch} reached its lowest validation loss {self.target:.4g} "
            f"in {self.fixed_steps} optimizer steps, the schedule {schedule}"
        )


def check_schedule(
    job: JobContext, stages: list[BatchStage], fixed_batch: int, fixed_lr: float, steps: int
) -> ScheduleCheck:
    """Train the fixed micro-batch at `fixed_lr` for `steps` optimizer steps, then the schedule's stages (each at
    its batch and LR, carrying the model and optimizer over) from the same initialisation until it reaches the
    fixed run's lowest validation loss, or as many steps as the fixed run took to get there.

    Why: the planner's saving is a prediction from B_noise, and B_noise can be far below the batch a task
    really tolerates (on a wide MLP it read 90-500 early while the steps to a target fell as 1/B up to 1024,
    so a warm-up through small batches only cost steps: benchmarks/batch_size/warmup.py). The cost: at most
    twice `steps` training steps, counted in phase "batch_schedule"."""
    every = max(1, steps // CHECK_EVALUATIONS)
    at = set(range(every, steps + 1, every))
    job.progress("batch_schedule", 0, 2 * steps)
    fixed = list(job.training(fixed_lr, steps, batch_size=fixed_batch, evaluate_at=at))
    fixed_steps, target = min(fixed, key=lambda point: (point[1], point[0]))
    check = ScheduleCheck(fixed_batch, fixed_steps, target, None)
    if not math.isfinite(target):
        return check
    model = job.fresh(fixed_lr)
    done = 0
    for i, stage in enumerate(stages):
        assert stage.lr is not None
        end = min(stages[i + 1].from_step if i + 1 < len(stages) else steps, fixed_steps)
        if end <= done:
            continue
        due = {s - done for s in at if done < s <= end}
        for step, loss in job.training(stage.lr, end - done, batch_size=stage.batch_size, evaluate_at=due, model=model):
            if loss <= target and done + step in at:  # compared on the fixed run's grid: a stage's end is off it
                return ScheduleCheck(fixed_batch, fixed_steps, target, done + step)
            if not math.isfinite(loss):
                return check
        done = end
        job.progress("batch_schedule", steps + done, 2 * steps)
    return check
