"""Admission at submit: specs no worker could run are refused with the estimate and the limit, nothing stored."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from lrbs.contract.job_spec import JobSpec
from tests.conftest import AUTH, MINIMAL_SPEC

PROBLEM = "application/problem+json"


@pytest.mark.parametrize(
    ("changes", "setting"),
    [
        ({"model": {"name": "mlp", "params": {"hidden": [65_536] * 32}}}, "LRBS_MAX_PARAMS"),  # ~550 GB of weights
        (
            {
                "dataset": {
                    "name": "synthetic_classification",
                    "params": {"n_samples": 1_000_000, "n_features": 100_000},
                }
            },
            "LRBS_MAX_DATA_GB",
        ),
        (
            {
                "model": {"name": "transformer_lm", "params": {"d_model": 16_384, "layers": 96, "heads": 128}},
                "dataset": {"name": "synthetic_tokens", "params": {"n_samples": 1_000, "context": 64}},
                "optimizer": {"name": "adamw"},
            },
            "LRBS_MAX_PARAMS",
        ),
        (
            {
                "model": {"name": "transformer_lm"},
                "dataset": {"name": "synthetic_tokens", "params": {"n_samples": 1_000_000, "context": 8192}},
                "optimizer": {"name": "adamw"},
            },
            "LRBS_MAX_DATA_GB",
        ),
        (
            {
                "model": {"name": "cnn"},
                "dataset": {
                    "name": "synthetic_images",
                    "params": {"n_samples": 200_000, "channels": 64, "height": 512, "width": 512},
                },
            },
            "LRBS_MAX_DATA_GB",
        ),
    ],
)
def test_specs_no_worker_could_run_are_refused_at_submit(client, changes, setting):
    r = client.post("/v1/jobs", json={**MINIMAL_SPEC, **changes})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
    assert setting in r.json()["detail"]
    assert client.get("/v1/jobs").json()["jobs"] == []


def test_a_job_bigger_than_every_worker_is_refused_saying_so(client):
    info = {
        "hostname": "small", "lrbs": "x", "torch": "x", "python": "x", "precisions": ["fp32"],
        "devices": [{"name": "cpu", "memory_gb": 1.0}], "builtins": {}, "plugin_modules": [], "plugins": {},
    }  # fmt: skip
    assert (
        client.post("/v1/worker/register", json={"worker_id": "small", "info": info}, headers=AUTH).status_code == 204
    )
    big = {**MINIMAL_SPEC, "model": {"name": "mlp", "params": {"hidden": [8192, 8192, 8192]}}}  # ~2 GB to train
    r = client.post("/v1/jobs", json=big)
    assert r.status_code == 422 and "more than the largest worker has (1 GB)" in r.json()["detail"]
    assert client.post("/v1/jobs", json=MINIMAL_SPEC).status_code == 202  # a job that fits still goes in


def test_an_upload_with_a_huge_label_is_refused(client):
    buf = io.BytesIO()
    y = np.arange(64) % 2
    y[0] = 400_000_000
    np.savez(buf, x=np.zeros((64, 3), np.float32), y=y)
    r = client.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())})
    assert r.status_code == 422 and "LRBS_MAX_CLASSES" in r.json()["detail"] and "400000001" in r.json()["detail"]
    assert client.get("/v1/datasets").json()["datasets"] == []


@pytest.mark.parametrize(
    "changes",
    [
        {"model": {"name": "linear"}},
        {"model": {"name": "mlp", "params": {"hidden": [7, 5], "batch_norm": True}}},
        {"model": {"name": "cnn", "params": {"channels": [4, 6]}}, "dataset": {"name": "synthetic_images"}},
        {
            "model": {"name": "resnet", "params": {"depth": 2, "width": 4, "stages": 3}},
            "dataset": {"name": "synthetic_images"},
        },
        {
            "model": {"name": "transformer_lm", "params": {"layers": 3, "d_model": 24, "heads": 4, "mlp_ratio": 2}},
            "dataset": {"name": "synthetic_tokens", "params": {"context": 10, "vocab_size": 30}},
        },
    ],
)
def test_the_parameter_count_admission_reads_matches_the_real_network(changes):
    """The contract counts parameters without torch; the worker's network must have exactly that many."""
    from lrbs.worker.job import JobContext

    spec = JobSpec.model_validate({**MINIMAL_SPEC, **changes})
    model, _ = JobContext.build(spec).fresh(1e-3)
    assert spec.model.param_count(spec.dataset.shape()) == sum(p.numel() for p in model.parameters())
    assert spec.model.activation_bytes(spec.dataset.shape()) > 0
    assert torch.is_grad_enabled()
