"""Monotonic metric totals, persisted in the monitor's store.

Prometheus counters and histograms must never go down while the monitor runs, and a scrape
must not depend on which jobs the store still holds: pruning deletes finished jobs, so totals
derived from the rows would fall. :class:`Totals` keeps every total in a table of its own
(``metric_totals``: name, labels, value) and adds to it in the writer's own transactions, the
ones that change the jobs, so a total and the change it counts commit together -- and survive
a restart of the monitor.

What is counted, per write transaction (the writer calls :meth:`Totals.record` inside it):

* ``jobs{service,status}``: a job that entered a final status (completed, failed, cancelled,
  timed_out) in this transaction; ``jobs_seen{service}``: a job the store learned about (a task
  that is no jobqueue job has ``service="unknown"`` and its task ``name`` as a label too);
* ``retries{service}``: how much a job's attempt number went up (a retry or a redelivery);
* ``runtime{service}`` (histogram): the runtime of a job that completed;
* ``queue_wait{service}`` (histogram): from submission to the first start of a job;
* ``events{type}``: events the writer received (:meth:`Totals.count_events`, before
  coalescing), unknown types as ``other``;
* ``webhook_deliveries{status}``: webhook tries by outcome (delivered, retrying, given_up), from
  the workers' ``job-webhook`` events;
* celery-exporter's ``celery_task_*`` counters and histograms (:mod:`monitor.metrics.celery_exporter`),
  from the task events, labelled with the task's name and queue as the transaction leaves its row.

A job's state before the transaction is remembered when SQLAlchemy loads its row (a ``load``
event on :class:`monitor.store.JobRow`, kept in the session's ``info``, not on the row), so
nothing in :mod:`monitor.merge.apply` has to report.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Float, String, bindparam, event, select, update
from sqlalchemy.orm import Mapped, mapped_column

from jobqueue.shared.names import CONNECTOR_STATUS, JOB_WEBHOOK, TASK_EVENTS, WEBHOOK_OUTCOMES, WORKER_EVENTS
from jobqueue.states import FINAL_STATUSES, JobStatus
from monitor.metrics import celery_exporter, history
from monitor.store import Base, JobRow, Store
from monitor.store.many import execute_many
from monitor.store.plain_jobs import AnyJob

#: Upper bounds (s) of the job runtime histogram: image jobs take from under a second (a
#: cached re-run) to tens of minutes (video, large upscales).
RUNTIME_BUCKETS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)
#: Upper bounds (s) of the queue-wait histogram: from "a worker was idle" to "the fleet was
#: busy for an hour".
QUEUE_WAIT_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Event types counted by name; anything else is counted as ``other`` (bounded label values).
KNOWN_EVENTS = frozenset((*TASK_EVENTS, *WORKER_EVENTS, CONNECTOR_STATUS, JOB_WEBHOOK))
#: Key in a write session's ``info``: {job id: (status, attempt, started_at) as loaded}.
_BEFORE = "_jobqueue_totals_before"

Key = tuple[str, tuple[tuple[str, str], ...]]
Delta = defaultdict[Key, float]


class MetricTotal(Base):
    """One monotonic total: a counter, or one histogram bucket/sum/count."""

    __tablename__ = "metric_totals"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The labels as a JSON list of [name, value] pairs, sorted by name.
    labels: Mapped[str] = mapped_column(String(512), primary_key=True)
    value: Mapped[float] = mapped_column(Float, default=0.0)


#: Adds ``a`` to the stored total ``(n, l)`` (executed for many totals at once).
_ADD = (update(MetricTotal).where(MetricTotal.name == bindparam("n"), MetricTotal.labels == bindparam("l"))
        .values(value=MetricTotal.value + bindparam("a")))


def _remember(target: JobRow, context: Any) -> None:
    """A job was loaded: keep what the transaction found -- (status, attempt, started_at) by
    job id in its session's ``info`` (the session is the transaction; nothing on the row)."""
    context.session.info.setdefault(_BEFORE, {})[target.id] = (target.status, target.attempt or 0, target.started_at)


def _key(metric: str, /, **labels: str) -> Key:
    return metric, tuple(sorted(labels.items()))


