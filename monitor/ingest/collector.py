"""The event collector: receives the Celery event stream and hands every event to the writer.

On a plain Redis broker it reads the stream raw (:class:`monitor.ingest.raw_reader.RawEventReader`):
the receive thread only PSUBSCRIBEs to the event exchange's channels and appends each message's
bytes to the writer's in-memory queue; the writer decodes them
(:class:`monitor.ingest.raw_reader.EventDecoder`, the same events Celery's receiver produces). The
receive thread then needs very little of the GIL, so Redis does not drop it for falling behind
while the writer works. On other brokers (RabbitMQ) it uses Celery's own
:class:`~celery.events.receiver.EventReceiver`, decoding in the receive thread.

Either way every ``task-*``, ``worker-*`` and our custom ``task-progress`` /
``connector-status`` event reaches the writer. A message that cannot be decoded, or an event
without a type, is counted and skipped; the loop goes on. When the broker goes away -- or
stops answering without closing the connection (see :mod:`jobqueue.transport.redis_health`) -- it
reconnects with a capped exponential backoff and calls ``on_reconnected`` (the monitor runs a
truth repair, which recovers what the gap lost). ``stats()["last_heard"]`` says when the
stream was last heard from.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery.utils.threads import bound_open_broker_sockets

from jobqueue.transport.internals import TolerantEventReceiver
from jobqueue.transport.redis_clients import master_url
from monitor.ingest.raw_reader import EventDecoder, RawEventReader, event_source
from monitor.ingest.validate import EventGate
from monitor.ingest.writer import Writer

log = logging.getLogger(__name__)

#: Longest (s) the close of a lost broker connection may wait for the broker.
CLOSE_TIMEOUT = 1.0


class _BoundedCloseReceiver(TolerantEventReceiver):
    """The receiver whose connection's close, after the stream failed, is bounded: through a
    frozen link (heartbeats missed) an AMQP channel close waits for its reply forever, and the
    collector never reconnected. ``extra_context`` is kombu's ``ConsumerMixin`` hook around the
    consuming, inside the connection's own context (which closes it)."""

    @contextmanager
    def extra_context(self, connection: Any, channel: Any) -> Iterator[None]:
        try:
            yield
        except BaseException:
            bound_open_broker_sockets(connection, CLOSE_TIMEOUT)  # a live broker answers at once
            raise


