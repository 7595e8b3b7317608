"""Parsing untrusted JSON with bounds, so hostile nesting and numbers are a 4xx rather than a 500 or a stall.

Python's ``json`` raises ``RecursionError`` at about 1000 levels and ``ValueError`` beyond 4300 integer
digits, neither a ``JSONDecodeError``; and it holds the GIL, so 16 MiB of tiny values stalls the event loop
for a second wherever it runs. Before parsing, three checks that cost C-speed scans only:

1. quotes and backslashes counted: they bound the strings and escapes (an agent's largest body, a full
   batch, has a few hundred); more is ``json_too_complex``
2. string literals are skipped with ``str.find`` (one Python step per quote or escape, bounded by 1.), so a
   10 MiB base64 string costs nothing
3. nesting depth over the brackets left (``json_too_deep``), then their number and the commas
   (``json_too_complex``)

While parsing, an integer literal too long for any field becomes an :class:`OversizedInteger` that the field's
check refuses by name (a 5,000-digit seed is ``invalid_seed``), and ``NaN`` / ``Infinity`` are refused.
"""

from __future__ import annotations

import json
from typing import Any

# outside strings only brackets matter for depth, and both kinds count the same
_BRACKETS_ONLY = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
# no field takes an integer anywhere near this long (seeds are below 2**53, 16 digits)
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


def outside_strings(text: str) -> str:
    """``text`` without its string literals (an unterminated one runs to the end: the parser reports it)."""
    pieces, position = [], 0
    while (start := text.find('"', position)) >= 0:
        pieces.append(text[position:start])
        end = text.find('"', start + 1)
        while end > 0 and _escaped(text, end):
            end = text.find('"', end + 1)
        if end < 0:
            return "".join(pieces)
        position = end + 1
    pieces.append(text[position:])
    return "".join(pieces)


def _escaped(text: str, quote: int) -> bool:
    # an odd run of backslashes before it; the string's opening quote stops the walk
    backslashes = 0
    while text[quote - 1 - backslashes] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def nesting_exceeds(brackets: bytes, max_depth: int) -> bool:
    """Whether ``brackets`` (a skeleton of ``[`` and ``]`` only) nest deeper than ``max_depth``.

    A run of ``max_depth + 1`` openings is found by one substring search. Otherwise each pass deletes the
    innermost ``[]`` pairs, one level everywhere at once: ``max_depth`` passes at most. Brackets that stop
    pairing up are malformed JSON; the parser reports those."""
    if b"[" * (max_depth + 1) in brackets:
        return True
    for _ in range(max_depth):
        if not brackets:
            return False
        reduced = brackets.replace(b"[]", b"")
        if len(reduced) == len(brackets):
            return False
        brackets = reduced
    return bool(brackets)


def check_shape(text: str, max_depth: int, max_values: int, what: str = "request body") -> None:
    """Steps 1-3 of the module docstring; :class:`JsonRejected` if the text is too complex or too deep."""
    too_complex = JsonRejected("json_too_complex", f"{what} holds more than {max_values} JSON values or strings")
    # 1. strings and escapes bound the work of 2.; counted over the whole text, an upper bound
    if text.count('"') > 2 * max_values or text.count("\\") > max_values:
        raise too_complex
    # 2. the structure alone
    outside = outside_strings(text)
    brackets = outside.encode("utf-8", "surrogatepass").translate(_BRACKETS_ONLY, _NOT_BRACKETS)
    # 3. depth, with the passes only over a skeleton of bounded size; then the count of values
    too_deep = JsonRejected("json_too_deep", f"{what} nests arrays/objects deeper than {max_depth} levels")
    if len(brackets) > 2 * max_values:
        raise too_deep if b"[" * (max_depth + 1) in brackets else too_complex
    if nesting_exceeds(brackets, max_depth):
        raise too_deep
    if outside.count(",") > max_values:
        raise too_complex


def _integer(literal: str) -> int | OversizedInteger:
    if len(literal) > MAX_INTEGER_CHARS:
        return OversizedInteger(len(literal))
    return int(literal)


def _constant(name: str) -> Any:
    raise JsonRejected("invalid_json", f"{name} is not a JSON number; send a finite number")


def loads_bounded(raw: bytes | str, max_depth: int, max_values: int, what: str = "request body") -> Any:
    """``raw`` (UTF-8/16/32 bytes as :func:`json.loads` detects them, or text) -> the parsed value."""
    try:
        text = raw if isinstance(raw, str) else raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError as exc:
        raise JsonRejected("invalid_json", f"{what} is not valid JSON: {exc}") from None
    check_shape(text, max_depth, max_values, what)
    try:
        return json.loads(text, parse_int=_integer, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise JsonRejected("invalid_json", f"{what} is not valid JSON: {exc}") from None
    except RecursionError:  # brackets that do not pair up, nested past the parser's own limit
        raise JsonRejected("json_too_deep", f"{what} nests arrays/objects deeper than {max_depth} levels") from None
