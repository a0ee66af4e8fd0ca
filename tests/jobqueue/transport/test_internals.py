"""Contract tests of jobqueue.transport.internals (and the kombu channel in jobqueue.transport.kombu_redis):
every private Celery, kombu and redis-py behaviour jobqueue relies on, checked against the
installed libraries on real Redis. An upgrade that changes one fails here, with a message that
names the function to fix."""

from __future__ import annotations

import inspect
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.app.trace import build_tracer
from celery.events.receiver import EventReceiver
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from kombu import Connection, Exchange, Queue
from kombu.serialization import prepare_accept_content
from kombu.transport import redis as kombu_redis

from jobqueue.shared.routing import BROKER_MAX_PRIORITY
from jobqueue.transport import internals, json_text
from jobqueue.transport.internals import buffer_event_group
from jobqueue.transport.kombu_redis import Channel as JobqueueChannel
from jobqueue.transport.kombu_redis import Transport
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(60)

PREFIXES = [{}, {"global_keyprefix": "jq:"}]


def broken(function: Any, what: str) -> str:
    """The message of a failed contract: which function of jobqueue.transport.internals to revisit."""
    return f"jobqueue.transport.internals.{function.__name__}: {what} (did a Celery/kombu/redis-py upgrade change it?)"


def kombu_connection(url: str, options: dict[str, Any]) -> Connection:
    """A kombu connection on jobqueue's Redis transport with ``options`` (no priority steps
    unless given: the test names them)."""
    return Connection(url, transport=Transport, transport_options=dict(options))


def deliver_one(conn: Connection, queue: str, body: Any = "hello", **publish: Any) -> Any:
    """Publish one message to ``queue`` and take it back (unacked) as a real kombu message."""
    q = Queue(queue, Exchange(queue, type="direct"), routing_key=queue)
    with conn.Producer() as producer:
        producer.publish(body, exchange=q.exchange, routing_key=queue, declare=[q], serializer="json", **publish)
    bound = q(conn.default_channel)
    message = wait_for(lambda: bound.get(no_ack=False), 5, what="the published message")
    return message


# -- kombu's Redis transport: key names -------------------------------------------------------


def test_the_library_constants_are_the_ones_jobqueue_hardcodes() -> None:
    channel = kombu_redis.Channel
    assert channel.sep == internals.REDIS_KEY_SEP, broken(internals.priority_queue_keys, "Channel.sep changed")
    assert channel.unacked_key == internals.UNACKED_KEY, broken(internals.unacked_key, "Channel.unacked_key changed")
    assert channel.unacked_index_key == internals.UNACKED_INDEX_KEY, broken(
        internals.unacked_index_key, "Channel.unacked_index_key changed")
    assert channel.keyprefix_fanout == internals.FANOUT_PREFIX, broken(
        internals.fanout_pattern, "Channel.keyprefix_fanout changed")


@pytest.mark.parametrize("options", PREFIXES, ids=["no-prefix", "global_keyprefix"])
def test_a_delivered_message_sits_in_the_unacked_keys_jobqueue_names(redis_url: str, redis_client: redis.Redis,
                                                                     options: dict[str, Any]) -> None:
    # Given a message delivered (not acked) through kombu's Redis transport
    with kombu_connection(redis_url, options) as conn:
        message = deliver_one(conn, "contract-unacked")
        # Then its delivery tag is in the unacked index and hash under the names jobqueue uses
        keys = sorted(k.decode() for k in redis_client.keys("*"))
        index = internals.unacked_index_key(options)
        assert redis_client.zscore(index, message.delivery_tag) is not None, broken(
            internals.unacked_index_key, f"the tag is not in {index!r}; keys: {keys}")
        hash_key = internals.unacked_key(options)
        assert redis_client.hexists(hash_key, message.delivery_tag), broken(
            internals.unacked_key, f"the tag is not in {hash_key!r}; keys: {keys}")
        message.ack()


