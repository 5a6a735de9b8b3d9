"""GET /metrics (Prometheus text format) and the middleware that times, counts and logs every request.

Counts that live in the database (jobs by state, queue depth, workers online) are read when Prometheus
scrapes, so every replica reports the same truth; histograms (request latency, queue wait, phase times) are
observed where they happen and are per replica, as Prometheus expects.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lrbs import logs
from lrbs.contract.resources import JobState
from lrbs.service import scheduling, worker_registry
from lrbs.service.db import reading
from lrbs.service.tables import JobRow

access_log = logging.getLogger("lrbs.access")
router = APIRouter(include_in_schema=False)
JOB_PATH = re.compile(r"^/v1/(?:worker/)?jobs/([0-9a-f]{24})")  # the ids queue.new_job_id makes
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    def __init__(self, app: FastAPI) -> None:
        self.registry = CollectorRegistry()  # one per app: tests build many apps in one process
        self.requests = Histogram(
            "lrbs_http_request_duration_seconds", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=self.registry, buckets=SECONDS,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "lrbs_queue_wait_seconds", "From submit to a worker's claim, per attempt.", registry=self.registry,
            buckets=SECONDS,
        )  # fmt: skip
        self.phase_time = Histogram(
            "lrbs_job_phase_seconds", "Wall time of each phase of succeeded jobs (setup, lr_range, confirm, ...).",
            ["phase"], registry=self.registry, buckets=SECONDS,
        )  # fmt: skip
        self.registry.register(_DatabaseCollector(app))


class _DatabaseCollector(Collector):
    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("lrbs_jobs", "Jobs by state.", labels=["state"])
        depth = GaugeMetricFamily("lrbs_queue_depth", "Jobs waiting for a worker.")
        online = GaugeMetricFamily("lrbs_workers_online", "Workers heard from recently, by device kind.",
                                   labels=["device_kind"])  # fmt: skip
        with reading(self.app.state.sessions) as session:
            counts = dict(session.execute(select(JobRow.state, func.count()).group_by(JobRow.state)).all())
            workers = worker_registry.list_workers(session, self.app.state.settings)
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state.value, 0))
        depth.add_metric([], counts.get(JobState.queued.value, 0))
        kinds: dict[str, int] = {"cpu": 0, "cuda": 0}
        for worker in workers:
            if worker.online:
                kind = scheduling.kind_of(worker.info).lower()
                kinds[kind] = kinds.get(kind, 0) + 1
        for kind, count in kinds.items():
            online.add_metric([kind], count)
        yield from (jobs, depth, online)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


class RequestObserver:
    """Outermost middleware: a request id (the caller's X-Request-ID, or a new one, echoed back), the job id of
    requests about a job, the latency histogram, and one log line per request (uvicorn's access log is off)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if REQUEST_ID.match(given) else uuid.uuid4().hex[:16]
        match = JOB_PATH.match(scope["path"])
        tokens = logs.request_id.set(rid), logs.job_id.set(match.group(1) if match else None)
        status = 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, observed)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"  # templates: bounded label values
            self.metrics.requests.labels(route, scope["method"], str(status)).observe(elapsed)
            fields = {"method": scope["method"], "route": route, "path": scope["path"], "status": status,
                      "duration_ms": round(elapsed * 1000, 1)}  # fmt: skip
            access_log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, elapsed * 1000, extra=fields)
            logs.request_id.reset(tokens[0])
            logs.job_id.reset(tokens[1])
