"""Each extension point is one table: the contract and the worker read the same one, and they agree."""

from __future__ import annotations

import json

import pytest
import torch

from lrbs.contract.builtins import BUILTIN_DATASETS, BUILTIN_MODELS, names
from lrbs.contract.job_spec import JobSpec
from lrbs.schedules import FRACTIONS_FILE, SCHEDULES
from lrbs.worker.builtin_data import GENERATORS
from lrbs.worker.networks import BUILDERS


def test_every_builtin_model_of_the_contract_has_a_builder_and_no_more():
    assert sorted(names(BUILTIN_MODELS)) == sorted(BUILDERS)


def test_every_builtin_dataset_of_the_contract_has_a_generator_and_no_more():
    assert sorted(names(BUILTIN_DATASETS)) == sorted(GENERATORS)


def test_the_contract_accepts_exactly_the_schedules_of_the_table():
    base = {"model": {"name": "linear"}, "dataset": {"name": "iris"}, "optimizer": {"name": "sgd"}}
    for name in SCHEDULES:
        assert JobSpec.model_validate({**base, "schedule": name}).schedule == name
    with pytest.raises(ValueError, match="one_cycle"):
        JobSpec.model_validate({**base, "schedule": "linear_decay"})
    schema = JobSpec.model_json_schema()
    assert sorted(schema["properties"]["schedule"]["enum"]) == sorted(SCHEDULES)


def test_the_fitted_fractions_come_from_the_data_file():
    stored = json.loads(FRACTIONS_FILE.read_text())
    for name, schedule in SCHEDULES.items():
        assert schedule.peak_per_lowest() == stored["schedules"][name]["peak_per_lowest"]
        low, high = schedule.safe_band()
        assert low < 1 < high
        for family, fitted in stored["families"].items():
            assert schedule.peak_per_lowest(family) == fitted["schedules"][name]["peak_per_lowest"]
            low, high = schedule.safe_band(family)
            assert low < 1 < high


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("warmup", [0, 20])
def test_a_schedules_snippet_builds_the_scheduler_it_trains_with(name, warmup):
    """The code the recommendation prints gives the same LR at every step as the scheduler lrbs trains with."""
    schedule, steps = SCHEDULES[name], 200
    params = schedule.params(0.1, steps, warmup)

    def lrs(make) -> list[float]:
        model = torch.nn.Linear(2, 1)
        optimizer, scheduler = make(model)
        out = []
        for _ in range(steps):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    def from_table(model):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        return optimizer, schedule.scheduler(optimizer, params)

    def from_snippet(model):
        scope = {"torch": torch, "model": model}
        exec(schedule.snippet(params, "torch.optim.SGD", {}), scope)
        return scope["optimizer"], scope["scheduler"]

    assert lrs(from_snippet) == pytest.approx(lrs(from_table), rel=2e-3, abs=1e-9)
