"""Orphaned requests: drop from a worker's active list what the lost broker connection left.

When the broker connection that delivered a message goes away (Redis restarted, a network
cut), Celery reconnects and the message comes back: on Redis through the restore sweep, on
RabbitMQ at once. Its old request object can stay behind in Celery's ``active_requests``:
e.g. the job's body failed on the dead connection and the trace could not store the failure
either, so the request was never completed. ``inspect().active()`` then lists a job that runs
nowhere, next to (or instead of) its redelivered run, until the worker restarts.

:class:`OrphanSweeper` checks every ``interval`` seconds. A request is an orphan when the
channel that delivered it is closed (its connection is gone: it can never be acknowledged
through it) **and** it is not what this worker is running: its job id is not running in the
worker's runtime, or a newer request of the same id (the redelivery) is active too. It is then
removed from the worker's active and reserved sets. A request whose job still runs here is
kept, whatever its channel: the list must show what runs. ``grace`` seconds after acceptance
protect a request whose job is about to start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from jobqueue.transport import internals
from jobqueue.worker.loop import IntervalLoop

log = logging.getLogger(__name__)


def channel_gone(request: Any) -> bool:
    """True when the channel that delivered ``request`` is closed (kombu's virtual channels
    say ``closed``; py-amqp's say ``is_open``), or it has no channel at all any more."""
    message = getattr(request, "message", None)
    channel = getattr(message, "channel", None)
    if message is None:
        return False
    if channel is None:
        return True
    if getattr(channel, "closed", False) is True:
        return True
    is_open = getattr(channel, "is_open", None)
    return is_open is False


def orphaned_requests(active: Iterable[Any], running: Iterable[str], *, grace: float = 2.0,
                      now: float | None = None, gone: Callable[[Any], bool] = channel_gone) -> list[Any]:
    """The requests of ``active`` that are orphans (see the module docstring)."""
    requests = list(active)
    running_ids = set(running)
    now = time.time() if now is None else now  # Celery keeps ``time_start`` as wall-clock time
    live_by_id: dict[str, int] = {}
    for request in requests:
        if not gone(request):
            live_by_id[request.id] = live_by_id.get(request.id, 0) + 1
    orphans = []
    for request in requests:
        if not gone(request):
            continue
        accepted_at = internals.accepted_at(request)
        if accepted_at is not None and now - accepted_at <= grace:
            continue
        if request.id in running_ids and not live_by_id.get(request.id):
            continue  # its job still runs here (the redelivery, if any, is not active yet)
        orphans.append(request)
    return orphans


def drop_orphans(running: Iterable[str], *, grace: float = 2.0) -> list[str]:
    """Remove this worker process's orphaned requests from Celery's request sets; return
    their job ids."""
    dropped = []
    for request in orphaned_requests(internals.active_requests(), running, grace=grace):
        # ``requests`` is keyed by id: the redelivered request may own the entry now (kept).
        internals.drop_request(request)
        dropped.append(request.id)
    return dropped


class OrphanSweeper:
    """Thread that drops orphaned requests every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, running: Callable[[], Iterable[str]], *, interval: float, grace: float = 2.0) -> None:
        self.running = running
        self.interval = interval
        self.grace = grace
        self._loop = IntervalLoop(self.sweep, interval=interval, name="jobqueue-orphans")
        #: Job ids of every request dropped so far (for logs and tests).
        self.dropped: list[str] = []

    def sweep(self) -> list[str]:
        """One pass; returns the job ids whose orphaned requests were dropped."""
        dropped = drop_orphans(self.running(), grace=self.grace)
        for job_id in dropped:
            log.warning("dropped orphaned request of job %s: the broker connection that delivered it "
                        "is gone and its job does not run here", job_id)
        self.dropped.extend(dropped)
        return dropped

    def start(self) -> None:
        """Start sweeping in a daemon thread."""
        self._loop.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sweeping and wait for the thread."""
        self._loop.stop(timeout)
