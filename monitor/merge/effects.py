"""Writing what the job rules decided: the I/O shared by event merge and truth repair.

:mod:`monitor.merge.job_rules` decides on plain values; these functions carry a decision out on
stored rows -- a job's fields, its worker's ended/failed counts, its machine, the worker's
current job -- through a :class:`~monitor.store.Tx`. :mod:`monitor.merge.apply` (events) and
:mod:`monitor.merge.truth` (repair) both use them, so a job ends the same way whoever ends it.
"""

from __future__ import annotations

import operator
import re

from jobqueue.states import FINAL_STATUSES, JobStatus
from monitor.merge.job_rules import JOB_FIELDS, JobState, final_progress, move
from monitor.store import Tx
from monitor.store.plain_jobs import JSON_COLUMNS, AnyJob, PlainJob
from monitor.store.statuses import FAILED_STATUSES

#: A worker node name ``gpu<N>@<machine>``: its GPU and machine until it reports them.
NODE = re.compile(r"^gpu(\d+)@(.+)$")


def state_of(job: AnyJob) -> JobState:
    """The rules' view of a stored job."""
    if type(job) is PlainJob:
        return JobState.of_values(_job_fields(job))
    # Loaded values straight from the instance dict (the attribute descriptors cost a fifth
    # of an event's merge); an attribute not loaded goes through SQLAlchemy as usual.
    loaded = job.__dict__
    return JobState.of_values(tuple(loaded[name] if name in loaded else getattr(job, name) for name in JOB_FIELDS))


#: A plain job's :data:`JOB_FIELDS` values, as a tuple (one C call).
_job_fields = operator.attrgetter(*JOB_FIELDS)


def write_back(job: AnyJob, before: JobState, after: JobState) -> None:
    """Store what the rules changed from ``before`` (read from ``job``) to ``after``: only
    the fields that differ, so nothing else is dirty. The rules replace values, never change
    them in place, so comparing the two states finds every change. A new plain job notes the
    JSON columns set (see :mod:`monitor.store.plain_jobs`)."""
    assigned = job.assigned if type(job) is PlainJob else None
    old, new = before.__dict__, after.__dict__  # every field is in both (set by __init__/of_values)
    for name in JOB_FIELDS:
        value = new[name]
        if value != old[name]:
            setattr(job, name, value)
            if assigned is not None and name in JSON_COLUMNS:
                assigned.add(name)


def move_row(job: AnyJob, new: JobStatus, ts: float) -> bool:
    """:func:`monitor.merge.job_rules.move` on a stored job; return whether it moved."""
    before = state_of(job)
    after = before.copy()
    if not move(after, new, ts):
        return False
    write_back(job, before, after)
    return True


def machine_of(tx: Tx, hostname: str) -> str | None:
    """The machine of worker ``hostname``: as the worker reported it, else from its node name."""
    worker = tx.worker(hostname, create=False)
    if worker is not None:
        return worker.machine_id
    node = NODE.match(hostname)
    return node.group(2) if node else None


def count_end(tx: Tx, job: AnyJob, name: str | None, sign: int) -> None:
    """Add (``sign`` 1) or take back (-1) an ended job in its worker's ``ended``/``failed``
    counters. Called only where a job first reaches a final state (``move`` refuses a
    replayed or repaired final event, so it cannot count twice) or where an ended job's
    worker changes; a worker not stored yet counts its jobs when it is created
    (:meth:`monitor.store.Tx.worker`), and pruning takes pruned jobs back out."""
    if not name or job.status not in FINAL_STATUSES:
        return
    worker = tx.worker(name, create=False)
    if worker is None:
        return
    worker.ended = max(0, (worker.ended or 0) + sign)
    if job.status in FAILED_STATUSES:
        worker.failed = max(0, (worker.failed or 0) + sign)
    tx.touch("worker", name)


def left_worker(tx: Tx, job: AnyJob, *, failed: bool) -> None:
    """A job left its worker (ended, or will be retried); one that ended counts on it."""
    if job.status in FINAL_STATUSES:
        count_end(tx, job, job.worker, +1)
        if job.status == JobStatus.COMPLETED.value and job.service:
            tx.touch("service", job.service)  # its completion-time median may change
    if not job.worker:
        return
    worker = tx.worker(job.worker, create=False)
    if worker is None:
        return
    if worker.current_job == job.id:
        worker.current_job = None
        tx.touch("worker", worker.name)
    if job.status in FINAL_STATUSES or failed:
        tx.touch("worker", worker.name)  # its counts changed


def job_ended(tx: Tx, job: AnyJob, *, failed: bool) -> None:
    """A stored job was set to a final status (by repair): its progress becomes canonical
    and it leaves its worker (:func:`left_worker`)."""
    if job.status in FINAL_STATUSES:
        job.progress, _ = final_progress(job.status, job.progress)
    left_worker(tx, job, failed=failed)


def set_worker(tx: Tx, job: AnyJob, old: str | None, new: str, *, recount: bool) -> None:
    """The job's worker became ``new``: its machine follows, and an ended job's count moves
    from ``old`` to ``new`` (``recount``; off where the job's end is counted by itself)."""
    if recount:
        count_end(tx, job, old, -1)
        count_end(tx, job, new, +1)
    job.machine_id = machine_of(tx, new)
