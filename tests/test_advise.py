"""A whole job on the worker side, in process: built-ins, training options and what a CPU refuses."""

import pytest
import torch

from service.spec import JobSpec
from worker.advise import advise
from worker.errors import JobError

QUICK = {"num_steps": 30, "batch_size": 16}


def job(**parts) -> JobSpec:
    return JobSpec.model_validate({
        "model": {"name": "mlp", "params": {"hidden": [16]}},
        "dataset": {"name": "synthetic_classification", "params": {"n_samples": 256}},
        "optimizer": {"name": "sgd", "params": {"momentum": 0.9}},
        "lr_range": QUICK,
        **parts,
    })


def test_a_resnet_in_bf16_with_channels_last_and_clipping():
    spec = job(model={"name": "resnet", "params": {"width": 4}},
               dataset={"name": "synthetic_images", "params": {"n_samples": 128, "height": 8, "width": 8}},
               precision="bf16", channels_last=True, grad_clip_norm=1.0)
    result = advise(spec)
    assert result.steps_run > 0 and all(torch.isfinite(torch.tensor(result.curve.loss)))


def test_a_transformer_lm_on_token_streams():
    spec = job(model={"name": "transformer_lm", "params": {"layers": 1, "d_model": 16, "heads": 2}},
               dataset={"name": "synthetic_tokens", "params": {"n_samples": 64, "context": 8, "vocab_size": 20}},
               optimizer={"name": "adamw"})
    assert spec.loss == "cross_entropy"
    assert advise(spec).steps_run > 0


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
        job(model={"name": "transformer_lm", "params": {"d_model": 30, "heads": 4}},
            dataset={"name": "synthetic_tokens"})
    with pytest.raises(ValueError, match="should match pattern"):
        job(device="tpu")
