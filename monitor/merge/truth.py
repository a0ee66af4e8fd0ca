"""Apply what truth repair learnt from the result backend: the backend is the authority.

Events are the fast path; they are merged forward only (:mod:`monitor.merge.apply`), so on their own
a lost event leaves a field empty for good and a forged final event sticks. Repair therefore
sends, for every job the backend knows, one ``job-truth`` event built from Celery's record and
the job's facts (:mod:`jobqueue.shared.job_record`, :mod:`monitor.repair.rebuild`); applying it *sets* every
field the backend knows to the backend's value, final state included:

* a job an event called completed that really failed becomes failed (its worker's counts move
  with it); one an event called final while the backend says it still runs or waits goes back
  to that state, once the final state is older than :data:`DEMOTE_GRACE` (a cancel races the
  job's own last progress write);
* times, attempt, worker, machine, result, error and metadata take the backend's values.

``job-lost`` marks an earlier attempt that its worker never finished (a timeline entry when a
monitor rebuilds a job), and ``job-expired`` forgets a job nobody knows (an id of forged
events). These three event types are accepted only from repair (``"source": "repair"``; the
collector refuses them from the wire, :mod:`monitor.ingest.validate`).

Repair (:mod:`monitor.repair`) builds these events; applying them is a merge rule like any
event's, so it lives here, beside the others: merge never imports repair.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete

from jobqueue.errors import MalformedEvent
from jobqueue.shared.tenants import is_tenant
from jobqueue.states import FINAL_STATUSES, JobStatus, empty_progress
from monitor.merge.effects import count_end, job_ended, machine_of, move_row
from monitor.merge.fields import json_blob, task_details
from monitor.store import JobEventRow, JobRow, Tx
from monitor.store.plain_jobs import AnyJob
from monitor.store.statuses import FAILED_STATUSES

#: A final state set by an event is taken back (the backend says the job still runs or
#: waits) only once it is this old (s).
DEMOTE_GRACE = 5.0
#: Repair-only event types.
JOB_TRUTH = "job-truth"
JOB_LOST = "job-lost"
JOB_EXPIRED = "job-expired"



def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 255


def _small_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**31


#: Job fields a ``job-truth`` may set, with the check its value must pass (None clears).
FIELDS: dict[str, Callable[[Any], bool]] = {
    "submitted_at": _num, "received_at": _num, "started_at": _num, "finished_at": _num,
    "runtime": lambda v: _num(v) and v >= 0, "attempt": lambda v: _small_int(v) and v >= 0,
    "worker": _short, "machine_id": _short, "name": _short, "service": _short, "queue": _short,
    "priority": _small_int, "workflow_id": _short, "step": _small_int,
    "result": lambda v: True, "error": lambda v: v is None or isinstance(v, dict),
    "meta": lambda v: v is None or isinstance(v, dict), "tenant": lambda v: v is None or is_tenant(v),
}


def handles(event: dict[str, Any]) -> bool:
    """True for the repair-only events this module applies."""
    return event.get("type") in (JOB_TRUTH, JOB_LOST, JOB_EXPIRED) and event.get("source") == "repair"


def apply_repair_event(event: dict[str, Any], tx: Tx) -> bool:
    """Apply one repair-only event; return whether anything changed."""
    if event["type"] == JOB_EXPIRED:
        ids = event.get("uuids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise MalformedEvent(f"{JOB_EXPIRED}: bad uuids")
        return _expire(tx, ids)
    uuid = event.get("uuid")
    if not isinstance(uuid, str) or not _short(uuid):
        raise MalformedEvent(f"{event.get('type')}: bad uuid")
    job = tx.stored_job(uuid)
    if job is None:
        return False
    kind = event["type"]
    if kind == JOB_LOST:
        return _lost(tx, job, event)
    return _truth(tx, job, event)


def _lost(tx: Tx, job: AnyJob, event: dict[str, Any]) -> bool:
    raw = event.get("timestamp")
    ts = float(raw) if isinstance(raw, (int, float)) and _num(raw) else tx.now
    if not move_row(job, JobStatus.LOST, ts):
        return False
    job.updated_at = tx.now
    tx.add_event(job, "lost", ts, {"worker": event.get("worker"), "reason": "its worker never finished it",
                                   "source": "repair"})
    tx.touch("job", job.id)
    return True


def _truth(tx: Tx, job: AnyJob, event: dict[str, Any]) -> bool:
    given = event.get("fields")
    fields: dict[str, Any] = given if isinstance(given, dict) else {}
    values = {k: v for k, v in fields.items() if k in FIELDS and (v is None or FIELDS[k](v))}
    if values.get("worker") and not values.get("machine_id"):
        # The backend named the worker but not its machine: take it as a live event would.
        values["machine_id"] = machine_of(tx, values["worker"])
    if "result" in values:
        values["result"] = json_blob(values["result"])
    if values.get("meta") is not None:
        values["meta"] = json_blob(values["meta"])
    status = event.get("status")
    if status is not None and status not in {s.value for s in JobStatus}:
        raise MalformedEvent(f"{JOB_TRUTH}: bad status")
    old_status = job.status
    changed: list[str] = []
    if status and status != old_status:
        if status in FINAL_STATUSES:
            if old_status in FINAL_STATUSES:
                count_end(tx, job, job.worker, -1)
                job.status = status
                _set(job, values, changed)
                count_end(tx, job, job.worker, +1)
            else:
                job.status = status
                _set(job, values, changed)
                job_ended(tx, job, failed=status in FAILED_STATUSES)
            changed.append("status")
        elif old_status in FINAL_STATUSES and (job.updated_at or 0.0) <= tx.now - DEMOTE_GRACE:
            count_end(tx, job, job.worker, -1)
            job.status = status
            job.finished_at = job.runtime = job.result = job.error = None
            job.progress = empty_progress()
            _set(job, values, changed)
            changed.append("status")
        elif old_status not in FINAL_STATUSES and status == JobStatus.QUEUED.value and old_status == "":
            job.status = status
            changed.append("status")
    _fill_links(job, event.get("links"), changed)
    if "status" not in changed:
        if job.status in FINAL_STATUSES and values.get("worker") not in (None, job.worker):
            count_end(tx, job, job.worker, -1)
            _set(job, values, changed)
            count_end(tx, job, job.worker, +1)
        else:
            _set(job, values, changed)
    if job.status == JobStatus.COMPLETED.value and "runtime" in changed and job.service:
        tx.touch("service", job.service)
    if not changed:
        return False
    job.updated_at = tx.now
    if "status" in changed or event.get("note", True):
        tx.add_event(job, "corrected", tx.now, {"fields": sorted(changed), "status": job.status,
                                                "was": old_status, "source": "repair"})
    tx.touch("job", job.id)
    return True


def _fill_links(job: AnyJob, given: Any, changed: list[str]) -> None:
    """Fill (never overwrite) the task's parent, root, group and routing key the records name."""
    links = given if isinstance(given, dict) else {}
    for key in ("parent_id", "root_id"):
        value = links.get(key)
        if getattr(job, key) is None and _short(value) and value != job.id:
            setattr(job, key, value)
            changed.append(key)
    found = {k: v for k, v in task_details(links, foreign=False).items() if k not in (job.task or {})}
    if found:
        job.task = {**(job.task or {}), **found}
        changed.append("task")