def _encode(labels: tuple[tuple[str, str], ...]) -> str:
    return json.dumps([list(pair) for pair in labels])


class _Encoded(dict[tuple[tuple[str, str], ...], str]):
    """Labels as stored (:func:`_encode`), each encoded once (a transaction moves the same
    few dozen series every time; as many entries as the totals have series)."""

    def __missing__(self, labels: tuple[tuple[str, str], ...]) -> str:
        encoded = self[labels] = _encode(labels)
        return encoded


def _bucket(value: float, bounds: Sequence[float]) -> str:
    """The ``le`` label of the smallest bucket that holds ``value`` (non-cumulative)."""
    for bound in bounds:
        if value <= bound:
            return repr(float(bound))
    return "+Inf"


class Totals:
    """The store's metric totals: the writer adds to them, a scrape reads them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        #: When :meth:`record` last dropped expired hourly history (once an hour is enough).
        self._history_pruned = 0.0
        if not event.contains(JobRow, "load", _remember):
            event.listen(JobRow, "load", _remember)
        self._lock = threading.Lock()
        #: Totals as committed (the writer's view; a scrape reads the database).
        self._committed: dict[Key, float] = {k: v for k, v in self._read().items()}
        #: Events counted since the last commit.
        self._events: Delta = defaultdict(float)
        #: Task events since the last commit, for celery-exporter's series (labelled in :meth:`record`).
        self._task_events: list[dict[str, Any]] = []
        self._task_pending = 0
        #: Task names celery-exporter's series label (bounded: :data:`celery_exporter.MAX_TASK_NAMES`).
        self._task_names = celery_exporter.known_names(self._committed)
        self._pending: dict[Key, float] | None = None
        self._delta: Delta | None = None
        self._encoded = _Encoded()

    # -- counting (writer thread) ----------------------------------------------------------
    def count_events(self, events: Iterable[Any]) -> None:
        """Count received events by type (written with the next transaction)."""
        kinds: Counter[Any] = Counter()
        task_events = []
        outcomes: Counter[str] = Counter()
        exporter = celery_exporter.COUNTERS
        for ev in events:
            kind = ev.get("type") if isinstance(ev, dict) else None
            kinds[kind] += 1
            if kind in exporter and isinstance(ev.get("uuid"), str):
                task_events.append(ev)
            elif kind == JOB_WEBHOOK:  # bounded label values: anything else is "other"
                outcome = ev.get("outcome")
                outcomes[outcome if outcome in WEBHOOK_OUTCOMES else "other"] += 1
        # The keys once per type seen (a label tuple per event cost more than the counting).
        counts: Delta = defaultdict(float)
        for kind, n in kinds.items():
            counts[_key("events", type=kind if isinstance(kind, str) and kind in KNOWN_EVENTS else "other")] += n
        for outcome, n in outcomes.items():
            counts[_key("webhook_deliveries", status=outcome)] += n
        with self._lock:
            for key, amount in counts.items():
                self._events[key] += amount
            self._task_events.extend(task_events)

    def record(self, tx: Any) -> None:
        """Inside a write transaction: count what it did to jobs, and write every total that
        moved (the pending event counts included). :meth:`committed` follows the commit."""
        delta: Delta = defaultdict(float)
        hourly: history.HourlyDelta = defaultdict(list)
        for kind, job_id in list(tx.dirty):
            if kind != "job":
                continue
            job = tx.peek_job(job_id)
            if job is not None:
                # A plain job's first view is the transaction's (the ORM's load event never saw it).
                before = tx.job_before[job_id] if job_id in tx.job_before else \
                    tx.session.info.get(_BEFORE, {}).get(job_id)
                self._job_delta(job, before, delta, hourly, tx.now)
        if hourly:
            history.write(tx.session, hourly)
        if tx.now - self._history_pruned >= history.HOUR:
            history.forget_before(tx.session, tx.now)
            self._history_pruned = tx.now
        with self._lock:
            for key, amount in self._events.items():
                delta[key] += amount
            self._pending = dict(self._events)
            task_events = list(self._task_events)
            self._task_pending = len(task_events)
        for ev in task_events:
            celery_exporter.event_deltas(ev, tx.peek_job(ev["uuid"]), delta, self._task_names)
        if not delta:
            return
        session = tx.session
        # Totals already stored move by one UPDATE executed for all of them at once (one
        # statement per total cost a tenth of the writer's time at 12,000 events/s).
        encoded = self._encoded
        moved = [{"n": name, "l": encoded[labels], "a": amount} for (name, labels), amount in delta.items()
                 if amount and (name, labels) in self._committed]
        execute_many(session.connection(), _ADD, moved)
        for key, amount in delta.items():
            if key in self._committed:  # moved above; a zero is written once, to show the series
                continue
            name, labels = key
            row = session.get(MetricTotal, (name, _encode(labels)))
            if row is None:
                session.add(MetricTotal(name=name, labels=_encode(labels), value=amount))
            else:  # another writer got there first (e.g. a monitor restarted on this store)
                row.value = (row.value or 0.0) + amount
        self._delta = delta

    def committed(self) -> None:
        """After the transaction of :meth:`record` committed: the pending counts are in."""
        delta, self._delta = self._delta, None
        with self._lock:
            for key, amount in (self._pending or {}).items():
                left = self._events[key] - amount
                if left > 0:
                    self._events[key] = left
                else:
                    del self._events[key]
            self._pending = None
            del self._task_events[:self._task_pending]
            self._task_pending = 0
        for key, amount in (delta or {}).items():
            self._committed[key] = self._committed.get(key, 0.0) + amount

    def rolled_back(self) -> None:
        """The transaction of :meth:`record` failed: its job counts are gone with it, the
        event counts stay pending."""
        self._delta = None
        self._pending = None
        self._task_pending = 0

    def _job_delta(self, job: AnyJob, before: tuple[str, int, float | None] | None, delta: Delta,
                   hourly: history.HourlyDelta, now: float) -> None:
        status, attempt, started_at = before if before is not None else ("", 0, None)
        service = job.service or "unknown"
        # a task that is not a jobqueue job (no service) is told apart by its Celery task name
        labels = {"service": service} if job.service else {"service": service, "name": self._task_name(job)}
        if before is None:
            delta[_key("jobs_seen", **labels)] += 1
        if job.status != status and job.status in FINAL_STATUSES:
            delta[_key("jobs", **labels, status=job.status)] += 1
            history.count(hourly, service=service, status=job.status, finished_at=job.finished_at,
                          runtime=job.runtime, now=now)
            if job.status == JobStatus.COMPLETED.value and job.runtime is not None and job.runtime >= 0:
                _observe(delta, "runtime", job.runtime, RUNTIME_BUCKETS, labels)
        if before is not None and (job.attempt or 0) > attempt:
            delta[_key("retries", **labels)] += (job.attempt or 0) - attempt
        if (job.started_at is not None and started_at is None and not job.attempt
                and job.submitted_at is not None):
            wait = max(0.0, job.started_at - job.submitted_at)
            _observe(delta, "queue_wait", wait, QUEUE_WAIT_BUCKETS, labels)

    def _task_name(self, job: AnyJob) -> str:
        """The bounded ``name`` label of a task without a service (as celery-exporter's series)."""
        return celery_exporter.task_name(job, self._task_names)

    def _read(self) -> dict[Key, float]:
        return _read(self.store)


def _read(store: Store) -> dict[Key, float]:
    with store.read() as session:
        rows = session.execute(select(MetricTotal.name, MetricTotal.labels, MetricTotal.value)).all()
    return {(name, tuple((str(k), str(v)) for k, v in json.loads(labels))): float(value)
            for name, labels, value in rows}


def read_totals(store: Store) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every persisted total by name, ``{name: [(labels, value), ...]}`` (any thread or
    process; empty before the first write)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for (name, labels), value in sorted(_read(store).items()):
        out.setdefault(name, []).append((dict(labels), value))
    return out


def _observe(delta: Delta, name: str, value: float, bounds: Sequence[float], labels: dict[str, str]) -> None:
    delta[_key(f"{name}_bucket", **labels, le=_bucket(value, bounds))] += 1
    delta[_key(f"{name}_sum", **labels)] += value
    delta[_key(f"{name}_count", **labels)] += 1
