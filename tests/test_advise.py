"""A whole job on the worker side, in process: built-ins, training options and what a CPU refuses."""

import numpy as np
import pytest
import torch

from lrbs.contract.job_spec import JobSpec
from lrbs.worker.advise import advise
from lrbs.worker.errors import JobError
from tests.conftest import MINIMAL_SPEC

QUICK = {"num_steps": 30, "batch_size": 16}
SWEEP = {"num_steps": 60, "batch_size": 16, "min_lr": 1e-4}  # short, but long enough to find a minimum


def job(**parts) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model": {"name": "mlp", "params": {"hidden": [16]}},
            "dataset": {"name": "synthetic_classification", "params": {"n_samples": 256}},
            "optimizer": {"name": "sgd", "params": {"momentum": 0.9}},
            "device": "cpu",  # the tests assume the CPU: auto picks a GPU where one is
            "lr_range": QUICK,
            **parts,
        }
    )


def test_a_resnet_in_bf16_with_channels_last_and_clipping():
    spec = job(
        model={"name": "resnet", "params": {"width": 4}},
        dataset={"name": "synthetic_images", "params": {"n_samples": 128, "height": 8, "width": 8}},
        precision="bf16",
        channels_last=True,
        grad_clip_norm=1.0,
    )
    result = advise(spec)
    assert result.steps_run > 0 and result.recommendation is not None
    smoothed = result.curve.smoothed_loss
    assert min(smoothed) < smoothed[0]  # bf16, channels-last and clipping still train


@pytest.mark.slow
@pytest.mark.timeout(600)  # seconds when the machine is free; minutes when CI shares its 2 cores
def test_a_transformer_lm_on_token_streams():
    spec = job(
        model={"name": "transformer_lm", "params": {"layers": 1, "d_model": 16, "heads": 2}},
        dataset={"name": "synthetic_tokens", "params": {"n_samples": 64, "context": 8, "vocab_size": 20}},
        optimizer={"name": "adamw"},
        train_steps=100,  # confirmation trainings, when the sweeps disagree, stay short
    )
    assert spec.loss == "cross_entropy"
    result = advise(spec)
    assert result.steps_run > 0
    assert "language models trained with Adam or AdamW" in result.recommendation.reason  # its family's fractions


def test_accumulation_shows_in_the_recommendation():
    result = advise(job(grad_accumulation_steps=4, lr_range={**QUICK, "max_lr": 1.0}))
    rec = result.recommendation
    assert rec is not None and rec.batch_size == 16 and rec.effective_batch_size == 64


def test_sklearn_datasets_run():
    pytest.importorskip("sklearn")
    assert advise(job(dataset={"name": "iris"})).environment.device == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a CPU-only worker refuses")
def test_what_a_cpu_worker_cannot_do_fails_with_a_message():
    with pytest.raises(JobError, match="fp16 needs a CUDA GPU.*use bf16 or fp32"):
        advise(job(precision="fp16"))
    with pytest.raises(JobError, match="no CUDA GPU"):
        advise(job(device="cuda:1"))


def test_specs_refuse_mismatched_models_and_data():
    with pytest.raises(ValueError, match="needs token data"):
        job(model={"name": "transformer_lm"})
    with pytest.raises(ValueError, match="cannot read token sequences"):
        job(dataset={"name": "synthetic_tokens"})
    with pytest.raises(ValueError, match="channels_last applies to image data"):
        job(channels_last=True)
    with pytest.raises(ValueError, match="divisible by heads"):
        job(
            model={"name": "transformer_lm", "params": {"d_model": 30, "heads": 4}},
            dataset={"name": "synthetic_tokens"},
        )
    with pytest.raises(ValueError, match="should match pattern"):
        job(device="tpu")


