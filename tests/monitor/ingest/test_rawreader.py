"""The raw Redis reader of the event stream (monitor/ingest/raw_reader.py) on a private redis-server:
it yields exactly what Celery's EventReceiver yields for real Dispatcher events, counts what
does not decode, and comes back after Redis drops its connection.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from bench.common import RedisServer, encode_event
from monitor.ingest.collector import EventCollector, wait_connected
from monitor.ingest.hub import ChangeHub
from monitor.ingest.raw_reader import EventDecoder, RawEventReader, event_source
from monitor.ingest.writer import Writer
from monitor.store import Store
from tests.helpers import wait_for
from tests.monitor.ingest.test_stream import envelope

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own (CLIENT KILL must not touch anyone else)."""
    server = RedisServer().start()
    yield server
    server.stop()


def celery_app(url: str) -> Celery:
    app = Celery("rawreader-test", broker=url, set_as_current=False)
    app.conf.event_serializer = "json"
    return app


def subscribers(url: str) -> int:
    """Clients of the Redis server at ``url`` holding a channel or pattern subscription."""
    clients = redis.Redis.from_url(url).client_list()
    return sum(1 for c in clients if int(c.get("sub", 0)) + int(c.get("psub", 0)) > 0)


class ReceiverThread:
    """Celery's own EventReceiver collecting every event (the reference)."""

    def __init__(self, app: Celery) -> None:
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self._conn = app.connection_for_read()
        receiver = app.events.Receiver(self._conn, handlers={"*": self.events.append})
        receiver.on_consume_ready = lambda *a, **k: self.ready.set()  # type: ignore[method-assign]
        self._receiver = receiver
        self.thread = threading.Thread(target=lambda: receiver.capture(limit=None, timeout=None, wakeup=False),
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._receiver.should_stop = True
        self.thread.join(10)
        self._conn.release()


class RawThread:
    """A RawEventReader collecting the raw bytes."""

    def __init__(self, url: str, pattern: str) -> None:
        self.raw: list[bytes] = []
        self.ready = threading.Event()
        self.reader = RawEventReader(url, pattern, self.raw.append, on_subscribed=self.ready.set)
        self.thread = threading.Thread(target=self.reader.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.reader.stop()
        self.thread.join(10)


def without_receive_time(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in ev.items() if k != "local_received"} for ev in events]


def test_the_pattern_is_the_one_kombus_fanout_publishes_celery_events_on() -> None:
    # Given Redis brokers with kombu's default and with custom fanout options
    app = celery_app("redis://127.0.0.1:6379/9")
    assert event_source(app) == ("redis://127.0.0.1:6379/9", "/9.celeryev/*")
    app.conf.broker_transport_options = {"global_keyprefix": "jq:", "fanout_prefix": False}
    assert event_source(app) == ("redis://127.0.0.1:6379/9", "jq:celeryev/*")
    # And brokers it must leave to EventReceiver
    assert event_source(celery_app("amqp://guest@127.0.0.1//")) is None
    assert event_source(celery_app("redis+socket:///tmp/redis.sock")) is None


def test_real_dispatcher_events_decode_exactly_as_celerys_receiver_delivers_them(private_redis: RedisServer) -> None:
    # Given Celery's EventReceiver and the raw reader on the same stream (separate apps, so
    # separate Lamport clocks that see the same events)
    url = private_redis.url(0)
    reference = ReceiverThread(celery_app(url))
    decoder_app = celery_app(url)
    source = event_source(decoder_app)
    assert source is not None
    raw = RawThread(*source)
    try:
        assert reference.ready.wait(10) and raw.ready.wait(10)
        # (kombu reports the receiver ready before its first poll sends the subscription)
        wait_for(lambda: subscribers(url) >= 2, 10, what="both subscriptions on the server")
        # When a real Dispatcher sends lifecycle, custom and worker events, single and batched
        publisher = celery_app(url)
        with publisher.connection_for_write() as conn:
            with publisher.events.Dispatcher(conn, hostname="gpu0@test") as dispatcher:
                dispatcher.send("task-sent", uuid="j1", name="jobqueue.run", queue="gpu0")
                dispatcher.send("task-received", uuid="j1", name="jobqueue.run", args="()", kwargs="{}")
                dispatcher.send("task-started", uuid="j1")
                dispatcher.send("task-progress", uuid="j1", percent=50.0, step=5, attempt=1, note="ünïcode")
                dispatcher.send("worker-heartbeat", freq=2.0, active=1, processed=3)
                dispatcher.send("task-succeeded", uuid="j1", result="'ok'", runtime=0.25)
            batched = publisher.events.Dispatcher(conn, hostname="gpu1@test", buffer_group=["task"],
                                                  buffer_limit=100)
            for i in range(3):
                batched.send("task-started", uuid=f"b{i}")
            batched.flush()
            batched.close()
        wait_for(lambda: len(reference.events) >= 9, 10, what="the receiver's events")
        wait_for(lambda: len(raw.raw) >= 7, 10, what="the raw messages (one holds the batch)")
        # Then decoding the raw bytes gives exactly the receiver's events, in the same order
        decoder = EventDecoder(decoder_app, on_malformed=lambda exc: pytest.fail(f"malformed: {exc!r}"))
        decoded = [ev for message in raw.raw for ev in decoder.decode(message)]
        assert len(raw.raw) == 7
        assert [ev["type"] for ev in decoded][:6] == ["task-sent", "task-received", "task-started", "task-progress",
                                                      "worker-heartbeat", "task-succeeded"]
        assert without_receive_time(decoded) == without_receive_time(reference.events)
        assert all(isinstance(ev["local_received"], float) for ev in decoded)
    finally:
        raw.stop()
        reference.stop()


@pytest.fixture
def raw_collector(private_redis: RedisServer, tmp_path: Path) -> Iterator[tuple[EventCollector, Writer]]:
    """A raw-reading collector + writer + SQLite store on the private Redis."""
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    writer = Writer(store, ChangeHub()).start()
    collector = EventCollector(celery_app(private_redis.url(0)), writer, raw=True, backoff_start=0.1,
                               backoff_cap=0.5).start()
    assert wait_connected(collector, 10)
    yield collector, writer
    collector.stop()
    writer.stop()
    store.close()


def test_garbage_payloads_are_counted_as_malformed_and_the_stream_goes_on(
        raw_collector: tuple[EventCollector, Writer], private_redis: RedisServer) -> None:
    collector, writer = raw_collector
    assert collector.raw
    client = redis.Redis.from_url(private_redis.url(0))
    # When garbage arrives: not JSON, a bad base64 body, a pickled body, a body that is not
    # JSON, an event without a type, and a batch holding one good event and one non-event
    good = {"type": "worker-online", "hostname": "gpu0@x", "timestamp": time.time(), "freq": 2.0}
    bad_base64 = encode_event(good).replace(b'"body": "', b'"body": "A')  # length not a multiple of 4
    pickled = encode_event(good).replace(b"application/json", b"application/x-python-serialize")
    for payload in (b"\x00\xffgarbage", bad_base64, pickled, envelope(b"{not json", "task.started"),
                    envelope(b'{"uuid": "x"}', "task.started"),
                    envelope(b'[{"type": "worker-online", "hostname": "gpu1@x", "timestamp": %.3f}, 42]' % time.time(),
                             "worker.online")):
        client.publish("/0.celeryev/task.started", payload)
    client.publish("/0.celeryev/worker.online", encode_event(good))
    client.close()
    # Then six are counted as malformed, the two good events reach the store, and it runs on
    wait_for(lambda: collector.received >= 2 and writer.wait_idle(5), 10, what="the good events")
    assert collector.malformed == 6
    assert collector.received == 2
    assert collector.stats()["alive"] is True
    assert {w["name"] for w in writer.store.workers()} >= {"gpu0@x", "gpu1@x"}


def test_the_reader_reconnects_after_redis_drops_its_connection(
        raw_collector: tuple[EventCollector, Writer], private_redis: RedisServer) -> None:
    collector, _writer = raw_collector
    client = redis.Redis.from_url(private_redis.url(0))
    try:
        # When Redis drops every pub/sub connection (what an overrun output buffer does)
        killed = client.client_kill_filter(_type="pubsub")
        assert killed >= 1
        # Then the collector notices, reconnects, and events published after that arrive
        wait_for(lambda: collector.reconnects >= 1 and collector.connected.is_set(), 10, what="a reconnect")
        before = collector.received
        event = {"type": "worker-online", "hostname": "gpu2@x", "timestamp": time.time()}
        wait_for(lambda: client.publish("/0.celeryev/worker.online", encode_event(event)) > 0
                 and collector.received > before, 10, interval=0.1, what="an event after the reconnect")
        assert collector.stats()["alive"] is True
        assert "Connection" in (collector.last_error or "")
    finally:
        client.close()


#: A child process publishing ``count`` 800-byte messages at ``rate`` a second (12 MB/s at
#: 15,000 a second: the event stream of bench.ingest's 12,000 events/s step, and more).
_FLOOD = """
import sys, time, redis
r = redis.Redis(port=int(sys.argv[1]))
count, rate = int(sys.argv[2]), int(sys.argv[3])
payload = b"x" * 800
start, sent = time.monotonic(), 0
while sent < count:
    due = min(count, int((time.monotonic() - start) * rate))
    pipe = r.pipeline(transaction=False)
    for _ in range(due - sent):
        pipe.publish("/0.celeryev/task.progress", payload)
    pipe.execute()
    sent = due
    time.sleep(0.005)
"""


def test_a_reader_beside_busy_threads_keeps_up_with_a_flood_redis_would_drop_it_for(
        private_redis: RedisServer) -> None:
    # Given a reader in a process whose other threads never wait (the writer applying a big
    # backlog), on a Redis that drops a pub/sub client 8 MB behind
    client = redis.Redis.from_url(private_redis.url(0))
    client.config_set("client-output-buffer-limit", "pubsub 8mb 8mb 60")
    got: list[int] = [0]
    subscribed = threading.Event()

    def count(_raw: bytes) -> None:
        got[0] += 1

    reader = RawEventReader(private_redis.url(0), "/0.celeryev/*", count, on_subscribed=subscribed.set)
    failure: list[BaseException] = []

    def read() -> None:
        try:
            reader.run()
        except BaseException as exc:
            failure.append(exc)

    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            sum(range(10_000))

    threads = [threading.Thread(target=read, daemon=True)] + [threading.Thread(target=busy, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        assert subscribed.wait(10)
        # When 45,000 messages arrive at 15,000 a second (12 MB/s, for 3 s)
        total = 45_000
        subprocess.run([sys.executable, "-c", _FLOOD, str(private_redis.port), str(total), "15000"],
                       check=True, timeout=50)
        # Then the reader took every one and Redis never dropped it: each socket read takes
        # what has arrived (not 64 KiB, redis-py's default), so the GIL handed back to a busy
        # thread after each read does not cap how fast it reads
        wait_for(lambda: got[0] >= total or failure, 20, what="every message")
        assert not failure and got[0] == total
    finally:
        stop.set()
        reader.stop()
        client.close()
