"""Tables of the durable job store, on the app's shared :class:`~serve_app.db.Base`.

Times are naive UTC (``TIMESTAMP WITHOUT TIME ZONE`` on Postgres, ISO text on SQLite, which compares
correctly as text because SQLAlchemy always writes microseconds). Input images and meshes live in the
artifact store; rows hold their relative paths only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Index, Integer, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from serve_app.db import Base


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # job_<32 hex>, unguessable
    agent: Mapped[str] = mapped_column(String(128))
    batch_id: Mapped[str | None] = mapped_column(String(40))
    batch_index: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16))  # queued|running|succeeded|failed|cancelled|expired
    stage: Mapped[str] = mapped_column(String(32))
    progress: Mapped[int] = mapped_column(Integer, default=0)  # 0-100
    priority: Mapped[str] = mapped_column(String(16))  # normal|critical
    seed: Mapped[int] = mapped_column(BigInteger)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    model: Mapped[str] = mapped_column(String(128))
    input_path: Mapped[str] = mapped_column(String(255))  # the image (a multiview job's front view)
    # a multiview job's other views, {"left": "inputs/<id>.left.png", ...}; NULL for a single-image job
    view_paths: Mapped[dict[str, str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)  # first claim
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime)  # latest claim; drives fairness
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime)  # must start by then, else expired
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    retryable: Mapped[bool | None] = mapped_column(Boolean)
    mesh_stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result_path: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        # Claiming scans queued jobs; expiry and lease recovery scan by status and a time.
        Index("ix_jobs_status_priority_created", "status", "priority", "created_at"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        # Listing one agent's jobs newest first, with or without a status filter (keyset on created_at, id).
        Index("ix_jobs_agent_created", "agent", "created_at", "id"),
        Index("ix_jobs_agent_status_created", "agent", "status", "created_at", "id"),
        # max(claimed_at) per agent: when the agent was last served (fairness).
        Index("ix_jobs_agent_claimed", "agent", "claimed_at"),
        Index("ix_jobs_batch", "batch_id", "batch_index"),
    )


class BatchRow(Base):
    __tablename__ = "job_batches"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # batch_<32 hex>
    agent: Mapped[str] = mapped_column(String(128), index=True)
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class IdempotencyRow(Base):
    """One ``Idempotency-Key`` of one agent: ``pending`` while its request runs, then ``done``."""

    __tablename__ = "job_idempotency_keys"

    agent: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # pending|done
    job_id: Mapped[str | None] = mapped_column(String(40))  # single submission
    batch_id: Mapped[str | None] = mapped_column(String(40))  # batch submission
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)


# Declarative classes type __table__ as a FromClause; at run time it is the Table the statements need.
JOBS = cast(Table, JobRow.__table__)
BATCHES = cast(Table, BatchRow.__table__)
IDEMPOTENCY = cast(Table, IdempotencyRow.__table__)
