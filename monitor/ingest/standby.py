"""Leader and standby: two (or more) monitors on one PostgreSQL store, one of them writing.

Every monitor runs its collector, its web app and its websocket fan-out; only the one that
holds the writer's lease (:class:`monitor.store.lease.WriterLease`) writes. :class:`Leadership`
is a thread that renews the lease every third of its length while it is held and otherwise
tries to take it (possible once the holder stopped renewing for a lease's length). The
:class:`~monitor.ingest.writer.Writer` asks :attr:`Leadership.leading` before each batch: a
standby's writer keeps the events it receives in a bounded buffer instead of applying them,
and applies that buffer first when it becomes the leader, then has repair fill what the
buffer did not hold (:meth:`monitor.repair.reconcile.Repair.trigger`).

A standby's web pages, API and websockets read the same store: the fan-out follows the store's
change log (:mod:`monitor.web.fanout` polls it), so its dashboards stay live with what the
leader writes. With ``JOBQUEUE_MONITOR_STANDBY=off`` (the default) or an SQLite store there
is no lease: the one monitor writes, as before.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from jobqueue.config import Settings
from jobqueue.errors import ConfigError
from monitor.store.lease import WriterLease

log = logging.getLogger(__name__)


def holder_name() -> str:
    """This monitor process as the lease names it: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def standby_enabled(settings: Settings, is_sqlite: bool) -> bool:
    """Whether this monitor takes part in leader election (``JOBQUEUE_MONITOR_STANDBY``)."""
    if settings.monitor_standby == "off":
        return False
    if is_sqlite:
        raise ConfigError("JOBQUEUE_MONITOR_STANDBY=auto needs a PostgreSQL store (JOBQUEUE_MONITOR_DB): "
                          "an SQLite file has one monitor, which writes")
    return True


class Leadership:
    """Holds, or waits for, the writer's lease; a thread with :meth:`stop`."""

    def __init__(self, lease: WriterLease, *, interval: float | None = None) -> None:
        self.lease = lease
        self.interval = lease.seconds / 3 if interval is None else interval
        self._valid_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: When (Unix time) this monitor last took the lease; how many times it did.
        self.took_over_at: float | None = None
        self.takeovers = 0
        self.last_error: str | None = None

    @property
    def leading(self) -> bool:
        """True while this monitor holds the lease and renewed it within the lease's length
        (the database's fence has the last word, :meth:`WriterLease.fence`)."""
        return self.lease.term is not None and time.monotonic() < self._valid_until

    def step(self) -> bool:
        """Renew the lease, or try to take it; returns :attr:`leading`."""
        started = time.monotonic()
        try:
            if self.lease.term is not None and self.lease.renew():
                self._valid_until = started + self.lease.seconds
            elif self.lease.acquire() is not None:
                self._valid_until = started + self.lease.seconds
                self.took_over_at = time.time()
                self.takeovers += 1
                log.info("this monitor (%s) now writes: lease term %s", self.lease.holder, self.lease.term)
            self.last_error = None
        except Exception as exc:  # the database away for a moment: try again next round
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("writer lease: %s", self.last_error)
        return self.leading

    def start(self) -> Leadership:
        self.step()
        self._thread = threading.Thread(target=self._run, name="monitor-lease", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.step()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and give the lease up (a standby takes over without waiting for it to expire)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            self.lease.release()
        except Exception as exc:
            log.warning("could not release the writer's lease: %r", exc)

    def stats(self) -> dict[str, Any]:
        return {"role": "leader" if self.leading else "standby", "holder": self.lease.holder,
                "term": self.lease.term, "took_over_at": self.took_over_at, "takeovers": self.takeovers,
                "last_error": self.last_error}
