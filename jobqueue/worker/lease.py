"""Redis lease: keep a running job's message from being handed out twice.

On Redis, kombu emulates acks: a delivered message sits in the ``unacked`` hash with its
delivery time in the ``unacked_index`` sorted set (both behind the broker's
``global_keyprefix``, see :func:`jobqueue.transport.internals.unacked_index_key`), and any worker's restore sweep puts it
back in its queue once it is older than the visibility timeout. A short timeout brings a
dead worker's job back quickly, but would also re-deliver a long job that is still running
(celery#5935). The lease solves both: while a message is in this worker's hands, its score in
``unacked_index`` is bumped to "now" every ``lease_interval`` seconds. A live job never
looks older than ``lease_interval``; a dead worker's job stops being bumped and is restored
``visibility_timeout`` seconds later by the sweep that every worker runs (kombu's
``unacked_restore_interval``, which we lower from ~100 s to ``lease_interval``).

``ZADD ... XX GT`` only updates existing members, and only forward: a message acked between our
read of the worker's requests and the write is never re-created, and a renewal delayed by the
network never moves a lease back.

Fencing: a worker cut off from the broker cannot renew, so after ``visibility_timeout`` its
jobs' messages are restored and handed to other workers. A job must then not finish here
too: when no renewal has succeeded for ``lost_after`` seconds (a little less than the
visibility timeout), the keeper calls ``on_lost`` once per outage; the worker gives its
running jobs up (interrupts them on their service) and :func:`forget_message` makes Celery
neither ack nor restore their messages, whose new owner is another worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from jobqueue.transport import internals
from jobqueue.worker.loop import IntervalLoop

log = logging.getLogger(__name__)

#: kombu's default name of the sorted set of unacked delivery tags (without a
#: ``global_keyprefix``; :func:`jobqueue.transport.internals.unacked_index_key` gives the real key).
UNACKED_INDEX_KEY = internals.UNACKED_INDEX_KEY


def held_delivery_tags(running: Iterable[str] | None = None, grace: float = 2.0) -> list[str]:
    """Delivery tags of every message this worker process holds (reserved, waiting for a
    retry's countdown, or running).

    With ``running`` (the job ids whose body is executing now), a request Celery accepted more
    than ``grace`` s ago that is not running is left out: its body ended but Celery never
    completed it (e.g. the result backend was down when the failure was stored: the trace then
    raises out of the pool and the request stays "active" forever). Renewing it would keep its
    message from ever being handed out again: a job that hangs forever.
    """
    running_ids = None if running is None else set(running)
    now = time.time()  # Celery keeps ``time_start`` as wall-clock time
    tags = []
    # Scheduled requests wait for their ETA (a retry's countdown) in this worker's hands too.
    for request in internals.held_requests():
        started = internals.accepted_at(request)
        if (running_ids is not None and started is not None and request.id not in running_ids
                and now - started > grace):
            continue
        tag = internals.delivery_tag(request)
        if tag is not None:
            tags.append(tag)
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
        lost_after: float | None = None,
        on_lost: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.interval = interval
        self.index_key = index_key
        self._tags = tags
        self._loop = IntervalLoop(self.round, interval=interval, name="jobqueue-lease")
        self.lost_after = lost_after
        self._on_lost = on_lost
        self._clock = clock
        #: When the last renewal round reached the broker (monotonic).
        self.last_ok = clock()
        #: True from the moment the lease was declared lost until a renewal succeeds again.
        self.lost = False
        #: How many renewals were written (for tests and logs).
        self.renewed = 0

    def renew(self) -> int:
        """Bump every held message to now; return how many were still unacked."""
        tags = list(self._tags())
        if not tags:
            return 0
        now = time.time()
        # XX: never re-create an acked message. GT: never move a score back; a renewal written
        # before a network cut can reach Redis long after it (TCP retransmits it on the heal),
        # and must not make the job's new owner's lease look expired.
        updated = int(self.client.zadd(self.index_key, {t: now for t in tags}, xx=True, gt=True, ch=True) or 0)
        self.renewed += updated
        return updated

    def round(self) -> None:
        """One renewal round; declare the lease lost when renewals have failed too long."""
        try:
            self.renew()
        except Exception as exc:  # the broker may be restarting; the next round tries again
            log.warning("lease renewal failed: %s", exc)
            self.check_lost()
            return
        if self.lost:
            log.warning("lease renewals reach the broker again")
        self.last_ok = self._clock()
        self.lost = False

    def check_lost(self) -> bool:
        """Call ``on_lost`` (once per outage) if no renewal succeeded for ``lost_after`` s."""
        if self.lost_after is None or self.lost or self._clock() - self.last_ok < self.lost_after:
            return self.lost
        self.lost = True
        log.error("no lease renewal for %.1f s: the broker may hand this worker's jobs to others; giving them up",
                  self._clock() - self.last_ok)
        if self._on_lost is not None:
            try:
                self._on_lost()
            except Exception:
                log.exception("giving up the jobs of a lost lease failed")
        return True

    def start(self) -> None:
        """Start renewing in a daemon thread."""
        self._loop.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop renewing and wait for the thread."""
        self._loop.stop(timeout)


def forget_message(job_id: str) -> bool:
    """Make this worker neither ack nor restore the message of ``job_id`` (a given-up job).

    Its delivery tag is the one the broker gave the job's new owner: acking it here would
    delete the new owner's unacked entry, and restoring it (kombu does on channel close)
    would queue the job a third time (see :func:`jobqueue.transport.internals.forget_request`).
    Returns whether it was held.
    """
    found = False
    for request in internals.active_requests() + internals.reserved_requests():
        if getattr(request, "id", None) != job_id:
            continue
        found = True
        internals.forget_request(request)
    return found


def given_up(job_id: str) -> Exception:
    """What the job task raises for a job given up after its lease was lost: Celery's
    ``Ignore`` (no result stored, no task event) with the message forgotten (no ack)."""
    from celery.exceptions import Ignore

    forget_message(job_id)
    log.warning("job %s given up: nothing reported, its message left to its new owner", job_id)
    exc: Exception = Ignore(f"job {job_id} given up: lease lost")
    return exc
