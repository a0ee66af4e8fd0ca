"""A worker's buffered events leave in windows (jobqueue.transport.event_windows): the events of
one window reach Redis as one message, in order, and a later event opens a window of its own.

Real components: Celery's event dispatcher as the worker's ``Events`` step builds it (the
``task`` group buffered, the hook called after each buffered send), publishing through kombu
onto the test's Redis, and kombu's event loop (``Hub``) in a thread of its own, as the worker's.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from kombu.asynchronous import Hub

from jobqueue.transport.event_windows import WindowedFlush, flush_in_windows
from tests.helpers import wait_for

#: Long enough that the sends below (microseconds apart) always share one window.
WINDOW = 0.5


@pytest.fixture
def hub() -> Iterator[Hub]:
    loop = Hub()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.stop()
    thread.join(5)


def _consumer(app: Any, hub: Hub) -> Any:
    """What the worker's consumer holds after its ``Events`` step: a dispatcher buffering the
    ``task`` group, whose hook has the loop flush at its next turn (Celery's own)."""
    consumer = SimpleNamespace(hub=hub, event_dispatcher=None)

    def flush_soon() -> None:
        hub.call_soon(lambda: consumer.event_dispatcher.flush(errors=False, groups=True))

    consumer.event_dispatcher = app.events.Dispatcher(
        app.connection_for_write(), hostname="gpu0@test", enabled=True, buffer_group=["task"],
        on_send_buffered=flush_soon)
    return consumer


def _messages(redis_client: Any, app: Any) -> tuple[Any, list[list[dict[str, Any]]]]:
    """Subscribe to the task events' channel; the list fills with each message's events."""
    db = redis_client.connection_pool.connection_kwargs.get("db", 0)
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    got: list[list[dict[str, Any]]] = []

    def on_message(message: dict[str, Any]) -> None:
        body = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
        got.append(body if isinstance(body, list) else [body])

    pubsub.psubscribe(**{f"/{db}.celeryev/task.*": on_message})
    return pubsub, got


def test_the_events_of_one_window_leave_as_one_message_in_order_and_a_later_one_opens_the_next(
        app: Any, redis_client: Any, hub: Hub) -> None:
    consumer = _consumer(app, hub)
    assert flush_in_windows(consumer, WINDOW)
    assert isinstance(consumer.event_dispatcher.on_send_buffered, WindowedFlush)
    pubsub, got = _messages(redis_client, app)
    listener = pubsub.run_in_thread(sleep_time=0.01, daemon=True)
    try:
        dispatcher = consumer.event_dispatcher
        dispatcher.send("task-received", uuid="job-1")
        # the pool's thread sends the next one, as a job's task-started is sent
        pool = threading.Thread(target=dispatcher.send, args=("task-started",), kwargs={"uuid": "job-1"})
        pool.start()
        pool.join()
        dispatcher.send("task-succeeded", uuid="job-1")
        wait_for(lambda: got, timeout=10, what="the window's message")
        assert [[e["type"] for e in events] for events in got] == [["task-received", "task-started", "task-succeeded"]]

        dispatcher.send("task-received", uuid="job-2")
        wait_for(lambda: len(got) == 2, timeout=10, what="the next window's message")
        assert [e["uuid"] for e in got[1]] == ["job-2"]
    finally:
        listener.stop()
        listener.join(5)
        pubsub.close()
        consumer.event_dispatcher.close()


def test_a_consumer_without_an_event_loop_keeps_celerys_unbuffered_sends(app: Any) -> None:
    dispatcher = app.events.Dispatcher(app.connection_for_write(), hostname="gpu0@test", enabled=True)
    try:
        assert not flush_in_windows(SimpleNamespace(hub=None, event_dispatcher=dispatcher))
        assert dispatcher.on_send_buffered is None
    finally:
        dispatcher.close()


def test_installing_twice_keeps_one_window(app: Any, hub: Hub) -> None:
    consumer = _consumer(app, hub)
    try:
        assert flush_in_windows(consumer, WINDOW)
        first = consumer.event_dispatcher.on_send_buffered
        assert flush_in_windows(consumer, WINDOW)
        assert consumer.event_dispatcher.on_send_buffered is first
    finally:
        consumer.event_dispatcher.close()
