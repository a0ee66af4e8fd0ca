"""The store queries truth repair needs (kept out of the big :mod:`monitor.store`)."""

from __future__ import annotations

from sqlalchemy import select

from monitor.store import FINAL_STATUSES, OPEN_STATUSES, JobRow, Store, WorkerRow


def job_states(store: Store, ids: list[str]) -> dict[str, tuple[str, float | None]]:
    """``{id: (status, updated_at)}`` of the stored jobs among ``ids``."""
    out: dict[str, tuple[str, float | None]] = {}
    with store.read() as session:
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for job_id, status, updated in session.execute(
                    select(JobRow.id, JobRow.status, JobRow.updated_at).where(JobRow.id.in_(chunk))):
                out[job_id] = (status, updated)
    return out


def changed_final_ids(store: Store, since: float) -> set[str]:
    """Final jobs changed at or after ``since`` (to verify against the backend)."""
    with store.read() as session:
        return set(session.scalars(
            select(JobRow.id).where(JobRow.status.in_(FINAL_STATUSES), JobRow.updated_at >= since)))


def expiry_candidates(store: Store, final_from: float, before: float) -> list[tuple[str, str]]:
    """``(id, status)`` of unfinished jobs unchanged since ``before``, and of final jobs last
    changed in ``[final_from, before)``: the jobs repair may forget when nobody knows them."""
    with store.read() as session:
        rows = list(session.execute(
            select(JobRow.id, JobRow.status).where(JobRow.status.in_(OPEN_STATUSES), JobRow.updated_at < before)))
        rows += list(session.execute(
            select(JobRow.id, JobRow.status).where(JobRow.status.in_(FINAL_STATUSES), JobRow.updated_at >= final_from,
                                             JobRow.updated_at < before)))
    return [(job_id, status) for job_id, status in rows]


def clock_skews(store: Store, threshold: float) -> dict[str, float]:
    """``{worker: clock offset}`` of the workers whose clock is off by more than ``threshold`` s."""
    with store.read() as session:
        rows = session.execute(select(WorkerRow.name, WorkerRow.clock_skew).where(WorkerRow.clock_skew.is_not(None)))
        return {name: float(skew) for name, skew in rows if skew is not None and abs(skew) > threshold}
