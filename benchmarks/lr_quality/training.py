"""Train a task at one LR and schedule with the worker's own code; untrained and final validation loss."""

from __future__ import annotations

import math

from benchmarks.lr_quality.tasks import HELD_OUT, POLICY, TASKS, Task
from lrbs.worker.job import JobContext
from lrbs.worker.probes.train import evaluate

TASKS_BY_NAME = {t.name: t for t in [*TASKS, *HELD_OUT]}


_JOBS: dict[str, JobContext] = {}


def job_of(task: Task) -> JobContext:
    """One job context per task (its data loaded once): every training builds its model through it."""
    if task.name not in _JOBS:
        _JOBS[task.name] = JobContext.build(task.job(device="cpu"), policy=POLICY)
    return _JOBS[task.name]


def build(task: Task, seed: int, lr: float):
    job = job_of(task)
    model, optimizer = job.fresh(lr, seed)
    return job.spec, job.data, model, job.loss_fn, optimizer


def untrained_loss(task: Task, seed: int) -> float:
    _, data, model, loss_fn, _ = build(task, seed, 1e-3)
    return evaluate(model, loss_fn, data.val_batches(256))


def final_loss(task: Task, schedule: str, lr: float, seed: int) -> float:
    """Validation loss after the task's budget at this LR (peak LR for cosine, max_lr for one_cycle)."""
    if not (lr > 0 and math.isfinite(lr)):
        return math.inf
    return job_of(task).train(lr, task.steps, schedule=schedule, batch_size=task.batch_size, seed=seed)
