"""API keys, and the key that owns each job and dataset

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 13:10:00
"""

import sqlalchemy as sa
from alembic import op

import lrbs.service.tables

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("key_sha256", sa.String(length=64), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", lrbs.service.tables.UTCDateTime(), nullable=False),
        sa.Column("revoked_at", lrbs.service.tables.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_sha256", name=op.f("uq_api_keys_key_sha256")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_key_id", sa.String(length=40), nullable=True))
        batch_op.create_index("ix_jobs_owner_created", ["owner_key_id", "created_at", "id"], unique=False)
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_key_id", sa.String(length=40), nullable=True))
        batch_op.drop_constraint("uq_datasets_sha256", type_="unique")
        batch_op.create_index("ix_datasets_sha256", ["sha256"], unique=False)
        batch_op.create_index("ix_datasets_owner_created", ["owner_key_id", "created_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_index("ix_datasets_owner_created")
        batch_op.drop_index("ix_datasets_sha256")
        batch_op.create_unique_constraint("uq_datasets_sha256", ["sha256"])
        batch_op.drop_column("owner_key_id")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_owner_created")
        batch_op.drop_column("owner_key_id")
    op.drop_table("api_keys")
