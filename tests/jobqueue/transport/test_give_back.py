"""A message a worker popped just before the broker went away (kombu's unacked write failed)
is put back at the head of its queue once the broker answers (real Redis, our kombu channel)."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from kombu import Connection

from jobqueue.transport.kombu_redis import Transport
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(60)


def test_a_popped_message_whose_delivery_failed_goes_back_to_the_head_of_its_queue(
        redis_url: str, redis_client: redis.Redis) -> None:
    # Given our channel on real Redis, whose delivery fails as on a vanished broker
    connection = Connection(redis_url, transport=Transport)
    channel: Any = connection.channel()
    item = b'{"body": "e30=", "headers": {"id": "j1"}, "properties": {"priority": 3, "delivery_tag": "t1"}}'

    def broken(payload: Any, queue: str) -> None:
        raise redis.ConnectionError("the broker went away")

    channel.connection._deliver = broken
    # When it delivers an item it popped from "simulation"
    with pytest.raises(redis.ConnectionError):
        channel._deliver_or_give_back({"properties": {"priority": 3}}, "simulation", item)
    # Then the item is back on that queue's list for its priority, next in line (the head)
    key = channel._q_for_pri("simulation", channel._get_message_priority({"properties": {"priority": 3}},
                                                                        reverse=False))
    wait_for(lambda: redis_client.lrange(key, -1, -1) == [item], 10, what="the item to come back")
    connection.release()


def test_a_message_kombu_recorded_as_unacked_is_not_given_back_twice(redis_url: str) -> None:
    # Given our channel whose QoS recorded the delivery (the unacked set holds it) before it failed
    connection = Connection(redis_url, transport=Transport)
    channel: Any = connection.channel()
    given_back: list[Any] = []
    channel._give_back = lambda *args: given_back.append(args)
    channel.qos._delivered["t1"] = object()

    def broken(payload: Any, queue: str) -> None:
        raise redis.ConnectionError("the broker went away")

    channel.connection._deliver = broken
    # When its delivery fails
    with pytest.raises(redis.ConnectionError):
        channel._deliver_or_give_back({"properties": {"delivery_tag": "t1"}}, "simulation", b"{}")
    # Then nothing is put back: the visibility timeout (and the lease) already cover it
    assert given_back == []
    connection.release()
