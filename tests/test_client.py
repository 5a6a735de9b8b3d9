"""The Python client and `apply`, against the real app and database (and a real server end to end)."""

from __future__ import annotations

import pytest
import torch

from lrbs import Client, JobCancelled, LrbsError, apply
from lrbs.contract.job_spec import JobSpec
from lrbs.schedules import SCHEDULES
from lrbs.worker.advise import advise
from tests.conftest import MINIMAL_SPEC

QUICK = {**MINIMAL_SPEC, "lr_range": {"num_steps": 30, "thoroughness": "quick"}}


def test_submit_get_list_cancel_and_typed_errors(client):
    lrbs = Client(http=client)
    jobs = [lrbs.submit(QUICK) for _ in range(3)]
    assert lrbs.get(jobs[0].id).spec.lr_range.num_steps == 30
    assert [j.id for j in lrbs.list(page_size=2)] == [j.id for j in reversed(jobs)]  # newest first, every page
    assert lrbs.cancel(jobs[0]).state == "cancelled"
    with pytest.raises(JobCancelled):
        lrbs.wait(jobs[0])
    with pytest.raises(LrbsError) as refused:
        lrbs.submit({**QUICK, "lr_range": {"num_steps": 1}})
    assert refused.value.status == 422 and refused.value.errors[0]["field"] == "lr_range.num_steps"
    with pytest.raises(LrbsError, match="404"):
        lrbs.get("nope")
    with pytest.raises(TimeoutError):
        lrbs.wait(jobs[1], timeout=0.1, poll_seconds=0.05)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_apply_builds_what_the_snippet_prints(schedule):
    spec = JobSpec.model_validate({**QUICK, "schedule": schedule, "train_steps": 120,
                                   "optimizer": {"name": "adamw", "params": {"weight_decay": 0.01}}})  # fmt: skip
    rec = advise(spec).recommendation
    assert rec is not None and rec.optimizer_class == "torch.optim.AdamW"

    def lrs(make) -> list[float]:
        model = torch.nn.Linear(3, 2)
        optimizer, scheduler = make(model)
        out = []
        for _ in range(120):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    def from_snippet(model):
        scope = {"torch": torch, "model": model}
        exec(rec.snippet, scope)
        return scope["optimizer"], scope["scheduler"]

    optimizer, _ = apply(rec, torch.nn.Linear(3, 2).parameters())
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["weight_decay"] == 0.01
    assert lrs(lambda m: apply(rec, m.parameters())) == pytest.approx(lrs(from_snippet), rel=2e-3)