class EventCollector:
    """Consumes the event stream into a :class:`~monitor.ingest.writer.Writer`; a thread with
    :meth:`stop`."""

    def __init__(self, celery_app: Any, writer: Writer, *, backoff_start: float = 0.5,
                 backoff_cap: float = 10.0, raw: bool | None = None,
                 on_reconnected: Callable[[], Any] | None = None,
                 health_interval: float | None = None, event_window: float = 300.0) -> None:
        """``raw``: read a Redis broker raw (default: whenever the broker allows it); False
        keeps Celery's ``EventReceiver``. ``on_reconnected`` is called each time the stream
        is consumed again after it was lost (the monitor runs a truth repair then: events of
        the gap are gone). ``health_interval``: the raw reader's dead-peer check (default: the
        app's ``settings.redis_health_interval``, see :mod:`jobqueue.transport.redis_health`).
        ``event_window``: events whose timestamp is further than this from their receipt are
        refused, like events that do not fit their typed model (:mod:`monitor.ingest.validate`)."""
        self.app = celery_app
        self.writer = writer
        self.gate = EventGate(event_window, writer.count, self._on_refused)
        self.backoff_start = backoff_start
        self.backoff_cap = backoff_cap
        self.on_reconnected = on_reconnected
        settings = getattr(celery_app, "settings", None)
        if health_interval is None:
            health_interval = float(getattr(settings, "redis_health_interval", None) or 10.0)
        self.health_interval: float = health_interval
        self._ever_connected = False
        self._last_heard: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._receiver: TolerantEventReceiver | RawEventReader | None = None
        self._backoff = backoff_start
        self._source = event_source(celery_app) if raw is not False else None
        if raw and self._source is None:
            raise ValueError(f"cannot read {celery_app.conf.broker_url!r} raw: not a plain Redis URL")
        if self._source is not None:
            self._decoder = EventDecoder(celery_app, self._on_malformed)
            writer.decode_raw_with(self._decode)
        self.connected = threading.Event()
        #: Events handed to the writer's apply step (decoded ones on the raw path).
        self._events = 0
        #: Raw messages the writer's full queue refused (not decoded, so counted as one event).
        self._refused = 0
        self.malformed = 0
        self.reconnects = 0
        self.last_error: str | None = None

    def start(self) -> EventCollector:
        self._thread = threading.Thread(target=self._run, name="monitor-collector", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        receiver = self._receiver
        if isinstance(receiver, RawEventReader):
            receiver.stop()
        elif receiver is not None:
            receiver.should_stop = True
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        return {
            "alive": self.alive,
            "reader": "redis-raw" if self.raw else "kombu",
            "connected": self.connected.is_set(),
            "received": self.received,
            "malformed": self.malformed + self.writer.counts["malformed"],
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "writer": dict(self.writer.counts),
            "backlog": self.writer.backlog,
            "last_heard": self.last_heard,
            "last_heard_age": None if self.last_heard is None else round(max(0.0, time.time() - self.last_heard), 3),
            "health_interval": self.health_interval,
        }

    @property
    def last_heard(self) -> float | None:
        """When the event stream last delivered anything (an event, or a PONG on the raw
        reader): Unix time, None before the first connection."""
        receiver = self._receiver
        if isinstance(receiver, RawEventReader) and receiver.last_heard is not None:
            return max(receiver.last_heard, self._last_heard or 0.0)
        return self._last_heard

    @property
    def raw(self) -> bool:
        """True when the stream is read raw from Redis (see :mod:`monitor.ingest.raw_reader`)."""
        return self._source is not None

    @property
    def received(self) -> int:
        """Events that reached the writer (including any its full queue dropped)."""
        return self._events + self._refused

    def _on_event(self, event: dict[str, Any]) -> None:
        self._last_heard = time.time()
        self._events += 1
        if self.gate.allows(event, _received(event)):
            self.writer.put(event)

    def _on_raw(self, raw: bytes) -> None:
        if not self.writer.put(raw):
            self._refused += 1

    def _decode(self, raw: bytes) -> list[dict[str, Any]]:
        """The writer's raw decoder: runs in the writer thread."""
        events = self._decoder.decode(raw)
        self._events += len(events)
        return [ev for ev in events if self.gate.allows(ev, _received(ev))]

    def _on_malformed(self, exc: Exception) -> None:
        self.malformed += 1
        self.last_error = f"malformed event: {exc!r}"[:300]

    def _on_refused(self, detail: str) -> None:
        self.last_error = f"refused event: {detail}"[:300]

    def _consume_kombu(self) -> None:
        """Celery's EventReceiver until stop() or a broker error (which it raises)."""
        # Celery gives heartbeats only to a worker's connection: this one asks for them too, so
        # a frozen AMQP link fails the receiver after ~2 heartbeats (kombu checks them while
        # it waits for events).
        with self.app.connection_for_read(heartbeat=self.app.conf.broker_heartbeat or None) as conn:
            receiver = _BoundedCloseReceiver(conn, handlers={"*": self._on_event}, app=self.app,
                                             on_malformed=self._on_malformed, on_ready=self._on_ready)
            self._receiver = receiver
            if self._stop.is_set():
                return
            try:
                for _ in receiver.consume(limit=None, timeout=None, wakeup=True):
                    if self._stop.is_set():
                        return
            except BaseException:
                bound_open_broker_sockets(conn, CLOSE_TIMEOUT)  # leaving the block closes it too
                raise

    def _consume_raw(self, url: str, pattern: str) -> None:
        """The raw Redis reader until stop() or a Redis error (which it raises)."""
        # On Sentinel: the master the sentinels name now (again after every reconnect).
        url = master_url(url, getattr(self.app, "settings", None))
        reader = RawEventReader(url, pattern, self._on_raw, on_subscribed=self._on_subscribed,
                                connect_timeout=float(self.app.conf.broker_connection_timeout or 3.0),
                                health_interval=self.health_interval)
        self._receiver = reader
        if self._stop.is_set():
            return
        reader.run()

    def _on_subscribed(self) -> None:
        self._on_ready()
        # What EventReceiver(wakeup=True) does once consuming: ask every worker for a heartbeat
        # now, so the monitor knows the fleet without waiting a heartbeat interval. In a thread
        # of its own: after a dead peer the broker connection it takes from the pool may be a
        # dead one too (it times out and is replaced), and reading must not wait for that.
        threading.Thread(target=self._wake_workers, name="monitor-wakeup", daemon=True).start()

    def _wake_workers(self) -> None:
        try:
            self.app.control.broadcast("heartbeat")
        except Exception as exc:
            log.warning("could not wake the workers up: %r", exc)

    def _on_ready(self) -> None:
        self._backoff = self.backoff_start
        self._last_heard = time.time()
        self.connected.set()
        if self._ever_connected and self.on_reconnected is not None:
            try:
                self.on_reconnected()
            except Exception as exc:
                log.warning("on_reconnected failed: %r", exc)
        self._ever_connected = True

    def _run(self) -> None:
        self._backoff = self.backoff_start
        while not self._stop.is_set():
            try:
                if self._source is not None:
                    self._consume_raw(*self._source)
                else:
                    self._consume_kombu()
                if self._stop.is_set():
                    break
            except Exception as exc:
                # Keep the last_heard of the reader that just died (the next one starts blank).
                receiver = self._receiver
                if isinstance(receiver, RawEventReader) and receiver.last_heard is not None:
                    self._last_heard = max(receiver.last_heard, self._last_heard or 0.0)
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("event stream lost (%s); reconnecting in %.1f s", exc, self._backoff)
            self.connected.clear()
            if self._stop.is_set():
                break
            self.reconnects += 1
            self._stop.wait(self._backoff)
            self._backoff = min(self.backoff_cap, self._backoff * 2)
        self.connected.clear()


def _received(event: Any) -> float:
    value = event.get("local_received") if isinstance(event, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else time.time()


def wait_connected(collector: EventCollector, timeout: float) -> bool:
    """Wait until the collector consumes (it declares its queue then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if collector.connected.wait(0.1):
            return True
    return False
