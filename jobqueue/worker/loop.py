"""The one shape of a worker's background loop: call ``tick`` every ``interval`` seconds in a
daemon thread until :meth:`IntervalLoop.stop`.

The health checks (:mod:`jobqueue.worker.health`), the lease renewals
(:mod:`jobqueue.worker.lease`) and the orphan sweeps (:mod:`jobqueue.worker.orphans`) each run
in one. A tick that raises is logged and the loop goes on: a loop that died would leave the
thing it keeps (statuses, leases, the prefetch buffer) silently stale.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class IntervalLoop:
    """Thread that runs ``tick`` every ``interval`` seconds (the first after one interval)."""

    def __init__(self, tick: Callable[[], object], *, interval: float, name: str) -> None:
        if interval <= 0:
            raise ValueError(f"{name}: interval must be positive, got {interval}")
        self.tick = tick
        self.interval = float(interval)
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: How many ticks ran (for tests and logs).
        self.ticks = 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:  # never let one bad tick end the loop
                log.exception("%s: a round failed", self.name)
            self.ticks += 1

    def start(self) -> IntervalLoop:
        """Start ticking in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop ticking and wait for a tick in progress to end."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def is_alive(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()
