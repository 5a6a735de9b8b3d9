"""The dashboard in a real browser: Chromium (Playwright) against `lrbs serve` with a worker, offline.

Every request to a host other than 127.0.0.1 is blocked and recorded, so a page that needed a CDN would fail
here. The service has an API key, so every fetch the pages make (list, submit, events, plots) must send it.
Skips when Chromium or Playwright is missing, unless LRBS_TEST_REQUIRE_BROWSER=1 (as .ci/run sets).
Screenshots of the job and list pages go to $LRBS_SCREENSHOT_DIR (default /tmp/lrbs-screenshots).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from lrbs.service import api_keys, db
from tests.conftest import MINIMAL_SPEC
from tests.live import chromium, only_loopback, service, sqlite_url

pytestmark = pytest.mark.slow
SCREENSHOTS = Path(os.environ.get("LRBS_SCREENSHOT_DIR", "/tmp/lrbs-screenshots"))
# Fast: one quick sweep, and two batch sizes so the batch plot and advice show.
SPEC = {
    **MINIMAL_SPEC,
    "name": "browser check",
    "labels": {"team": "dashboard"},
    "lr_range": {"batch_size": 32, "thoroughness": "quick"},
    "batch_sizes": [16, 64],
}


def js_exponential(x: float, digits: int = 2) -> str:
    """JavaScript's x.toExponential(digits), the page's LR format: 3.16e-2, 1.00e+0."""
    mantissa, exponent = f"{x:.{digits}e}".split("e")
    return f"{mantissa}e{int(exponent):+d}"


@pytest.fixture
def browser():
    with chromium() as launched:
        yield launched


def with_key(tmp_path) -> tuple[str, str]:
    """A database with one API key, before the service starts: from then on every /v1 call needs it."""
    url = sqlite_url(tmp_path)
    engine = db.make_engine(url)
    db.upgrade(engine)
    with db.transaction(db.make_sessionmaker(engine)) as session:
        _, key = api_keys.create(session, "browser")
    engine.dispose()
    return url, key


@pytest.mark.timeout(300)
def test_submit_follow_and_read_a_job_in_the_dashboard(browser, tmp_path):
    from playwright.sync_api import expect

    url, key = with_key(tmp_path)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page_errors: list[str] = []
    answered: list[tuple[str, int]] = []
    outside = only_loopback(context)
    context.on("response", lambda response: answered.append((urlsplit(response.url).path, response.status)))
    context.on("page", lambda tab: tab.on("pageerror", lambda error: page_errors.append(str(error))))
    page = context.new_page()

    with service(url, tmp_path) as http:
        http.headers["Authorization"] = f"Bearer {key}"
        base = f"http://127.0.0.1:{http.port}"

        # No key yet: the list asks for one; saved, it is sent from then on.
        page.goto(f"{base}/")
        expect(page.locator("#banner")).to_contain_text("needs an API key")
        page.fill("#api-key", key)
        page.click("#key-form button")
        expect(page.locator("#no-jobs")).to_be_visible()
        expect(page.locator("#banner")).to_be_hidden()

        # A bad spec: the problem's detail and each bad field show in the form.
        page.goto(f"{base}/submit")
        page.fill("#spec", json.dumps({**SPEC, "lr_range": {"num_steps": 1}}))
        page.click("#submit-button")
        expect(page.locator("#problem-errors")).to_contain_text("lr_range.num_steps: Input should be greater")
        page.fill("#spec", "{not json")
        page.click("#submit-button")
        expect(page.locator("#problem-detail")).to_contain_text("not valid JSON")

        page.fill("#spec", json.dumps(SPEC, indent=2))
        page.click("#submit-button")
        page.wait_for_url(re.compile(r"/jobs/[0-9a-f]+$"))
        job_id = page.url.rsplit("/", 1)[1]
        # A second tab whose event stream fails follows the job by polling instead.
        polling = context.new_page()
        polling.route("**/events", lambda route: route.abort())  # a page's routes come before its context's
        polled = []
        polling.on("response", lambda response: polled.append(urlsplit(response.url).path))
        polling.goto(page.url)

        expect(page.locator("#job-state")).to_have_text("succeeded", timeout=120_000)
        expect(polling.locator("#job-state")).to_have_text("succeeded", timeout=10_000)

        job = http.get(f"/v1/jobs/{job_id}").json()
        recommendation = job["result"]["recommendation"]
        for tab in (page, polling):
            expect(tab.locator("#rec-lr")).to_have_text(js_exponential(recommendation["lr"]))
        assert polled.count(f"/v1/jobs/{job_id}") >= 3, polled  # its first read, then once a second
        expect(page.locator("#rec-batch")).to_have_text(str(job["result"]["batch_advice"]["batch_size"]))
        expect(page.locator("#snippet")).to_have_text(recommendation["snippet"])
        steps = ", ".join(f"{phase} {n}" for phase, n in job["result"]["phase_steps"].items())
        expect(page.locator("#rec-facts")).to_contain_text(steps)  # the job's cost, phase by phase
        advice = job["result"]["batch_advice"]
        expect(page.locator("#batch-facts")).to_contain_text("Noise scale along training")
        if advice["batch_schedule"] is None:  # declined: the reason is shown instead
            expect(page.locator("#batch-facts")).to_contain_text(advice["batch_schedule_reason"])
        # each candidate's time, steps and samples to a target, relative: the chosen batch takes 1× of each
        chosen = page.locator("#candidate-rows tr.chosen td")
        expect(page.locator("#candidate-rows tr")).to_have_count(len(advice["candidates"]))
        expect(chosen).to_have_count(8)
        if advice["noise_scale"]["b_noise"] is not None:
            for column in (6, 7):
                expect(chosen.nth(column)).to_have_text("1×")
        for kind in ("lr_range", "batch_size"):
            page.wait_for_function(
                "kind => { const img = document.querySelector(`#plot-${kind} img`);"
                " return img.complete && img.naturalWidth > 0; }",
                arg=kind,
                timeout=20_000,
            )
        assert (f"/v1/jobs/{job_id}/events", 200) in answered  # followed live, not only polled
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / "dashboard-job.png", full_page=True)

        page.goto(f"{base}/")
        row = page.locator("#job-rows tr", has_text="browser check")
        expect(row).to_contain_text("succeeded")
        expect(row).to_contain_text(js_exponential(recommendation["lr"]))
        expect(row).to_contain_text("team: dashboard")
        page.screenshot(path=SCREENSHOTS / "dashboard-list.png", full_page=True)
        row.locator("a").click()
        page.wait_for_url(f"{base}/jobs/{job_id}")

        page.goto(f"{base}/jobs/0000nosuchjob")
        expect(page.locator("#not-found")).to_be_visible()

    print(f"\nscreenshots: {SCREENSHOTS / 'dashboard-job.png'} and {SCREENSHOTS / 'dashboard-list.png'}")
    assert not outside, f"the dashboard reached outside 127.0.0.1: {outside}"
    assert not page_errors, page_errors
