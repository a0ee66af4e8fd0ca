"""A submit's records ride with its message (issue 30, point 2): when the broker and the result
backend are one Redis server and database, the submit record and the ``LPUSH`` leave in one
write to the socket, records first inside one ``MULTI``/``EXEC``; otherwise the records go
first, on their own. Every socket write of redis-py is recorded (real Redis, no mocks of it)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from bench.common import RedisServer
from jobqueue import submit_batch, submit_job, submit_workflow
from jobqueue.config import Settings
from jobqueue.shared.records import submitted_key
from jobqueue.states import JobStatus
from jobqueue.transport.app import create_app
from jobqueue.transport.kombu_redis import can_ride, send_batch
from jobqueue.transport.ride_batch import GUARDED_PUBLISH
from jobqueue.transport.riders import Rider, same_target
from tests.helpers import quick


class Sends:
    """Every ``send_packed_command`` and ``read_response`` of redis-py in this thread: the
    writes, and the round trips (writes followed by a wait for their replies)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        #: ``("write", bytes, connection)`` and ``("read", None, connection)`` in order.
        self.trail: list[tuple[str, bytes | None, Any]] = []
        self.thread = threading.get_ident()

    def record(self, command: Any, connection: Any = None) -> None:
        if threading.get_ident() == self.thread:
            data = command if isinstance(command, bytes) else b"".join(bytes(c) for c in command)
            self.writes.append(data)
            self.trail.append(("write", data, connection))

    def record_read(self, connection: Any) -> None:
        if threading.get_ident() == self.thread:
            self.trail.append(("read", None, connection))

    def clear(self) -> None:
        self.writes.clear()
        self.trail.clear()

    def waits(self) -> list[str]:
        """The first command of each group of writes whose replies were then waited for (a
        round trip each), as :meth:`counted` leaves them out."""
        groups: list[str] = []
        first: str | None = None
        for kind, data, _ in self.trail:
            if kind == "write" and data is not None:
                name = data.split(b"\r\n")[2].decode()
                if first is None and name not in ("UNSUBSCRIBE", "PING"):
                    first = name
            elif kind == "read" and first is not None:
                groups.append(first)
                first = None
        return groups

    def guarded_publishes(self) -> list[bytes]:
        """The writes that publish an event only when a job's record is there (its first
        command ``EVAL`` of :data:`~jobqueue.transport.ride_batch.GUARDED_PUBLISH`)."""
        return [w for w in self.writes if GUARDED_PUBLISH.encode() in w]

    def counted(self) -> list[str]:
        """The first command of each write, leaving out the UNSUBSCRIBE of an earlier job's result
        (sent whenever the garbage collector drops its handle) and redis-py's health-check PING
        (before a command on a connection idle for its interval)."""
        firsts = [w.split(b"\r\n")[2].decode() for w in self.writes]
        return [f for f in firsts if f not in ("UNSUBSCRIBE", "PING")]

    def holding(self, needle: str) -> list[bytes]:
        """The writes holding ``needle``, but for the guarded publishes of events."""
        guarded = self.guarded_publishes()
        return [w for w in self.writes if needle.encode() in w and w not in guarded]


def spy_on_sends(monkeypatch: pytest.MonkeyPatch) -> Sends:
    """Record every write redis-py makes from this thread until the test ends."""
    spy = Sends()
    original = redis.connection.AbstractConnection.send_packed_command

    read = redis.connection.AbstractConnection.read_response

    def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
        spy.record(command, self)
        original(self, command, check_health)

    def read_response(self: Any, *args: Any, **kwargs: Any) -> Any:
        spy.record_read(self)
        return read(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send_packed_command)
    monkeypatch.setattr(redis.connection.AbstractConnection, "read_response", read_response)
    return spy


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sends]:
    yield spy_on_sends(monkeypatch)


def _order(write: bytes, *needles: str) -> list[int]:
    return [write.index(n.encode()) for n in needles]


def _submit_in_one_write(app: Any, sends: Sends, *in_order: str) -> tuple[Any, bytes]:
    """Submit a job (after a warm-up one: connections, queue bindings) and return it with the one
    write that held its record, asserting that write holds ``in_order`` in that order
    (``RECORD``: the job's submit record)."""
    submit_job("simulation", quick("warm"), queue="gpu7", app=app)
    sends.clear()
    job = submit_job("simulation", quick("one"), queue="gpu7", app=app)
    [write] = sends.holding(submitted_key(job.id))
    positions = _order(write, *(submitted_key(job.id) if n == "RECORD" else n for n in in_order))
    assert positions == sorted(positions), in_order
    return job, write


