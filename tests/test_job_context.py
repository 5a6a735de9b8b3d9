"""One job context runs every probe: a job's precision, accumulation, clipping and memory format reach all of them.

A bf16 job once had its batch-size probes, per-batch LR probes and confirmation trainings run in fp32 because
each caller copied the arguments by hand; these tests watch the real forward passes of each probe.
"""

from __future__ import annotations

import math

import pytest
import torch

from lrbs.contract.job_spec import JobSpec
from lrbs.worker.advise import confirm
from lrbs.worker.batch_advice import advise_batch_size
from lrbs.worker.job import JobContext
from lrbs.worker.suggest import Choice


class WatchedJob(JobContext):
    """A real job context whose models record, at every training-mode forward pass, how it ran."""

    seen: list[dict]
    evaluated: list[dict]  # the validation passes, in eval mode

    def fresh(self, lr, seed=None):
        model, optimizer = super().fresh(lr, seed)

        def record(module, args, out):
            if module.training:  # validation passes are not training steps
                self.seen.append({
                    "autocast": torch.is_autocast_enabled("cpu"), "dtype": out.dtype, "batch": len(args[0]),
                    "channels_last": args[0].dim() == 4 and args[0].is_contiguous(memory_format=torch.channels_last),
                })  # fmt: skip
            else:
                self.evaluated.append({"autocast": torch.is_autocast_enabled("cpu"), "x": args[0]})

        model.register_forward_hook(record)  # deep copies made by the range test keep the hook
        return model, optimizer


def watched(**spec) -> WatchedJob:
    base = {
        "model": {"name": "mlp", "params": {"hidden": [32]}},
        "dataset": {"name": "synthetic_classification", "params": {"n_samples": 512}},
        "optimizer": {"name": "sgd"},
        "lr_range": {"num_steps": 20, "batch_size": 16},
        "device": "cpu",
    }
    job = JobContext.build(JobSpec.model_validate({**base, **spec}))
    watched_job = WatchedJob(**vars(job))
    watched_job.seen, watched_job.evaluated = [], []
    return watched_job


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_batch_size_probe_runs_in_the_jobs_precision(precision):
    """Memory, speed, per-batch LR probes, the noise scale and the generalisation check: all under autocast."""
    job = watched(precision=precision, batch_sizes=[16, 64], lr_scaling="probe", generalization_check=True)
    advice = advise_batch_size(job, base_lr=0.05)
    assert advice.batch_size in (16, 64)
    assert {s["batch"] for s in job.seen} >= {16, 64}
    bf16 = precision == "bf16"
    assert all(s["autocast"] == bf16 for s in job.seen)
    assert all(s["dtype"] == (torch.bfloat16 if bf16 else torch.float32) for s in job.seen)


def test_batch_probes_step_over_the_jobs_accumulation():
    job = watched(grad_accumulation_steps=3, batch_sizes=[16])
    probe = job.step_probe(16, lr=0.05, timed_steps=1)
    assert probe.ran and probe.accumulation == 3
    assert probe.samples_per_s == pytest.approx(3 * 16 / probe.step_time_s)
    assert len(job.seen) % 3 == 0 and len(job.seen) >= 3 * (1 + 2 + 1)  # first + warm-up + timed steps


def test_confirmation_trainings_accumulate_and_run_in_the_jobs_precision():
    k, steps = 2, 30
    job = watched(precision="bf16", grad_accumulation_steps=k, grad_clip_norm=1.0, train_steps=steps)
    choice = Choice(lr=0.05, rule="lowest×schedule", reason="test", lr_low=0.03, lr_high=0.08, confidence="low")
    confirmed, candidates = confirm(job, choice, train_steps=steps)
    assert [c.lr for c in candidates] == [0.05, 0.03, 0.08]  # the suggestion first: the run to beat
    ran = sum(c.steps for c in candidates)
    assert candidates[0].steps == steps and ran <= 3 * steps
    assert len(job.seen) == ran * k  # k micro-batches per optimizer step
    assert job.report.steps == {"confirm": ran}  # counted as optimizer steps
    assert all(s["autocast"] and s["dtype"] == torch.bfloat16 for s in job.seen)
    assert confirmed.rule == "lowest×schedule+confirm"


