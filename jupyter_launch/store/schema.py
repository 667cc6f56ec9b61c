"""The store's tables (SQLAlchemy Core). Changes here need a migration in ``migrations/versions``."""

from __future__ import annotations

from sqlalchemy import (
    JSON, Boolean, Column, Float, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Table, Text,
)

metadata = MetaData()

queues = Table(
    "queues", metadata,
    Column("name", String(63), primary_key=True),
    Column("provider", String(32), nullable=False),
    Column("config", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

jobs = Table(
    "jobs", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),  # FIFO order
    Column("id", String(32), nullable=False, unique=True),
    Column("queue", String(63), nullable=False),
    Column("job_type", String(63)),
    Column("kind", String(16), nullable=False),
    Column("name", String(255)),
    Column("state", String(16), nullable=False),
    Column("reason", String(64)),
    Column("message", Text),
    Column("spec", JSON, nullable=False),
    Column("artifact", String(80)),
    Column("owner", String(255)),
    Column("owner_name", String(255)),  # the owner's display name, as the identity provider gave it at submission
    Column("attempt", Integer, nullable=False, default=1),
    Column("retries", Integer, nullable=False, default=0),
    Column("fence", Integer, nullable=False, default=0),
    Column("agent_id", String(64)),
    Column("lease_expires", Float),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("exit_code", Integer),
    Column("gpus", Integer, nullable=False, default=0),
    Column("log_size", Integer, nullable=False, default=0),
    Column("rerun_of", String(32)),
    Column("submitted_at", Float, nullable=False),
    Column("claimed_at", Float),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("progress", JSON),
    Column("claim_token", String(16)),  # the agent token that holds the claim; "@local": an agent in a store's process
    Column("archived_at", Float),  # hidden from the history unless asked for; NULL: not archived
    Index("ix_jobs_queue_state_seq", "queue", "state", "seq"),
    Index("ix_jobs_state_lease", "state", "lease_expires"),
    Index("ix_jobs_queue_seq", "queue", "seq"),
    Index("ix_jobs_owner_seq", "owner", "seq"),
)

agents = Table(
    "agents", metadata,
    Column("id", String(64), primary_key=True),
    Column("host", String(255)),
    Column("queues", JSON, nullable=False),
    Column("job_types", JSON, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("info", JSON),
    Column("token_id", String(16)),  # the agent token that registered it; NULL: the server's own agent
)

log_chunks = Table(
    "log_chunks", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("offset", Integer, nullable=False),
    Column("stream", String(8), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Index("ix_log_chunks_job_offset", "job_id", "offset"),
)

metrics = Table(
    "metrics", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("step", Integer),
    Column("time", Float, nullable=False),
    Column("data", JSON, nullable=False),
    Index("ix_metrics_job_id", "job_id", "id"),
)

outputs = Table(
    "outputs", metadata,
    Column("job_id", String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("path", String(1024), primary_key=True),
    Column("digest", String(80), nullable=False),
    Column("size", Integer, nullable=False),
)

agent_tokens = Table(
    "agent_tokens", metadata,
    Column("id", String(16), primary_key=True),  # the public half of the token, shown in `token list`
    Column("name", String(255), nullable=False),
    Column("secret_hash", String(64), nullable=False),  # sha256 of the secret half; the secret is never stored
    Column("queues", JSON, nullable=False),  # queues the agent may serve; ["*"] for all
    Column("created_at", Float, nullable=False),
    Column("created_by", String(255)),
    Column("last_used_at", Float),
    Column("revoked_at", Float),
)

# Who may read a blob through the agent routes: ``queue:NAME`` (the artifacts and outputs of that queue's jobs) or
# ``token:ID`` (an agent token that uploaded it, proving it holds the content).
blob_grants = Table(
    "blob_grants", metadata,
    Column("digest", String(80), primary_key=True),
    Column("grantee", String(80), primary_key=True),
)
