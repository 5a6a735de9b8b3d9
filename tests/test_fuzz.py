"""A short generated-request run against a live service (the long run is `python -m benchmarks.fuzz`)."""

from __future__ import annotations

import pytest

from benchmarks.fuzz import run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_generated_requests_get_no_5xx_and_the_worker_lives_on():
    found = run(examples=5, seed=1, checks="not_a_server_error,response_schema_conformance")
    assert found["requests"] > 300, found
    assert found["5xx"] == 0 and found["check failures"] == {}, found
    assert found["schemathesis exit"] == 0, found["schemathesis tail"]  # also failures the report does not list
    assert found["worker online after"] and found["normal job after"] == "succeeded", found
