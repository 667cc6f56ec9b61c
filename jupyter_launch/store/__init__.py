"""Durable state: the SQL store (SQLite by default, PostgreSQL for teams) and the content-addressed blob store."""

from .base import (  # noqa: F401
    ACTIVE, ARCHIVED_CHOICES, CANCELLED, CLAIMED, DEFAULT_JOB_SORT, FAILED, FINAL, JOB_SORTS, QUEUED, RUNNING,
    STARTING, STATES, SUCCEEDED, AgentIdTaken, Claim, Heartbeat, JobRecord, JobStatus, LogChunk, NotFound,
    OutputRecord, QueueRecord, ScheduleRecord, StaleClaim, StoreError, StoreUnusable, SweepRecord, check_job_query,
    check_metric_record, check_number, check_output_path, check_progress, describe, is_disk_full,
    is_unreachable,
)
from .blobs import BlobStore, sha256_bytes, sha256_file  # noqa: F401
from .sql import DEFAULT_QUEUE, SQLStore  # noqa: F401
