"""The dashboard: three server-rendered pages (the job list at /, a job at /jobs/{id}, a submit form at /submit)
and one script that reads the public /v1 API from the browser.

The pages hold no job data: the script fetches it with the API key the user typed in (kept in localStorage), so
the pages need no auth of their own and a key still sees only its own jobs. Everything is served from this
package (no CDN, no build step), so the dashboard works offline. Its routes stay out of the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

import lrbs
from lrbs.service.api.jobs import SUBMIT_EXAMPLES

HERE = Path(__file__).parent
STATIC_PATH = "/static/dashboard"  # beside /static/docs (lrbs.service.docs)
templates = Jinja2Templates(directory=HERE / "templates")  # .html templates are autoescaped
templates.env.policies["json.dumps_kwargs"] = {"sort_keys": False}  # specs read model, dataset, optimizer
router = APIRouter(include_in_schema=False)


def render(request: Request, template: str, page: str, **context: object) -> HTMLResponse:
    # Links and API calls are root-relative, prefixed with root_path for a service behind a path prefix; never
    # url_for, which writes absolute http:// URLs.
    root = request.scope.get("root_path", "").rstrip("/")
    context |= {"page": page, "root": root, "static": root + STATIC_PATH, "version": lrbs.__version__}
    return templates.TemplateResponse(request, template, context)


@router.get("/")
def job_list(request: Request) -> HTMLResponse:
    return render(request, "jobs.html", "jobs", states=["queued", "running", "succeeded", "failed", "cancelled"])


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str) -> HTMLResponse:
    # Always 200: whether the job exists depends on the caller's key, which only the browser has; the script
    # says "not found" when the API answers 404.
    return render(request, "job.html", "job", job_id=job_id)


@router.get("/submit")
def submit_page(request: Request) -> HTMLResponse:
    return render(request, "submit.html", "submit", examples=SUBMIT_EXAMPLES, first=next(iter(SUBMIT_EXAMPLES)))


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(STATIC_PATH, StaticFiles(directory=HERE / "static"), name="dashboard-static")
