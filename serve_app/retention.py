"""Retention: inputs, results, converted formats and the audit log are not kept forever (issue 9, item 6)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RetentionSettings(BaseModel):
    """How long what the service writes is kept."""

    model_config = ConfigDict(frozen=True, extra="forbid")
