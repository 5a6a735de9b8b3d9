"""The dashboard's pages and assets as a browser gets them: HTML from the service itself, nothing from elsewhere.
What the pages do in a browser is tests/test_browser.py."""

from __future__ import annotations

import json
import re

from lrbs.service.api.jobs import SUBMIT_EXAMPLES
from tests.conftest import MINIMAL_SPEC

PAGES = ["/", "/submit", "/jobs/{id}"]
ASSETS = {"/static/dashboard/dashboard.js": "javascript", "/static/dashboard/dashboard.css": "text/css"}


def pages(client) -> dict[str, str]:
    job_id = client.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"]
    return {path.format(id=job_id): path for path in PAGES}


def test_every_page_renders_html_that_loads_the_dashboard_assets(client):
    for url in pages(client):
        r = client.get(url)
        assert r.status_code == 200, url
        assert r.headers["content-type"].startswith("text/html")
        for asset in ASSETS:
            assert asset in r.text, (url, asset)


def test_the_job_page_names_its_job(client):
    job_id = client.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"]
    assert f'data-job-id="{job_id}"' in client.get(f"/jobs/{job_id}").text


def test_an_unknown_job_page_renders_and_its_script_says_not_found(client):
    """Whether a job exists depends on the caller's API key, which only the browser holds: the page renders
    and the script shows "not found" when the API answers 404."""
    r = client.get("/jobs/no-such-job")
    assert r.status_code == 200 and 'data-job-id="no-such-job"' in r.text
    assert "Job not found" in r.text
    assert client.get("/v1/jobs/no-such-job").status_code == 404


def test_a_job_id_in_the_url_is_escaped(client):
    r = client.get('/jobs/<img src=x onerror="alert(1)">')
    assert r.status_code == 200
    assert "<img src=x" not in r.text and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in r.text


def test_the_submit_page_carries_every_example_as_json(client):
    page = client.get("/submit").text
    found = re.search(r'<script type="application/json" id="examples">(.*?)</script>', page, re.S)
    assert found, "no examples script tag"
    assert json.loads(found.group(1)) == SUBMIT_EXAMPLES
    for name, example in SUBMIT_EXAMPLES.items():
        assert f'<option value="{name}">' in page
        assert example["summary"].replace("'", "&#39;") in page
    first = re.search(r'<textarea id="spec"[^>]*>(.*?)</textarea>', page, re.S)
    assert first and json.loads(first.group(1)) == SUBMIT_EXAMPLES["lr_only"]["value"]


def test_assets_answer_with_their_content_types(client):
    for path, kind in ASSETS.items():
        r = client.get(path)
        assert r.status_code == 200, path
        assert kind in r.headers["content-type"], (path, r.headers["content-type"])
    assert client.get("/static/dashboard/nope.js").status_code == 404


def test_nothing_refers_to_another_host(client):
    """The dashboard works offline: no page or asset names an http(s):// URL (a CDN, a font, a tracker)."""
    for url in [*pages(client), *ASSETS]:
        text = client.get(url).text
        assert not re.search(r"https?://", text), url
        assert not re.search(r"""(src|href)=["']//""", text), url  # protocol-relative URLs too


def test_the_dashboard_stays_out_of_the_openapi_document(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/", "/submit", "/jobs/{job_id}"} & set(paths)
    assert all(p.startswith(("/v1/", "/healthz", "/readyz")) for p in paths)