def _set(job: AnyJob, values: dict[str, Any], changed: list[str]) -> None:
    for key, value in values.items():
        if getattr(job, key) != value:
            setattr(job, key, value)
            changed.append(key)


def _expire(tx: Tx, ids: list[str]) -> bool:
    """Forget jobs nobody knows: their workers' counts and services' medians with them."""
    tx.prefetch(set(ids), set())
    jobs = [job for job in (tx.job(i, create=False) for i in ids) if job is not None]
    for job in jobs:
        count_end(tx, job, job.worker, -1)
        if job.worker:
            worker = tx.worker(job.worker, create=False)
            if worker is not None and worker.current_job == job.id:
                worker.current_job = None
                tx.touch("worker", worker.name)
        if job.service and job.status == JobStatus.COMPLETED.value:
            tx.touch("service", job.service)
    gone = [job.id for job in jobs]
    for start in range(0, len(gone), 500):
        chunk = gone[start:start + 500]
        tx.session.execute(delete(JobEventRow).where(JobEventRow.job_id.in_(chunk)))
        tx.session.execute(delete(JobRow).where(JobRow.id.in_(chunk)), execution_options={"synchronize_session": False})
    for job in jobs:
        tx.session.expunge(job)
        tx.forget_job(job.id)
        tx.drop("job", job.id, job.tenant)
    return bool(gone)
