"""The `lrbs` command: serve (service + embedded worker), worker, db upgrade."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time

import click

from lrbs.worker.__main__ import main as worker_command

log = logging.getLogger("lrbs.serve")
RESTART_MAX_SECONDS = 60.0  # the longest wait before an embedded worker that keeps dying is started again
RESTART_RESET_SECONDS = 60.0


@click.group()
def main() -> None:
    """lrbs: learning-rate and batch-size advice as a service."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers",
    "n_workers",
    default=1,
    show_default=True,
    type=int,
    help="Worker processes started beside the service (0: none; start `lrbs worker` elsewhere).",
)
def serve(host: str, port: int, n_workers: int) -> None:
    """Start the service (LRBS_DATABASE_URL, default SQLite ./lrbs.db) with a worker beside it."""
    import uvicorn

    from lrbs.service.app import create_app
    from lrbs.service.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings()
    if settings.worker_token is None:
        settings.worker_token = secrets.token_urlsafe(32)
        if n_workers == 0:
            click.echo(f"worker token for this run (set LRBS_WORKER_TOKEN to fix one): {settings.worker_token}")
    app = create_app(settings)  # fails here, before any worker starts, if the schema is not current
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    workers = EmbeddedWorkers(url, settings.worker_token, n_workers)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.draining = True
            super().handle_exit(sig, frame)

    try:
        workers.start()
        Server(uvicorn.Config(app, host=host, port=port, log_level="info")).run()
    finally:
        workers.stop()


class EmbeddedWorkers(threading.Thread):
    """The workers `lrbs serve` runs beside the service: started, watched, and restarted with backoff if one dies."""

    def __init__(self, url: str, token: str, count: int) -> None:
        super().__init__(daemon=True, name="embedded-workers")
        self.url, self.count = url, count
        self.env = {**os.environ, "LRBS_WORKER_TOKEN": token}
        self.children: dict[int, subprocess.Popen] = {}
        self.stopping = threading.Event()

    def spawn(self, i: int) -> None:
        # -P: the current folder is not put on sys.path, so a worker.py or lrbs/ there cannot stand in for ours.
        command = [sys.executable, "-P", "-m", "lrbs.worker", "--url", self.url, "--worker-id", f"embedded-{i}"]
        self.children[i] = subprocess.Popen(command, env=self.env, preexec_fn=_die_with_parent)

    def run(self) -> None:
        for i in range(self.count):
            self.spawn(i)
        started = {i: time.monotonic() for i in self.children}
        backoff = dict.fromkeys(self.children, 1.0)
        while not self.stopping.wait(1.0):
            for i, child in list(self.children.items()):
                if child.poll() is None:
                    if time.monotonic() - started[i] > RESTART_RESET_SECONDS:
                        backoff[i] = 1.0  # it has run a while: the next crash starts the backoff over
                    continue
                log.error("embedded worker %d exited (%s); restarting it in %.0f s", i, child.returncode, backoff[i])
                if self.stopping.wait(backoff[i]):
                    return
                backoff[i] = min(backoff[i] * 2, RESTART_MAX_SECONDS)
                self.spawn(i)
                started[i] = time.monotonic()

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join()
        for child in self.children.values():
            child.terminate()
        for child in self.children.values():
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()


def _die_with_parent() -> None:
    """Linux: the embedded worker gets SIGTERM if the service dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


main.add_command(worker_command, name="worker")


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command()
def upgrade() -> None:
    """Apply migrations to LRBS_DATABASE_URL (run once per release on PostgreSQL)."""
    from lrbs.service.db import make_engine
    from lrbs.service.db import upgrade as run_upgrade
    from lrbs.service.settings import Settings

    engine = make_engine(Settings().database_url)
    run_upgrade(engine)
    click.echo(f"database at {engine.url.render_as_string(hide_password=True)} is at the latest revision")
