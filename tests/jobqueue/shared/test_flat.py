"""A small flat JSON object as a key: equal only for the very same JSON, and given back exactly."""

from __future__ import annotations

import math

from jobqueue.shared.flat import flat_key, from_flat_key


def test_keys_tell_types_and_float_bits_apart_and_give_the_object_back():
    assert flat_key({"steps": 1}) != flat_key({"steps": True})
    assert flat_key({"s": 0.0}) != flat_key({"s": -0.0})
    assert flat_key({"s": math.nan}) == flat_key({"s": math.nan})
    value = {"steps": 2, "step_seconds": -0.0, "output": None, "ok": False}
    back = from_flat_key(flat_key(value))  # type: ignore[arg-type]
    assert back == value and [type(v) for v in back.values()] == [type(v) for v in value.values()]
    assert math.copysign(1.0, back["step_seconds"]) == -1.0


def test_nested_long_or_non_object_values_have_no_key():
    assert flat_key({"files": [{"kind": "image"}]}) is None
    assert flat_key({"output": "x" * 10_000}) is None
    assert flat_key({1: "a"}) is None
    assert flat_key(["steps"]) is None
