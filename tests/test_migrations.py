"""Migrations: one head that matches the models, reversible, and `lrbs db upgrade` for PostgreSQL."""

import uuid

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, make_url, text

from lrbs.cli import main
from lrbs.service import db
from lrbs.service.app import create_app
from lrbs.service.settings import Settings
from lrbs.service.tables import Base
from tests.conftest import MINIMAL_SPEC, PG_URL, WORKER_TOKEN, require_postgres


def test_one_head():
    assert len(ScriptDirectory.from_config(db.alembic_config(None)).get_heads()) == 1


def test_upgrade_matches_the_models_and_downgrades(database_url):
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    command.downgrade(db.alembic_config(engine), "base")
    assert not db.is_at_head(engine)
    db.upgrade(engine)
    assert db.is_at_head(engine)
    engine.dispose()


def test_service_refuses_an_old_schema_until_db_upgrade(database_url, settings, monkeypatch):
    settings.auto_migrate = False
    with pytest.raises(RuntimeError, match="lrbs db upgrade"), TestClient(create_app(settings)):
        pass
    monkeypatch.setenv("LRBS_DATABASE_URL", database_url)
    outcome = CliRunner().invoke(main, ["db", "upgrade"])
    assert outcome.exit_code == 0, outcome.output
    assert "latest revision" in outcome.output
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200


def test_a_sql_ascii_postgresql_database_works_and_keeps_text_as_sent(tmp_path):
    """A database created without a UTF-8 locale (initdb in a bare container) is SQL_ASCII: psycopg returns its
    text as bytes unless the connection asks for UTF-8, and SQLAlchemy's first connect failed on them."""
    require_postgres()
    name = f"lrbs_ascii_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text(f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'")
        )
    try:
        url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
        settings = Settings(database_url=url, worker_token=WORKER_TOKEN, auto_migrate=True, data_dir=tmp_path / "data")
        with TestClient(create_app(settings)) as client:
            created = client.post("/v1/jobs", json={**MINIMAL_SPEC, "labels": {"team": "équipe vision ✓"}})
            assert created.status_code == 202, created.text
            assert client.get(created.headers["location"]).json()["spec"]["labels"] == {"team": "équipe vision ✓"}
            listed = client.get("/v1/jobs", params={"label": "team:équipe vision ✓"}).json()["jobs"]
            assert [j["id"] for j in listed] == [created.json()["id"]]
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()
