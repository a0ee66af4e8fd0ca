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

from tests.helpers import wait_for

#: Event type of the readiness probe (ignored by every real consumer).
PROBE = "jobqueue-probe"


class EventCapture:
    """Collects every event on ``app``'s broker until :meth:`stop`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._connection: Any = None
        self._receiver: Any = None
        self._thread: threading.Thread | None = None
        self._probe = uuid.uuid4().hex
        self.error: BaseException | None = None

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def _run(self) -> None:
        try:
            self._receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # surfaced by the test through .error
            self.error = exc

    def start(self, timeout: float = 10.0) -> EventCapture:
        """Start receiving; return once a probe event made the round trip."""
        self._connection = self.app.connection_for_read()
        self._receiver = self.app.events.Receiver(self._connection, handlers={"*": self._on_event})
        self._thread = threading.Thread(target=self._run, name="event-capture", daemon=True)
        self._thread.start()
        with self.app.events.default_dispatcher() as dispatcher:

            def probed() -> bool:
                dispatcher.send(PROBE, probe=self._probe)
                return any(e.get("probe") == self._probe for e in self.snapshot())

            wait_for(probed, timeout, interval=0.1, what="the event receiver to get a probe")
        return self

    def stop(self) -> None:
        """Stop receiving and close the connection."""
        if self._receiver is not None:
            self._receiver.should_stop = True
        if self._thread is not None:
            self._thread.join(10)
        if self._connection is not None:
            self._connection.close()

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
