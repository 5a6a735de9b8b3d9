"""The OpenAPI document tells the truth: errors are problem+json with one Problem schema, operationIds read
well, the worker protocol stays out of it, and the bearer key is declared."""

from __future__ import annotations

import json

from lrbs.contract.resources import Problem
from tests.conftest import MINIMAL_SPEC

OPERATIONS = {
    "submit_job", "get_job", "list_jobs", "cancel_job", "delete_job", "upload_dataset", "list_datasets",
    "get_dataset", "delete_dataset", "list_workers", "healthz", "readyz", "follow_job", "get_job_plot",
}  # fmt: skip


def test_every_error_is_a_problem_under_problem_json(client):
    schema = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(schema)
    assert "Problem" in schema["components"]["schemas"]
    seen = set()
    for path, operations in schema["paths"].items():
        assert not path.startswith("/v1/worker/")  # the workers' protocol is not public
        for method, operation in operations.items():
            seen.add(operation["operationId"])
            assert operation.get("summary") or operation.get("description"), (method, path)
            errors = {s: r for s, r in operation["responses"].items() if s[0] in "45"}
            if path.startswith("/v1/"):
                assert {"401", "503"} <= set(errors), (method, path)
            for status, response in errors.items():
                assert list(response["content"]) == ["application/problem+json"], (method, path, status)
                assert response["content"]["application/problem+json"]["schema"] == {
                    "$ref": "#/components/schemas/Problem"
                }
    assert seen == OPERATIONS
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert all(tag.get("description") for tag in schema["tags"])


def test_live_errors_match_the_problem_schema(client):
    for r in (
        client.post("/v1/jobs", json={**MINIMAL_SPEC, "lr_range": {"num_steps": 1}}),
        client.get("/v1/jobs/nope"),
        client.post("/v1/jobs", content=b"{", headers={"content-type": "application/json"}),
        client.get("/v1/jobs", params={"page_token": "garbage"}),
    ):
        assert r.headers["content-type"] == "application/problem+json"
        problem = Problem.model_validate(r.json())
        assert problem.status == r.status_code and problem.detail


def test_the_submit_operation_shows_named_examples_that_are_valid_specs(client):
    from lrbs.contract.job_spec import JobSpec

    schema = client.get("/openapi.json").json()
    examples = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert set(examples) == {"lr_only", "lr_and_batch", "uploaded_dataset", "plugin_model"}
    for name in ("lr_only", "lr_and_batch", "plugin_model"):  # the upload example needs a real dataset id
        JobSpec.model_validate(examples[name]["value"])
