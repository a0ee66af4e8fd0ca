"""Payload models: one pydantic model per connector checks a job before it is enqueued, names
every problem in one error, and gives the client page its JSON schema."""

from __future__ import annotations

import pytest

from jobqueue.connectors import connector_class
from jobqueue.connectors.payloads import (
    A1111_MODELS,
    ComfyUIPayload,
    SimulationPayload,
    validate_a1111,
    validate_comfyui,
    validate_simulation,
)
from jobqueue.errors import InvalidPayloadError, JobqueueError


def test_a_simulation_payload_is_normalised_with_its_defaults():
    assert validate_simulation({"steps": 3, "step_seconds": 1}) == {
        "steps": 3, "step_seconds": 1.0, "fail_at_step": None, "output": None}
    assert validate_simulation({"seed": 7})["seed"] == 7


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        ({"steps": "five"}, "'steps' must be an integer, got 'five'"),
        ({"steps": True}, "'steps' must be an integer, got True"),
        ({"steps": -1}, "'steps' must be between 0 and 100000, got -1"),
        ({"step_seconds": float("nan")}, "'step_seconds' must be a finite number"),
        ({"fail_at_step": 1.5}, "'fail_at_step' must be an integer, got 1.5"),
        ({"colour": "red"}, "unknown field(s) ['colour'] (expected steps, step_seconds"),
        (["not", "an", "object"], "simulation: payload must be a JSON object"),
    ],
)
def test_a_bad_simulation_payload_is_refused_saying_what_is_wrong(payload, complaint):
    with pytest.raises(InvalidPayloadError) as caught:
        validate_simulation(payload)
    assert complaint in str(caught.value)
    assert str(caught.value).startswith("simulation: ")


def test_every_problem_of_a_payload_is_named_in_one_error():
    with pytest.raises(InvalidPayloadError) as caught:
        validate_simulation({"steps": "many", "step_seconds": -2, "typo": 1})
    message = str(caught.value)
    assert "unknown field(s) ['typo']" in message
    assert "'steps' must be an integer" in message
    assert "'step_seconds' must be between 0 and 3600.0" in message
    # and the error is one of ours
    assert isinstance(caught.value, JobqueueError)


def test_a_comfyui_payload_keeps_its_workflow_and_makes_its_time_limits_floats():
    workflow = {"1": {"class_type": "KSampler", "inputs": {}}}
    assert validate_comfyui({"workflow": workflow, "timeout": 30}) == {"workflow": workflow, "timeout": 30.0}
    with pytest.raises(InvalidPayloadError, match="'node_timeout' must be a positive number of seconds"):
        validate_comfyui({"workflow": workflow, "node_timeout": -1})
    with pytest.raises(InvalidPayloadError, match="has no 'class_type' string"):
        validate_comfyui({"workflow": {"1": {"inputs": {}}}})


def test_an_a1111_payload_goes_on_as_written_without_the_defaults_of_its_model():
    payload = {"prompt": "a cat", "steps": 20}
    assert validate_a1111(payload) == {"prompt": "a cat", "steps": 20, "mode": "txt2img"}
    # an optional WebUI field may be null, a range-checked one inside its limits
    assert validate_a1111({"mode": "img2img", "init_images": ["aGk="], "sampler_name": None})
    with pytest.raises(InvalidPayloadError, match="'denoising_strength' must be between 0.0 and 1.0"):
        validate_a1111({"mode": "img2img", "init_images": ["aGk="], "denoising_strength": 1.5})


def test_each_connector_serves_the_json_schema_of_its_payload():
    simulation = connector_class("simulation").payload_schema()
    assert simulation == SimulationPayload.model_json_schema()
    assert simulation["properties"]["steps"]["maximum"] == 100000
    assert simulation["additionalProperties"] is False
    comfyui = connector_class("comfyui").payload_schema()
    assert comfyui == ComfyUIPayload.model_json_schema() and comfyui["required"] == ["workflow"]
    a1111 = connector_class("a1111").payload_schema()
    modes = [branch["properties"]["mode"]["const"] for branch in a1111["oneOf"]]
    assert modes == list(A1111_MODELS) == ["txt2img", "img2img"]
    steps = a1111["oneOf"][0]["properties"]["steps"]
    assert (steps["minimum"], steps["maximum"]) == (1, 150)