@pytest.mark.parametrize("options", PREFIXES, ids=["no-prefix", "global_keyprefix"])
def test_each_broker_priority_level_lands_in_the_list_jobqueue_names(redis_url: str, redis_client: redis.Redis,
                                                                     options: dict[str, Any]) -> None:
    # Given jobqueue's transport with one priority step per broker level
    opts = {**options, "priority_steps": list(range(BROKER_MAX_PRIORITY + 1)), "queue_order_strategy": "priority"}
    keys = internals.priority_queue_keys("contract-pri", BROKER_MAX_PRIORITY,
                                         prefix=internals.global_keyprefix(options))
    q = Queue("contract-pri", Exchange("contract-pri", type="direct"), routing_key="contract-pri")
    with kombu_connection(redis_url, opts) as conn, conn.Producer() as producer:
        # When one message is published at every level, 0 to the highest
        for level in range(BROKER_MAX_PRIORITY + 1):
            producer.publish({"level": level}, exchange=q.exchange, routing_key=q.routing_key, declare=[q],
                             serializer="json", priority=level)
    # Then each level's list holds exactly its message (the highest is not clamped to 9)
    lengths = [redis_client.llen(key) for key in keys]
    assert lengths == [1] * (BROKER_MAX_PRIORITY + 1), broken(
        internals.priority_queue_keys, f"list lengths {lengths}; keys in Redis: "
        f"{sorted(k.decode(errors='replace') for k in redis_client.keys('*'))}")
    assert JobqueueChannel.max_priority == BROKER_MAX_PRIORITY > kombu_redis.Channel.max_priority


@pytest.mark.parametrize("options", [{}, {"global_keyprefix": "jq:"}, {"fanout_prefix": False},
                                     {"fanout_prefix": "pre.", "global_keyprefix": "jq:"}],
                         ids=["defaults", "global_keyprefix", "no-fanout-prefix", "custom-fanout-prefix"])
def test_a_celery_event_arrives_on_the_pattern_jobqueue_subscribes_to(redis_url: str, redis_client: redis.Redis,
                                                                      options: dict[str, Any]) -> None:
    # Given a subscriber on the pattern jobqueue computes for the event exchange
    app = Celery("contract-events", broker=redis_url, set_as_current=False)
    app.conf.broker_transport_options = options
    db = redis_client.connection_pool.connection_kwargs.get("db", 0)
    pattern = internals.fanout_pattern(int(db), options, app.conf.event_exchange)
    pubsub = redis_client.pubsub()
    pubsub.psubscribe(pattern)
    wait_for(lambda: pubsub.get_message(timeout=0.1), 5, what="the psubscribe confirmation")
    try:
        # When Celery's dispatcher sends an event
        with app.connection_for_write() as conn:
            dispatcher = app.events.Dispatcher(conn, hostname="contract@test", enabled=True, buffer_while_offline=False)
            dispatcher.send("worker-heartbeat")
            dispatcher.close()

        # Then the subscriber receives it
        def arrived() -> bool:
            msg = pubsub.get_message(timeout=0.1)
            return bool(msg) and msg["type"] == "pmessage" and b"celeryev" in msg["channel"]

        try:
            wait_for(arrived, 5, what="the event")
        except AssertionError:
            raise AssertionError(broken(internals.fanout_pattern, f"nothing arrived on {pattern!r}")) from None
    finally:
        pubsub.close()
        app.close()


# -- Celery's result backend -------------------------------------------------------------------


