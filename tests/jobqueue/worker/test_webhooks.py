"""Webhooks: a signed POST (Standard Webhooks) when a job ends, delivered by a Celery task with
backoff, the same webhook-id on every try, surviving a crash of the delivering worker.

The receiver is a real HTTP server on a free port (on loopback, allowed on purpose with
``JOBQUEUE_WEBHOOK_ALLOWED_NETWORKS``); workers are real processes on real Redis.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from jobqueue import submit_job
from jobqueue.errors import SubmitError
from jobqueue.shared.webhooks import read_attempts
from jobqueue.states import JobStatus
from jobqueue.transport.internals import redis_queue_keys
from jobqueue.worker.webhooks import build_delivery, sign, verify
from tests.helpers import busy_worker, quick, wait_for
from tests.webhook_receiver import Receiver

SECRET = "whsec_" + base64.b64encode(b"jobqueue-test-secret-0123456789ab").decode()


@pytest.fixture
def settings(settings: Any) -> Any:
    """The test receivers listen on loopback, which webhook targets may not be unless opened on
    purpose: these tests open 127.0.0.1 for their client and workers (test_webhook_targets.py
    tests the refusals)."""
    return settings.model_copy(update={"webhook_allowed_networks": ("127.0.0.1/32",)})


@pytest.fixture
def receivers() -> Iterator[Callable[[Callable[[int], Any]], Receiver]]:
    started: list[Receiver] = []

    def start(answer: Callable[[int], Any]) -> Receiver:
        receiver = Receiver(answer).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


# -- unit -------------------------------------------------------------------------------------
def test_the_signature_matches_the_standard_webhooks_reference_vector() -> None:
    # The example of the Standard Webhooks specification's reference libraries
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = '{"test": 2432232314}'
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
               "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
    assert verify(secret, headers, body, now=1614265330)
    assert not verify(secret, headers, body + " ", now=1614265330)
    assert not verify(secret, headers, body, now=1614265330 + 3600)


def test_by_default_a_delivery_is_tried_at_least_five_times_over_at_least_five_minutes() -> None:
    from jobqueue.config import Settings

    settings = Settings()
    waits = [settings.webhook_backoff * 2 ** (n - 1) for n in range(1, settings.webhook_max_tries)]
    assert settings.webhook_max_tries >= 5 and sum(waits) >= 300, waits


def test_the_body_names_the_event_and_carries_the_job() -> None:
    delivery = build_delivery("j1", "https://app.example/hook", JobStatus.TIMED_OUT, service="comfyui",
                              result=None, error={"type": "JobTimedOut", "message": "x", "details": {}}, now=0)
    body = json.loads(delivery["body"])
    assert delivery["id"] == "msg_j1"
    assert body == {"type": "job.timed_out", "timestamp": "1970-01-01T00:00:00Z",
                    "data": {"id": "j1", "status": "timed_out", "service": "comfyui", "result": None,
                             "error": {"type": "JobTimedOut", "message": "x", "details": {}}, "files": []}}


def test_a_non_http_webhook_url_is_refused_at_submit_and_nothing_is_enqueued(app: Any, redis_client: Any) -> None:
    for url in ("ftp://example.com/x", "file:///etc/passwd", "javascript:alert(1)", "http://", "/relative", "", 7):
        with pytest.raises(SubmitError, match="webhook_url"):
            submit_job("simulation", quick("x"), webhook_url=url, app=app)  # type: ignore[arg-type]
    assert sum(redis_client.llen(k) for k in redis_queue_keys("simulation")) == 0


def test_the_api_refuses_a_non_http_webhook_url_with_400(tmp_path: Any, redis_url: str) -> None:
    from jobqueue.config import Settings
    from monitor.app import create_app

    flask_app = create_app(Settings(broker_url=redis_url, monitor_db=f"sqlite:///{tmp_path / 'm.db'}").resolved())
    reply = flask_app.test_client().post("/api/jobs", json={"service": "simulation", "payload": quick("x"),
                                                            "webhook_url": "gopher://x"})
    assert reply.status_code == 400 and "webhook_url" in reply.get_json()["error"]["message"]


# -- real workers -------------------------------------------------------------------------------
def test_a_receiver_that_answers_500_twice_gets_the_third_try_with_the_same_id_and_a_valid_signature(
        app: Any, start_worker: Any, receivers: Any, redis_url: str, settings: Any, tmp_path: Any) -> None:
    # Given a receiver that answers 500 twice, then 200, and a worker with a signing secret
    receiver = receivers(lambda n: 500 if n < 2 else 200)
    start_worker("gpu0", WEBHOOK_SECRET=SECRET, WEBHOOK_BACKOFF="0.5")
    # When a job with a webhook completes
    handle = submit_job("simulation", quick("hooked"), webhook_url=receiver.url, app=app)
    handle.wait(timeout=30)
    # Then the third try is delivered
    wait_for(lambda: len(receiver.requests) >= 3 and receiver.requests[2].answered == 200, 30,
             what="the third try")
    tries = receiver.requests
    assert [r.answered for r in tries] == [500, 500, 200]
    # with the same webhook-id every time, each signed, the third verifying
    assert {r.headers["webhook-id"] for r in tries} == {f"msg_{handle.id}"}
    assert all(verify(SECRET, r.headers, r.body) for r in tries)
    # after a growing backoff (0.5 s, then 1 s)
    assert tries[1].at - tries[0].at >= 0.45 and tries[2].at - tries[1].at >= 0.95
    body = json.loads(tries[2].body)
    assert body["type"] == "job.completed"
    assert body["data"]["id"] == handle.id and body["data"]["status"] == "completed"
    assert body["data"]["result"]["output"] == "hooked" and body["data"]["service"] == "simulation"
    # And the tries are recorded for the job page
    client = redis.Redis.from_url(redis_url)
    attempts = wait_for(lambda: read_attempts(client, handle.id) if len(read_attempts(client, handle.id)) == 3 else None,
                        10, what="three recorded tries")
    client.close()
    assert [(a["try"], a["status_code"], a["delivered"]) for a in attempts] == [(1, 500, False), (2, 500, False),
                                                                                (3, 200, True)]
    # And the monitor's job page gets them from its API
    from monitor.app import create_app
    from monitor.merge.apply import apply

    flask_app = create_app(settings.model_copy(update={"monitor_db": f"sqlite:///{tmp_path / 'hooks.db'}"}))
    with flask_app.extensions["jobqueue_monitor"].store.write() as tx:
        apply({"type": "task-sent", "uuid": handle.id, "timestamp": time.time(),
               "kwargs": json.dumps({"service": "simulation", "webhook_url": receiver.url})}, tx)
    listed = flask_app.test_client().get(f"/api/jobs/{handle.id}/webhooks").get_json()
    assert listed["webhook_url"] == receiver.url
    assert [a["status_code"] for a in listed["attempts"]] == [500, 500, 200]
    assert flask_app.test_client().get("/api/jobs/unknown/webhooks").status_code == 404


def test_a_failed_job_sends_job_failed(app: Any, start_worker: Any, receivers: Any) -> None:
    receiver = receivers(lambda n: 204)
    start_worker("gpu0", WEBHOOK_SECRET=SECRET)
    handle = submit_job("simulation", {"steps": 2, "step_seconds": 0.05, "fail_at_step": 1},
                        webhook_url=receiver.url, app=app)
    wait_for(lambda: receiver.requests and receiver.requests[0].answered == 204, 30, what="the delivery")
    body = json.loads(receiver.requests[0].body)
    assert body["type"] == "job.failed" and body["data"]["id"] == handle.id
    assert body["data"]["error"]["type"] == "ExecutionFailed"


def test_a_timed_out_job_sends_job_timed_out(app: Any, start_worker: Any, receivers: Any) -> None:
    # Given a receiver and a worker
    receiver = receivers(lambda n: 204)
    start_worker("gpu0", WEBHOOK_SECRET=SECRET)
    # When a job runs past its 1 s timeout
    handle = submit_job("simulation", {"steps": 50, "step_seconds": 0.2}, timeout=1.0, webhook_url=receiver.url,
                        app=app)
    wait_for(lambda: receiver.requests and receiver.requests[0].answered == 204, 30, what="the delivery")
    # Then its webhook says job.timed_out, once, signed
    body = json.loads(receiver.requests[0].body)
    assert body["type"] == "job.timed_out" and body["data"]["id"] == handle.id
    assert body["data"]["status"] == "timed_out" and verify(SECRET, receiver.requests[0].headers, receiver.requests[0].body)
    assert len(receiver.requests) == 1


def test_a_worker_killed_during_a_delivery_loses_nothing_and_the_job_is_delivered_once(
        app: Any, start_worker: Any, receivers: Any, redis_url: str) -> None:
    # Given a receiver that holds the first try open, and two workers
    release = threading.Event()
    receiver = receivers(lambda n: release if n == 0 else 200)
    first = start_worker("gpu0", WEBHOOK_SECRET=SECRET, WEBHOOK_BACKOFF="0.5")
    # When a job with a webhook completes on the first worker and that worker is SIGKILLed
    # while its delivery waits for the receiver
    handle = submit_job("simulation", quick("crash"), webhook_url=receiver.url, queue=f"gpu0.{first.env['JOBQUEUE_MACHINE_ID']}",
                        app=app)
    handle.wait(timeout=30)
    wait_for(lambda: receiver.requests, 30, what="the first try to arrive")
    first.kill()
    release.set()
    second = start_worker("gpu1", WEBHOOK_SECRET=SECRET, WEBHOOK_BACKOFF="0.5")
    # Then the delivery comes back and the second worker delivers it
    wait_for(lambda: any(r.answered == 200 for r in receiver.requests), 60, interval=0.2,
             what="the delivery by the second worker")
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: any(a["delivered"] for a in read_attempts(client, handle.id)), 10, what="the recorded delivery")
    attempts = read_attempts(client, handle.id)
    client.close()
    # once, with the same webhook-id as the interrupted try
    assert [r.answered for r in receiver.requests].count(200) == 1
    assert {r.headers["webhook-id"] for r in receiver.requests} == {f"msg_{handle.id}"}
    assert [a["worker"] for a in attempts if a["delivered"]] == [second.node_name]


def test_a_job_cancelled_while_queued_sends_job_cancelled(app: Any, start_worker: Any, receivers: Any,
                                                          machine_id: str) -> None:
    # Given a worker busy with another job, and a job with a webhook waiting behind it
    receiver = receivers(lambda n: 200)
    start_worker("gpu0", WEBHOOK_SECRET=SECRET)
    queue = f"gpu0.{machine_id}"
    busy_worker(app, queue=queue, seconds=3.0)
    handle = submit_job("simulation", quick("never"), queue=queue, webhook_url=receiver.url, app=app)
    # When it is cancelled while still queued
    assert handle.cancel()
    # Then the receiver hears that the job was cancelled
    wait_for(lambda: receiver.requests and receiver.requests[0].answered == 200, 30, what="the delivery")
    body = json.loads(receiver.requests[0].body)
    assert body["type"] == "job.cancelled" and body["data"]["status"] == "cancelled", body
    assert verify(SECRET, receiver.requests[0].headers, receiver.requests[0].body)
