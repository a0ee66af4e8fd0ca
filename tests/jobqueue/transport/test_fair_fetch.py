"""The Redis channel fetches in the fair-share order (private touchpoint 7 of
``jobqueue/transport/kombu_redis.py``): a real kombu connection on the test's Redis, messages in
tenant queues, one BRPOP per message."""

from __future__ import annotations

from typing import Any

from kombu import Consumer, Exchange, Producer, Queue

from jobqueue.shared.fairshare import FairOrder
from jobqueue.transport.kombu_redis import set_fair_order


def _queue(name: str) -> Queue:
    return Queue(name, Exchange(name, "direct"), routing_key=name)


def _fetch(app: Any, fair: FairOrder | None, publish: list[tuple[str, str, int]], n: int) -> list[str]:
    queues = {name: _queue(name) for name in ("simulation", "a/simulation", "b/simulation")}
    got: list[str] = []
    with app.connection_for_write() as conn:
        set_fair_order(conn, fair)
        producer = Producer(conn.default_channel)
        for queue, body, priority in publish:
            producer.publish({"n": body}, exchange=queues[queue].exchange, routing_key=queue,
                             declare=[queues[queue]], priority=priority)

        def on_message(body: Any, message: Any) -> None:
            got.append(body["n"])
            message.ack()

        with Consumer(conn, list(queues.values()), callbacks=[on_message]) as consumer:
            consumer.qos(prefetch_count=1)
            while len(got) < n:
                conn.drain_events(timeout=5)
    return got


def test_the_channel_takes_two_tenants_queues_in_turns(app):
    # Given tenant a's 4 messages published before tenant b's 2
    publish = [("a/simulation", f"a{i}", 0) for i in range(4)] + [("b/simulation", f"b{i}", 0) for i in range(2)]
    # When a channel with the fair order fetches them
    got = _fetch(app, FairOrder(lambda tenant: 1), publish, 6)
    # Then a and b alternate while both have some, each in its own order
    assert got == ["a0", "b0", "a1", "b1", "a2", "a3"]


def test_the_most_urgent_level_still_comes_first_across_tenants(app):
    # (Redis: broker level 0 is taken first)
    publish = [("a/simulation", "a-low", 9), ("b/simulation", "b-urgent", 1), ("a/simulation", "a-urgent", 1)]
    assert _fetch(app, FairOrder(lambda tenant: 1), publish, 3) == ["a-urgent", "b-urgent", "a-low"]


def test_without_the_hook_the_channel_fetches_as_kombu_does(app):
    publish = [("a/simulation", f"a{i}", 0) for i in range(3)] + [("b/simulation", "b0", 0)]
    assert _fetch(app, None, publish, 4) == ["a0", "a1", "a2", "b0"]
