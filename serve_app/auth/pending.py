"""Caps on requests whose body is still arriving, per client and in total, in one ingress replica.

A request holds a slot while its body is received (after the header checks, before the HMAC): the phase a
slow or stalled client controls. The counters are in process memory on purpose: what they protect is this replica's own
connections and memory, and a shared store would cost a round trip for every request.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

Refusal = Literal["per_client", "total"]


class PendingSlots:
    def __init__(self, *, per_client: int, total: int) -> None:
        self._per_client = per_client
        self._total = total
        self._held: Counter[str] = Counter()
        self._held_total = 0

    def acquire(self, subject: str) -> Refusal | None:
        """Take a slot for ``subject``; None on success, else which cap is full (nothing is taken then)."""
        if self._held_total >= self._total:
            return "total"
        if self._held[subject] >= self._per_client:
            return "per_client"
        self._held[subject] += 1
        self._held_total += 1
        return None

    def release(self, subject: str) -> None:
        self._held_total -= 1
        self._held[subject] -= 1
        if self._held[subject] <= 0:
            del self._held[subject]  # the Counter holds only subjects with requests in flight

    def held(self, subject: str | None = None) -> int:
        return self._held_total if subject is None else self._held[subject]
