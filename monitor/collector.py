"""The event collector: receives the Celery event stream and hands every event to the writer.

It uses Celery's own :class:`~celery.events.receiver.EventReceiver` (every ``task-*``,
``worker-*`` and our custom ``task-progress`` / ``connector-status`` events). The receive loop
does nothing but decode and append to the writer's in-memory queue, so it keeps up with the
stream however slow the database is. A message that cannot be decoded, or an event without a
type, is counted and skipped; the loop goes on. When the broker goes away it reconnects with
a capped exponential backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.events.receiver import EventReceiver

from monitor.writer import Writer

log = logging.getLogger(__name__)


class _Receiver(EventReceiver):
    """Celery's receiver, made robust: one bad event never ends the capture."""

    #: Fail fast on connect; the collector does its own backoff (and can stop meanwhile).
    connect_max_retries = 1

    def __init__(self, *args: Any, on_malformed: Any, on_ready: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_malformed = on_malformed
        self._on_ready = on_ready

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, **kwargs: Any) -> None:
        super().on_consume_ready(connection, channel, consumers, **kwargs)
        self._on_ready()

    def _receive(self, body: Any, message: Any, list: Any = list, isinstance: Any = isinstance) -> None:
        for item in body if isinstance(body, list) else [body]:
            try:
                if not isinstance(item, dict) or not isinstance(item.get("type"), str):
                    raise ValueError("not an event")
                self.process(*self.event_from_message(item))
            except Exception as exc:
                self._on_malformed(exc)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._on_malformed(exc)


class EventCollector:
    """Consumes the event stream into a :class:`~monitor.writer.Writer`; a thread with
    :meth:`stop`."""

    def __init__(self, celery_app: Any, writer: Writer, *, backoff_start: float = 0.5,
                 backoff_cap: float = 10.0) -> None:
        self.app = celery_app
        self.writer = writer
        self.backoff_start = backoff_start
        self.backoff_cap = backoff_cap
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._receiver: _Receiver | None = None
        self.connected = threading.Event()
        self.received = 0
        self.malformed = 0
        self.reconnects = 0
        self.last_error: str | None = None

    def start(self) -> EventCollector:
        self._thread = threading.Thread(target=self._run, name="monitor-collector", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._receiver is not None:
            self._receiver.should_stop = True
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        return {
            "alive": self.alive,
            "connected": self.connected.is_set(),
            "received": self.received,
            "malformed": self.malformed + self.writer.counts["malformed"],
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "writer": dict(self.writer.counts),
            "backlog": self.writer.backlog,
        }

    def _on_event(self, event: dict[str, Any]) -> None:
        self.received += 1
        self.writer.put(event)

    def _on_malformed(self, exc: Exception) -> None:
        self.malformed += 1
        self.last_error = f"malformed event: {exc!r}"[:300]

    def _run(self) -> None:
        backoff = self.backoff_start
        while not self._stop.is_set():
            try:
                with self.app.connection_for_read() as conn:
                    receiver = _Receiver(conn, handlers={"*": self._on_event}, app=self.app,
                                         on_malformed=self._on_malformed, on_ready=self.connected.set)
                    self._receiver = receiver
                    if self._stop.is_set():
                        break
                    for _ in receiver.consume(limit=None, timeout=None, wakeup=True):
                        backoff = self.backoff_start
                        if self._stop.is_set():
                            break
                    if self._stop.is_set():
                        break
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("event stream lost (%s); reconnecting in %.1f s", exc, backoff)
            self.connected.clear()
            if self._stop.is_set():
                break
            self.reconnects += 1
            self._stop.wait(backoff)
            backoff = min(self.backoff_cap, backoff * 2)
        self.connected.clear()


def wait_connected(collector: EventCollector, timeout: float) -> bool:
    """Wait until the collector consumes (it declares its queue then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if collector.connected.wait(0.1):
            return True
    return False
