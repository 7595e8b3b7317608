"""Webhook settings: the ``webhooks`` section of :class:`~serve_app.config.AppConfig`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class WebhookSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_hosts: tuple[str, ...] = Field(
        (),
        description="Where webhooks may be delivered: hostnames (`hooks.example.com`), suffixes (`*.example.com`) "
        "or CIDRs (`10.20.0.0/16`); nothing else is allowed (dev mode also allows loopback). Link-local, cloud "
        "metadata, unspecified and multicast addresses are refused whatever this says.",
    )
    max_endpoints_per_agent: int = Field(
        10, ge=1, description="Webhook endpoints one agent may register; more get `409 webhook_limit_reached`."
    )
    deliver: bool = Field(True, description="false: the job workers deliver nothing (deliveries wait in the outbox).")
    timeout_s: float = Field(10.0, gt=0, description="Timeout of one delivery attempt (connect, send, first byte).")
    max_attempts: int = Field(
        8, ge=1, description="Attempts per delivery before it fails (the default backoff spreads 8 over about a day)."
    )
    backoff_base_s: float = Field(
        60.0, gt=0, description="Wait after the first failed attempt; each further one waits 4 times longer."
    )
    backoff_cap_s: float = Field(
        36_000.0, gt=0, description="Longest wait between two attempts (before jitter, which draws 50-100 % of it)."
    )
    disable_after_failures: int = Field(
        5,
        ge=1,
        description="Consecutive failed deliveries (all attempts used) after which an endpoint is disabled.",
    )
    lease_s: float = Field(
        60.0,
        gt=0,
        description="A claimed attempt is retried this long after its worker stopped (crash); keep it above "
        "`timeout_s`.",
    )
    poll_interval_s: float = Field(1.0, gt=0, description="How often a job worker looks for due deliveries.")
    batch_size: int = Field(16, ge=1, le=256, description="Deliveries one job worker sends concurrently.")

    @model_validator(mode="after")
    def _lease_covers_attempt(self) -> WebhookSettings:
        if self.lease_s <= self.timeout_s:
            raise ValueError("webhooks.lease_s must exceed webhooks.timeout_s, or a slow attempt could run twice")
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("webhooks.backoff_cap_s must be at least webhooks.backoff_base_s")
        return self