@pytest.mark.parametrize("schedule", ["constant", "cosine", "one_cycle", "step", "exponential"])
def test_the_snippet_builds_the_recommended_schedule(schedule):
    rec = advise(job(schedule=schedule, train_steps=200, lr_range={**SWEEP, "thoroughness": "quick"})).recommendation
    assert rec.train_steps == 200 and rec.lr_low <= rec.lr <= rec.lr_high
    scope = {"torch": torch, "model": torch.nn.Linear(2, 2)}
    exec(rec.snippet, scope)  # the code a user pastes
    lrs = []
    for _ in range(200):
        lrs.append(scope["optimizer"].param_groups[0]["lr"])
        scope["optimizer"].step()
        scope["scheduler"].step()
    assert max(lrs) == pytest.approx(rec.lr, rel=1e-3)  # the peak is the recommended LR (4 digits in code)
    if schedule == "one_cycle":
        assert rec.schedule_params["max_lr"] == rec.lr and lrs[0] == pytest.approx(rec.base_lr, rel=1e-3)
    if schedule in ("step", "exponential"):
        assert lrs[-1] < rec.lr / 50  # decayed


def test_adam_gets_a_warmup_on_a_run_that_outlasts_its_moment_estimates_and_says_why():
    # 2 / (1 - 0.99) = 200 steps: a 400-step run gets 5% of it as a warm-up
    adam = {"name": "adam", "params": {"betas": [0.9, 0.99]}}
    rec = advise(job(schedule="cosine", optimizer=adam, train_steps=400, lr_range=SWEEP)).recommendation
    assert rec.warmup_steps == 20 and "adam" in rec.warmup_reason and "200 steps" in rec.warmup_reason
    assert rec.schedule_params["warmup_steps"] == 20 and "LinearLR" in rec.snippet
    # at the default beta2 (0.999) the moments take 2,000 steps: the same run is too short for a warm-up to pay
    short = advise(job(schedule="cosine", optimizer={"name": "adam"}, train_steps=400, lr_range=SWEEP)).recommendation
    assert short.warmup_steps == 0 and short.schedule_params["warmup_steps"] == 0 and "LinearLR" not in short.snippet
    assert "shorter than adam's moment estimates take to warm up (2 / (1 - beta2) = 2000 steps)" in short.warmup_reason
    sgd = advise(job(schedule="one_cycle", lr_range=SWEEP)).recommendation
    assert sgd.warmup_steps == 0 and "pct_start" in sgd.warmup_reason


def test_confirmation_runs_are_stopped_early_only_where_a_part_way_loss_ranks_them():
    from lrbs.worker.advise import confirm_checkpoints

    assert confirm_checkpoints("constant", 90) == [10, 30]  # a ninth and a third of the run
    assert confirm_checkpoints("cosine", 900) == [100, 300]
    assert confirm_checkpoints("one_cycle", 90) == []  # a higher peak trails until the anneal: every run finishes


class ScriptedJob:
    """Just what `confirm` asks of a job, with each training's final validation loss set by (lr, seed)."""

    def __init__(self, losses: dict[tuple[float, int], float]) -> None:
        self.losses, self.trained = losses, []
        self.spec = JobSpec.model_validate({**MINIMAL_SPEC, "schedule": "constant", "seed": 0})

    def untrained_loss(self) -> float:
        return 3.0

    def progress(self, *args, **kwargs) -> None:
        pass

    def training(self, lr, steps, *, schedule, seed=None, evaluate_at=(), on_progress=None):
        seed = 0 if seed is None else seed
        self.trained.append((lr, seed))
        yield steps, self.losses[lr, seed]


