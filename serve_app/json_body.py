"""Parsing untrusted JSON with bounds, so hostile nesting and numbers are a 4xx rather than a 500.

Python's ``json`` raises ``RecursionError`` at about 1000 levels and ``ValueError`` beyond 4300 integer
digits, neither a ``JSONDecodeError``. Here the nesting depth is measured before parsing (strings removed
first, so brackets inside them do not count), an integer literal too long for any field becomes an
:class:`OversizedInteger` the field checks refuse by name (a 5,000-digit seed is ``invalid_seed``), and the
non-JSON constants ``NaN`` / ``Infinity`` are refused.
"""

from __future__ import annotations

import json
import re
from typing import Any

# a JSON string literal (escapes included); unrolled so a 10 MiB base64 string matches in one fast scan
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# after removing strings: every byte but the brackets goes, and both kinds become one (depth is all we count)
_BRACKETS_ONLY = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
# no field takes an integer anywhere near this long (seeds are below 2**63, 19 digits)
MAX_INTEGER_CHARS = 32


class JsonRejected(ValueError):
    """``code``: ``invalid_json`` or ``json_too_deep``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class OversizedInteger:
    """Stands in for an integer literal longer than :data:`MAX_INTEGER_CHARS`: not an ``int``, so the
    field's own check refuses it with the field's code, and never converted (that is what costs)."""

    __slots__ = ("chars",)

    def __init__(self, chars: int) -> None:
        self.chars = chars

    def __repr__(self) -> str:
        return f"<an integer of {self.chars} characters>"


def nesting_exceeds(text: str, max_depth: int) -> bool:
    """Whether arrays/objects in ``text`` nest deeper than ``max_depth``.

    Each pass deletes the innermost ``[]`` pairs, one level everywhere at once, in C: ``max_depth`` passes
    at most. Brackets that stop pairing up are malformed JSON; the parser reports those."""
    skeleton = _STRING.sub("", text).encode("utf-8", "surrogatepass").translate(_BRACKETS_ONLY, _NOT_BRACKETS)
    for _ in range(max_depth):
        if not skeleton:
            return False
        reduced = skeleton.replace(b"[]", b"")
        if len(reduced) == len(skeleton):
            return False
        skeleton = reduced
    return bool(skeleton)


def _integer(literal: str) -> int | OversizedInteger:
    if len(literal) > MAX_INTEGER_CHARS:
        return OversizedInteger(len(literal))
    return int(literal)


def _constant(name: str) -> Any:
    raise JsonRejected("invalid_json", f"{name} is not a JSON number; send a finite number")


def loads_bounded(raw: bytes | str, max_depth: int, what: str = "request body") -> Any:
    """``raw`` (UTF-8/16/32 bytes as :func:`json.loads` detects them, or text) -> the parsed value."""
    try:
        text = raw if isinstance(raw, str) else raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError as exc:
        raise JsonRejected("invalid_json", f"{what} is not valid JSON: {exc}") from None
    too_deep = JsonRejected("json_too_deep", f"{what} nests arrays/objects deeper than {max_depth} levels")
    if nesting_exceeds(text, max_depth):
        raise too_deep
    try:
        return json.loads(text, parse_int=_integer, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise JsonRejected("invalid_json", f"{what} is not valid JSON: {exc}") from None
    except RecursionError:  # brackets that do not pair up, nested past the parser's own limit
        raise too_deep from None