def test_trainings_clip_the_gradient_norm():
    """Plain SGD at a huge LR: with clipping each step moves the weights by at most lr · clip."""
    lr, clip, steps = 10.0, 1e-3, 5
    moved = {}
    for grad_clip_norm in (None, clip):
        job = watched(grad_clip_norm=grad_clip_norm)
        model, optimizer = job.fresh(lr)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        job.train(lr, steps, model=(model, optimizer))
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        moved[grad_clip_norm] = (after - before).norm().item()
    assert moved[clip] <= steps * lr * clip * (1 + 1e-4)
    assert moved[None] > 100 * moved[clip]  # not vacuous: unclipped steps move far more


def test_channels_last_reaches_range_tests_and_trainings():
    job = watched(
        model={"name": "cnn", "params": {"channels": [4]}},
        dataset={"name": "synthetic_images", "params": {"n_samples": 128, "height": 8, "width": 8}},
        channels_last=True,
    )
    job.range_test(16)
    job.train(0.01, 10)
    assert len(job.seen) == 20 + 10 and all(s["channels_last"] for s in job.seen)


def test_fp16_is_refused_on_a_cpu_job_before_anything_runs():
    from lrbs.worker.errors import JobError

    with pytest.raises(JobError, match="fp16 needs a CUDA GPU"):
        watched(precision="fp16")


def test_every_probe_seeds_its_model_the_same_way():
    job = watched()
    a, _ = job.fresh(0.1, seed=3)
    b, _ = job.fresh(0.5, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert math.isfinite(job.train(0.05, 5))


def test_a_validation_sweep_evaluates_the_first_val_batches_after_each_step_in_the_jobs_precision():
    sweep = {"num_steps": 10, "batch_size": 16, "loss": "validation", "val_batches": 3}
    job = watched(precision="bf16", grad_accumulation_steps=2, lr_range=sweep)
    result = job.range_test(16)
    assert (result.loss_kind, result.steps_run) == ("validation", 10)
    assert len(job.seen) == 10 * 2 and all(s["autocast"] for s in job.seen)
    first_three = [x for x, _ in job.data.val_batches(16)][:3]
    assert len(job.evaluated) == 10 * 3 and all(e["autocast"] for e in job.evaluated)
    for i, e in enumerate(job.evaluated):  # the same three batches of 16, after every step
        assert torch.equal(e["x"], first_three[i % 3])
    assert job.range_test(16, seed=1).loss_kind == "validation"
    job.spec.lr_range = job.spec.lr_range.model_copy(update={"loss": "training"})
    assert job.range_test(16).loss_kind == "training"


def test_a_validation_sweep_without_validation_samples_fails_the_job_with_what_to_change():
    from lrbs.contract.job_spec import LRRangeSpec
    from lrbs.worker.errors import JobError

    job = watched(dataset={"name": "synthetic_classification", "params": {"n_samples": 128}, "validation_fraction": 0})
    job.spec.lr_range = LRRangeSpec(loss="validation", num_steps=10, batch_size=16)  # as an upload or a plugin could
    with pytest.raises(JobError, match="validation_fraction above 0"):
        job.range_test(16)
    assert job.seen == []  # refused before any step


def test_confirmation_stops_a_higher_lr_that_falls_behind_but_never_a_lower_one():
    """Early in a run a higher LR is usually ahead, so one that trails is stopped; a lower LR that trails early
    (it learns slower at first) runs to the end, where it may win."""
    steps = 90
    job = watched(train_steps=steps)
    choice = Choice(lr=0.1, rule="lowest×schedule", reason="test", lr_low=1e-5, lr_high=50.0, confidence="low")
    _, (suggested, low, high) = confirm(job, choice, train_steps=steps)
    assert suggested.steps == steps and low.steps == steps  # the 1e-5 run trails throughout, yet is not stopped
    assert high.steps < steps  # stopped at 10 or 30 steps: clearly behind, or diverged
