"""A job's message acked in the transaction that stores its SUCCESS (jobqueue.transport.early_ack):
both or neither, kombu's later ack sends nothing, and a worker killed on either side of that
write leaves its job done once -- finished and acked, or back in its queue for another worker.

Real components: our kombu channel and Celery's result backend (the app's) on the test's Redis,
a message delivered by kombu's QoS (the unacked hash and index written as a worker's are), the
restore sweep another worker runs; the running request is a stand-in in Celery's
``active_requests`` holding what Celery's ``Request`` holds (id, message, task, acknowledged).
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery import states as celery_states
from celery.worker import state as worker_state
from kombu import Producer

from jobqueue.transport.early_ack import QoS, early_ack
from jobqueue.transport.internals import unacked_index_key, unacked_key

pytestmark = pytest.mark.timeout(60)

QUEUE = "early-ack"


class _Request:
    """What early_ack reads of Celery's worker ``Request``."""

    def __init__(self, job_id: str, message: Any) -> None:
        self.id, self.message, self.acknowledged = job_id, message, False
        self.task = SimpleNamespace(acks_late=True)


@pytest.fixture
def channel(app: Any) -> Iterator[Any]:
    """A worker's channel (the app's broker transport); never closed: a killed worker restores nothing."""
    connection = app.connection_for_read()
    chan = connection.channel()
    assert isinstance(chan.qos, QoS)
    running: list[_Request] = []
    chan.running = running
    yield chan
    for request in running:
        worker_state.active_requests.discard(request)
    chan.qos._delivered.clear()  # released like a killed worker: nothing put back by kombu
    connection.release()


def _running(channel: Any, job_id: str) -> Any:
    """Queue a message for ``job_id``, deliver it as the worker's consumer does, mark it running."""
    Producer(channel).publish({"job": job_id}, routing_key=QUEUE, exchange="", headers={"id": job_id})
    message = channel.basic_get(QUEUE, no_ack=False)
    assert message is not None
    request = _Request(job_id, message)
    worker_state.active_requests.add(request)
    channel.running.append(request)
    return message


def _unacked(app: Any, client: redis.Redis, tag: str) -> bool:
    options = app.conf.broker_transport_options
    in_hash = client.hexists(unacked_key(options), tag)
    in_index = client.zscore(unacked_index_key(options), tag) is not None
    assert in_hash == in_index, "the unacked hash and index disagree"
    return bool(in_hash)


def test_a_jobs_success_acks_its_message_in_the_same_write_and_kombus_ack_sends_nothing(
        app: Any, channel: Any, redis_client: redis.Redis) -> None:
    message = _running(channel, "j1")
    assert _unacked(app, redis_client, message.delivery_tag)
    app.backend.store_result("j1", {"ok": 1}, celery_states.SUCCESS)
    assert app.AsyncResult("j1").result == {"ok": 1}
    assert not _unacked(app, redis_client, message.delivery_tag)

    def no_write(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("kombu's ack wrote to Redis again")

    channel.qos._remove_from_indices = no_write
    message.ack()
    assert message.acknowledged and not channel.qos.acked_early


def test_a_worker_killed_after_the_success_leaves_nothing_to_redeliver_and_one_killed_before_gets_it_back(
        app: Any, channel: Any, redis_client: redis.Redis) -> None:
    # Given two running jobs: j-done's SUCCESS stored, j-cut killed before (no ack from kombu for either)
    done, cut = _running(channel, "j-done"), _running(channel, "j-cut")
    app.backend.store_result("j-done", {"ok": 1}, celery_states.SUCCESS)
    # When another worker's restore sweep finds the dead worker's deliveries overdue
    with app.connection_for_read() as other:
        sweeper = other.channel()
        sweeper.qos.visibility_timeout = 0
        sweeper.qos.restore_visible(num=10)
        # Then only the job without a result is back in the queue, and it is done once after
        again = sweeper.basic_get(QUEUE, no_ack=True)
        assert again is not None and again.headers["id"] == "j-cut" and again.delivery_tag == cut.delivery_tag
        assert sweeper.basic_get(QUEUE, no_ack=True) is None
    assert not _unacked(app, redis_client, done.delivery_tag)
    assert app.AsyncResult("j-done").state == celery_states.SUCCESS


def test_a_refused_success_write_acks_nothing_and_kombus_ack_still_does(
        app: Any, channel: Any, redis_client: redis.Redis) -> None:
    message = _running(channel, "j2")
    redis_client.rpush(app.backend.get_key_for_task("j2"), "not a record")  # GET answers WRONGTYPE
    with pytest.raises(redis.ResponseError):
        app.backend.store_result("j2", {"ok": 2}, celery_states.SUCCESS)
    assert _unacked(app, redis_client, message.delivery_tag) and not channel.qos.acked_early
    message.ack()
    assert not _unacked(app, redis_client, message.delivery_tag)


def test_nothing_rides_for_an_acked_request_another_state_or_another_database(
        app: Any, channel: Any, redis_client: redis.Redis, redis_url: str) -> None:
    message = _running(channel, "j3")
    other_db = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/15")
    try:
        assert early_ack("j3", other_db) is None
    finally:
        other_db.close()
    app.backend.store_result("j3", {"step": 1}, celery_states.STARTED)
    assert _unacked(app, redis_client, message.delivery_tag)
    channel.running[0].acknowledged = True
    assert early_ack("j3", app.backend.client) is None
    channel.running[0].acknowledged = False
    assert early_ack("j3", app.backend.client) is not None
