"""The services' completion-time medians, kept in memory between write transactions.

A service's median is taken over its :data:`MEDIAN_WINDOW` most recent completed runtimes
(:func:`recent_runtimes`, the definition). Reading those 1,000 rows again in every transaction
that completes a job of the service was a tenth of the writer's time at 500 jobs/s, so the
writer keeps each service's window here and moves it with the jobs each transaction changed:

* a window is the service's completed jobs (with a runtime) in the store's order (newest
  ``finished_at`` first, then id), cut after some entry: always a *prefix* of what the SELECT
  reads, and ``complete`` when nothing was cut (the store holds no older one);
* a job a transaction marked (:meth:`monitor.store.Tx.touch`: every change to a stored job is
  marked, or the change log would miss it) enters its service's window when it is completed
  with a runtime and sorts inside the prefix, and leaves any window otherwise; a deleted job
  (:meth:`monitor.store.Tx.drop`) leaves; a window is trimmed back to ``MEDIAN_WINDOW + slack``;
* a window with fewer than ``MEDIAN_WINDOW`` entries that is not complete is read again from
  the store (:func:`seed`), as is a service not held yet.

The windows are valid at one change-log ``seq`` (the counter's value after the transaction
that last moved them committed). A transaction claims them with the counter value it read
under the write lock; if that is not the value they are valid at, someone else wrote in
between (another monitor on the store, a web process) and they are dropped and read again. A
transaction that rolls back never gives them back, so the next one starts from the store.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobqueue.states import JobStatus
from monitor.store.models import JobRow
from monitor.store.stats import safe_median

#: Completed runtimes per service a median is taken over (the most recent ones).
MEDIAN_WINDOW = 1000
#: Entries a window holds beyond :data:`MEDIAN_WINDOW`, so a few jobs leaving it (pruned,
#: retried) do not send it back to the store.
SLACK = 200
#: Where a NULL ``finished_at`` sorts (the store's order: SQLite's NULL is the smallest value,
#: PostgreSQL's the largest), as the first element of an entry's sort key.
_NULL_RANK = {"postgresql": 2}

#: An entry's sort key, oldest smallest: ``(rank, finished_at, id)``.
Key = tuple[int, float, str]


def _order(session: Session) -> list[Any]:
    """The SELECT's order: newest first, ties by id (byte order on PostgreSQL too)."""
    job_id: Any = JobRow.id.collate("C") if session.get_bind().dialect.name == "postgresql" else JobRow.id
    return [JobRow.finished_at.desc(), job_id.desc()]


def _rows(session: Session, service: str, limit: int) -> list[tuple[str, float | None, float]]:
    rows = session.execute(
        select(JobRow.id, JobRow.finished_at, JobRow.runtime)
        .where(JobRow.service == service, JobRow.status == JobStatus.COMPLETED.value, JobRow.runtime.is_not(None))
        .order_by(*_order(session)).limit(limit)
    )
    return [(job_id, finished, float(runtime)) for job_id, finished, runtime in rows if runtime is not None]


def recent_runtimes(session: Session, service: str, window: int = MEDIAN_WINDOW) -> list[float]:
    """The ``window`` most recent completed runtimes of ``service`` (newest first): what a
    median is taken over, read from the store (the definition the windows keep to)."""
    return [runtime for _, _, runtime in _rows(session, service, window)]


@dataclass
class Window:
    """One service's newest completed jobs: sort keys ascending (oldest first) and, aligned,
    their runtimes; ``complete``: the store holds no older one."""

    keys: list[Key] = field(default_factory=list)
    runtimes: list[float] = field(default_factory=list)
    complete: bool = True

    def remove(self, key: Key) -> None:
        i = bisect_left(self.keys, key)
        if i < len(self.keys) and self.keys[i] == key:
            del self.keys[i]
            del self.runtimes[i]

    def add(self, key: Key, runtime: float, keep: int) -> bool:
        """Hold ``key`` if it sorts inside the prefix; False when it is older than it."""
        if not self.complete and (not self.keys or key < self.keys[0]):
            return False
        i = bisect_left(self.keys, key)
        self.keys.insert(i, key)
        self.runtimes.insert(i, runtime)
        if len(self.keys) > keep:
            cut = len(self.keys) - keep
            del self.keys[:cut]
            del self.runtimes[:cut]
            self.complete = False
        return True

    def usable(self, window: int) -> bool:
        return self.complete or len(self.keys) >= window

    def median(self, window: int) -> tuple[float | None, int]:
        """The median of the newest ``window`` runtimes and how many there are."""
        values = self.runtimes[-window:]
        return safe_median(values), len(values)