def test_a_submit_sends_its_record_and_message_in_one_round_trip_the_record_first_in_one_transaction(
        app: Any, sends: Sends) -> None:
    # Given a client whose broker and result backend are the same Redis database
    assert can_ride(app)
    submit_job("simulation", quick("warm"), queue="gpu7", app=app)  # connections, queue bindings
    sends.clear()
    # When a job is submitted
    job = submit_job("simulation", quick("one"), queue="gpu7", app=app)
    # Then its submit record and its message left in one write, MULTI, the record, LPUSH, EXEC
    [write] = sends.holding(submitted_key(job.id))
    assert b"LPUSH" in write
    multi, record, facts, push, done = _order(write, "MULTI", submitted_key(job.id), "HSETNX", "LPUSH", "EXEC")
    assert multi < record < facts < push < done
    # and no write holds the record but that one: it is in Redis, and the job is known
    assert job.status() == JobStatus.QUEUED


def test_a_submit_makes_one_round_trip_fewer_than_plain_celerys_send_task(
        app: Any, redis_url: str, sends: Sends) -> None:
    # Given plain Celery on the same Redis, sending task-sent events as jobqueue's client does
    plain = Celery("plain", broker=redis_url, backend=redis_url, set_as_current=False)
    plain.conf.update(task_send_sent_event=True)
    for _ in range(2):  # warm both: connections, subscriptions, queue bindings
        submit_job("simulation", quick("warm"), queue="gpu7", app=app)
        plain.send_task("noop", queue="plain")
    # When each sends one job
    sends.clear()
    submit_job("simulation", quick("one"), queue="gpu7", app=app)
    ours, our_writes = sends.waits(), sends.counted()
    sends.clear()
    plain.send_task("noop", queue="plain")
    theirs, their_writes = sends.waits(), sends.counted()
    plain.close()
    # Then jobqueue's submit waited for Redis once less: its transaction (record and LPUSH) and
    # its guarded task-sent event were written, then their replies read at once; the message
    # left first, the subscription to its result after it (plain Celery subscribes first)
    assert our_writes == ["MULTI", "EVAL", "SUBSCRIBE"] and ours == ["MULTI"]
    assert their_writes == ["SUBSCRIBE", "LPUSH", "PUBLISH"] and theirs == ["SUBSCRIBE", "PUBLISH"]


def test_a_submits_message_leaves_before_its_task_sent_event_is_built_and_both_replies_are_read_once(
        app: Any, sends: Sends) -> None:
    # Given a client whose broker and result backend are the same Redis database
    # When a job is submitted
    # Then its record and its message left in one write, inside one transaction
    job, write = _submit_in_one_write(app, sends, "MULTI", "RECORD", "LPUSH", "EXEC")
    assert b"PUBLISH" not in write
    # and its task-sent event followed on the same connection before any reply was read,
    # published only if the job's record is in Redis (a refused transaction publishes none)
    [event] = sends.guarded_publishes()
    assert b"celeryev/task.sent" in event and submitted_key(job.id).encode() in event
    trail = [(kind, data) for kind, data, _ in sends.trail]
    at = trail.index(("write", write))
    assert trail[at + 1] == ("write", event)
    [connection] = {c for kind, data, c in sends.trail if data in (write, event)}
    replies = [kind for kind, _, c in sends.trail[at + 2:] if c is connection]
    assert replies[:2] == ["read", "read"]
    assert job.status() == JobStatus.QUEUED


def test_without_task_sent_events_the_message_leaves_before_the_submit_returns(
        settings: Settings, sends: Sends) -> None:
    # Given a client that sends no task-sent event (nothing to hold the message for)
    app: Any = create_app(settings)
    app.conf.task_send_sent_event = False
    try:
        submit_job("simulation", quick("warm"), queue="gpu7", app=app)
        sends.clear()
        # When a job is submitted
        job = submit_job("simulation", quick("one"), queue="gpu7", app=app)
        # Then its record and message left together, and no event
        [write] = sends.holding(submitted_key(job.id))
        assert b"LPUSH" in write and b"PUBLISH" not in write
        assert job.status() == JobStatus.QUEUED
    finally:
        app.close()


