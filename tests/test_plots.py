"""Plots of a real result (a tiny job run by the worker code in process), and the endpoint that serves them."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET

import pytest

from lrbs import plots
from lrbs.contract.job_spec import JobSpec
from lrbs.contract.results import Result
from lrbs.worker.advise import advise
from tests.conftest import AUTH, MINIMAL_SPEC
from tests.test_api_keys import create_key

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROBLEM = "application/problem+json"
# Three sweeps, three confirmation trainings and three batch sizes: every element of both plots, in seconds.
SPEC = {
    **MINIMAL_SPEC,
    "dataset": {"name": "synthetic_classification", "params": {"n_samples": 256}},
    "lr_range": {"num_steps": 30, "batch_size": 16, "min_lr": 1e-4, "thoroughness": "thorough"},
    "train_steps": 40,
    "batch_sizes": [16, 32, 64],
    "lr_scaling": "linear",  # no range test per batch size: faster
    "memory_budget_gb": 0.5,
}
LR_ONLY = {k: v for k, v in SPEC.items() if k not in ("batch_sizes", "lr_scaling")}


@pytest.fixture(scope="module")
def result() -> Result:
    return advise(JobSpec.model_validate(SPEC))


@pytest.fixture(scope="module")
def lr_only(result) -> Result:
    """What a job without batch_sizes returns: the same, less the batch advice."""
    return result.model_copy(update={"batch_advice": None})


def svg_text(svg: bytes) -> str:
    root = ET.fromstring(svg)  # parses: well-formed XML
    return " ".join(t for el in root.iter() for t in (el.text, el.tail) if t and t.strip())


def png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG_MAGIC)
    return struct.unpack(">II", png[16:24])  # IHDR: width, height


def test_the_lr_range_plot_shows_the_sweeps_every_rule_and_the_advice(result):
    text = svg_text(plots.render(result, "lr_range", "svg"))
    rec = result.recommendation
    assert rec is not None and rec.confirmation
    assert "each sweep (3)" in text and "median, smoothed" in text
    for name, suggestion in result.suggestions.items():
        if suggestion.lr is not None:
            assert f"{name}: {suggestion.lr:.3g}" in text
    assert f"recommended {rec.lr:.3g}" in text and f"safe range {rec.lr_low:.3g}" in text
    assert rec.rule in text and f"{rec.confidence} confidence" in text
    assert "confirmation: validation loss" in text
    if result.diverged_at_lr is not None:
        assert f"diverged at {result.diverged_at_lr:.3g}" in text


def test_the_loss_axis_names_the_loss_the_curve_is(result):
    assert result.curve is not None and result.curve.loss_kind == "training"
    assert "training loss" in svg_text(plots.render(result, "lr_range", "svg"))
    validation = result.model_copy(update={"curve": result.curve.model_copy(update={"loss_kind": "validation"})})
    text = svg_text(plots.render(validation, "lr_range", "svg"))
    assert "validation loss (after each step)" in text and "training loss" not in text


def test_the_batch_size_plot_shows_each_panel_and_the_chosen_batch(result):
    advice = result.batch_advice
    assert advice is not None
    text = svg_text(plots.render(result, "batch_size", "svg"))
    for label in ("samples / s", "peak memory (MiB)", "time to target", f"chosen: {advice.batch_size}"):
        assert label in text
    assert advice.memory_budget_mb == 512 and "budget: 512 MiB" in text
    if advice.largest_fitting is not None:
        assert f"largest that fits (10% headroom): {advice.largest_fitting}" in text
    if advice.noise_scale is not None and advice.noise_scale.b_noise is not None:
        assert "B_noise ≈" in text


@pytest.mark.parametrize("plot", ["lr_range", "batch_size"])
def test_pngs_have_a_fixed_size_and_svgs_the_same_bytes_every_time(result, plot):
    width, height = plots.SIZES[plot]
    assert png_size(plots.render(result, plot, "png")) == (width * plots.DPI, height * plots.DPI)
    first = plots.render(result, plot, "svg")
    stored = Result.model_validate_json(result.model_dump_json())  # as the service reads it back
    assert plots.render(stored, plot, "svg") == first
    assert b"<dc:date>" not in first


def test_a_result_without_that_data_says_why(lr_only):
    with pytest.raises(plots.NoPlot, match="no batch_sizes"):
        plots.render(lr_only, "batch_size", "png")
    with pytest.raises(plots.NoPlot, match="no range-test curve"):
        plots.render(lr_only.model_copy(update={"curve": None}), "lr_range", "svg")


def finish(client, spec: dict, result: Result, headers: dict | None = None) -> str:
    """Submit a job and complete it through the worker protocol, as a worker would."""
    job_id = client.post("/v1/jobs", json=spec, headers=headers).json()["id"]
    lease = client.post("/v1/worker/claim", json={"worker_id": "w", "wait_seconds": 0}, headers=AUTH).json()
    assert lease["job_id"] == job_id
    body = {"lease_token": lease["lease_token"], "result": result.model_dump(mode="json")}
    assert client.post(f"/v1/worker/jobs/{job_id}:complete", json=body, headers=AUTH).status_code == 204
    return job_id


def test_plots_of_a_finished_job_and_why_there_are_none(client, result, lr_only):
    missing = client.get("/v1/jobs/nope/plots/lr_range.svg")
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM
    assert client.get("/v1/jobs/nope/plots/loss.svg").status_code == 422  # the four names are the contract

    queued = client.post("/v1/jobs", json=SPEC).json()["id"]
    early = client.get(f"/v1/jobs/{queued}/plots/lr_range.svg")
    assert early.status_code == 409 and early.headers["content-type"] == PROBLEM
    assert "queued" in early.json()["detail"] and "succeeded" in early.json()["detail"]
    client.post(f"/v1/jobs/{queued}:cancel")

    job = finish(client, SPEC, result)
    svg = client.get(f"/v1/jobs/{job}/plots/lr_range.svg")
    assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
    assert svg.headers["cache-control"] == "private, max-age=3600"
    assert "recommended" in svg_text(svg.content)
    png = client.get(f"/v1/jobs/{job}/plots/batch_size.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png_size(png.content) == (1100, 1000)

    no_batches = finish(client, LR_ONLY, lr_only)
    refused = client.get(f"/v1/jobs/{no_batches}/plots/batch_size.svg")
    assert refused.status_code == 404 and refused.headers["content-type"] == PROBLEM
    assert "no batch_sizes" in refused.json()["detail"]
    assert client.get(f"/v1/jobs/{no_batches}/plots/lr_range.png").status_code == 200


def test_a_second_request_is_served_from_the_cache(client, lr_only, monkeypatch):
    job = finish(client, LR_ONLY, lr_only)
    calls = []
    real = plots.render
    monkeypatch.setattr(plots, "render", lambda *args: calls.append(args) or real(*args))
    first = client.get(f"/v1/jobs/{job}/plots/lr_range.svg")
    again = client.get(f"/v1/jobs/{job}/plots/lr_range.svg")
    assert first.status_code == again.status_code == 200 and first.content == again.content
    assert len(calls) == 1
    client.get(f"/v1/jobs/{job}/plots/lr_range.png")  # another plot is another entry
    assert len(calls) == 2


def test_a_key_sees_only_its_own_jobs_plots(client, settings, monkeypatch, lr_only):
    mine = create_key(monkeypatch, settings, "team-a")
    theirs = create_key(monkeypatch, settings, "team-b")
    job = finish(client, LR_ONLY, lr_only, headers=mine)
    assert client.get(f"/v1/jobs/{job}/plots/lr_range.png", headers=mine).status_code == 200
    other = client.get(f"/v1/jobs/{job}/plots/lr_range.png", headers=theirs)
    assert other.status_code == 404 and other.headers["content-type"] == PROBLEM
    assert client.get(f"/v1/jobs/{job}/plots/lr_range.png").status_code == 401
