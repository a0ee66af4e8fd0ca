"""Wake-ups for websocket streams: the writer announces each committed sequence number.

In the collector's own process this brings a change to a websocket client within
milliseconds; a web process without a writer falls back to polling the change log (see
:mod:`monitor.web.ws`), so the hub is an accelerator, never the source of truth.
"""

from __future__ import annotations

import threading


class ChangeHub:
    """The highest committed ``seq`` and a condition to wait for a higher one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.seq = 0

    def publish(self, seq: int) -> None:
        """Announce that everything up to ``seq`` is committed."""
        with self._cond:
            if seq > self.seq:
                self.seq = seq
            self._cond.notify_all()

    def wait(self, after: int, timeout: float) -> int:
        """Block until a seq above ``after`` is announced or ``timeout`` passes; return the
        highest announced seq."""
        with self._cond:
            self._cond.wait_for(lambda: self.seq > after, timeout)
            return self.seq
