"""create_app(settings): the FastAPI application, its routers, error handlers and lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from contextlib import asynccontextmanager, suppress

import anyio.to_thread
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

import lrbs
from lrbs.contract.resources import WorkerOut
from lrbs.service import dashboard, db, docs, metrics, openapi, queue, retention, worker_registry
from lrbs.service.api import datasets, events, health, jobs, plots, worker_protocol, workers
from lrbs.service.api_keys import Caller
from lrbs.service.body_limits import MIB, BodyLimitMiddleware
from lrbs.service.caches import LRU, TTLCache
from lrbs.service.errors import install_handlers
from lrbs.service.settings import Settings

log = logging.getLogger("lrbs.service")
PURGE_INTERVAL_SECONDS = 60.0


class Doorbell:
    """Wakes this process's long-polling claimers the moment a job becomes claimable."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def ring(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)


def prepare_database(settings: Settings):
    engine = db.make_engine(settings.database_url, settings.database_timeout_seconds)
    auto = settings.auto_migrate
    if auto is None:
        auto = engine.dialect.name == "sqlite"
    if auto:
        db.upgrade(engine)
    elif not db.is_at_head(engine):
        engine.dispose()
        raise RuntimeError("the database schema is not up to date: run `lrbs db upgrade` (same LRBS_DATABASE_URL)")
    return engine


async def reap_forever(app: FastAPI) -> None:
    settings: Settings = app.state.settings

    def reap_once() -> int:
        with db.transaction(app.state.sessions) as session:
            requeued = queue.reap(session) + queue.release_unstarted(session, settings.claim_grace_seconds)
            if waiting := queue.queued_before(session, settings.unschedulable_seconds):
                workers = worker_registry.list_workers(session, settings, online_only=True)
                queue.fail_unschedulable(session, waiting, workers, settings)
            return requeued

    def purge_once() -> None:
        with db.transaction(app.state.sessions) as session:
            jobs, datasets = retention.purge(session, settings)
        if jobs or datasets:
            log.info("retention: deleted %d ended jobs and %d unused uploads", jobs, datasets)

    purged = 0.0

    while True:
        await asyncio.sleep(settings.reap_interval_seconds)
        try:
            if await run_in_threadpool(reap_once):
                app.state.doorbell.ring()
            if settings.retention_days is not None and time.monotonic() - purged > PURGE_INTERVAL_SECONDS:
                purged = time.monotonic()
                await run_in_threadpool(purge_once)
        except Exception:  # a database hiccup must not stop the reaper for good
            log.exception("reaping expired leases failed; trying again")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        anyio.to_thread.current_default_thread_limiter().total_tokens = db.THREADS
        engine = prepare_database(settings)
        app.state.sessions = db.make_sessionmaker(engine)
        app.state.doorbell = Doorbell()
        reaper = asyncio.create_task(reap_forever(app))
        # What start-up loaded (torch, FastAPI, SQLAlchemy, the models) lives as long as the process: out of the
        # garbage collector's way, so its full collections stop scanning it mid-request (p99 under load).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            reaper.cancel()
            with suppress(asyncio.CancelledError):
                await reaper
            engine.dispose()

    app = FastAPI(
        title="lrbs",
        version=lrbs.__version__,
        summary="Learning-rate and batch-size advice, measured on your model.",
        description="POST a job spec to `/v1/jobs`; a worker runs an LR range test with PyTorch; "
        "`GET /v1/jobs/{id}` returns the curve, every rule's suggestion and the recommended settings.",
        lifespan=lifespan,
        docs_url=None,  # docs.install serves /docs and /redoc with local assets instead of a CDN's
        redoc_url=None,
        generate_unique_id_function=lambda route: route.name,  # operationIds: submit_job, get_job, ...
    )
    app.state.settings = settings
    app.state.draining = False  # set on shutdown so long-polls end instead of holding it up
    app.state.key_cache = TTLCache[Caller](settings.api_key_cache_seconds)
    app.state.online_workers = TTLCache[list[WorkerOut]](settings.worker_list_cache_seconds, entries=1)
    app.state.plot_cache = LRU[bytes](entries=128, max_bytes=32 * MIB)  # a plot: 50–150 kB, ~1 s to render
    # Each job's JSON by (id, view), with what it was built from
    app.state.job_bodies = jobs.Bodies(entries=1024, max_bytes=64 * MIB, size=lambda kept: len(kept.body))
    install_handlers(app)

    app.state.metrics = metrics.Metrics(app)
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.add_middleware(metrics.RequestObserver, metrics=app.state.metrics)  # added last: outermost

    for module in (jobs, events, plots, datasets, workers, worker_protocol, health, metrics):
        app.include_router(module.router)
    openapi.install(app)
    docs.install(app)
    dashboard.install(app)
    return app
