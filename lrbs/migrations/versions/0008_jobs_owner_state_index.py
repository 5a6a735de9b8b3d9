"""an index on jobs (owner_key_id, state): a submit counts its key's queued and running jobs from the index alone,
instead of reading every job the key ever made (a cost that grew with the key's jobs, under SQLite's write lock)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 12:40:00
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_owner_state", "jobs", ["owner_key_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_state", table_name="jobs")
