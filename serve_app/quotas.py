"""Per-agent quotas: queued jobs, concurrent event streams and long-polls (issue 9, item 5).

Keys belong to agents and jobs are owned by agents, so quotas are per agent name: one set of defaults,
overridden per agent (an override may set only some limits). The counters themselves live in the shared
database (queued jobs are rows of ``jobs``; streams and long-polls hold leased rows of ``stream_slots``,
see ``serve_app.quota_store``), never in one replica's memory.

Limited answers carry the IETF RateLimit fields of draft-ietf-httpapi-ratelimit-headers-11 (May 2026):
``RateLimit-Policy: "queued-jobs";q=100`` (the quota) and ``RateLimit: "queued-jobs";r=0;t=10`` (what is
left and, when nothing is, the seconds after which to look again, the same as ``Retry-After``). Concurrency
limits use the draft's ``qu="concurrent-requests"`` unit and no window; a queued-jobs quota counts one unit
per queued job (the default ``requests`` unit; the draft leaves what consumes a unit to the server).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import http_sf
from http_sf.types import ParamsType
from pydantic import BaseModel, ConfigDict, Field

# Imported for its side effect too: the table registers on the shared Base, so every process that loads
# the config creates it with the rest of the schema.
from serve_app.quota_store import SlotKind

Policy = Literal["queued-jobs", "event-streams", "long-polls"]

SLOT_POLICIES: dict[SlotKind, Policy] = {"event_stream": "event-streams", "long_poll": "long-polls"}


class AgentQuota(BaseModel):
    """One agent's overrides; a limit left null falls back to the default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_queued_jobs: int | None = Field(
        None, ge=0, description="Queued jobs this agent may have at once (null: the default; 0: none)."
    )
    max_event_streams: int | None = Field(
        None, ge=0, description="Event streams this agent may hold open at once (null: the default; 0: none)."
    )
    max_long_polls: int | None = Field(
        None, ge=0, description="`?wait=` long-polls this agent may hold at once (null: the default; 0: none)."
    )


@dataclass(frozen=True)
class Limits:
    """The effective limits of one agent."""

    max_queued_jobs: int
    max_event_streams: int
    max_long_polls: int

    def for_slot(self, kind: SlotKind) -> int:
        return self.max_event_streams if kind == "event_stream" else self.max_long_polls


class QuotaSettings(BaseModel):
    """Per-agent limits with defaults and per-agent overrides."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_queued_jobs: int = Field(
        100,
        ge=0,
        description="Queued jobs one agent may have at once (a batch of N counts N); more get "
        "`429 agent_queue_full`, so one agent cannot fill the global queue (`jobs.max_queued`) for everyone.",
    )
    max_event_streams: int = Field(
        4,
        ge=0,
        description="Event streams (`/events`) one agent may hold open at once; more get `429 too_many_streams`.",
    )
    max_long_polls: int = Field(
        8,
        ge=0,
        description="`?wait=` long-polls one agent may hold at once (`?wait=0` takes none); more get "
        "`429 too_many_long_polls`.",
    )
    agents: dict[str, AgentQuota] = Field(
        {},
        description="Overrides per agent name, e.g. `{batch-agent: {max_queued_jobs: 1000}}`; limits an override "
        "leaves out keep the defaults above.",
    )
    retry_after_s: int = Field(
        5, ge=1, description="The `Retry-After` seconds (and RateLimit `t`) of a quota's 429 answer."
    )
    slot_lease_s: float = Field(
        30.0,
        ge=3.0,
        description="A stream's or long-poll's slot is renewed every third of this while it runs; a crashed "
        "replica's slots free themselves this long after their last renewal.",
    )

    def for_agent(self, agent: str) -> Limits:
        """The agent's effective limits: its override where set, the defaults otherwise."""
        override = self.agents.get(agent, AgentQuota())
        return Limits(
            max_queued_jobs=_pick(override.max_queued_jobs, self.max_queued_jobs),
            max_event_streams=_pick(override.max_event_streams, self.max_event_streams),
            max_long_polls=_pick(override.max_long_polls, self.max_long_polls),
        )


def _pick(override: int | None, default: int) -> int:
    return default if override is None else override


def ratelimit_headers(
    policy: Policy, quota: int, remaining: int, *, retry_after_s: int | None = None
) -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers-11) for one policy;
    with ``retry_after_s`` (a refusal) also ``Retry-After`` and the matching ``t``."""
    policy_params: ParamsType = {"q": quota}
    if policy != "queued-jobs":
        policy_params["qu"] = "concurrent-requests"
    limit_params: ParamsType = {"r": max(0, remaining)}
    headers: dict[str, str] = {}
    if retry_after_s is not None:
        limit_params["t"] = retry_after_s
        headers["Retry-After"] = str(retry_after_s)
    headers["RateLimit-Policy"] = http_sf.ser([(policy, policy_params)])
    headers["RateLimit"] = http_sf.ser([(policy, limit_params)])
    return headers
