"""Archived jobs (hidden from the history unless asked for), owners' display names, and an index for one owner's jobs
newest first.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("archived_at", sa.Float))
        batch.add_column(sa.Column("owner_name", sa.String(255)))
    op.create_index("ix_jobs_owner_seq", "jobs", ["owner", "seq"])


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_seq", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("owner_name")
        batch.drop_column("archived_at")
