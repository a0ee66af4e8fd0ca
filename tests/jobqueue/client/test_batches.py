"""Batches: ``count`` varied copies of one job, validated together, run by a real worker."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jobqueue import submit_batch
from jobqueue.client.batches import vary_payload
from jobqueue.errors import InvalidPayloadError, SubmitError, UnknownServiceError
from jobqueue.shared.names import job_meta_from_kwargs
from jobqueue.transport.internals import redis_queue_keys

BASE = {"steps": 1, "step_seconds": 0.05, "output": "img"}


def queued_messages(redis_client: Any, queue: str = "simulation") -> list[dict[str, Any]]:
    return [json.loads(m) for key in redis_queue_keys(queue) for m in redis_client.lrange(key, 0, -1)]


# -- unit: vary -----------------------------------------------------------------------------


def test_increment_counts_up_from_the_payloads_value_or_from_zero():
    assert [vary_payload({"seed": 10}, i, 3, {"seed": "increment"})["seed"] for i in range(3)] == [10, 11, 12]
    assert [vary_payload({}, i, 2, {"seed": "increment"})["seed"] for i in range(2)] == [0, 1]


def test_a_list_gives_each_copy_its_own_value_and_must_match_the_count():
    assert vary_payload({"output": "x"}, 1, 2, {"output": ["a", "b"]})["output"] == "b"
    with pytest.raises(SubmitError, match="3 values for 2 jobs"):
        vary_payload({}, 0, 2, {"output": ["a", "b", "c"]})


def test_random_seeds_are_integers_in_range():
    seeds = {vary_payload({}, i, 50, {"seed": "random"})["seed"] for i in range(50)}
    assert all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds) and len(seeds) > 40


def test_a_callable_builds_each_copy_without_touching_the_original():
    base = {"output": {"n": 0}}

    def vary(i: int, payload: dict[str, Any]) -> dict[str, Any]:
        payload["output"]["n"] = i * 10
        return payload

    assert vary_payload(base, 3, 5, vary) == {"output": {"n": 30}}
    assert base == {"output": {"n": 0}}


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"vary": {"seed": "sometimes"}}, SubmitError),
        ({"vary": {"output": "increment"}}, SubmitError),
        ({"vary": lambda i, p: {**p, "steps": -i}}, InvalidPayloadError),
        ({"vary": lambda i, p: None}, SubmitError),
    ],
)
def test_an_invalid_copy_refuses_the_whole_batch_and_enqueues_nothing(app, redis_client, kwargs, error):
    # When any copy of a batch is invalid (here the second one for the callable)
    with pytest.raises(error):
        submit_batch("simulation", BASE, 3, app=app, **kwargs)
    # Then nothing was enqueued, not even the valid copies
    assert queued_messages(redis_client) == []


@pytest.mark.parametrize("count", [0, -1, 10_001, 2.0, True])
def test_a_batch_count_must_be_a_sensible_integer(app, count):
    with pytest.raises(SubmitError, match="count"):
        submit_batch("simulation", BASE, count, app=app)


def test_an_unknown_service_refuses_the_batch(app):
    with pytest.raises(UnknownServiceError):
        submit_batch("nope", BASE, 2, app=app)


def test_batch_jobs_share_a_batch_id_and_carry_their_index_and_priority(app, redis_client):
    # When a batch of 4 is submitted at priority 8 (no worker)
    jobs = submit_batch("simulation", BASE, 4, vary={"seed": "increment"}, priority=8, app=app)
    # Then each message carries the batch id, its index and the priority in its metadata
    metas = {m["headers"]["id"]: job_meta_from_kwargs(m["headers"]["kwargsrepr"]) for m in queued_messages(redis_client)}
    assert set(metas) == {job.id for job in jobs}
    assert len({meta["batch_id"] for meta in metas.values()}) == 1
    assert [metas[job.id]["batch_index"] for job in jobs] == [0, 1, 2, 3]
    assert all(meta["batch_size"] == 4 and meta["priority"] == 8 for meta in metas.values())


# -- acceptance, real worker ----------------------------------------------------------------


def test_every_job_of_a_seeded_batch_completes_with_its_own_seed(app, start_worker):
    # Given a worker
    start_worker("gpu0")
    # When a batch of 6 with seeds 100, 101, ... is submitted
    jobs = submit_batch("simulation", {**BASE, "seed": 100}, 6, vary={"seed": "increment"}, app=app)
    # Then every job completes and reports its own seed
    results = [job.wait(timeout=60) for job in jobs]
    assert [r["seed"] for r in results] == [100, 101, 102, 103, 104, 105]
    assert len({r["job_id"] for r in results}) == 6


def test_a_dotted_field_varies_a_value_inside_a_comfyui_graph():
    # Given a ComfyUI payload whose seed lives in a node's inputs
    graph = {"3": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": 20}}}
    payload = {"workflow": graph}
    # When copies vary the dotted path
    seeds = [vary_payload(payload, i, 3, {"workflow.3.inputs.seed": "increment"})["workflow"]["3"]["inputs"]["seed"]
             for i in range(3)]
    # Then each copy has its own seed, and the original is untouched
    assert seeds == [7, 8, 9]
    assert graph["3"]["inputs"]["seed"] == 7
    # and a path through something that is not an object is refused, naming it
    with pytest.raises(SubmitError, match="no object at 'workflow.9'"):
        vary_payload(payload, 0, 1, {"workflow.9.inputs.seed": "increment"})