def test_a_message_whose_event_never_joins_it_is_sent_alone_when_send_task_returns(
        app: Any, sends: Sends, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a client whose task-sent event fails (Celery buffers a failed event and returns)
    submit_job("simulation", quick("warm"), queue="gpu7", app=app)

    def broken(self: Any, extra: list[Any]) -> None:
        raise ConnectionError("event lost")

    monkeypatch.setattr(Rider, "send_held", broken)
    sends.clear()
    # When a job is submitted
    job = submit_job("simulation", quick("one"), queue="gpu7", app=app)
    # Then its record and message still left, in one write, once, before submit_job returned
    monkeypatch.undo()
    write = sends.holding(submitted_key(job.id))[0]
    assert b"LPUSH" in write and b"PUBLISH" not in write
    assert len([w for w in sends.writes if b"LPUSH" in w and job.id.encode() in w]) == 1
    assert job.status() == JobStatus.QUEUED


@pytest.mark.parametrize("kind", ["batch", "workflow"])
def test_a_batchs_or_workflows_records_ride_with_its_first_message(app: Any, sends: Sends, kind: str) -> None:
    submit_job("simulation", quick("warm"), queue="gpu7", app=app)
    sends.clear()
    # When a batch of three (or a workflow of three steps) is submitted
    if kind == "batch":
        ids = [h.id for h in submit_batch("simulation", quick("b", seed=1), 3, vary={"seed": "increment"},
                                          queue="gpu7", app=app)]
    else:
        ids = [h.id for h in submit_workflow([("simulation", quick(s)) for s in "cde"], queue="gpu7", app=app).steps]
    # Then every job's record went in the first message's transaction, before its LPUSH
    [write] = sends.holding(submitted_key(ids[0]))
    assert [len(sends.holding(submitted_key(i))) for i in ids] == [1, 1, 1]
    assert all(submitted_key(i).encode() in write for i in ids)
    assert _order(write, "MULTI")[0] < max(_order(write, *(submitted_key(i) for i in ids))) < _order(write, "LPUSH")[0]
    assert _order(write, "LPUSH")[0] < _order(write, "EXEC")[0]


def test_with_the_results_on_another_redis_the_record_goes_first_on_its_own(
        settings: Settings, redis_client: redis.Redis, sends: Sends) -> None:
    # Given a client whose result backend is another Redis server (a private one)
    server = RedisServer().start()
    app: Any = create_app(settings.model_copy(update={"result_backend": server.url(0)}))
    results = redis.Redis.from_url(server.url(0))
    try:
        assert not same_target(app.backend.client, redis_client)
        submit_job("simulation", quick("warm"), queue="gpu7", app=app)
        sends.clear()
        # When a job is submitted
        job = submit_job("simulation", quick("one"), queue="gpu7", app=app)
        # Then its record left in a write of its own, before the write with the message
        [record] = sends.holding(submitted_key(job.id))
        [push] = [w for w in sends.writes if b"LPUSH" in w]
        assert b"LPUSH" not in record and sends.writes.index(record) < sends.writes.index(push)
        assert results.exists(submitted_key(job.id)) and not redis_client.exists(submitted_key(job.id))
        assert job.status() == JobStatus.QUEUED
    finally:
        results.close()
        app.close()
        server.stop()


def test_with_replicas_asked_for_the_wait_follows_the_transaction_in_the_same_round_trip(
        settings: Settings, sends: Sends) -> None:
    # Given a client asking for a replica (this Redis has none: the WAIT asks for 0, warned),
    # named by another host name: kombu's connection pools are shared by URL across apps, and
    # the warning, once per client and 30 s, stays for test_replication's client
    url = settings.broker_url.replace("127.0.0.1", "localhost")
    assert url != settings.broker_url
    app: Any = create_app(settings.model_copy(update={"redis_wait_replicas": 1, "redis_wait_timeout": 0.2,
                                                      "broker_url": url, "result_backend": url}))
    try:
        # When a job is submitted
        # Then record, message and WAIT left in one write, the WAIT after the EXEC
        job, _ = _submit_in_one_write(app, sends, "MULTI", "RECORD", "LPUSH", "EXEC", "WAIT")
        assert job.status() == JobStatus.QUEUED
    finally:
        app.close()


def test_a_refused_transaction_writes_neither_the_record_nor_the_message(redis_client: redis.Redis) -> None:
    # Given a rider whose second command Redis refuses (wrong arity) and a message's LPUSH
    def add(pipe: Any) -> None:
        pipe.set("record", b"1")
        pipe.execute_command("SET", "only-a-key")

    rider = Rider("job-1", redis_client, add, lambda replies: None)
    # When they are sent together, Then the error is Redis's refusal
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        send_batch(redis_client, [("lpush", "queue", b"message")], rider, 0, 1.0, "job-1")
    # and neither the record nor the message is in Redis
    assert not redis_client.exists("record") and not redis_client.exists("queue")
    # When the rider is sound, Then both are, with the rider's replies kept
    rider.add = lambda pipe: pipe.set("record", b"1")
    send_batch(redis_client, [("lpush", "queue", b"message")], rider, 0, 1.0, "job-1")
    assert redis_client.get("record") == b"1" and redis_client.lrange("queue", 0, -1) == [b"message"]
    assert rider.replies == [b"OK"] and rider.with_message


def test_a_rabbitmq_broker_takes_no_rider(settings: Settings) -> None:
    app: Any = create_app(settings.model_copy(update={"broker_url": "amqp://guest:guest@127.0.0.1:5672//"}))
    assert not can_ride(app)
    app.close()


def test_a_refused_message_with_its_event_raises_from_submit_job_and_publishes_no_event(
        app: Any, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a client whose records Redis refuses inside the transaction (wrong arity), and a
    # subscriber to the event stream
    submit_job("simulation", quick("warm"), queue="gpu7", app=app)
    events = redis_client.pubsub()
    events.psubscribe("*celeryev*")
    assert events.get_message(timeout=2)["type"] == "psubscribe"

    def refused(pipe: Any, app_: Any, send_options: dict[str, Any]) -> None:
        pipe.execute_command("SET", submitted_key(send_options["task_id"]))

    monkeypatch.setattr("jobqueue.client.records.queue_job_submit", refused)
    # When a job is submitted, Then the refusal reaches the caller
    with pytest.raises(redis.ResponseError):
        submit_job("simulation", quick("one"), queue="gpu7", app=app, job_id="refused-job")
    # and no task-sent event of the job that was never queued is published, then or with a later one
    monkeypatch.undo()
    later = submit_job("simulation", quick("two"), queue="gpu7", app=app)
    sent = _task_sent_ids(events, later.id)
    events.close()
    assert sent[-1] == later.id and "refused-job" not in sent


def _task_sent_ids(events: Any, last: str) -> list[str]:
    """The job ids of the task-sent events ``events`` receives, up to ``last``'s (kombu's
    base64 bodies)."""
    ids: list[str] = []
    deadline = time.monotonic() + 10
    while last not in ids and time.monotonic() < deadline:
        got = events.get_message(timeout=1)
        if got is None or got["type"] != "pmessage":
            continue
        message = json.loads(got["data"])
        event = json.loads(base64.b64decode(message["body"]))
        for one in event if isinstance(event, list) else [event]:
            if one.get("type") == "task-sent":
                ids.append(one["uuid"])
    return ids


class Interrupted(BaseException):
    """Not an ``Exception``: passes through Celery's event dispatcher, as an interrupt would."""


def test_a_submit_interrupted_after_its_message_was_written_reads_its_replies_and_the_job_stays_queued(
        app: Any, redis_client: redis.Redis, sends: Sends, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a client interrupted after its message was written, before its event joined it
    submit_job("simulation", quick("warm"), queue="gpu7", app=app)
    sends.clear()

    def interrupted(self: Any, extra: list[Any]) -> None:
        raise Interrupted("before the event")

    monkeypatch.setattr(Rider, "send_held", interrupted)
    # When a job is submitted, Then the interruption reaches the caller
    with pytest.raises(Interrupted):
        submit_job("simulation", quick("one"), queue="gpu7", app=app, job_id="written-job")
    monkeypatch.undo()
    # but its message was in Redis already, once: the job is queued, its record with it
    assert redis_client.exists(submitted_key("written-job"))
    assert [item for key in redis_client.scan_iter("gpu7*") for item in redis_client.lrange(key, 0, -1)
            if b"written-job" in item] != []
    assert len([w for w in sends.writes if b"LPUSH" in w and b"written-job" in w]) == 1
    # and the replies due on its write were settled (read, or the record asked after its
    # connection closed) before submit_job raised; no event was built
    write = sends.holding(submitted_key("written-job"))[0]
    at = [data for _, data, _ in sends.trail].index(write)
    assert "read" in [kind for kind, _, _ in sends.trail[at + 1:]]
    assert not sends.guarded_publishes()
    # so later submits on the same client get their own replies
    for n in range(3):
        assert submit_job("simulation", quick(f"after{n}"), queue="gpu7", app=app).status() == JobStatus.QUEUED


def test_a_result_stored_before_the_late_subscription_still_ends_wait_at_once(
        app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a submit whose job ends between its message's write and the subscription to its
    # result (which now follows the message)
    submit_job("simulation", quick("warm"), queue="gpu7", app=app)
    subscribe = Rider.run_later

    def job_ends_first(self: Any) -> None:
        app.backend.store_result(self.job_id, {"done": self.job_id}, "SUCCESS")
        subscribe(self)

    monkeypatch.setattr(Rider, "run_later", job_ends_first)
    job = submit_job("simulation", quick("one"), queue="gpu7", app=app)
    monkeypatch.undo()
    # When the client waits, for less than wait()'s safety re-read of the stored state
    # Then it gets the result: read once subscribed, no published message needed
    assert job.wait(timeout=1.0) == {"done": job.id}