@pytest.mark.parametrize("backend_options", [{}, {"global_keyprefix": "jqr:"}], ids=["no-prefix", "global_keyprefix"])
def test_a_stored_result_is_under_the_key_jobqueue_reads(redis_url: str, redis_client: redis.Redis,
                                                        backend_options: dict[str, Any]) -> None:
    # Given Celery's Redis result backend
    app = Celery("contract-backend", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.result_backend_transport_options = backend_options
    job_id = str(uuid.uuid4())
    try:
        # When a result is stored
        app.backend.store_result(job_id, {"answer": 42}, "SUCCESS")
        # Then it is under the key jobqueue computes, which starts with the prefix repair scans
        key = internals.result_key(app, job_id)
        assert key == internals.result_key_prefix(app) + job_id
        assert internals.result_key_prefix(app).startswith(backend_options.get("global_keyprefix", ""))
        raw = redis_client.get(key)
        assert raw is not None, broken(internals.result_key, f"nothing at {key!r}; keys: {redis_client.keys('*')}")
        assert app.backend.decode_result(raw)["result"] == {"answer": 42}
    finally:
        app.close()


def test_a_refused_jobs_failure_is_stored_with_its_name_worker_and_queue(redis_url: str) -> None:
    # Given a Redis result backend keeping extended results, as jobqueue's does
    app = Celery("contract-failure", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.result_extended = True
    job_id = str(uuid.uuid4())
    try:
        # When a job no worker ran is failed
        internals.store_failure(app, job_id, RuntimeError("refused"), task="jobqueue.run_job",
                                hostname="gpu0@m", queue="simulation")
        # Then its record says so, with what the monitor rebuilds a job from
        meta = app.backend.get_task_meta(job_id)
        got = {k: meta.get(k) for k in ("status", "name", "worker", "queue")}
        assert got == {"status": "FAILURE", "name": "jobqueue.run_job", "worker": "gpu0@m", "queue": "simulation"}, \
            broken(internals.store_failure, f"stored {meta!r}")
        assert isinstance(meta["result"], RuntimeError) and str(meta["result"]) == "refused"
    finally:
        app.close()


def test_a_result_record_built_by_jobqueue_reads_back_as_celerys_own(redis_url: str,
                                                                      redis_client: redis.Redis) -> None:
    # Given a Redis result backend keeping extended results, and a task request
    from types import SimpleNamespace

    app = Celery("contract-record", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.result_extended = True
    request = SimpleNamespace(id="r", task="jobqueue.run_job", args=(), kwargs={"service": "simulation"},
                              hostname="gpu0@m", retries=0, delivery_info={"routing_key": "simulation"},
                              ignore_result=False, group=None, parent_id=None, root_id=None)
    job_id, own = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        # When jobqueue writes the record it builds, and Celery stores the same result its way
        record = internals.result_record(app.backend, job_id, {"percent": 50.0}, "PROGRESS", request)
        redis_client.set(internals.result_key(app, job_id), app.backend.encode(record))
        app.backend.store_result(own, {"percent": 50.0}, "PROGRESS", request=request)
        # Then both read back alike through Celery (status, result, the extended fields)
        ours, celerys = app.backend.get_task_meta(job_id), app.backend.get_task_meta(own)
        keys = ("status", "result", "name", "args", "kwargs", "worker", "retries", "queue")
        assert {k: ours.get(k) for k in keys} == {k: celerys.get(k) for k in keys}, \
            broken(internals.result_record, f"{ours!r} vs {celerys!r}")
        assert ours["task_id"] == job_id and ours["name"] == "jobqueue.run_job"
    finally:
        app.close()


# -- Celery's worker: requests -----------------------------------------------------------------


@pytest.fixture
def worker_app(redis_url: str) -> Iterator[Celery]:
    app = Celery("contract-worker", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.broker_transport = f"{Transport.__module__}:Transport"

    @app.task(name="contract.noop", acks_late=True, bind=True, shared=False)
    def noop(self: Any, *args: Any) -> str:
        return "ok"

    yield app
    app.close()


def task_request(app: Celery, conn: Connection) -> tuple[Request, Any]:
    """A real worker ``Request`` for a real ``contract.noop`` message taken off Redis."""
    task = app.tasks["contract.noop"]
    q = Queue("contract-requests", Exchange("contract-requests", type="direct"), routing_key="contract-requests")
    with conn.Producer() as producer:
        app.amqp.send_task_message(producer, "contract.noop", app.amqp.as_task_v2(str(uuid.uuid4()), "contract.noop"),
                                   exchange=q.exchange, routing_key=q.routing_key, declare=[q])
    bound = q(conn.default_channel)
    message = wait_for(lambda: bound.get(no_ack=False, accept=["json"]), 5, what="the task message")
    return Request(message, app=app, task=task), message


def forget_worker_state(request: Request) -> None:
    worker_state.active_requests.discard(request)
    worker_state.reserved_requests.discard(request)
    worker_state.requests.pop(request.id, None)


def test_a_reserved_and_accepted_request_is_seen_through_the_worker_state(worker_app: Celery,
                                                                          redis_client: redis.Redis) -> None:
    with worker_app.connection_for_read() as conn:
        request, message = task_request(worker_app, conn)
        try:
            # When the worker reserves the request and the pool accepts it
            worker_state.task_reserved(request)
            assert request in internals.held_requests(), broken(internals.held_requests, "a reserved request is missing")
            assert request in internals.reserved_requests(), broken(internals.reserved_requests, "missing")
            before = time.time()
            request.on_accepted(os.getpid(), time.monotonic())
            # Then jobqueue finds it active, with its acceptance time and its delivery tag
            assert request in internals.active_requests(), broken(internals.active_requests, "missing")
            started = internals.accepted_at(request)
            assert started is not None and before - 1 <= started <= time.time() + 1, broken(
                internals.accepted_at, f"time_start is {started!r}")
            tag = internals.delivery_tag(request)
            assert tag == message.delivery_tag and redis_client.zscore(internals.unacked_index_key({}), tag), broken(
                internals.delivery_tag, f"{tag!r} is not the unacked message's tag")
            # And dropping it takes it out of every set
            internals.drop_request(request)
            assert request not in internals.active_requests() + internals.held_requests(), broken(
                internals.drop_request, "still held")
            assert worker_state.requests.get(request.id) is not request, broken(internals.drop_request, "still in requests")
        finally:
            forget_worker_state(request)


@pytest.mark.parametrize("forget", [False, True], ids=["kept", "forgotten"])
def test_a_forgotten_request_is_neither_acked_nor_restored_when_its_channel_closes(
        worker_app: Celery, redis_client: redis.Redis, forget: bool) -> None:
    # Given a request whose message is unacked on a live channel
    conn = worker_app.connection_for_read()
    request, message = task_request(worker_app, conn)
    queue_keys = internals.priority_queue_keys("contract-requests", 9)
    try:
        if forget:
            internals.forget_request(request)
            # Then Celery considers it acknowledged: acknowledge() sends nothing
            assert request.acknowledged, broken(internals.forget_request, "not acknowledged")
            request.acknowledge()
        # When the channel closes (kombu restores what its QoS still holds)
        conn.release()
        # Then a forgotten message stays in the unacked hash (for the restore sweep), not queued
        queued = sum(redis_client.llen(k) for k in queue_keys)
        unacked = redis_client.hexists(internals.unacked_key({}), message.delivery_tag)
        if forget:
            assert (queued, unacked) == (0, True), broken(
                internals.forget_request, f"queued {queued}, still unacked {unacked}")
        else:  # the control: kombu restores a message it was not told to forget
            assert (queued, unacked) == (1, False), f"kombu no longer restores on close: {queued}, {unacked}"
    finally:
        conn.release()


def test_a_dropped_chain_is_not_published_after_the_step(worker_app: Celery, redis_client: redis.Redis) -> None:
    # Given a step whose request carries a chain of two later steps (Celery keeps it reversed)
    later = [worker_app.signature("contract.noop", options={"task_id": f"step-{n}", "queue": "contract-chain"})
             for n in (2, 3)]
    seen: list[list[dict[str, Any]]] = []

    @worker_app.task(name="contract.step", bind=True)
    def step(self: Any, drop: bool) -> str:
        seen.append(internals.remaining_chain(self.request))
        if drop:
            internals.drop_chain(self.request)
        return "done"

    def run(drop: bool) -> None:
        tracer = build_tracer("contract.step", step, app=worker_app, eager=False)
        tracer(str(uuid.uuid4()), [drop], {}, {"chain": [dict(s) for s in reversed(later)], "delivery_info": {}})

    queued = lambda: sum(redis_client.llen(k) for k in internals.priority_queue_keys("contract-chain", 9))  # noqa: E731
    # When it runs and drops its chain
    run(drop=True)
    # Then it saw its later steps next first, and nothing was published
    assert [s["options"]["task_id"] for s in seen[0]] == ["step-2", "step-3"], broken(
        internals.remaining_chain, f"read {seen[0]}")
    assert queued() == 0, broken(internals.drop_chain, "the next step was published anyway")
    # And the control: a step that keeps its chain publishes the next step
    run(drop=False)
    assert wait_for(queued, 5, what="the next step to be published") == 1


def test_celerys_default_strategy_is_the_one_jobqueue_wraps() -> None:
    strategy = internals.default_task_strategy()
    params = list(inspect.signature(strategy).parameters)
    assert params[:3] == ["task", "app", "consumer"], broken(internals.default_task_strategy, f"parameters {params}")


# -- kombu messages, Celery's consumer, the event receiver -------------------------------------


def test_a_redis_message_keeps_its_raw_envelope(redis_url: str) -> None:
    with kombu_connection(redis_url, {}) as conn:
        message = deliver_one(conn, "contract-raw", body={"x": 1})
        envelope = internals.raw_envelope(message)
        assert isinstance(envelope, dict) and envelope.get("properties", {}).get("delivery_tag") == message.delivery_tag, \
            broken(internals.raw_envelope, f"got {envelope!r}")
        message.ack()


def test_a_queued_envelope_decodes_to_the_published_body(redis_url: str, redis_client: redis.Redis) -> None:
    # Given a message kombu published to a Redis queue list
    q = Queue("contract-envelope", Exchange("contract-envelope", type="direct"), routing_key="contract-envelope")
    body = {"text": "héllo", "n": [1, 2.5, None]}
    with kombu_connection(redis_url, {}) as conn, conn.Producer() as producer:
        producer.publish(body, exchange=q.exchange, routing_key=q.routing_key, declare=[q], serializer="json")
    raw = wait_for(lambda: redis_client.lindex("contract-envelope", 0), 5, what="the queued envelope")
    # Then its envelope decodes to the body, and a content type outside accept is refused
    envelope = json.loads(raw)
    assert internals.envelope_payload(envelope, prepare_accept_content({"json"})) == body, broken(
        internals.envelope_payload, f"envelope {envelope!r}")
    with pytest.raises(Exception, match="(?i)disallowed|refus"):
        internals.envelope_payload(envelope, prepare_accept_content({"pickle"}))


def test_a_json_body_decodes_as_kombus_own_decoder_decodes_it_with_or_without_its_type_marker() -> None:
    # Given JSON bodies kombu's decoder turns into values ("__type__" objects) and plain ones,
    # also a "__type__" key spelt with escapes, which the fast path must leave to kombu
    from kombu.serialization import loads as kombu_loads
    from kombu.utils.json import dumps as kombu_dumps

    bodies = [kombu_dumps({"a": 1, "b": [1.5, None, "x"], "c": {"d": True}}).encode(),
              kombu_dumps({"when": __import__("datetime").datetime(2026, 12, 6, 19, 0)}).encode(),
              b'{"x": {"\\u005f_type__": "datetime", "__value__": "2026-12-06T19:00:00"}}',
              "{\"text\": \"h\u00e9llo\"}".encode()]
    accept = prepare_accept_content({"json"})
    for body in bodies:
        envelope = {"body": body.decode(), "content-type": "application/json", "content-encoding": "utf-8",
                    "properties": {"body_encoding": "utf-8"}}
        # Then the decoded payload is the one kombu's registry gives, value for value
        expected = kombu_loads(body, "application/json", "utf-8", accept=accept)
        assert internals.envelope_payload(envelope, accept) == expected, broken(
            internals.envelope_payload, f"body {body!r}")
    # And a content type outside accept is still refused
    with pytest.raises(Exception, match="(?i)disallowed|refus"):
        internals.envelope_payload({"body": "{}", "content-type": "application/json"}, prepare_accept_content({"pickle"}))


def _outcome(fn: Any, data: Any) -> tuple[str, Any]:
    try:
        return "value", repr(fn(data))
    except Exception as exc:
        return "error", (type(exc), str(exc))


def test_the_direct_json_and_base64_readers_answer_exactly_as_the_standard_library_does() -> None:
    # Given documents json.loads reads, and ones it refuses or reads only through its own
    # layers (whitespace, a BOM, extra data, UTF-16, invalid UTF-8, surrogates, NaN)
    texts = ['{"a": 1, "b": [1.5, null, "x"], "c": {"d": true}}', "{}", " {}", "{} \n", "{}x", "{} {}",
             "", "[1, 2]", '{"a": NaN}', "\ufeff{}", '"h\u00e9llo"', '{"t": "h\u00e9llo"}', "1e400", "{"]
    raws = [t.encode() for t in texts] + ["{}".encode("utf-16"), b"\xef\xbb\xbf{}", b"\xff{}",
                                          b'{"a": "\xed\xa0\x80"}', b'{"a": "\\ud800"}']
    # Then the direct readers give json.loads's value, or its very error
    for text in texts:
        assert _outcome(json_text.json_text, text) == _outcome(json.loads, text), broken(
            json_text.json_text, f"text {text!r}")
    for raw in raws:
        assert _outcome(json_text.json_message, raw) == _outcome(json.loads, raw), broken(
            json_text.json_message, f"bytes {raw!r}")
    # And base64 bodies decode as b64decode decodes them, errors included
    import base64
    for body in ["YWJj", "YWJ", "ab=c", "h\u00e9", "YW Jj\n", b"YWJj"]:
        assert _outcome(json_text.b64decode, body) == _outcome(base64.b64decode, body), broken(
            json_text.b64decode, f"body {body!r}")


def test_the_consumer_refusal_handlers_jobqueue_wraps_exist_with_their_signatures() -> None:
    expected = {"on_decode_error": ["self", "message", "exc"], "on_invalid_task": ["self", "body", "message", "exc"],
                "on_unknown_message": ["self", "body", "message"]}
    for name, params in expected.items():
        actual = list(inspect.signature(getattr(Consumer, name)).parameters)
        assert actual == params, broken(internals.wrap_refusal_handlers, f"Consumer.{name}{actual}")
    # And the task handler reads them from the instance (so replacing them there works)
    source = inspect.getsource(Consumer.create_task_handler)
    assert all(f"self.{name}" in source for name in expected), broken(
        internals.wrap_refusal_handlers, "create_task_handler no longer reads them from self")


def test_wrapped_refusal_handlers_report_then_call_celerys() -> None:
    calls: list[tuple[str, Any]] = []

    class FakeConsumer:
        def on_decode_error(self, message: Any, exc: Exception) -> str:
            calls.append(("celery-decode", message))
            return "decode"

        def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> str:
            calls.append(("celery-invalid", message))
            return "invalid"

        def on_unknown_message(self, body: Any, message: Any) -> str:
            calls.append(("celery-unknown", message))
            return "unknown"

    consumer = FakeConsumer()
    internals.wrap_refusal_handlers(consumer, lambda message, reason: calls.append((reason, message)))
    assert consumer.on_decode_error("m1", ValueError("bad")) == "decode"
    assert consumer.on_invalid_task({}, "m2", KeyError("x")) == "invalid"
    assert consumer.on_unknown_message({}, "m3") == "unknown"
    assert calls == [("cannot decode (ValueError: bad)", "m1"), ("celery-decode", "m1"),
                     ("invalid task message (KeyError: 'x')", "m2"), ("celery-invalid", "m2"),
                     ("not a task message (no task header)", "m3"), ("celery-unknown", "m3")]


def test_the_event_receiver_hands_each_message_to_the_hook_jobqueue_overrides() -> None:
    params = list(inspect.signature(EventReceiver._receive).parameters)[:3]
    assert params == ["self", "body", "message"], broken(internals.TolerantEventReceiver, f"_receive{params}")
    assert "self._receive" in inspect.getsource(EventReceiver.get_consumers), broken(
        internals.TolerantEventReceiver, "get_consumers no longer consumes with _receive")


def test_events_are_converted_exactly_as_celerys_receiver_converts_them() -> None:
    app = Celery("contract-convert", set_as_current=False)
    receiver_app = Celery("contract-convert-ref", set_as_current=False)
    convert = internals.event_converter(app)
    reference = EventReceiver(None, app=receiver_app)
    for body in ({"type": "task-sent", "uuid": "a", "timestamp": 1700000000.0, "utcoffset": 0},
                 {"type": "task-started", "uuid": "a", "clock": 7, "timestamp": 1700000001.0, "utcoffset": -1},
                 {"type": "worker-heartbeat", "hostname": "w"}):
        ours, theirs = convert(dict(body)), reference.event_from_message(dict(body))[1]
        ours.pop("local_received"), theirs.pop("local_received")
        assert ours == theirs, broken(internals.event_converter, f"{ours} != {theirs}")
    assert app.clock.value == receiver_app.clock.value, broken(internals.event_converter, "clocks differ")


def test_the_brpop_reader_jobqueue_reimplements_still_exists_with_what_it_uses(redis_url: str) -> None:
    assert callable(getattr(kombu_redis.Channel, "_brpop_read", None)), "kombu Channel._brpop_read is gone: " \
        "jobqueue.transport.kombu_redis.Channel._brpop_read overrides nothing"
    with kombu_connection(redis_url, {}) as conn:
        channel = conn.default_channel
        for name in ("_queue_cycle", "_in_poll", "decode_body", "conn_or_acquire", "sep"):
            assert hasattr(channel, name), f"jobqueue.transport.kombu_redis.Channel._brpop_read: kombu channel has no {name}"
        assert callable(getattr(channel.connection, "_deliver", None)), \
            "jobqueue.transport.kombu_redis.Channel._brpop_read: kombu transport has no _deliver"


def test_a_channel_reuses_one_redis_client_until_kombu_replaces_its_pool(redis_url: str) -> None:
    for name in ("conn_or_acquire", "_create_client", "pool", "_pool"):
        assert hasattr(kombu_redis.Channel, name), \
            f"kombu redis Channel has no {name}: jobqueue.transport.kombu_redis.Channel.conn_or_acquire relies on it"
    with kombu_connection(redis_url, {}) as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second and first.ping()
        with channel.conn_or_acquire(first) as given:
            assert given is first
        channel._pool = None  # what kombu does on reconnect (_disconnect_pools)
        with channel.conn_or_acquire() as after:
            assert after is not first and after.connection_pool is channel.pool and after.ping()


def test_a_group_buffered_from_another_thread_never_breaks_the_dispatchers_flush(redis_url: str) -> None:
    # Given Celery's event dispatcher buffering the task group, as a worker with an event loop
    # does, and a flush running in a loop while other threads send a new group's first events
    app = Celery(broker=redis_url)
    with app.connection_for_write() as conn:
        dispatcher = app.events.Dispatcher(conn, buffer_group=["task"], buffer_limit=10_000)
        errors: list[BaseException] = []
        stop = threading.Event()

        def flushing() -> None:
            while not stop.is_set():
                try:
                    dispatcher.flush()
                except RuntimeError as exc:  # "dictionary changed size during iteration"
                    errors.append(exc)
                    return

        flusher = threading.Thread(target=flushing)
        flusher.start()
        try:
            dispatcher.send("task-received", uuid="x")
            # When the groups are buffered through jobqueue's helper before their first send
            # (task events keep the flush publishing, its socket writes letting this thread in)
            for n in range(2000):
                group = f"group{n}"
                dispatcher.send("task-progress", uuid="x", step=n)
                buffer_event_group(dispatcher, group)
                dispatcher.send(f"{group}-status", status="idle")
                assert group in dispatcher.buffer_group
        finally:
            stop.set()
            flusher.join(10)
            dispatcher.close()
    # Then the flush never met a buffer made behind its back
    assert errors == []
