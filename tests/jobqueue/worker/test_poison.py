"""Poison messages never stop a worker: they go to ``<queue>.dead`` with the reason, and a job
whose message was discarded ends failed with that reason (real worker, real Redis)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from jobqueue import submit_job
from jobqueue.errors import JobFailed
from jobqueue.shared.records import dead_letter_key
from jobqueue.states import JobStatus
from jobqueue.worker.poison import check_envelope, dead_record, poison_from_item
from tests.helpers import quick, wait_for

#: A queue nobody consumes: jobs parked there are taken apart by the tests.
PARKED = "parked-poison"


def _decode(body: Any, encoding: Any) -> Any:
    return base64.b64decode(body, validate=True) if encoding == "base64" else body


def _dead(redis_client: Any, queue: str) -> list[dict[str, Any]]:
    return [json.loads(item) for item in redis_client.lrange(dead_letter_key(queue), 0, -1)]


def _parked_envelope(app: Any, redis_client: Any) -> tuple[str, dict[str, Any]]:
    """Submit a job to a queue no worker reads and take its raw kombu envelope back out."""
    handle = submit_job("simulation", quick("never runs"), queue=PARKED, app=app)
    raw = wait_for(lambda: next((redis_client.rpop(k) for k in redis_client.keys(PARKED + "*")), None), 10,
                   what="the parked message")
    return handle.id, json.loads(raw)


def _final_error(app: Any, job_id: str) -> str:
    from jobqueue.client.jobs import get_job

    handle = get_job(job_id, app=app)
    wait_for(lambda: handle.status() == JobStatus.FAILED, 30, what=f"job {job_id} to fail")
    with pytest.raises(JobFailed) as failed:
        handle.result()
    return str(failed.value)


def test_an_envelope_check_names_what_is_wrong_with_each_kind_of_poison():
    # Given items of every broken kind, and a good envelope
    info = {"exchange": "", "routing_key": "q"}
    good = json.dumps({"body": base64.b64encode(b"[]").decode(), "headers": {"id": "j1", "task": "x"},
                       "properties": {"delivery_tag": "t", "body_encoding": "base64", "delivery_info": info}})
    cases = {
        b"garbage": "not a kombu message",
        b"\xff\xfe": "not a kombu message",
        b"[1, 2]": "a JSON list",
        b'{"body": "x"}': "no properties",
        json.dumps({"body": "!!!", "properties": {"delivery_tag": "t", "body_encoding": "base64", "delivery_info": info}}).encode():
            "undecodable body",
        json.dumps({"properties": {"delivery_tag": "t"}, "headers": [1]}).encode(): "headers is not an object",
        json.dumps({"properties": {"delivery_tag": "t", "delivery_info": {}}}).encode(): "no delivery_info",
        b"[" * 50_000: "not a kombu message",
    }
    # When each is checked, then the reason says what is wrong; the good one passes
    for item, expected in cases.items():
        _, reason = check_envelope(item, _decode)
        assert reason is not None and expected in reason, (item[:40], reason)
    payload, reason = check_envelope(good.encode(), _decode)
    assert reason is None and payload["headers"]["id"] == "j1"
    # And a dead record keeps a binary item as base64 and names the job
    poison = poison_from_item("q", b"\xff" + good.encode(), json.loads(good), "why")
    record = dead_record(poison, "gpu0@m", now=1.0)
    assert record["job_id"] == "j1" and base64.b64decode(record["raw_base64"]).startswith(b"\xff")


def test_garbage_and_bad_base64_on_a_service_queue_leave_the_worker_alive(app, start_worker, redis_client):
    # Given a running worker that consumes the simulation queue
    worker = start_worker("gpu0")
    # When raw garbage and an envelope with a broken base64 body are pushed onto its queue
    broken = {"body": "not base64!!", "content-type": "application/json", "content-encoding": "utf-8",
              "headers": {}, "properties": {"delivery_tag": "x1", "body_encoding": "base64",
                                            "delivery_info": {"exchange": "", "routing_key": "simulation"}}}
    redis_client.lpush("simulation", b"garbage")
    redis_client.lpush("simulation", json.dumps(broken))
    # Then both land in simulation.dead with their reasons
    dead = wait_for(lambda: len(_dead(redis_client, "simulation")) == 2 and _dead(redis_client, "simulation"), 30,
                    what="two dead letters")
    reasons = sorted(d["reason"] for d in dead)
    assert "not a kombu message" in reasons[0] and "undecodable body" in reasons[1], reasons
    assert {d["raw"] for d in dead} == {"garbage", json.dumps(broken)}
    assert all(d["worker"] == worker.node_name for d in dead)
    # And the worker is alive and the next job completes
    assert worker.proc.poll() is None
    handle = submit_job("simulation", quick("after poison"), app=app)
    assert handle.wait(timeout=30)["output"] == "after poison"
    assert "Unrecoverable error" not in worker.log_text() and "Connection to broker lost" not in worker.log_text()


@pytest.mark.parametrize("corruption", ["bad base64 body", "pickle content type", "broken JSON body"])
def test_a_job_whose_message_is_discarded_ends_failed_with_the_reason(app, start_worker, redis_client, corruption):
    # Given a worker, and a real job's message with one kind of corruption
    start_worker("gpu0")
    job_id, envelope = _parked_envelope(app, redis_client)
    if corruption == "bad base64 body":
        envelope["body"] = envelope["body"][:-3] + "!"
        reason = "undecodable body"
    elif corruption == "pickle content type":
        envelope["content-type"] = "application/x-python-serialize"
        reason = "ContentDisallowed"
    else:
        envelope["body"] = base64.b64encode(b'[[], {"payload": ').decode()
        reason = "cannot decode"
    # When it is delivered on the worker's service queue (as if it had been sent there)
    envelope["properties"]["delivery_info"]["routing_key"] = "simulation"
    redis_client.lpush("simulation", json.dumps(envelope))
    # Then the job ends failed with the reason, and the message is in simulation.dead
    error = _final_error(app, job_id)
    assert "discarded" in error and reason in error, error
    dead = _dead(redis_client, "simulation")
    assert [d["job_id"] for d in dead] == [job_id] and reason in dead[0]["reason"]
    # And the worker still runs jobs
    assert submit_job("simulation", quick("still here"), app=app).wait(timeout=30)["output"] == "still here"
