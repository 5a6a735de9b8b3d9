"""Engine, sessions and migrations. SQLite gets WAL, a busy timeout and foreign keys on every connection."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, CursorResult, Engine, Result, create_engine, event
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Float

try:
    import fcntl
except ImportError:  # Windows: the in-process queue only
    fcntl = None  # type: ignore[assignment]

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
READ_ONLY = "lrbs_read_only"  # an execution option: this transaction only reads
# The thread pool that runs blocking endpoint work (app.lifespan sizes anyio's to it) and the connections kept per
# replica: one each, so no thread waits for a connection and none is opened and closed per request. Fewer threads
# than anyio's default 40 also means less fighting over the GIL: the event loop gets it back sooner (lower p99).
THREADS = 8  # benchmarks/load.py: 6–16 threads served as many requests/s as 40, with a lower p99


class WriterQueue:
    """Where a SQLite database's writers wait their turn, instead of in SQLite's busy handler, which sleeps blind
    (1, 2, 5 ... 100 ms) and gave POSTs a p99 of 1–2 s under load. A process's threads queue on a lock, woken the
    moment the previous writer is done; the processes on one database file (replicas, the CLI) then take turns
    on an advisory lock on `<database>-writer`, tried every half millisecond while another holds it. Both waits
    together last at most `timeout` seconds, after which the writer fails with "database is locked" (503)."""

    POLL_SECONDS = 0.0005

    def __init__(self, database: str | None, timeout: float) -> None:
        self.timeout, self._threads = timeout, threading.Lock()
        self._path = f"{database}-writer" if database and database != ":memory:" and fcntl else None
        self._fd: int | None = None  # opened on first use; only the thread holding self._threads touches it

    @contextmanager
    def turn(self) -> Iterator[None]:
        deadline = time.monotonic() + self.timeout
        if not self._threads.acquire(timeout=self.timeout):
            raise _locked()
        try:
            if self._path is not None:
                self._take_file(self._path, deadline)
            try:
                yield
            finally:
                if self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _take_file(self, path: str, deadline: float) -> None:
        if self._fd is None:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            weakref.finalize(self, os.close, self._fd)
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise _locked() from None
                time.sleep(self.POLL_SECONDS)


def _locked() -> OperationalError:
    return OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked"))


# Per SQLite engine, the queue its writing transactions take turns in (see `transaction`).
_sqlite_writers: weakref.WeakKeyDictionary[Engine, WriterQueue] = weakref.WeakKeyDictionary()


def normalize_url(url: str) -> str:
    """Plain postgresql:// URLs use psycopg 3, the driver we ship."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, timeout_seconds: float = 5.0) -> Engine:
    """`timeout_seconds`: how long a request waits for SQLite's write lock, a PostgreSQL connection or a pooled
    one before it fails (the API answers 503), instead of hanging while the database is away."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": timeout_seconds, "check_same_thread": False},
            # as many kept connections as the threadpool has threads: a new one costs a connect and the pragmas
            pool_size=THREADS,
        )
        event.listen(engine, "connect", lambda conn, record: _sqlite_pragmas(conn, timeout_seconds))
        # pysqlite opens transactions lazily and never on SELECT; BEGIN IMMEDIATE on every writing transaction
        # takes the write lock up front, so two claimers serialise instead of failing with "locked". A reading
        # transaction (`reading`) begins deferred: under WAL it reads a snapshot and never waits for the lock.
        event.listen(engine, "begin", _sqlite_begin)
        _sqlite_writers[engine] = WriterQueue(engine.url.database, timeout_seconds)
        return engine
    engine = create_engine(
        url,
        pool_size=THREADS,
        max_overflow=4,  # the reaper and metrics collector beside a full pool
        pool_timeout=timeout_seconds,
        # client_encoding: a database created without a UTF-8 locale is SQL_ASCII, and psycopg then returns bytes
        # for text (SQLAlchemy's first connect fails on them); asking for UTF-8 makes it decode them as such
        connect_args={"connect_timeout": max(1, round(timeout_seconds)), "client_encoding": "utf8"},
    )
    _ping_after_idle(engine)
    return engine


# A pooled PostgreSQL connection is pinged before use (one round trip) only if it sat in the pool longer than this: a
# restart, a failover or an idle timeout in between would have dropped it, and the ping replaces it unseen. A ping on
# every checkout (pool_pre_ping) was one query in every two a GET sent, served by the database beside the real one.
# A connection dropped less than this after its last use fails its request instead (503 with Retry-After), and
# SQLAlchemy then replaces every pooled connection opened before the failure.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_after_idle(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def returned(dbapi_connection, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def taken(dbapi_connection, record, proxy) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return  # a new connection, or one in use moments ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            # The pool drops this connection and checks out another (a new one if need be).
            raise DisconnectionError(f"a pooled connection was lost while idle: {exc}") from exc


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_conn, timeout_seconds: float) -> None:
    dbapi_conn.isolation_level = None  # let the "begin" listener above issue BEGIN itself
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={int(timeout_seconds * 1000)}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A writing transaction. On SQLite, one writer at a time holds the database's lock: writers take turns in
    the engine's WriterQueue first."""
    writers = _sqlite_writers.get(sessions.kw["bind"])
    with writers.turn() if writers is not None else nullcontext(), sessions() as session, session.begin():
        yield session


@contextmanager
def reading(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """Reads only. On SQLite a transaction that begins deferred, so it reads a WAL snapshot without taking the
    write lock (a `transaction` takes it up front). On PostgreSQL no transaction at all (autocommit): at READ
    COMMITTED each statement reads its own snapshot either way, and BEGIN and COMMIT would cost two more round
    trips per request. The pool puts the connection back in transactions when it is returned."""
    with sessions() as session, session.begin():
        sqlite = session.get_bind().dialect.name == "sqlite"
        session.connection(execution_options={READ_ONLY: True} if sqlite else {"isolation_level": "AUTOCOMMIT"})
        yield session


class epoch_now(FunctionElement):
    """The database's clock as Unix seconds: every lease is timed by one clock, whatever the replica."""

    type = Float()
    inherit_cache = True


@compiles(epoch_now, "postgresql")
def _epoch_now_pg(element, compiler, **kw) -> str:
    return "extract(epoch from clock_timestamp())::float8"


@compiles(epoch_now, "sqlite")
def _epoch_now_sqlite(element, compiler, **kw) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


# ------------------------------------------------------------------------------------------- migrations


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)


def is_at_head(engine: Engine) -> bool:
    heads = set(ScriptDirectory.from_config(alembic_config(engine)).get_heads())
    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads()) == heads


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched (their results are CursorResults)."""
    return cast(CursorResult[Any], result).rowcount
