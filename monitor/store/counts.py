"""Workers' job counts, counted from the jobs the store holds."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobqueue.states import FINAL_STATUSES
from monitor.store.models import JobRow
from monitor.store.statuses import FAILED_STATUSES


def job_counts(session: Session, worker: str | None = None,
               ids: list[str] | None = None) -> dict[str, tuple[int, int]]:
    """(ended, failed) per worker, counted from the jobs the store holds (of one worker, or
    of the jobs ``ids``).

    The workers' ``ended``/``failed`` columns keep these counts so that reads never count
    (O(stored jobs)); this is how they start: when a worker row is created (jobs that ended on
    it before it was known), when an older database is upgraded, and what pruning subtracts.
    ``ended`` is every job that ended on the worker (completed, failed, timed out, cancelled),
    ``failed`` the failed and timed-out ones. Celery's own per-process counter is kept as
    ``celery_processed``.
    """
    query = select(JobRow.worker, JobRow.status, func.count()).where(JobRow.status.in_(FINAL_STATUSES))
    if worker is not None:
        query = query.where(JobRow.worker == worker)
    if ids is not None:
        query = query.where(JobRow.id.in_(ids))
    out: dict[str, list[int]] = {}
    for name, status, n in session.execute(query.group_by(JobRow.worker, JobRow.status)):
        if not name:
            continue
        entry = out.setdefault(name, [0, 0])
        entry[0] += int(n)
        if status in FAILED_STATUSES:
            entry[1] += int(n)
    return {name: (p, f) for name, (p, f) in out.items()}
