"""The database away or locked: the API answers 503 problem+json with Retry-After, /healthz still answers,
and the service recovers by itself when the database returns."""

from __future__ import annotations

import sqlite3

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from lrbs.service import db
from lrbs.service.app import create_app
from lrbs.service.settings import Settings
from tests.conftest import MINIMAL_SPEC, PG_URL, WORKER_TOKEN, require_postgres

PROBLEM = "application/problem+json"


def assert_unavailable(r) -> None:
    assert r.status_code == 503 and r.headers["content-type"] == PROBLEM, r.text
    assert r.headers["retry-after"] == "5" and "try again" in r.json()["detail"]


def test_a_locked_sqlite_file_gives_503_then_recovers(tmp_path):
    path = tmp_path / "lrbs.db"
    settings = Settings(database_url=f"sqlite:///{path}", worker_token=WORKER_TOKEN, database_timeout_seconds=0.5,
                        data_dir=tmp_path / "data")  # fmt: skip
    with TestClient(create_app(settings)) as client:
        job_id = client.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"]
        other = sqlite3.connect(path, isolation_level=None)  # another process's connection, holding the lock
        other.execute("BEGIN EXCLUSIVE")
        try:
            assert_unavailable(client.post("/v1/jobs", json=MINIMAL_SPEC))
            assert_unavailable(client.get("/readyz"))  # ready means writable
            assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"  # reads need no lock (WAL)
            assert client.get("/healthz").status_code == 200
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert client.get("/readyz").status_code == 200
        assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
        assert len(client.get("/v1/jobs").json()["jobs"]) == 1  # the refused submit stored nothing


def test_an_unreachable_postgresql_gives_503_then_recovers(settings):
    with TestClient(create_app(settings)) as client:
        job_id = client.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"]
        working = client.app.state.sessions
        gone = db.make_engine("postgresql+psycopg://postgres@127.0.0.1:1/test", timeout_seconds=1)
        client.app.state.sessions = db.make_sessionmaker(gone)  # the server is away: nothing answers there
        try:
            assert_unavailable(client.get(f"/v1/jobs/{job_id}"))
            assert_unavailable(client.post("/v1/jobs", json=MINIMAL_SPEC))
            assert_unavailable(client.get("/readyz"))
            assert client.get("/healthz").status_code == 200
        finally:
            client.app.state.sessions = working
            gone.dispose()
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200


def _backend_pid(engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def _terminate(pid: int) -> None:
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()


def test_a_postgresql_connection_dropped_while_idle_is_replaced_before_use(monkeypatch):
    """A pooled connection idle longer than PING_AFTER_IDLE_SECONDS is pinged before use: one the server dropped
    (a restart, an idle timeout) is replaced without failing the request. One used moments ago is not pinged (no
    round trip per request under load): if it was dropped, that one use fails, and the pool replaces it."""
    require_postgres()
    engine = db.make_engine(PG_URL)
    try:
        first = _backend_pid(engine)
        _terminate(first)
        monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)  # every pooled connection counts as idle
        second = _backend_pid(engine)
        assert second != first  # pinged, found dead, replaced: the caller saw nothing

        _terminate(second)
        monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 3600.0)  # used moments ago: no ping
        with pytest.raises(OperationalError):
            _backend_pid(engine)
        assert _backend_pid(engine) not in (first, second)  # the failure replaced it
    finally:
        engine.dispose()
