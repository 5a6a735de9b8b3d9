"""Apply a recommendation: build exactly the optimizer and scheduler it describes (what its `snippet` prints)."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from lrbs.contract.results import Recommendation
from lrbs.schedules import SCHEDULES


def apply(recommendation: Recommendation, parameters: Iterable[Any]) -> tuple[Any, Any]:
    """(optimizer, scheduler) for these parameters; call scheduler.step() after every optimizer.step()."""
    module, _, name = recommendation.optimizer_class.rpartition(".")
    factory = getattr(importlib.import_module(module), name)
    schedule = SCHEDULES[recommendation.schedule]
    params = recommendation.schedule_params
    optimizer = factory(parameters, lr=recommendation.lr, **recommendation.optimizer_params)
    return optimizer, schedule.scheduler(optimizer, params)
