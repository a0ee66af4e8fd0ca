"""Redis lease: keep a running job's message from being handed out twice.

On Redis, kombu emulates acks: a delivered message sits in the ``unacked`` hash with its
delivery time in the ``unacked_index`` sorted set, and any worker's restore sweep puts it
back in its queue once it is older than the visibility timeout. A short timeout brings a
dead worker's job back quickly, but would also re-deliver a long job that is still running
(celery#5935). The lease solves both: while a message is in this worker's hands, its score in
``unacked_index`` is bumped to "now" every ``lease_interval`` seconds. A live job never
looks older than ``lease_interval``; a dead worker's job stops being bumped and is restored
``visibility_timeout`` seconds later by the sweep that every worker runs (kombu's
``unacked_restore_interval``, which we lower from ~100 s to ``lease_interval``).

``ZADD ... XX`` only updates existing members, so a message acked between our read of the
worker's requests and the write is never re-created.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

#: kombu's default name of the sorted set of unacked delivery tags.
UNACKED_INDEX_KEY = "unacked_index"


def held_delivery_tags(running: Iterable[str] | None = None, grace: float = 2.0) -> list[str]:
    """Delivery tags of every message this worker process holds (reserved, waiting for a
    retry's countdown, or running).

    With ``running`` (the job ids whose body is executing now), a request Celery accepted more
    than ``grace`` s ago that is not running is left out: its body ended but Celery never
    completed it (e.g. the result backend was down when the failure was stored: the trace then
    raises out of the pool and the request stays "active" forever). Renewing it would keep its
    message from ever being handed out again: a job that hangs forever.
    """
    from celery.worker import state as worker_state

    running_ids = None if running is None else set(running)
    now = time.time()  # Celery keeps ``time_start`` as wall-clock time
    tags = []
    # Scheduled requests wait for their ETA (a retry's countdown) in this worker's hands too.
    for request in [*worker_state.reserved_requests, *worker_state.scheduled_requests]:
        accepted_at = getattr(request, "time_start", None)
        if (running_ids is not None and accepted_at is not None and request.id not in running_ids
                and now - accepted_at > grace):
            continue
        message = getattr(request, "message", None)
        tag = getattr(message, "delivery_tag", None)
        if tag is not None:
            tags.append(tag if isinstance(tag, str) else str(tag))
    return tags


class LeaseKeeper:
    """Thread that renews the leases of held messages until :meth:`stop`."""

    def __init__(
        self,
        client: Any,
        *,
        interval: float,
        tags: Callable[[], Iterable[str]] = held_delivery_tags,
        index_key: str = UNACKED_INDEX_KEY,
    ) -> None:
        self.client = client
        self.interval = interval
        self.index_key = index_key
        self._tags = tags
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: How many renewals were written (for tests and logs).
        self.renewed = 0

    def renew(self) -> int:
        """Bump every held message to now; return how many were still unacked."""
        tags = list(self._tags())
        if not tags:
            return 0
        now = time.time()
        updated = int(self.client.zadd(self.index_key, {t: now for t in tags}, xx=True, ch=True) or 0)
        self.renewed += updated
        return updated

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew()
            except Exception:  # the broker may be restarting; the next round tries again
                log.warning("lease renewal failed", exc_info=True)

    def start(self) -> None:
        """Start renewing in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="jobqueue-lease", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop renewing and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
