"""Train a task at one LR and schedule with the worker's own code; untrained and final validation loss."""

from __future__ import annotations

import math
from functools import cache

import torch

from benchmarks.lr_quality.tasks import TASKS, Task
from lrbs.worker import registry
from lrbs.worker.plugins import PluginPolicy
from lrbs.worker.probes.train import evaluate, train
from lrbs.worker.schedules import schedule_params

DEVICE = torch.device("cpu")
POLICY = PluginPolicy()
TASKS_BY_NAME = {t.name: t for t in TASKS}


@cache
def _data(name: str) -> registry.TrainData:
    return registry.load_data(TASKS_BY_NAME[name].job().dataset, DEVICE, POLICY)


def data_of(task: Task) -> registry.TrainData:
    return _data(task.name)


def build(task: Task, seed: int, lr: float):
    spec = task.job()
    data = data_of(task)
    spec.resolve_for(data.shape)
    model, optimizer = registry.fresh(spec, data.shape, DEVICE, POLICY, lr, seed)
    return spec, data, model, registry.make_loss(spec.loss, POLICY), optimizer


def untrained_loss(task: Task, seed: int) -> float:
    _, data, model, loss_fn, _ = build(task, seed, 1e-3)
    return evaluate(model, loss_fn, data.val_batches(256))


def final_loss(task: Task, schedule: str, lr: float, seed: int) -> float:
    """Validation loss after the task's budget at this LR (peak LR for cosine, max_lr for one_cycle)."""
    if not (lr > 0 and math.isfinite(lr)):
        return math.inf
    _, data, model, loss_fn, optimizer = build(task, seed, lr)
    params = schedule_params(schedule, lr, task.steps)
    return train(model, loss_fn, optimizer, data.batches(task.batch_size, seed), data.val_batches(256),
                 schedule=schedule, schedule_params=params, steps=task.steps)