@pytest.mark.parametrize(
    ("second_seed", "winner"),
    [({(0.1, 1): 1.5, (0.2, 1): 1.0}, 0.2), ({(0.1, 1): 1.0, (0.2, 1): 1.5}, 0.1)],
)
def test_a_close_call_between_the_two_best_is_settled_by_a_second_seed(second_seed, winner):
    from lrbs.worker.advise import confirm
    from lrbs.worker.suggest import Choice

    # 0.2 leads 0.1 by 0.1, under a tenth of the progress from the untrained 3.0: a close call
    job = ScriptedJob({(0.1, 0): 1.2, (0.05, 0): 2.0, (0.2, 0): 1.1, **second_seed})
    choice = Choice(lr=0.1, rule="valley", reason="r", lr_low=0.05, lr_high=0.2, confidence="medium")
    picked, scored = confirm(job, choice, 60)
    assert picked.lr == winner and "were close" in picked.reason
    assert job.trained == [(0.1, 0), (0.05, 0), (0.2, 0), (0.2, 1), (0.1, 1)]  # the two best, best first
    assert [c.seed for c in scored] == [None, None, None, 1, 1]


def test_a_clear_lead_needs_no_second_seed():
    from lrbs.worker.advise import confirm
    from lrbs.worker.suggest import Choice

    job = ScriptedJob({(0.1, 0): 1.6, (0.05, 0): 2.0, (0.2, 0): 1.1})  # 0.5 ahead: clear
    choice = Choice(lr=0.1, rule="valley", reason="r", lr_low=0.05, lr_high=0.2, confidence="medium")
    picked, scored = confirm(job, choice, 60)
    assert picked.lr == 0.2 and job.trained == [(0.1, 0), (0.05, 0), (0.2, 0)] and len(scored) == 3


def test_thorough_confirms_with_short_trainings():
    result = advise(job(schedule="constant", train_steps=60, lr_range={**SWEEP, "thoroughness": "thorough"}))
    rec = result.recommendation
    first = [c for c in rec.confirmation if c.seed is None]
    assert [c.lr for c in first] == pytest.approx([first[0].lr, rec.lr_low, rec.lr_high])
    finished = sorted((c for c in first if c.val_loss is not None and c.steps == 60), key=lambda c: c.val_loss)
    again = [c for c in rec.confirmation if c.seed is not None]
    if again:  # a close call: the two best trained again, and the lower mean won
        assert [c.lr for c in again] == [c.lr for c in finished[:2]]
        means = [(a.val_loss + b.val_loss) / 2 for a, b in zip(finished, again, strict=False)]
        assert rec.lr == finished[means.index(min(means))].lr and "were close" in rec.reason
    else:
        assert rec.lr == finished[0].lr
    assert rec.rule.endswith("+confirm")
    assert result.sweeps == 3 and result.phase_steps["lr_range"] == result.steps_run
    assert result.phase_steps["confirm"] == sum(c.steps for c in rec.confirmation)
    # each sweep's own curve is kept, and the median curve is their per-step median
    assert len(result.sweep_curves) == 3
    n = len(result.curve.lr)
    assert result.curve.loss == pytest.approx(np.median([c.loss[:n] for c in result.sweep_curves], axis=0).tolist())


@pytest.mark.parametrize(
    "dataset",
    [
        {"name": "synthetic_classification", "params": {"n_samples": 256}},
        {"name": "synthetic_classification", "params": {"n_samples": 256, "noise": 5.0}},
    ],
)
def test_standard_confirms_exactly_when_the_sweeps_disagree(dataset):
    rec = advise(job(dataset=dataset, train_steps=60, lr_range=SWEEP)).recommendation
    assert (rec.confirmation is not None) == (rec.confidence != "high")
    if rec.confirmation:
        assert rec.rule.endswith("+confirm")


def test_a_validation_loss_job_says_which_loss_its_curves_are():
    """Three sweeps on the validation loss: the median curve and each sweep's own say so."""
    spec = job(lr_range={**QUICK, "loss": "validation", "val_batches": 2}, train_steps=40)
    result = advise(spec)
    assert result.sweeps == 3 and result.curve is not None and result.sweep_curves is not None
    assert result.curve.loss_kind == "validation"
    assert [c.loss_kind for c in result.sweep_curves] == ["validation"] * 3
    assert advise(job(lr_range={**QUICK, "thoroughness": "quick"})).curve.loss_kind == "training"
