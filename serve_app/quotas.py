"""Per-agent quotas: queued jobs, concurrent event streams and long-polls (issue 9, item 5)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class QuotaSettings(BaseModel):
    """Per-agent limits with defaults and per-agent overrides."""

    model_config = ConfigDict(frozen=True, extra="forbid")
