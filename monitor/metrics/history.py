"""Job statistics by the hour, kept after the jobs themselves are pruned.

The store keeps finished jobs for a while (``JOBQUEUE_MONITOR_KEEP_SECONDS``, 7 days by
default, at most ``JOBQUEUE_MONITOR_KEEP_JOBS``); a stats page computed from those rows alone
would forget last month the moment its jobs are pruned. So every job that reaches a final
status is also counted in a table of its own, ``stats_hourly``: one row per (hour, service,
final status) with the number of jobs and the sum of their runtimes. The writer adds to it in
the same transaction that finished the job (through :class:`monitor.metrics.totals.Totals`), so a count
and the change it counts commit together and survive a monitor restart; pruning jobs never
touches it. Rows older than :data:`KEEP_HOURS` are dropped.

Like a Prometheus counter, the table only grows: a job whose final status is corrected later
(a forged ``task-succeeded`` corrected to ``failed`` by repair) is counted under both. The
job list and the current stats are exact; the history is a record of what was seen.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from sqlalchemy import Float, Integer, String, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from jobqueue.states import JobStatus
from monitor.store import Base, Store

#: One bucket per hour.
HOUR = 3600
#: How long hourly rows are kept: a little over a year.
KEEP_HOURS = 400 * 24
#: How far back ``/api/stats`` reads history by default: 7 days.
DEFAULT_HOURS = 7 * 24

#: (hour start, service, final status) -> [jobs, runtime sum, runtime count]
HourlyDelta = defaultdict[tuple[int, str, str], list[float]]


class HourlyStat(Base):
    """Jobs that reached one final status in one hour, for one service."""

    __tablename__ = "stats_hourly"
    hour: Mapped[int] = mapped_column(Integer, primary_key=True)
    service: Mapped[str] = mapped_column(String(255), primary_key=True)
    status: Mapped[str] = mapped_column(String(32), primary_key=True)
    jobs: Mapped[int] = mapped_column(Integer, default=0)
    runtime_sum: Mapped[float] = mapped_column(Float, default=0.0)
    runtime_count: Mapped[int] = mapped_column(Integer, default=0)


def hour_of(timestamp: float) -> int:
    """The start of the hour ``timestamp`` falls in (epoch seconds)."""
    return int(timestamp // HOUR * HOUR)


def count(delta: HourlyDelta, *, service: str, status: str, finished_at: float | None,
          runtime: float | None, now: float) -> None:
    """Add one job that reached ``status`` to ``delta``.

    The hour is the job's finish time; a missing or implausible one (beyond the event window
    the collector allows, so never in practice) falls back to ``now``."""
    at = finished_at if finished_at is not None and abs(finished_at - now) <= 7 * 24 * HOUR else now
    entry = delta[(hour_of(at), service or "unknown", status)]
    if not entry:
        entry.extend((0.0, 0.0, 0.0))
    entry[0] += 1
    if runtime is not None and 0 <= runtime < float("inf"):
        entry[1] += runtime
        entry[2] += 1


#: Adds to an hour's row in place (one statement; the row is inserted when it moved none).
_ADD = (update(HourlyStat)
        .where(HourlyStat.hour == bindparam("at_hour"), HourlyStat.service == bindparam("of_service"),
               HourlyStat.status == bindparam("in_status"))
        .values(jobs=func.coalesce(HourlyStat.jobs, 0) + bindparam("add_jobs"),
                runtime_sum=func.coalesce(HourlyStat.runtime_sum, 0.0) + bindparam("add_sum", type_=Float()),
                runtime_count=func.coalesce(HourlyStat.runtime_count, 0) + bindparam("add_count")))


def write(session: Session, delta: HourlyDelta) -> None:
    """Add ``delta`` to the table inside the caller's transaction (plain statements: an ORM
    load and flush of the hour's row per write transaction was 5% of the writer's time)."""
    connection = session.connection()
    for (hour, service, status), (jobs, runtime_sum, runtime_count) in delta.items():
        moved = connection.execute(_ADD, {"at_hour": hour, "of_service": service, "in_status": status,
                                          "add_jobs": int(jobs), "add_sum": runtime_sum,
                                          "add_count": int(runtime_count)})
        if not moved.rowcount:
            connection.execute(insert(HourlyStat).values(hour=hour, service=service, status=status, jobs=int(jobs),
                                                         runtime_sum=runtime_sum, runtime_count=int(runtime_count)))


def forget_before(session: Session, now: float) -> None:
    """Drop hourly rows older than :data:`KEEP_HOURS`."""
    session.execute(delete(HourlyStat).where(HourlyStat.hour < hour_of(now) - KEEP_HOURS * HOUR))


def read(store: Store, *, now: float | None = None, hours: int = DEFAULT_HOURS) -> dict[str, Any]:
    """The history for a stats page.

    ``hours``: one entry per hour that had finished jobs in the last ``hours`` hours
    (``{"t", "completed", "failed", "cancelled", "mean_runtime"}``; timed-out jobs count as
    failed, as on the rest of the stats page). ``services``: every service's jobs by final
    status since the store began counting, pruned jobs included.
    """
    now = time.time() if now is None else now
    since = hour_of(now) - (hours - 1) * HOUR
    series: dict[int, dict[str, Any]] = {}
    sums: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    services, rows = _rows(store, since, hour_of(now))
    for hour, status, jobs, runtime_sum, runtime_count in rows:
        entry = series.setdefault(hour, {"t": hour, "completed": 0, "failed": 0, "cancelled": 0})
        column = "completed" if status == JobStatus.COMPLETED else "cancelled" if status == JobStatus.CANCELLED else "failed"
        entry[column] += int(jobs or 0)
        if status == JobStatus.COMPLETED:
            sums[hour][0] += runtime_sum or 0.0
            sums[hour][1] += runtime_count or 0
    for hour, entry in series.items():
        total, n = sums[hour]
        entry["mean_runtime"] = round(total / n, 3) if n else None
    return {"since": since, "hours": [series[h] for h in sorted(series)], "services": services}


def _rows(store: Store, since: int, until: int) -> tuple[dict[str, dict[str, int]], list[Any]]:
    """All-time jobs per service and status, and the hourly rows from ``since`` to ``until``."""
    services: dict[str, dict[str, int]] = {}
    with store.read() as session:
        for service, status, jobs in session.execute(
            select(HourlyStat.service, HourlyStat.status, func.sum(HourlyStat.jobs))
            .group_by(HourlyStat.service, HourlyStat.status)
        ):
            services.setdefault(service, {})[status] = int(jobs or 0)
        rows = list(session.execute(
            select(HourlyStat.hour, HourlyStat.status, HourlyStat.jobs, HourlyStat.runtime_sum,
                   HourlyStat.runtime_count)
            .where(HourlyStat.hour >= since, HourlyStat.hour <= until)
        ))
    return services, rows
