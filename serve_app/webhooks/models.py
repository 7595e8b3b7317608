"""Tables of the webhooks, on the app's shared :class:`~serve_app.db.Base`.

Times are naive UTC, like the job store's. An endpoint's secret is sealed with the master key (context: the
endpoint id), exactly like agent key secrets. A delivery row is the outbox: one per (terminal job event,
endpoint), written in the job's terminal transaction; its ``id`` is the ``webhook-id`` of every attempt.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import JSON, DateTime, Index, Integer, LargeBinary, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from serve_app.db import Base


class WebhookEndpointRow(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # wh_<32 hex>
    agent: Mapped[str] = mapped_column(String(128), index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON)
    # version || nonce || AES-GCM(master key, secret, aad=id); never the raw secret.
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16))  # active|disabled
    created_at: Mapped[datetime] = mapped_column(DateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)  # failed deliveries in a row
    delivered_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)


class WebhookDeliveryRow(Base):
    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # msg_<32 hex>: the webhook-id
    endpoint_id: Mapped[str] = mapped_column(String(40), index=True)
    agent: Mapped[str] = mapped_column(String(128))
    event_type: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[str] = mapped_column(String(40))
    payload: Mapped[str] = mapped_column(Text)  # the exact body, so every attempt signs the same bytes
    status: Mapped[str] = mapped_column(String(16))  # pending|delivered|failed|abandoned
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # attempts claimed so far
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)


ENDPOINTS = cast(Table, WebhookEndpointRow.__table__)
DELIVERIES = cast(Table, WebhookDeliveryRow.__table__)