@dataclass
class Claim:
    """The windows one write transaction works on (see :meth:`ServiceMedians.claim`)."""

    windows: dict[str, Window]
    #: Each held job's (service, key), so a job that changes leaves the right window.
    held: dict[str, tuple[str, Key]]
    null_rank: int = 0


class ServiceMedians:
    """The windows of every service one process's writes touched, valid at one ``seq``."""

    def __init__(self, window: int = MEDIAN_WINDOW, slack: int = SLACK) -> None:
        self.window = window
        self.slack = slack
        self._lock = threading.Lock()
        self._claim: Claim | None = None
        self._seq: int | None = None
        #: Windows read from the store (for tests and the benchmark's account).
        self.seeds = 0

    def claim(self, session: Session, seq: int) -> Claim:
        """The windows for a transaction that found the change counter at ``seq`` (under the
        write lock): the held ones if they are valid at ``seq``, else none (read as needed).
        Until :meth:`release` nobody else gets them."""
        with self._lock:
            claim, valid = self._claim, self._seq == seq
            self._claim = self._seq = None
        if claim is None or not valid:
            rank = _NULL_RANK.get(session.get_bind().dialect.name, 0)
            claim = Claim({}, {}, rank)
        return claim

    def release(self, claim: Claim, seq: int) -> None:
        """After the commit that left the counter at ``seq``: ``claim`` is valid there."""
        with self._lock:
            self._claim, self._seq = claim, seq

    def job_changed(self, claim: Claim, job_id: str, job: Any) -> None:
        """A job the transaction marked (``job`` None: deleted) moves in or out of a window."""
        where = claim.held.pop(job_id, None)
        if where is not None:
            claim.windows[where[0]].remove(where[1])
        if job is None or job.status != JobStatus.COMPLETED.value or job.runtime is None or not job.service:
            return
        window = claim.windows.get(job.service)
        if window is None:
            return
        finished = job.finished_at
        key = (1, float(finished), job_id) if finished is not None else (claim.null_rank, 0.0, job_id)
        if window.add(key, float(job.runtime), self.window + self.slack):
            claim.held[job_id] = (job.service, key)
            if len(claim.held) > 2 * len(claim.windows) * (self.window + self.slack):
                self._forget_trimmed(claim)

    def median(self, claim: Claim, session: Session, service: str) -> tuple[float | None, int]:
        """``service``'s median and sample count, as :func:`recent_runtimes` would give them
        now (this transaction's jobs written first)."""
        window = claim.windows.get(service)
        if window is None or not window.usable(self.window):
            window = self._seed(claim, session, service)
        return window.median(self.window)

    def _seed(self, claim: Claim, session: Session, service: str) -> Window:
        self.seeds += 1
        old = claim.windows.pop(service, None)
        if old is not None:
            for key in old.keys:
                claim.held.pop(key[2], None)
        limit = self.window + self.slack
        rows = _rows(session, service, limit)
        window = Window(complete=len(rows) < limit)
        for job_id, finished, runtime in reversed(rows):
            key = (1, float(finished), job_id) if finished is not None else (claim.null_rank, 0.0, job_id)
            window.keys.append(key)
            window.runtimes.append(runtime)
            claim.held[job_id] = (service, key)
        claim.windows[service] = window
        return window

    @staticmethod
    def _forget_trimmed(claim: Claim) -> None:
        """Drop the index entries of jobs trimmed out of their windows."""
        claim.held = {job_id: (service, key) for job_id, (service, key) in claim.held.items()
                      if _holds(claim.windows[service], key)}


def _holds(window: Window, key: Key) -> bool:
    i = bisect_left(window.keys, key)
    return i < len(window.keys) and window.keys[i] == key


def changed_jobs(dirty: Iterable[tuple[str, str]], deleted: Iterable[tuple[str, str]]) -> list[tuple[str, bool]]:
    """The job ids a transaction marked, each with whether it was deleted."""
    return [(key, False) for kind, key in dirty if kind == "job"] + [(key, True) for kind, key in deleted if kind == "job"]
