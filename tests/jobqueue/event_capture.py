"""Capture real Celery events in a test: a ``celery.events`` Receiver in a thread.

    capture = EventCapture(app).start()   # returns once it provably receives events
    ...
    wait_for(lambda: capture.matching("connector-status", status="error"))
    capture.stop()

:meth:`EventCapture.start` sends probe events until one comes back, so no event sent after it
returns can be missed because the subscription was not in place yet.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from jobqueue.up.procs import EventListener
from tests.helpers import wait_for

#: Event type of the readiness probe (ignored by every real consumer).
PROBE = "jobqueue-probe"


class EventCapture:
    """Collects every event on ``app``'s broker until :meth:`stop` (an
    :class:`~jobqueue.up.procs.EventListener` keeping what it hears)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._listener = EventListener(app, self._on_event, name="event-capture")
        self._probe = uuid.uuid4().hex

    @property
    def error(self) -> BaseException | None:
        """The last error that broke the connection (the listener reconnects after it)."""
        return self._listener.error

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def start(self, timeout: float = 10.0) -> EventCapture:
        """Start receiving; return once a probe event made the round trip."""
        self._listener.start(timeout)
        with self.app.events.default_dispatcher() as dispatcher:

            def probed() -> bool:
                dispatcher.send(PROBE, probe=self._probe)
                return any(e.get("probe") == self._probe for e in self.snapshot())

            wait_for(probed, timeout, interval=0.1, what="the event receiver to get a probe")
        return self

    def stop(self) -> None:
        """Stop receiving and close the connection."""
        self._listener.stop()

    def snapshot(self) -> list[dict[str, Any]]:
        """Every event received so far, in arrival order."""
        with self._lock:
            return list(self.events)

    def matching(self, event_type: str, **fields: Any) -> list[dict[str, Any]]:
        """Received events of ``event_type`` whose fields equal ``fields``."""
        return [
            e
            for e in self.snapshot()
            if e.get("type") == event_type and all(e.get(k) == v for k, v in fields.items())
        ]
