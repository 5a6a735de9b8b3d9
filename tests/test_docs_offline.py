"""/docs and /redoc work without the internet: every script, style sheet and icon they load comes from this
service. A headless Chromium that may reach nothing but 127.0.0.1 renders both (skipped without a browser,
unless LRBS_TEST_REQUIRE_BROWSER=1)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import live

REFERENCES = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\(\s*["']?([^"')]+)""")
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


def references(html: str) -> list[str]:
    return [a or b for a, b in REFERENCES.findall(html)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_everything_from_this_service(client, page):
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", r.text), r.text  # no CDN, no Google fonts, no remote favicon
    assets = references(r.text)
    assert any(a.endswith(".js") for a in assets) and all(a.startswith("/static/docs/") for a in assets), assets
    for asset in assets:
        got = client.get(asset)
        assert got.status_code == 200, asset
        assert CONTENT_TYPES[Path(asset).suffix] in got.headers["content-type"], (asset, got.headers)
        assert len(got.content) > (100_000 if asset.endswith((".js", ".css")) else 100), asset


def test_the_oauth2_redirect_page_and_the_schema_stay_apart(client):
    r = client.get("/docs/oauth2-redirect")
    assert r.status_code == 200 and "oauth2" in r.text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc", "/static"))]


@pytest.mark.slow
def test_a_browser_that_reaches_only_this_service_renders_both_pages(tmp_path):
    with live.chromium() as chromium, live.service(live.sqlite_url(tmp_path), tmp_path, workers=0) as http:
        base = f"http://127.0.0.1:{http.port}"
        page = chromium.new_page()
        errors: list[str] = []
        outside = live.only_loopback(page)
        page.on("pageerror", lambda error: errors.append(str(error)))

        page.goto(f"{base}/docs")
        submit = page.locator("#operations-jobs-submit_job")  # Swagger UI: operations-{tag}-{operationId}
        submit.wait_for(timeout=30_000)
        assert "Submit a job" in submit.inner_text()

        page.goto(f"{base}/redoc")
        page.locator("h1", has_text="lrbs").wait_for(timeout=30_000)
        page.locator("h2", has_text="Submit a job").wait_for(timeout=30_000)  # the operation, rendered

        assert outside == [] and errors == [], (outside, errors)
