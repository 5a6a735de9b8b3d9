"""One fixture builds an app on a fresh database: a SQLite file, or a PostgreSQL schema of its own.

PostgreSQL tests skip when no server answers, unless LRBS_TEST_REQUIRE_POSTGRES=1 (as .ci/run sets).
"""

from __future__ import annotations

import os
import uuid
from functools import cache

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from lrbs.service import db
from lrbs.service.app import create_app
from lrbs.service.settings import Settings

PG_URL = os.environ.get("LRBS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("LRBS_TEST_REQUIRE_POSTGRES") == "1"
WORKER_TOKEN = "test-worker-token"
AUTH = {"Authorization": f"Bearer {WORKER_TOKEN}"}


@cache
def postgres_error() -> str | None:
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def require_postgres() -> None:
    """Skip the calling test when PostgreSQL is unreachable; fail it instead where it is required (CI)."""
    error = postgres_error()
    if error:
        message = f"PostgreSQL at {PG_URL} is unreachable: {error}"
        if REQUIRE_PG:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A URL to an empty database, once for SQLite and once for PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/lrbs.db"
        return
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return Settings(database_url=database_url, worker_token=WORKER_TOKEN, auto_migrate=True, data_dir=tmp_path / "data")


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def sessions(settings):
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    yield db.make_sessionmaker(engine)
    engine.dispose()


MINIMAL_SPEC = {
    "model": {"name": "mlp", "params": {"hidden": [32]}},
    "dataset": {"name": "synthetic_classification", "params": {"n_samples": 512}},
    "optimizer": {"name": "sgd", "params": {"momentum": 0.9}},
    "device": "cpu",  # the tests assume the CPU: auto picks a GPU where one is
}


def batch_job(**parts):
    """A JobSpec for batch-size advice tests: an MLP on 2,048 samples, one quick 60-step sweep at batch 32."""
    from lrbs.contract.job_spec import JobSpec

    return JobSpec.model_validate(
        {
            "model": {"name": "mlp", "params": {"hidden": [64]}},
            "dataset": {"name": "synthetic_classification", "params": {"n_samples": 2048}},
            "optimizer": {"name": "sgd", "params": {"momentum": 0.9}},
            "device": "cpu",
            "lr_range": {"batch_size": 32, "num_steps": 60, "min_lr": 1e-4, "thoroughness": "quick"},
            **parts,
        }
    )


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory):
    """tests/plugin_package installed for real (pip, into a folder), to be put on sys.path or PYTHONPATH."""
    import subprocess
    import sys
    from pathlib import Path

    target = tmp_path_factory.mktemp("site")
    source = Path(__file__).parent / "plugin_package"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
    )
    return target


@pytest.fixture
def with_plugins(plugin_site, monkeypatch, tmp_path):
    """The team package importable and discoverable here; importing the forbidden module leaves a mark."""
    monkeypatch.syspath_prepend(str(plugin_site))
    mark = tmp_path / "evil-imported"
    monkeypatch.setenv("LRBS_TEST_EVIL_MARK", str(mark))
    return mark
