"""The first schema: queues, jobs, agents, log chunks, metrics, outputs.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "queues",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(32), nullable=False, unique=True),
        sa.Column("queue", sa.String(63), nullable=False),
        sa.Column("job_type", sa.String(63)),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(255)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64)),
        sa.Column("message", sa.Text),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("artifact", sa.String(80)),
        sa.Column("owner", sa.String(255)),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("retries", sa.Integer, nullable=False),
        sa.Column("fence", sa.Integer, nullable=False),
        sa.Column("agent_id", sa.String(64)),
        sa.Column("lease_expires", sa.Float),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("exit_code", sa.Integer),
        sa.Column("gpus", sa.Integer, nullable=False),
        sa.Column("log_size", sa.Integer, nullable=False),
        sa.Column("rerun_of", sa.String(32)),
        sa.Column("submitted_at", sa.Float, nullable=False),
        sa.Column("claimed_at", sa.Float),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("progress", sa.JSON),
    )
    op.create_index("ix_jobs_queue_state_seq", "jobs", ["queue", "state", "seq"])
    op.create_index("ix_jobs_state_lease", "jobs", ["state", "lease_expires"])
    op.create_index("ix_jobs_queue_seq", "jobs", ["queue", "seq"])
    op.create_table(
        "agents",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255)),
        sa.Column("queues", sa.JSON, nullable=False),
        sa.Column("job_types", sa.JSON, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("info", sa.JSON),
    )
    op.create_table(
        "log_chunks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("offset", sa.Integer, nullable=False),
        sa.Column("stream", sa.String(8), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_log_chunks_job_offset", "log_chunks", ["job_id", "offset"])
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("step", sa.Integer),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )
    op.create_index("ix_metrics_job_id", "metrics", ["job_id", "id"])
    op.create_table(
        "outputs",
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("path", sa.String(1024), primary_key=True),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    for table in ("outputs", "metrics", "log_chunks", "agents", "jobs", "queues"):
        op.drop_table(table)
