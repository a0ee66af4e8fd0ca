"""Scale to zero: a worker exits after ``JOBQUEUE_EXIT_WHEN_IDLE`` seconds with nothing to do.

Idle means no job running and none reserved (received, waiting for its turn here), as Celery's
worker state counts them. After that long idle the worker sends itself SIGTERM: Celery's warm
shutdown, the one an operator's ``kill`` or Kubernetes' pod deletion gives, which stops
consuming, finishes what runs (nothing) and hands back every message it holds (a retry
waiting for its countdown included), then exits with code 0. No job is lost; an autoscaler
(docs/deployment.md, KEDA) starts a worker again when jobs queue up.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import bootsteps

from jobqueue.transport.internals import active_requests, reserved_requests

log = logging.getLogger(__name__)

#: How often (s) the watch looks, at most (a short idle limit is looked at more often).
CHECK_INTERVAL = 1.0


def busy_now() -> bool:
    """True while this worker runs or holds a job (Celery's active and reserved requests)."""
    return bool(active_requests()) or bool(reserved_requests())


class IdleWatch:
    """Calls ``on_idle`` once, when ``busy`` has said False for ``limit`` seconds in a row."""

    def __init__(self, limit: float, on_idle: Callable[[], None], busy: Callable[[], bool] = busy_now,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.on_idle = on_idle
        self.busy = busy
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.idle_since = clock()

    def check(self) -> bool:
        """One look: returns True (and calls ``on_idle``) when the limit is reached."""
        now = self.clock()
        if self.busy():
            self.idle_since = now
            return False
        if now - self.idle_since < self.limit:
            return False
        log.warning("idle for %.0f s (JOBQUEUE_EXIT_WHEN_IDLE): shutting down", now - self.idle_since)
        self.on_idle()
        return True

    def _run(self) -> None:
        interval = min(CHECK_INTERVAL, max(self.limit / 4, 0.1))
        while not self._stop.wait(interval):
            if self.check():
                return

    def start(self) -> None:
        self.idle_since = self.clock()
        self._thread = threading.Thread(target=self._run, name="jobqueue-idle-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)


def warm_shutdown() -> None:
    """Ask this worker for Celery's warm shutdown (SIGTERM to itself)."""
    os.kill(os.getpid(), signal.SIGTERM)


class IdleStep(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Runs the :class:`IdleWatch` of a worker with ``exit_when_idle`` set."""

    label = "jobqueue exit when idle"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.watch: IdleWatch | None = None

    def include_if(self, worker: Any) -> bool:
        return bool(getattr(worker.app.settings, "exit_when_idle", 0.0))

    def create(self, worker: Any) -> None:
        self.watch = IdleWatch(float(worker.app.settings.exit_when_idle), warm_shutdown)

    def start(self, worker: Any) -> None:
        assert self.watch is not None
        self.watch.start()

    def stop(self, worker: Any) -> None:
        if self.watch is not None:
            self.watch.stop()

    def shutdown(self, worker: Any) -> None:
        self.stop(worker)
