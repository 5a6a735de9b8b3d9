"""The `lrbs` command: serve (service + embedded worker), worker, db upgrade."""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time

import click

import lrbs
from lrbs import logs
from lrbs.client_cli import COMMANDS as client_commands
from lrbs.worker.__main__ import main as worker_command
from lrbs.worker.__main__ import threads_each

log = logging.getLogger("lrbs.serve")
RESTART_MAX_SECONDS = 60.0  # the longest wait before an embedded worker that keeps dying is started again
RESTART_RESET_SECONDS = 60.0


@click.group()
@click.version_option(lrbs.__version__, prog_name="lrbs")
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

    settings = Settings()
    logs.configure(settings.log_format)
    os.environ["LRBS_LOG_FORMAT"] = settings.log_format  # the embedded workers log the same way
    if settings.worker_token is None:
        settings.worker_token = secrets.token_urlsafe(32)
        if n_workers == 0:
            click.echo(f"worker token for this run (set LRBS_WORKER_TOKEN to fix one): {settings.worker_token}")
    app = create_app(settings)  # fails here, before any worker starts, if the schema is not current
    if not _keys_exist(settings):
        if not _is_loopback(host):
            raise click.ClickException(
                f"refusing to serve on {host} with no API key: anyone who can reach it could use it. Create a key "
                "first (`lrbs keys create --name <team>`, same LRBS_DATABASE_URL), or bind to 127.0.0.1"
            )
        log.warning(
            "no API key exists: the API is open to anyone who can reach %s (fine on loopback); "
            "`lrbs keys create --name <team>` closes it",
            host,
        )
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    workers = EmbeddedWorkers(url, settings.worker_token, n_workers)

    class Server(uvicorn.Server):
        """On SIGTERM/SIGINT: stop handing out jobs, let the embedded workers hand theirs back while the API
        still answers them, then stop serving. A second signal stops at once."""

        def handle_exit(self, sig, frame) -> None:
            if app.state.draining or not workers.children:
                app.state.draining = True
                super().handle_exit(sig, frame)
                return
            app.state.draining = True  # claims answer 204 from now on
            log.info("signal %d: the embedded workers hand back their jobs, then the service stops", sig)
            # Off the event loop: the workers' hand-back requests need it while we wait for them.
            threading.Thread(target=self.stop_after_workers, args=(sig, frame), daemon=True).start()

        def stop_after_workers(self, sig, frame) -> None:
            workers.stop()
            super().handle_exit(sig, frame)

    try:
        workers.start()
        # lrbs.logs formats every line; the middleware writes one line per request, with its id
        Server(uvicorn.Config(app, host=host, port=port, log_level="info", log_config=None, access_log=False)).run()
    finally:
        workers.stop()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _keys_exist(settings) -> bool:
    from lrbs.service import api_keys, db

    engine = _engine(settings)
    try:
        with db.transaction(db.make_sessionmaker(engine)) as session:
            return api_keys.any_active(session)
    finally:
        engine.dispose()


def _engine(settings):
    """The database, migrated if the service would migrate it at start-up (SQLite by default)."""
    from lrbs.service.app import prepare_database

    try:
        return prepare_database(settings)
    except RuntimeError as exc:  # an old schema on PostgreSQL: say what to run
        raise click.ClickException(str(exc)) from None


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
        if self.count > 1 and "LRBS_WORKER_THREADS" not in self.env:  # they share this machine's cores: split them
            command += ["--threads", str(threads_each(self.count))]
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
for command in client_commands:
    main.add_command(command)


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


@main.group()
def keys() -> None:
    """API keys (on LRBS_DATABASE_URL directly; the service need not run)."""


@keys.command("create")
@click.option("--name", required=True, help="Who the key is for, e.g. team-vision.")
@click.option("--admin", is_flag=True, help="An admin key sees every job and dataset.")
def keys_create(name: str, admin: bool) -> None:
    """Create a key and print it once: only its hash is stored."""
    from lrbs.service import api_keys, db
    from lrbs.service.errors import Problem
    from lrbs.service.settings import Settings

    try:
        with db.transaction(db.make_sessionmaker(_engine(Settings()))) as session:
            row, plain = api_keys.create(session, name, admin=admin)
    except Problem as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(plain)
    click.echo(
        f"key {row.id} ({name}{', admin' if admin else ''}) created: store it now, it is not shown again", err=True
    )


@keys.command("list")
def keys_list() -> None:
    """Every key: id, name, admin, created, revoked (never the key itself)."""
    from lrbs.service import api_keys, db
    from lrbs.service.settings import Settings

    with db.transaction(db.make_sessionmaker(_engine(Settings()))) as session:
        rows = api_keys.list_keys(session)
        for row in rows:
            revoked = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
            click.echo(
                f"{row.id}  {row.name:<24} {'admin' if row.admin else 'team ':<6} "
                f"created {row.created_at:%Y-%m-%d %H:%M}  {revoked}"
            )
    if not rows:
        click.echo("no keys: the API is open (serve binds to loopback only)", err=True)


@keys.command("revoke")
@click.argument("name_or_id")
def keys_revoke(name_or_id: str) -> None:
    """Revoke a key by its id or name: requests with it get 401 from now on."""
    from lrbs.service import api_keys, db
    from lrbs.service.errors import Problem
    from lrbs.service.settings import Settings

    try:
        with db.transaction(db.make_sessionmaker(_engine(Settings()))) as session:
            row = api_keys.revoke(session, name_or_id)
            click.echo(f"key {row.id} ({row.name}) revoked")
    except Problem as exc:
        raise click.ClickException(exc.detail) from None
