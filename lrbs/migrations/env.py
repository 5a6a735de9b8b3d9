"""Alembic environment: run by `service.db.upgrade(engine)` (the engine arrives in config.attributes)."""

from alembic import context
from sqlalchemy import text

from lrbs.service.tables import Base

# An arbitrary constant: the key of the PostgreSQL advisory lock that serialises concurrent upgrades.
UPGRADE_LOCK_KEY = 7_413_921_005


def run_migrations() -> None:
    engine = context.config.attributes["engine"]
    with engine.connect() as connection:
        is_pg = connection.dialect.name == "postgresql"
        if is_pg:  # two replicas starting at once must not both run the same migration
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": UPGRADE_LOCK_KEY})
            connection.commit()
        try:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                render_as_batch=True,  # SQLite can only alter tables by copying them
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
        finally:
            if is_pg:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": UPGRADE_LOCK_KEY})
                connection.commit()


run_migrations()
