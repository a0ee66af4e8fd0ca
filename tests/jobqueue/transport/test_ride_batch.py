"""A submit's transaction written before its event (:class:`~jobqueue.transport.ride_batch.EarlyWrite`):
when the connection dies before its replies are read, the job's record says whether it ran, so
the message is never queued twice nor lost, and the event published once (real Redis)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis

from jobqueue.transport.ride_batch import EarlyWrite, pack_commands
from jobqueue.transport.riders import Rider


def _channel() -> str:
    """A channel of this test's own: Redis's pub/sub channels are server-wide, not per database,
    and parallel test workers share the server."""
    return f"events-{uuid.uuid4().hex}"


def _early(client: redis.Redis, *, lost: bool, monkeypatch: pytest.MonkeyPatch) -> EarlyWrite:
    """A job's transaction (its record ``record-1``, its message on ``queue-1``) written early,
    then its connection dropped before any reply was read; with ``lost`` the write never
    reached Redis."""
    rider = Rider("job-1", client, lambda pipe: pipe.set("record-1", b"1"), lambda replies: None, guard="record-1")
    early = EarlyWrite(client, [("lpush", "queue-1", b"message")], rider, 1.0, "job-1")
    if lost:
        with monkeypatch.context() as patch:
            patch.setattr("jobqueue.transport.ride_batch.pack_commands", lambda *a, **k: [])
            early.send()
    else:
        early.send()
    early.connection.disconnect()
    return early


@pytest.mark.parametrize("lost", [False, True], ids=["ran", "never-arrived"])
def test_a_transaction_whose_replies_were_lost_is_sent_again_only_if_it_never_ran(
        redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, lost: bool) -> None:
    channel = _channel()
    events = redis_client.pubsub()
    events.subscribe(channel)
    assert events.get_message(timeout=2)["type"] == "subscribe"
    # Given a job's early write whose connection died before its replies were read
    early = _early(redis_client, lost=lost, monkeypatch=monkeypatch)
    assert redis_client.exists("record-1") == (0 if lost else 1)
    # When its event follows
    early.finish([("publish", channel, b"task-sent")])
    # Then the message is queued once, the record is there and the event was published once
    assert redis_client.lrange("queue-1", 0, -1) == [b"message"]
    assert redis_client.get("record-1") == b"1"
    got = [m for m in iter(lambda: events.get_message(timeout=0.5), None) if m["type"] == "message"]
    events.close()
    assert [m["data"] for m in got] == [b"task-sent"]


def test_a_refused_transaction_publishes_no_event_and_raises_the_refusal(redis_client: redis.Redis) -> None:
    channel = _channel()
    events = redis_client.pubsub()
    events.subscribe(channel)
    assert events.get_message(timeout=2)["type"] == "subscribe"

    def refused(pipe: Any) -> None:
        pipe.set("record-1", b"1")
        pipe.execute_command("SET", "only-a-key")  # wrong arity: Redis refuses the transaction

    # Given a job's early write that Redis refuses
    early = EarlyWrite(redis_client, [("lpush", "queue-1", b"message")],
                       Rider("job-1", redis_client, refused, lambda replies: None, guard="record-1"), 1.0, "job-1")
    early.send()
    # When its event follows, Then the refusal is raised
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        early.finish([("publish", channel, b"task-sent")])
    # and nothing was written or published
    assert not redis_client.exists("record-1") and not redis_client.exists("queue-1")
    got = [m for m in iter(lambda: events.get_message(timeout=0.5), None) if m["type"] == "message"]
    events.close()
    assert got == []


def test_commands_are_packed_as_redis_py_packs_them_and_odd_arguments_go_to_redis_py(
        redis_client: redis.Redis) -> None:
    connection = redis_client.connection_pool.get_connection()
    try:
        commands = [("MULTI",), ("SET", "k", b"\x00\xff", "EX", 10), ("ZADD", "z", "NX", 1.5, "m\u00e9"),
                    ("LPUSH", "q", "x" * 7000), ("EXEC",)]
        assert b"".join(pack_commands(connection, commands)) == b"".join(connection.pack_commands(commands))
        # a memoryview is redis-py's to encode; a bool redis-py refuses, as it always did
        odd = [("SET", "k", memoryview(b"v"))]
        assert b"".join(pack_commands(connection, odd)) == b"".join(connection.pack_commands(odd))
        with pytest.raises(redis.DataError):
            pack_commands(connection, [("SET", "k", True)])
    finally:
        redis_client.connection_pool.release(connection)
