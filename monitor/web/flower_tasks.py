"""Flower 2.x's task dicts and task list, built from the store (:mod:`monitor.web.flower_api`).

Flower answers ``celery.events.state.Task.as_dict()``: the task as Celery's own event state
machine folds the events it saw. The monitor keeps each task's events (``job_events``: the
fields as the worker or client sent them), so :func:`task_dict` replays them through that same
state machine -- states, the per-state timestamps (``sent``, ``received``, ``started``,
``succeeded``, ``failed``, ``retried``, ``revoked``, ``rejected``), merge rules (a late
``task-received`` never overwrites what ``task-started`` said), args, result, exception,
traceback -- and adds what Celery's cluster state links: the worker's hostname, the children
the store knows, and ``root``/``parent`` (Celery serialises them as the ids).

What no event said is ``null``: ``clock`` (the Lamport clock of the last event, which the store
does not keep) is always ``null``; ``client`` is the hostname of the ``task-sent`` event's
sender. A job the monitor learnt of from the result backend alone has no events: its state
comes from the store's status (:data:`STATES`) and its timestamps stay ``null``.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from celery.events.state import Task

#: The keys of Flower's task dict, in Celery's order (``Task._fields``).
FIELDS = ("uuid", "name", "state", "received", "sent", "started", "rejected", "succeeded", "failed", "retried",
          "revoked", "args", "kwargs", "eta", "expires", "retries", "worker", "result", "exception", "timestamp",
          "runtime", "traceback", "exchange", "routing_key", "clock", "client", "root", "root_id", "parent",
          "parent_id", "children")
#: The events Celery's state machine knows (``task-<subject>``).
SUBJECTS = frozenset({"sent", "received", "started", "succeeded", "failed", "retried", "revoked", "rejected"})
#: The store's status → Celery's state name (what Flower shows and filters on).
STATES = {"queued": "PENDING", "assigned": "RECEIVED", "processing": "STARTED", "retrying": "RETRY",
          "completed": "SUCCESS", "failed": "FAILURE", "timed_out": "FAILURE", "cancelled": "REVOKED",
          "lost": "STARTED"}
#: Celery's state name → the store's statuses it covers (``?state=`` of ``/flower/api/tasks``).
STATUSES: dict[str, list[str]] = {}
for _status, _state in STATES.items():
    STATUSES.setdefault(_state, []).append(_status)
#: Orders of ``?sort_by=`` (Flower's ``SORT_KEYS``), each with its key in a Flower task dict.
SORT_KEYS = frozenset({"name", "state", "received", "started"})
#: Most matching tasks sorted in memory for a ``sort_by`` Flower knows and the store does not.
MAX_SORTED = 10_000


def replay(events: list[dict[str, Any]], uuid: str) -> Task:
    """A Celery event-state ``Task`` fed the stored events, in the order they were stored."""
    task = Task(uuid)
    for event in events:
        kind = str(event.get("type") or "")
        group, _, subject = kind.partition("-")
        if group != "task" or subject not in SUBJECTS:
            continue
        fields = dict(event.get("fields") or {})
        stamp = fields.get("timestamp")
        timestamp = stamp if isinstance(stamp, (int, float)) else event.get("timestamp")
        fields.update(uuid=uuid, timestamp=timestamp)
        task.event(subject, timestamp, None, fields)
        if subject == "sent" and isinstance(fields.get("hostname"), str):
            task.client = fields["hostname"]  # Celery's state: a task-sent comes from its client
    return task


def _worker(job: dict[str, Any]) -> str | None:
    if job.get("worker"):
        return str(job["worker"])
    for event in reversed(job.get("events") or []):
        host = (event.get("fields") or {}).get("hostname")
        if event.get("type") not in ("task-sent", None) and isinstance(host, str):
            return host
    return None


def task_dict(job: dict[str, Any]) -> dict[str, Any]:
    """Flower's dict of one task from the store's ``job`` (with ``events`` and ``children``)."""
    events = job.get("events") or []
    task = replay(events, job["id"])
    out = {key: getattr(task, key, None) for key in FIELDS}
    seen = any(str(e.get("type", "")).startswith("task-") for e in events)
    if not seen or out["state"] == "PENDING" and job.get("status") not in (None, "queued"):
        out["state"] = STATES.get(str(job.get("status")), out["state"] if seen else None)
    out.update(uuid=job["id"], worker=_worker(job), clock=None, children=list(job.get("children") or []))
    out["name"] = out["name"] or job.get("name")
    out["root_id"] = out["root_id"] or job.get("root_id")
    out["parent_id"] = out["parent_id"] or job.get("parent_id")
    out["root"], out["parent"] = out["root_id"], out["parent_id"]  # Celery serialises them as the ids
    return out


def received_bound(value: str | None) -> float | None:
    """``received_start``/``received_end`` as Flower reads them: local ``YYYY-MM-DD HH:MM``
    (``ValueError`` otherwise)."""
    if not value:
        return None
    return time.mktime(datetime.datetime.strptime(value, "%Y-%m-%d %H:%M").timetuple())


def sort_key(job: dict[str, Any], sort_by: str) -> tuple[Any, ...]:
    """What Flower sorts a task by (``_task_sort_key``): missing values first, names and states
    case-folded, then the id."""
    value: Any = {"name": job.get("name"), "state": STATES.get(str(job.get("status"))),
                  "received": job.get("received_at"), "started": job.get("started_at")}[sort_by]
    if value is None:
        return (False, "", job["id"])
    return (True, float(value) if sort_by in ("received", "started") else str(value).casefold(), job["id"])


def in_received_range(job: dict[str, Any], start: float | None, end: float | None) -> bool:
    """Flower's time range on the task's ``received`` time (``_task_in_time_range``: a task
    never received is in it)."""
    received = job.get("received_at")
    if start is not None and received is not None and received < start:
        return False
    return end is None or received is None or received <= end
