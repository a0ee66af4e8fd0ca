"""A payload validation remembered: a flat payload is checked by its model once, exactly."""

from __future__ import annotations

from typing import Any

import pytest

from jobqueue.connectors.payloads import validate_simulation
from jobqueue.connectors.remembered import remembered
from jobqueue.errors import InvalidPayloadError
from jobqueue.shared.flat import flat_key


def counting(validate: Any) -> tuple[Any, list[Any]]:
    seen: list[Any] = []

    def inner(payload: Any) -> dict[str, Any]:
        seen.append(payload)
        return validate(payload)

    return remembered(inner), seen


def test_the_same_flat_payload_is_validated_once_and_each_caller_gets_its_own_copy():
    check, seen = counting(validate_simulation.__wrapped__)
    first = check({"steps": 0})
    first["steps"] = 99  # a caller changing its copy changes nothing for the next
    second = check({"steps": 0})
    assert second == {"steps": 0, "step_seconds": 0.0, "fail_at_step": None, "output": None}
    assert len(seen) == 1


def test_payloads_that_differ_only_in_type_or_float_bits_are_validated_apart():
    check, seen = counting(validate_simulation.__wrapped__)
    assert check({"steps": 1})["steps"] == 1
    with pytest.raises(InvalidPayloadError):
        check({"steps": True})  # strict: a boolean is not a step count, though True == 1
    assert str(check({"step_seconds": -0.0})["step_seconds"]) == "-0.0"
    assert str(check({"step_seconds": 0.0})["step_seconds"]) == "0.0"
    assert len(seen) == 4


def test_an_invalid_payload_is_refused_every_time():
    check, seen = counting(validate_simulation.__wrapped__)
    for _ in range(2):
        with pytest.raises(InvalidPayloadError, match="steps"):
            check({"steps": "many"})
    assert len(seen) == 2


def test_nested_payloads_and_non_scalar_results_always_go_to_the_model():
    assert flat_key({"files": [{"kind": "image", "mb": 1}]}) is None
    check, seen = counting(lambda payload: {"tags": [payload["tag"]]})
    a, b = check({"tag": "x"}), check({"tag": "x"})
    assert a == b == {"tags": ["x"]} and a["tags"] is not b["tags"]
    assert len(seen) == 3  # once to find its result not flat, then once per call


def test_the_simulation_connector_validates_a_repeated_payload_once():
    validate_simulation.cache_clear()
    payload = {"steps": 0, "step_seconds": 0.0, "fail_at_step": None, "output": "repeat-me"}
    assert validate_simulation(dict(payload)) == validate_simulation(dict(payload)) == payload
    assert validate_simulation.cache_info().hits >= 1
