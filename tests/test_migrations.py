"""Migrations: one head that matches the models, reversible, and `lrbs db upgrade` for PostgreSQL."""

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from fastapi.testclient import TestClient

from lrbs.cli import main
from lrbs.service import db
from lrbs.service.app import create_app
from lrbs.service.tables import Base


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
