"""A wrapper for secret bytes that never shows its value in a repr, str, f-string or log line."""

from __future__ import annotations

import hmac


class Secret:
    """Secret bytes (an agent key or the master key). Call :meth:`reveal` only where the bytes are used."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError("Secret holds bytes")
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    # Mutable-looking equality without hashing: secrets are not dictionary keys.
    __hash__ = None  # type: ignore[assignment]
