"""Bounded JSON parsing: hostile nesting and numbers are refused with a code, never a RecursionError or a
ValueError turned 500."""

from __future__ import annotations

import pytest

from serve_app.json_body import JsonRejected, OversizedInteger, loads_bounded, nesting_exceeds


def _rejected(raw, max_depth=8) -> JsonRejected:
    with pytest.raises(JsonRejected) as info:
        loads_bounded(raw, max_depth)
    return info.value


@pytest.mark.parametrize(
    ("text", "limit", "exceeds"),
    [
        ("[[[]]]", 3, False),
        ("[[[[]]]]", 3, True),
        ('{"a": [{"b": []}]}', 4, False),
        ('{"a": [{"b": [1]}]}', 3, True),
        ("[[]] [[]] [[]]", 2, False),
        # brackets inside strings (escaped quotes included) do not count
        ('{"a": "[[[[[[[[\\"[[[[", "b": "{{{{"}', 2, False),
        ('{"a": [1, "]]]]", [2]]}', 2, True),
        # unbalanced: left to the parser, which says where
        ("[[[[[[[[[[", 3, False),
    ],
)
def test_nesting_exceeds_counts_levels_outside_strings(text, limit, exceeds):
    assert nesting_exceeds(text, limit) is exceeds


def test_loads_refuses_100k_levels_before_parsing():
    error = _rejected(b'{"params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", max_depth=32)
    assert (error.code, error.message) == ("json_too_deep", "request body nests arrays/objects deeper than 32 levels")


def test_loads_refuses_unbalanced_deep_nesting_as_too_deep():
    # the pre-scan cannot pair these up; the parser's own RecursionError is turned into the same refusal
    assert _rejected(b"[" * 100_000).code == "json_too_deep"
    assert _rejected(b"[" * 100_000 + b"{" * 100_000).code == "json_too_deep"


def test_loads_turns_integers_too_long_for_any_field_into_a_marker():
    value = loads_bounded(b'{"seed": ' + b"9" * 5000 + b', "small": -1234567890123456789012345678901}', 8)
    assert isinstance(value["seed"], OversizedInteger) and repr(value["seed"]) == "<an integer of 5000 characters>"
    assert value["small"] == -1234567890123456789012345678901  # 32 characters: still an int


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_loads_refuses_non_json_constants(constant):
    error = _rejected(b'{"guidance_scale": ' + constant + b"}")
    assert error.code == "invalid_json"
    assert error.message == f"{constant.decode()} is not a JSON number; send a finite number"


def test_loads_reports_malformed_and_non_utf8_bodies_as_invalid_json():
    assert _rejected(b"{not json").code == "invalid_json"
    assert _rejected(b'{"a": "\xff\xfe\xfa"}').code == "invalid_json"


def test_loads_accepts_what_json_accepts():
    assert loads_bounded(b'\xef\xbb\xbf{"a": [1, 2.5, "x", true, null]}', 8) == {"a": [1, 2.5, "x", True, None]}
    assert loads_bounded('{"a": "caf\\u00e9 ☕"}', 8) == {"a": "café ☕"}
    assert loads_bounded('{"big": 1e999}', 8) == {"big": float("inf")}  # a float: the field's range check refuses it
