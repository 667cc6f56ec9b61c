"""Priorities (claim order: higher first, FIFO within one), schedules and the lease that decides who fires them,
sweeps, and the columns that tie a job to its schedule or its sweep.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("schedule_id", sa.String(32)))
        batch.add_column(sa.Column("parent_id", sa.String(32)))
    op.create_index("ix_jobs_queue_state_priority_seq", "jobs", ["queue", "state", "priority", "seq"])
    op.create_index("ix_jobs_schedule_seq", "jobs", ["schedule_id", "seq"])
    op.create_index("ix_jobs_parent_seq", "jobs", ["parent_id", "seq"])
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("queue", sa.String(63), nullable=False),
        sa.Column("cron", sa.String(255), nullable=False),
        sa.Column("tz", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("artifact", sa.String(80)),
        sa.Column("owner", sa.String(255)),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("next_run_at", sa.Float),
        sa.Column("last_run_at", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_schedules_due", "schedules", ["paused", "next_run_at"])
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("queue", sa.String(63), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("runs", sa.Integer, nullable=False),
        sa.Column("max_parallel", sa.Integer),
        sa.Column("fail_fast", sa.Boolean, nullable=False),
        sa.Column("owner", sa.String(255)),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("sweeps")
    op.drop_index("ix_schedules_due", "schedules")
    op.drop_table("schedules")
    op.drop_index("ix_jobs_parent_seq", "jobs")
    op.drop_index("ix_jobs_schedule_seq", "jobs")
    op.drop_index("ix_jobs_queue_state_priority_seq", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("parent_id")
        batch.drop_column("schedule_id")
        batch.drop_column("priority")
