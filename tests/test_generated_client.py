"""A client generated from our OpenAPI document by a standard generator (openapi-python-client) talks to the
service as written: it parses jobs, pages and every error as the generated Problem, and the generator finds
nothing in the document it cannot handle."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import uuid

import pytest
from fastapi.testclient import TestClient

from lrbs.contract import resources
from lrbs.service.app import create_app
from lrbs.service.settings import Settings
from tests.conftest import MINIMAL_SPEC, WORKER_TOKEN


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("service")
    settings = Settings(
        database_url=f"sqlite:///{tmp}/lrbs.db", worker_token=WORKER_TOKEN, auto_migrate=True, data_dir=tmp / "data"
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def generated(service, tmp_path_factory):
    """The generated package, imported under a name of its own, with its client sending through `service`."""
    tmp = tmp_path_factory.mktemp("generated")
    spec = tmp / "openapi.json"
    spec.write_text(json.dumps(service.app.openapi()))
    config = tmp / "config.json"
    # No formatter run (faster, nothing else needed); the plots are binary, which the generator must be told.
    binary = {"image/png": "application/octet-stream", "image/svg+xml": "application/octet-stream"}
    config.write_text(json.dumps({"post_hooks": [], "content_type_overrides": binary}))
    name = f"lrbs_generated_{uuid.uuid4().hex[:8]}"
    args = [
        "generate",
        "--path",
        str(spec),
        "--output-path",
        str(tmp / name),
        "--meta",
        "none",
        "--config",
        str(config),
    ]
    done = subprocess.run([sys.executable, "-m", "openapi_python_client", *args], capture_output=True, text=True)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "warning" not in output.lower(), output  # it warns about each schema or operation it had to skip

    sys.path.insert(0, str(tmp))
    try:
        package = importlib.import_module(name)
        client = package.Client(base_url="http://testserver").set_httpx_client(service)
        yield lambda module: importlib.import_module(f"{name}.{module}"), client
    finally:
        sys.path.remove(str(tmp))
        for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
            del sys.modules[module]


def test_the_generated_client_parses_errors_as_problems(generated):
    load, client = generated
    Problem = load("models").Problem

    missing = load("api.jobs.get_job").sync_detailed(job_id="missing", client=client)
    assert missing.status_code == 404
    assert isinstance(missing.parsed, Problem)
    assert missing.parsed.status == 404 and missing.parsed.detail

    JobSpec = load("models").JobSpec
    bad = JobSpec.from_dict({**MINIMAL_SPEC, "lr_range": {"min_lr": -1.0}})
    invalid = load("api.jobs.submit_job").sync_detailed(body=bad, client=client)
    assert invalid.status_code == 422
    assert isinstance(invalid.parsed, Problem)
    assert [e.field for e in invalid.parsed.errors] == ["lr_range.min_lr"]


def test_the_generated_client_submits_lists_and_cancels_a_job(generated):
    load, client = generated
    models = load("models")

    submitted = load("api.jobs.submit_job").sync_detailed(body=models.JobSpec.from_dict(MINIMAL_SPEC), client=client)
    assert submitted.status_code == 202
    job = submitted.parsed
    assert isinstance(job, models.Job) and job.state == models.JobState.QUEUED
    resources.Job.model_validate(job.to_dict())  # the generated model kept every field the service sent

    page = load("api.jobs.list_jobs").sync(client=client, state=models.JobState.QUEUED)
    assert isinstance(page, models.JobPage)
    assert job.id in [j.id for j in page.jobs]

    cancelled = load("api.jobs.cancel_job").sync(job_id=job.id, client=client)
    assert isinstance(cancelled, models.Job) and cancelled.state == models.JobState.CANCELLED
