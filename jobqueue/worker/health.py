"""The health loop: ask every connector's service on a steady interval.

A thread calls ``check()`` (the runtime's :meth:`~jobqueue.worker.runtime.WorkerRuntime.check_health`)
every ``interval`` seconds until :meth:`HealthLoop.stop`. The check records each connector's
status; the status reporter and the consumer gate react to the changes. A failing check is
logged and the loop goes on: a health loop that dies would leave statuses frozen, which is
exactly the stale-badge bug this exists to prevent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class HealthLoop:
    """Thread that runs ``check`` every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, check: Callable[[], None], *, interval: float, name: str = "jobqueue-health") -> None:
        if interval <= 0:
            raise ValueError(f"health interval must be positive, got {interval}")
        self.check = check
        self.interval = float(interval)
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: How many checks ran (for tests and logs).
        self.checks = 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # never let one bad check end the loop
                log.exception("health check failed")
            self.checks += 1

    def start(self) -> HealthLoop:
        """Start checking in a daemon thread (the first check runs after one interval)."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop checking and wait for a check in progress to end."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def is_alive(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()
