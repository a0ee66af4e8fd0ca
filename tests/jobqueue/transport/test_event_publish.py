"""A worker's buffered events published by jobqueue.transport.event_publish: the same message kombu
sends (byte for byte but its random delivery tag), that Celery's receiver reads, and buffered
when the broker refuses it.

Real components: Celery's event dispatcher publishing through kombu onto the test's Redis.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from jobqueue.transport.event_publish import lean_event_publish
from jobqueue.transport.internals import TolerantEventReceiver
from tests.helpers import wait_for


@pytest.fixture
def dispatcher(app: Any) -> Iterator[Any]:
    connection = app.connection_for_write()
    dispatcher = app.events.Dispatcher(connection, hostname="gpu0@test", enabled=True, buffer_group=["task"])
    yield dispatcher
    dispatcher.close()
    connection.release()


def _raw(redis_client: Any) -> tuple[Any, list[bytes]]:
    db = redis_client.connection_pool.connection_kwargs.get("db", 0)
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    got: list[bytes] = []
    pubsub.psubscribe(**{f"/{db}.celeryev/*": lambda message: got.append(message["data"])})
    return pubsub, got


def _not_kombus(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("kombu's Producer.publish ran")


def _without_tag(data: bytes) -> dict[str, Any]:
    envelope = json.loads(data)
    assert envelope["properties"].pop("delivery_tag")
    return envelope


def test_a_flushed_group_reaches_redis_as_the_bytes_kombu_sends_but_its_delivery_tag(
        dispatcher: Any, redis_client: Any) -> None:
    pubsub, got = _raw(redis_client)
    listener = pubsub.run_in_thread(sleep_time=0.01, daemon=True)
    try:
        events = [{"type": "task-received", "uuid": "job-1", "hostname": "gpu0@test", "clock": 1, "timestamp": 1.5},
                  {"type": "task-succeeded", "uuid": "job-1", "result": "ünïcode", "clock": 2, "timestamp": 2.5}]
        dispatcher._publish(list(events), dispatcher.producer, "task.multi")  # kombu's own (declares)
        assert lean_event_publish(dispatcher) and not lean_event_publish(dispatcher)
        dispatcher.producer.publish = _not_kombus
        dispatcher._publish(list(events), dispatcher.producer, "task.multi")  # the lean path
        wait_for(lambda: len(got) == 2, timeout=10, what="both messages")
        kombu_bytes, lean_bytes = got
        assert _without_tag(lean_bytes) == _without_tag(kombu_bytes)
        tag = json.loads(lean_bytes)["properties"]["delivery_tag"]
        assert lean_bytes == kombu_bytes.replace(json.loads(kombu_bytes)["properties"]["delivery_tag"].encode(),
                                                 tag.encode())
    finally:
        listener.stop()
        listener.join(5)
        pubsub.close()


def test_celerys_receiver_gets_every_event_of_a_lean_flush_in_order(app: Any, dispatcher: Any) -> None:
    got: list[str] = []
    malformed: list[Exception] = []
    ready = threading.Event()
    with app.connection_for_read() as connection:
        receiver = TolerantEventReceiver(connection, handlers={"*": lambda event: got.append(event["uuid"])},
                                         app=app, on_malformed=malformed.append, on_ready=ready.set)
        thread = threading.Thread(target=receiver.capture, kwargs={"limit": 6, "timeout": 20}, daemon=True)
        thread.start()
        assert ready.wait(10)
        dispatcher.send("task-received", uuid="warm-up")
        dispatcher.flush()  # kombu's publish declares the exchange on the connection
        assert lean_event_publish(dispatcher)
        dispatcher.producer.publish = _not_kombus
        for n in range(5):
            dispatcher.send("task-received", uuid=f"job-{n}")
        dispatcher.flush()
        wait_for(lambda: len(got) == 6, timeout=10, what="six events")
        receiver.should_stop = True
        thread.join(10)
    assert got == ["warm-up"] + [f"job-{n}" for n in range(5)] and not malformed


def test_a_refused_lean_publish_is_buffered_for_the_next_flush(dispatcher: Any) -> None:
    dispatcher.send("task-received", uuid="warm-up")
    dispatcher.flush()
    lean_event_publish(dispatcher)
    channel = dispatcher.producer.channel

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("the broker went away")

    channel._put_fanout = refuse
    dispatcher.producer.publish = _not_kombus
    dispatcher.send("task-received", uuid="job-1")
    dispatcher.flush()
    assert [[e["uuid"] for e in events] for events, _ in dispatcher._outbound_buffer] == [["job-1"]]


def test_lean_flushes_carry_distinct_delivery_tags_without_a_uuid4_each(
        dispatcher: Any, redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import uuid

    pubsub, got = _raw(redis_client)
    listener = pubsub.run_in_thread(sleep_time=0.01, daemon=True)
    try:
        events = [{"type": "task-received", "uuid": "job-1", "hostname": "gpu0@test", "clock": 1, "timestamp": 1.5}]
        dispatcher._publish(list(events), dispatcher.producer, "task.multi")  # kombu's own (declares)
        assert lean_event_publish(dispatcher)
        calls: list[int] = []
        real = uuid.uuid4
        monkeypatch.setattr(uuid, "uuid4", lambda: calls.append(1) or real())
        for _ in range(3):
            dispatcher._publish(list(events), dispatcher.producer, "task.multi")  # the lean path
        wait_for(lambda: len(got) == 4, timeout=10, what="all four messages")
        tags = [json.loads(data)["properties"]["delivery_tag"] for data in got[1:]]
        assert len(set(tags)) == 3 and all(tags) and calls == []
    finally:
        listener.stop()
        listener.join(5)
        pubsub.close()
