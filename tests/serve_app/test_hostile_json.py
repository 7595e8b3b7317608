"""Bounded JSON parsing: hostile nesting and numbers are refused with a code, never a RecursionError or a
ValueError turned 500."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from serve_app.config import ApiLimits
from serve_app.json_body import JsonRejected, OversizedInteger, check_shape, loads_bounded, outside_strings


def _rejected(raw, max_depth=8, max_values=10_000) -> JsonRejected:
    with pytest.raises(JsonRejected) as info:
        loads_bounded(raw, max_depth, max_values)
    return info.value


def _shape(text: str, max_depth: int, max_values: int = 1000) -> str | None:
    try:
        check_shape(text, max_depth, max_values)
    except JsonRejected as exc:
        return exc.code
    return None


@pytest.mark.parametrize(
    ("text", "limit", "code"),
    [
        ("[[[]]]", 3, None),
        ("[[[[]]]]", 3, "json_too_deep"),
        ('{"a": [{"b": []}]}', 4, None),
        ('{"a": [{"b": [1]}]}', 3, "json_too_deep"),
        ("[[], [[]], [[], [[]]]]", 4, None),
        ("[[], [[]], [[], [[[]]]]]", 4, "json_too_deep"),
        # brackets inside strings (escaped quotes included) do not count
        ('{"a": "[[[[[[[[\\"[[[[", "b": "{{{{", "c": "\\\\"}', 2, None),
        ('{"a": [1, "]]]]", [2]]}', 2, "json_too_deep"),
        # unbalanced but shallow: left to the parser, which says where
        ("[[[{]]", 4, None),
    ],
)
def test_check_shape_counts_levels_outside_strings(text, limit, code):
    assert _shape(text, limit) == code


def test_outside_strings_skips_literals_and_their_escapes():
    assert outside_strings('{"a": "x\\"y", "b\\\\": [1, "]"]}') == "{: , : [1, ]}"
    assert outside_strings('[1, "unterminated') == "[1, "


@pytest.mark.parametrize(
    "text",
    [
        "[" + "1," * 2000 + "1]",  # values
        "[" + '"",' * 1000 + '""]',  # strings
        '["' + "\\n" * 1001 + '"]',  # escapes
        "[]" * 1001,  # brackets
    ],
)
def test_check_shape_refuses_more_values_than_the_limit(text):
    assert _shape(text, 32, max_values=1000) == "json_too_complex"


def test_check_shape_is_fast_on_16_mib_hostile_bodies():
    # parsing holds the GIL: each of these took seconds of the event loop (pre-scan or parser) before
    size = 16 * 1024 * 1024
    bodies = [
        ("[" * 32 + "]" * 32) * (size // 64),
        "[" + '"",' * (size // 3 - 1) + '""]',
        '["' + '\\"' * (size // 2 - 2) + '"]',
        "[" + "1," * (size // 2 - 1) + "1]",
    ]
    for body in bodies:
        started = time.process_time()
        assert _shape(body, 32, max_values=10_000) == "json_too_complex"
        assert time.process_time() - started < 2.0  # CPU time, ~0.05 s here: a generous bound


def test_loads_refuses_100k_levels_before_parsing():
    error = _rejected(b'{"params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", max_depth=32, max_values=10)
    assert (error.code, error.message) == ("json_too_deep", "request body nests arrays/objects deeper than 32 levels")


def test_loads_refuses_unbalanced_deep_nesting_as_too_deep():
    # the pre-scan cannot pair these up; the parser's own RecursionError is turned into the same refusal
    assert _rejected(b"[" * 100_000).code == "json_too_deep"
    assert _rejected(b"[" * 100_000 + b"{" * 100_000).code == "json_too_deep"


def test_loads_turns_integers_too_long_for_any_field_into_a_marker():
    value = loads_bounded(b'{"seed": ' + b"9" * 5000 + b', "small": -1234567890123456789012345678901}', 8, 100)
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
    assert loads_bounded(b'\xef\xbb\xbf{"a": [1, 2.5, "x", true, null]}', 8, 100) == {"a": [1, 2.5, "x", True, None]}
    assert loads_bounded('{"a": "caf\\u00e9 ☕"}', 8, 100) == {"a": "café ☕"}
    assert loads_bounded('{"big": 1e999}', 8, 100) == {"big": float("inf")}  # a float: the field's check refuses it


def test_api_limits_leave_room_for_a_full_batch():
    with pytest.raises(ValidationError, match="max_json_values must be at least 16 x max_batch_items"):
        ApiLimits(max_batch_items=64, max_json_values=1000)
    with pytest.raises(ValidationError, match="max_request_pixels must be at least max_image_pixels"):
        ApiLimits(max_image_pixels=4096 * 4096, max_request_pixels=1024 * 1024)
