"""The Redis transport's event-loop tick (jobqueue.transport.kombu_loop) re-adds no reader the hub
has, adds back one the hub dropped, and still sends each BRPOP (packed once per queue order).

Real components: kombu's ``Hub`` and our Redis transport on the test's Redis, a channel consuming
a queue as a worker's does; the ticks are run by hand, as the loop runs them each turn.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Queue
from kombu.asynchronous import Hub

from jobqueue.transport.kombu_redis import Transport, set_fair_order
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(60)


class _AsGiven:
    """A fair-share hook that keeps kombu's order."""

    def order(self, queues: Any) -> list[str]:
        return list(queues)

    def delivered(self, queue: str) -> None:
        pass


@pytest.fixture
def consuming(redis_url: str) -> Iterator[tuple[Any, Hub, list[Any]]]:
    """A connection consuming ``lean-loop`` on a hub; the list fills with what it delivers."""
    connection = Connection(redis_url, transport=Transport)
    set_fair_order(connection, _AsGiven())  # a worker's BRPOP path (fair share on)
    got: list[Any] = []
    consumer = connection.Consumer([Queue("lean-loop")], callbacks=[lambda body, message: got.append(body)],
                                   accept=["json"])
    consumer.consume()
    hub = Hub()
    connection.transport.register_with_event_loop(connection.connection, hub)
    yield connection, hub, got
    hub.close()
    connection.release()


def _tick(hub: Hub) -> None:
    for callback in list(hub.on_tick):
        callback()


def test_a_tick_re_adds_no_reader_the_hub_has_and_adds_back_one_it_dropped(
        consuming: tuple[Any, Hub, list[Any]]) -> None:
    connection, hub, _ = consuming
    registered: list[Any] = []
    register = hub.poller.register
    hub.poller.register = lambda fd, events: registered.append(fd) or register(fd, events)
    _tick(hub)  # the first tick sends the BRPOP and adds its socket's reader
    fds = set(connection.transport.cycle.fds)
    assert fds and fds <= set(hub.readers)
    registered.clear()
    for _ in range(5):
        _tick(hub)
    assert registered == []  # kombu's own tick registers every socket again at every turn
    dropped = next(iter(fds))
    hub.remove_reader(dropped)
    _tick(hub)
    assert dropped in hub.readers and registered == [dropped]


def test_a_message_is_delivered_through_the_lean_tick_and_the_next_brpop_reuses_its_packed_command(
        consuming: tuple[Any, Hub, list[Any]], redis_url: str) -> None:
    connection, hub, got = consuming
    packed: list[Any] = []
    with Connection(redis_url, transport=Transport) as sender:
        for n in range(3):
            sender.Producer().publish({"n": n}, routing_key="lean-loop", exchange="", serializer="json")

    def turn() -> bool:
        _tick(hub)
        for fd, (callback, args) in list(hub.readers.items()):
            if connection.transport.cycle._fd_to_chan.get(fd, (None, ""))[1] == "BRPOP":
                try:
                    callback(*args)
                except Exception:  # an empty reply (BRPOP timed out): the next tick sends another
                    pass
        return len(got) == 3

    _tick(hub)  # the first BRPOP: packed and kept
    channel = connection.default_channel
    pack = channel.client.connection.pack_command
    channel.client.connection.pack_command = lambda *args: packed.append(args) or pack(*args)
    wait_for(turn, timeout=20, what="three messages")
    assert sorted(body["n"] for body in got) == [0, 1, 2]
    # the later BRPOPs (a message each at least) were packed with the first: the same queues, the same command
    assert packed == [] and len(channel.jobqueue_brpops) == 1
