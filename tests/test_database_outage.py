"""The database away or locked: the API answers 503 problem+json with Retry-After, /healthz still answers,
and the service recovers by itself when the database returns."""

from __future__ import annotations

import sqlite3

from fastapi.testclient import TestClient

from lrbs.service import db
from lrbs.service.app import create_app
from lrbs.service.settings import Settings
from tests.conftest import MINIMAL_SPEC, WORKER_TOKEN

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
