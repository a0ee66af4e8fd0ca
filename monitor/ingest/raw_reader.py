"""A raw reader of the Celery event stream on a Redis broker, and the decoder that goes with it.

On Redis, kombu's fanout puts every event on a pub/sub channel ``/<db>.celeryev/<routing key>``
(``fanout_prefix`` and ``fanout_patterns`` on, kombu's defaults). Celery's ``EventReceiver``
decodes each message fully (envelope JSON, base64 body, event JSON, a kombu ``Message``) in the
thread that reads the socket; when that thread falls behind, Redis drops it for overrunning
``client-output-buffer-limit pubsub`` and everything in flight is lost.

:class:`RawEventReader` does as little as possible per message: it PSUBSCRIBEs to the same
channels on one redis-py connection and hands the raw payload bytes on. :class:`EventDecoder`
turns those bytes into the very events ``EventReceiver`` would produce (same content-type and
encoding handling through kombu's serializer registry, same clock and timestamp handling) in
another thread -- the monitor's writer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from kombu.serialization import prepare_accept_content

from jobqueue.transport.internals import envelope_payload, event_converter, fanout_pattern
from jobqueue.transport.json_text import json_message
from jobqueue.transport.pubsub_frames import take_pmessages
from jobqueue.transport.redis_health import keepalive_options, socket_timeout
from jobqueue.transport.redis_urls import is_sentinel_url, parse_sentinel_url

log = logging.getLogger(__name__)

#: URL schemes a plain redis-py connection understands like kombu does (a Sentinel group is
#: read on its current master; anything else, e.g. ``redis+socket://`` or RabbitMQ, keeps
#: Celery's ``EventReceiver``).
RAW_SCHEMES = ("redis://", "rediss://")

#: Bytes asked of the socket per read (redis-py's default is 64 KiB). Each read lets go of the
#: GIL, and getting it back from a busy writer thread takes up to the interpreter's switch
#: interval (5 ms): at 64 KiB a read the reader took at most about 13 MB/s (some 14,000 events/s,
#: less its parser's time), and under load Redis dropped it for overrunning its pub/sub output
#: buffer. A read takes whatever the socket holds, up to this (tests/monitor/ingest/test_rawreader.py).
READ_SIZE = 4 * 1024 * 1024


def event_source(app: Any) -> tuple[str, str] | None:
    """The broker URL and the PSUBSCRIBE pattern of the event exchange, or ``None`` when the
    broker is not a single plain Redis (then the collector uses ``EventReceiver``).

    The pattern is kombu's name for the exchange's channels (see
    :func:`jobqueue.transport.internals.fanout_pattern`).
    """
    url = app.conf.broker_url
    if is_sentinel_url(url):  # the master's address is asked before each connection
        db = parse_sentinel_url(url).db
        return url, fanout_pattern(db, app.conf.broker_transport_options, app.conf.event_exchange)
    if not isinstance(url, str) or not url.startswith(RAW_SCHEMES) or ";" in url:
        return None
    db = redis.ConnectionPool.from_url(url).connection_kwargs.get("db", 0)
    return url, fanout_pattern(int(db), app.conf.broker_transport_options, app.conf.event_exchange)


class RawEventReader:
    """Reads pub/sub messages matching ``pattern`` and passes each payload (bytes) to
    ``on_message``; nothing else happens per message.

    :meth:`run` connects, subscribes, calls ``on_subscribed`` and reads until :meth:`stop`; it
    raises when the connection fails, Redis drops it, or the peer stops answering (PING after
    ``health_interval`` s of silence; the caller reconnects with backoff).
    """

    def __init__(self, url: str, pattern: str, on_message: Callable[[bytes], Any], *,
                 on_subscribed: Callable[[], Any] | None = None, connect_timeout: float = 3.0,
                 poll_interval: float = 0.5, health_interval: float = 10.0,
                 read_size: int = READ_SIZE) -> None:
        """``health_interval``: after this many seconds without a byte from Redis the reader
        sends a PING, and when nothing arrives for another ``health_interval`` s it raises
        :class:`redis.ConnectionError` (a dead peer, see :mod:`jobqueue.transport.redis_health`).
        ``read_size``: bytes asked of the socket per read (:data:`READ_SIZE`)."""
        self.url = url
        self.pattern = pattern
        self.on_message = on_message
        self.on_subscribed = on_subscribed
        self.connect_timeout = connect_timeout
        self.poll_interval = min(poll_interval, health_interval / 2)
        self.health_interval = health_interval
        self.read_size = read_size
        self._stopping = False
        self._connection: Any = None
        #: ``time.time()`` when Redis last sent anything (a message or a PONG); None before.
        self.last_heard: float | None = None

    def stop(self) -> None:
        """Ask :meth:`run` to return (within ``poll_interval``)."""
        self._stopping = True

    def run(self) -> None:
        # socket_timeout only bounds reading the rest of a message that has begun to arrive;
        # waiting for the next one is can_read(poll_interval), so an idle stream is fine.
        # RESP2: messages arrive as plain replies (RESP3, redis-py 8's default, makes them
        # push frames that read_response hands to a push handler instead).
        pool = redis.ConnectionPool.from_url(self.url, socket_connect_timeout=self.connect_timeout,
                                             socket_timeout=socket_timeout(self.health_interval),
                                             socket_keepalive=True,
                                             socket_keepalive_options=keepalive_options(self.health_interval),
                                             socket_read_size=self.read_size, protocol=2)
        conn: Any = pool.make_connection()
        self._connection = conn
        try:
            conn.connect()
            conn.send_command("PSUBSCRIBE", self.pattern)
            reply = conn.read_response()
            if not (isinstance(reply, list) and reply and reply[0] == b"psubscribe"):
                raise redis.ConnectionError(f"unexpected PSUBSCRIBE reply: {reply!r}"[:300])
            self.last_heard = time.time()
            if self.on_subscribed is not None:
                self.on_subscribed()
            self._loop(conn)
        finally:
            self._connection = None
            conn.disconnect()
            pool.disconnect()

    def _loop(self, conn: Any) -> None:
        can_read = conn.can_read
        read = conn.read_response
        deliver = self.on_message
        poll = self.poll_interval
        interval = self.health_interval
        clock = time.monotonic
        heard = clock()
        pinged: float | None = None
        while not self._stopping:
            if not can_read(timeout=poll):
                now = clock()
                if pinged is not None and now - pinged >= interval:
                    raise redis.ConnectionError(
                        f"no answer from Redis for {now - heard:.1f} s (PING unanswered): dead peer")
                if pinged is None and now - heard >= interval:
                    # Silence: a PING in pub/sub mode is answered with [b"pong", b""].
                    conn.send_command("PING")
                    pinged = now
                continue
            heard = clock()
            self.last_heard = time.time()
            pinged = None
            # Everything buffered is read without another poll: can_read() answers from the
            # parser's buffer first. Complete messages are taken from it in one pass
            # (take_pmessages); read() gets what that leaves (a partial frame, a PONG).
            while True:
                for data in take_pmessages(conn):
                    deliver(data)
                if self._stopping or not can_read(timeout=0):
                    break
                msg = read()
                # [b"pmessage", pattern, channel, data]; kombu skips empty payloads too.
                if type(msg) is list and len(msg) == 4 and msg[0] == b"pmessage" and msg[3]:
                    deliver(msg[3])
                if self._stopping or not can_read(timeout=0):
                    break


class EventDecoder:
    """Turns one raw kombu message into the events Celery's ``EventReceiver`` delivers.

    ``on_malformed(exc)`` is called once per message that does not decode (not JSON, a bad
    body encoding, a content type Celery's ``accept`` refuses) and once per item that is not
    an event (no ``type``, or a clock/timestamp Celery cannot handle) -- exactly what the
    ``EventReceiver`` path of :class:`monitor.ingest.collector.EventCollector` counts.
    """

    def __init__(self, app: Any, on_malformed: Callable[[Exception], Any]) -> None:
        self.on_malformed = on_malformed
        self.accept = prepare_accept_content({app.conf.event_serializer, "json"})  # type: ignore[no-untyped-call]
        # Celery's own conversion: clock adjustment, task-sent skew and timestamp
        # localisation identical to EventReceiver's.
        self.event_from_message = event_converter(app)

    def decode(self, raw: bytes) -> list[dict[str, Any]]:
        """The events in ``raw`` (an empty list, counted, when it is not a valid message)."""
        try:
            envelope = json_message(raw)
            if not isinstance(envelope, dict):
                raise ValueError("message is not a JSON object")
            payload = envelope_payload(envelope, self.accept)
        except Exception as exc:  # not JSON, bad base64, kombu's DecodeError/ContentDisallowed
            self.on_malformed(exc)
            return []
        events: list[dict[str, Any]] = []
        for item in payload if isinstance(payload, list) else [payload]:
            try:
                if not isinstance(item, dict) or not isinstance(item.get("type"), str):
                    raise ValueError("not an event")
                events.append(self.event_from_message(item))
            except Exception as exc:
                self.on_malformed(exc)
        return events
