"""The private kombu, Celery and redis-py behaviour the frozen-link checks rely on, against the
installed libraries (real Redis): jobqueue/transport/kombu_redis.py touchpoints 5 and 6 (the
worker's link watch) and jobqueue/transport/result_watch.py (``JobHandle.wait()``). The
behaviour itself is tested through a freezing proxy in tests/jobqueue/worker/test_frozen_link.py
and tests/jobqueue/client/test_frozen_link.py."""

from __future__ import annotations

import socket
import uuid

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Queue

from jobqueue.config import Settings
from jobqueue.transport.app import create_app
from jobqueue.transport.kombu_redis import Transport, brpop_expected, last_brpop_reply, sever
from jobqueue.transport.result_watch import MISSED_PINGS, check_subscription

pytestmark = pytest.mark.timeout(60)


def test_a_consuming_channel_expects_a_brpop_reply_stamps_each_one_and_stops_expecting_when_full(redis_url):
    # Given a consumer with room for one message on jobqueue's Redis transport
    queue = Queue("link-touch", Exchange("link-touch", type="direct"), routing_key="link-touch")
    with Connection(redis_url, transport=Transport) as conn:
        channel = conn.channel()
        got = []
        consumer = Consumer(channel, [queue], callbacks=[lambda body, message: got.append(message)])
        consumer.qos(prefetch_count=1)
        consumer.consume()
        # When it waits on an empty queue, Redis answers its BRPOP (empty) and the answer is stamped
        assert brpop_expected(channel)
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=2.5)
        assert last_brpop_reply(channel) is not None
        # When a message arrives and is held unacked, no BRPOP is due any more
        with conn.Producer() as producer:
            producer.publish("hi", exchange=queue.exchange, routing_key="link-touch", declare=[queue])
        conn.drain_events(timeout=5)
        assert len(got) == 1 and not brpop_expected(channel)
        got[0].ack()
        consumer.cancel()


def test_severing_a_connection_shuts_its_channels_sockets_and_its_next_read_fails(redis_url):
    # Given a consuming connection with a BRPOP out
    queue = Queue("link-sever", Exchange("link-sever", type="direct"), routing_key="link-sever")
    with Connection(redis_url, transport=Transport) as conn:
        channel = conn.channel()
        Consumer(channel, [queue], callbacks=[lambda body, message: None]).consume()
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=1.5)
        # When its sockets are severed (from any thread)
        assert sever(conn) >= 1
        # Then its next read fails as a lost connection
        with pytest.raises(conn.connection_errors):
            conn.drain_events(timeout=2)
    assert sever(None) == 0


def test_a_result_subscription_is_pinged_and_replaced_after_unanswered_pings(redis_url, settings):
    # Given a client app following a job through the Redis result backend's subscription
    app = create_app(settings.model_copy(update={"redis_health_interval": 1.0}))
    try:
        job_id = str(uuid.uuid4())
        backend = app.backend
        backend.result_consumer.consume_from(job_id)
        consumer = backend.result_consumer
        old = consumer._pubsub
        assert old is not None and old.connection is not None
        # When a health check is due, it is sent on the subscription (and counted)
        old.connection.next_health_check = 0
        assert check_subscription(backend) is False
        assert old.health_check_response_counter == 1
        # When as many as MISSED_PINGS went unanswered
        old.health_check_response_counter = MISSED_PINGS
        assert check_subscription(backend) is True
        # Then a new subscription is in place for the same job, on a new connection
        new = consumer._pubsub
        assert new is not old and new.connection is not None
        key = backend.get_key_for_task(job_id)
        numsub = dict(redis.Redis.from_url(redis_url).pubsub_numsub(key))
        assert numsub.get(key if isinstance(key, bytes) else key.encode(), 0) == 1
    finally:
        app.close()


def test_a_non_redis_backend_has_no_subscription_to_check(redis_url):
    app = create_app(Settings(broker_url=redis_url, result_backend="cache+memory://").resolved())
    try:
        assert check_subscription(app.backend) is False
    finally:
        app.close()
