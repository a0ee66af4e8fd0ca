"""The store's reads: snapshot, lists, one object, workflow view, statistics.

Every query runs in one read transaction (:meth:`StoreQueries.read`), so what one call returns
is one consistent state; views never write SQL, they call these.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Text, cast, func, or_, select
from sqlalchemy.orm import Session

from jobqueue.states import FINAL_STATUSES, JobStatus, workflow_status
from monitor.store import changelog
from monitor.store.models import (
    JOB_SORTS,
    JOB_WHEN,
    ConnectorRow,
    CounterRow,
    JobEventRow,
    JobRow,
    MachineRow,
    ServiceStatRow,
    WorkerRow,
)
from monitor.store.serialise import job_dict, machine_fields, service_dict, worker_dict
from monitor.store.stats import finite_values, percentile
from monitor.store.stats import summary as safe_summary
from monitor.store.statuses import (
    ERROR_STATUSES,
    FAILED_STATUSES,
    ON_WORKER_STATUSES,
    OPEN_STATUSES,
)
from monitor.store.worker_cache import WorkerCache

#: Completed runs (newest, over every task name) the per-task-name runtime percentiles read.
TASK_RUNTIME_SAMPLES = 20_000
#: Most child ids one job lists.
MAX_CHILDREN = 1000
#: Most tasks one canvas shows, and what it shows of each.
MAX_CANVAS = 500
CANVAS_FIELDS = ("id", "name", "service", "status", "parent_id", "root_id", "group_id", "worker", "submitted_at",
                 "started_at", "finished_at", "runtime", "scheduled", "seq")


class StoreQueries:
    """The read half of :class:`monitor.store.Store` (which provides :meth:`read`)."""

    #: The workers already built, by seq (:mod:`monitor.store.worker_cache`); one per store.
    worker_cache: WorkerCache

    def read(self) -> AbstractContextManager[Session]:
        """One read transaction that sees one consistent snapshot of the database."""
        raise NotImplementedError

    def seq(self) -> int:
        with self.read() as session:
            counter = session.get(CounterRow, "seq")
            return counter.value if counter else 0

    def snapshot(self, finished_limit: int = 200, now: float | None = None,
                 tenant: str | None = None) -> dict[str, Any]:
        """The whole state at one seq: machines, workers, unfinished jobs and the most
        recent ``finished_limit`` finished ones (``tenant``: only that tenant's jobs)."""
        now = time.time() if now is None else now
        mine = [JobRow.tenant == tenant] if tenant is not None else []
        with self.read() as session:
            counter = session.get(CounterRow, "seq")
            seq = counter.value if counter else 0
            workers = self._workers(session, now)
            machines = self._machines(session, workers)
            jobs = list(session.scalars(select(JobRow).where(JobRow.status.in_(OPEN_STATUSES), *mine)
                                        .order_by(JobRow.submitted_at, JobRow.id)))
            finished = list(session.scalars(
                # (finished_at DESC, id DESC) walks ix_jobs_finished_id backwards and stops
                # after the limit, instead of sorting every finished job. ``status || ''``
                # keeps SQLite's planner off ix_jobs_status, which would fetch all finished
                # jobs first (it has no statistics to know they are most of the table).
                select(JobRow).where((JobRow.status + "").in_(FINAL_STATUSES), *mine)
                .order_by(JobRow.finished_at.desc(), JobRow.id.desc()).limit(max(0, finished_limit))
            ))
            services = [service_dict(x) for x in session.scalars(select(ServiceStatRow).order_by(ServiceStatRow.service))]
            return {
                "seq": seq,
                "machines": machines,
                "workers": workers,
                "jobs": [job_dict(j) for j in jobs + finished],
                "services": services,
            }

    def changes_since(self, since: int, limit: int = 1000, with_tenant: bool = False) -> list[dict[str, Any]] | None:
        """Changes with seq > ``since`` in order; None when the log no longer holds them all
        (the client then needs a fresh snapshot). ``with_tenant``: with each job change's tenant."""
        with self.read() as session:
            return changelog.changes_since(session, since, limit, with_tenant)

    def _workers(self, session: Session, now: float) -> list[dict[str, Any]]:
        return self.worker_cache.workers(session, now)

    def _machines(self, session: Session, workers: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Every machine with the names of its workers (``workers``: the workers read in this
        same transaction, which name their machines; else they are read here)."""
        pairs = ((w["name"], w["machine_id"]) for w in workers) if workers is not None else \
            session.execute(select(WorkerRow.name, WorkerRow.machine_id))
        names: dict[str, list[str]] = {}
        for name, machine_id in pairs:
            if machine_id:
                names.setdefault(machine_id, []).append(name)
        rows = session.execute(select(MachineRow.id, MachineRow.status, MachineRow.last_seen, MachineRow.seq)
                               .order_by(MachineRow.id))
        return [machine_fields(*row, names.get(row[0], [])) for row in rows]

    def machines(self) -> list[dict[str, Any]]:
        with self.read() as session:
            return self._machines(session)

    def workers(self, now: float | None = None) -> list[dict[str, Any]]:
        with self.read() as session:
            return self._workers(session, time.time() if now is None else now)

    def worker(self, name: str, now: float | None = None) -> dict[str, Any] | None:
        with self.read() as session:
            w = session.get(WorkerRow, name)
            if w is None:
                return None
            conns = list(session.scalars(select(ConnectorRow).where(ConnectorRow.worker == name)))
            return worker_dict(w, conns, time.time() if now is None else now)

    def job(self, job_id: str, with_events: bool = True) -> dict[str, Any] | None:
        """One job with its meta, the ids of the tasks it started (``children``: tasks whose
        parent it is, at most :data:`MAX_CHILDREN`) and, ``with_events``, its timeline."""
        with self.read() as session:
            j = session.get(JobRow, job_id)
            if j is None:
                return None
            data = job_dict(j)
            data["meta"] = j.meta or {}
            data["children"] = list(session.scalars(
                select(JobRow.id).where(JobRow.parent_id == job_id).order_by(JobRow.submitted_at, JobRow.id)
                .limit(MAX_CHILDREN)))
            if with_events:
                rows = session.scalars(select(JobEventRow).where(JobEventRow.job_id == job_id).order_by(JobEventRow.id))
                data["events"] = [{"type": e.type, "timestamp": e.timestamp, "fields": e.fields or {}} for e in rows]
            return data

    def job_tenants(self, ids: list[str]) -> dict[str, str | None]:
        """The tenant of each of ``ids`` the store holds (None: a job of no tenant); an id it
        does not hold is left out."""
        out: dict[str, str | None] = {}
        with self.read() as session:
            for start in range(0, len(ids), 500):
                rows = session.execute(select(JobRow.id, JobRow.tenant).where(JobRow.id.in_(ids[start:start + 500])))
                out.update({job_id: tenant for job_id, tenant in rows})
        return out

    def canvas(self, job_id: str) -> dict[str, Any] | None:
        """The whole canvas (chain, group, chord) ``job_id`` belongs to, from its root: every
        task whose root it is (at most :data:`MAX_CANVAS`), each with its parent; None when the
        job is unknown. A root the events never named is found by walking up the parents."""
        with self.read() as session:
            job = session.get(JobRow, job_id)
            if job is None:
                return None
            root, seen = job.root_id or job.id, {job.id}
            while job is not None and job.root_id is None and job.parent_id and job.parent_id not in seen:
                seen.add(job.parent_id)
                root, job = job.parent_id, session.get(JobRow, job.parent_id)
            rows = list(session.scalars(select(JobRow).where(or_(JobRow.root_id == root, JobRow.id == root))
                                        .order_by(JobRow.submitted_at, JobRow.id).limit(MAX_CANVAS + 1)))
            nodes = [{key: job_dict(row)[key] for key in CANVAS_FIELDS} for row in rows[:MAX_CANVAS]]
        return {"root": root, "nodes": nodes, "truncated": len(rows) > MAX_CANVAS}

    def jobs(
        self,
        *,
        state: list[str] | None = None,
        service: str | None = None,
        worker: str | None = None,
        machine: str | None = None,
        since: float | None = None,
        until: float | None = None,
        q: str | None = None,
        workflow: str | None = None,
        tenant: str | None = None,
        name: str | None = None,
        queue: str | None = None,
        limit: int = 50,
        offset: int = 0,
        sort: str = "submitted",
        descending: bool = True,
    ) -> tuple[list[dict[str, Any]], int]:
        """Jobs matching the filters, in ``sort`` order (:data:`JOB_SORTS`; newest first by
        default; a workflow's: in step order), and exactly how many match (a count over the
        same filters, answered from the indexes). ``tenant``: only that tenant's jobs."""
        conds = []
        if tenant is not None:
            conds.append(JobRow.tenant == tenant)
        if workflow:
            conds.append(JobRow.workflow_id == workflow)
        if state:
            conds.append(JobRow.status.in_(state))
        if service:
            conds.append(JobRow.service == service)
        if worker:
            conds.append(JobRow.worker == worker)
        if machine:
            conds.append(JobRow.machine_id == machine)
        if name:
            conds.append(JobRow.name == name)
        if queue:
            conds.append(JobRow.queue == queue)
        when = JOB_WHEN
        if since is not None:
            conds.append(when >= since)
        if until is not None:
            conds.append(when < until)
        if q:
            pattern = f"%{q}%"
            conds.append(or_(JobRow.id.like(pattern), JobRow.service.like(pattern), JobRow.worker.like(pattern),
                             JobRow.workflow_id.like(pattern), JobRow.name.like(pattern),
                             cast(JobRow.task, Text).like(pattern)))
        with self.read() as session:
            # count(*), not count(id): SQLite then walks its narrowest covering index.
            total = int(session.scalar(select(func.count()).select_from(JobRow).where(*conds)) or 0)
            # (when DESC, id DESC) walks ix_jobs_when backwards instead of sorting every match.
            column = JOB_SORTS.get(sort, when)
            order = (JobRow.step, when, JobRow.id) if workflow else \
                ((column.desc(), JobRow.id.desc()) if descending else (column.asc(), JobRow.id.asc()))
            rows = session.scalars(select(JobRow).where(*conds).order_by(*order).limit(limit).offset(offset))
            return [job_dict(j) for j in rows], total

    def workflow(self, workflow_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        """A workflow's steps the monitor has seen, in step order, and its status; None when
        no job of it is known (``tenant``: no job of it and that tenant). Later steps are
        published only when the previous one ends, so ``total_steps`` (from the steps'
        metadata) may exceed ``len(steps)``."""
        mine = [JobRow.tenant == tenant] if tenant is not None else []
        with self.read() as session:
            rows = list(session.scalars(
                select(JobRow).where(JobRow.workflow_id == workflow_id, *mine)
                .order_by(JobRow.step, JobRow.submitted_at, JobRow.id)
            ))
            steps = [job_dict(j) for j in rows]
            meta = (rows[0].meta or {}) if rows else {}
        if not steps:
            return None
        total = max([s["workflow_steps"] or 0 for s in steps] + [s["step"] or 0 for s in steps])
        submitted = meta.get("workflow_submitted_at")
        return {
            "id": workflow_id,
            "status": workflow_status([s["status"] for s in steps], total).value,
            "total_steps": total,
            "priority": steps[0]["priority"],
            "submitted_at": submitted if isinstance(submitted, (int, float)) else steps[0]["submitted_at"],
            "steps": steps,
        }

    def queued_jobs(self) -> list[dict[str, Any]]:
        """Queued jobs in the order they will be taken: priority first, then age."""
        with self.read() as session:
            rows = session.scalars(
                select(JobRow).where(JobRow.status == JobStatus.QUEUED.value)
                .order_by(JobRow.priority.desc(), JobRow.submitted_at, JobRow.id)
            )
            return [job_dict(j) for j in rows]

    def queue_order(self) -> list[dict[str, Any]]:
        """Like :meth:`queued_jobs`, with only the fields a queue position and wait need (a
        backlog may be long: 20,000 whole jobs take seconds to build)."""
        with self.read() as session:
            rows = session.execute(
                select(JobRow.id, JobRow.status, JobRow.queue, JobRow.service, JobRow.priority, JobRow.submitted_at)
                .where(JobRow.status == JobStatus.QUEUED.value)
                .order_by(JobRow.priority.desc(), JobRow.submitted_at, JobRow.id)
            )
            keys = ("id", "status", "queue", "service", "priority", "submitted_at")
            return [dict(zip(keys, row, strict=True)) for row in rows]

    def queued_requirements(self) -> list[dict[str, Any]]:
        """``{"id", "service", "requires"}`` of every queued job (the autoscaling signals; light
        like :meth:`queue_order`: no whole jobs built)."""
        with self.read() as session:
            rows = session.execute(select(JobRow.id, JobRow.service, JobRow.meta)
                                   .where(JobRow.status == JobStatus.QUEUED.value))
            return [{"id": job_id, "service": service,
                     "requires": meta.get("requires") if isinstance(meta, dict) else None}
                    for job_id, service, meta in rows]

    def service_medians(self) -> dict[str, float | None]:
        """Each service's completion-time median (the ``service`` objects' ``median``)."""
        with self.read() as session:
            return {s.service: s.median for s in session.scalars(select(ServiceStatRow))}

    def durations(self, service: str | None = None, limit: int = 1000,
                  tenant: str | None = None) -> dict[str, list[float]]:
        """Recent completed runtimes per service (seconds), newest first (``tenant``: its jobs')."""
        conds = [JobRow.status == JobStatus.COMPLETED.value, JobRow.runtime.is_not(None)]
        if tenant is not None:
            conds.append(JobRow.tenant == tenant)
        if service:
            conds.append(JobRow.service == service)
        out: dict[str, list[float]] = {}
        with self.read() as session:
            rows = session.execute(
                select(JobRow.service, JobRow.runtime).where(*conds).order_by(JobRow.finished_at.desc()).limit(limit * 20)
            )
            for svc, runtime in rows:
                bucket = out.setdefault(svc or "unknown", [])
                if runtime is not None and len(bucket) < limit:
                    bucket.append(float(runtime))
        return out

    def stats(self, now: float | None = None, window: float = 3600.0, tenant: str | None = None) -> dict[str, Any]:
        """Per-service counts and completion-time statistics, failure patterns, throughput
        (``tenant``: of that tenant's jobs only)."""
        now = time.time() if now is None else now
        services: dict[str, dict[str, Any]] = {}
        mine = [JobRow.tenant == tenant] if tenant is not None else []
        with self.read() as session:
            for svc, status, count in session.execute(
                select(JobRow.service, JobRow.status, func.count()).where(*mine).group_by(JobRow.service, JobRow.status)
            ):
                entry = services.setdefault(svc or "unknown", {"count": 0, "by_status": {}})
                entry["count"] += count
                entry["by_status"][status] = count
            failures: dict[tuple[str, str, str], dict[str, Any]] = {}
            rows = session.execute(
                select(JobRow.service, JobRow.error, JobRow.finished_at)
                .where(JobRow.status.in_(ERROR_STATUSES), JobRow.error.is_not(None), *mine)
                .order_by(JobRow.finished_at.desc()).limit(5000)
            )
            for svc, error, finished_at in rows:
                error = error or {}
                etype = str(error.get("type") or "unknown")
                message = str(error.get("message") or "")[:200]
                key = (svc or "unknown", etype, message)
                entry = failures.setdefault(key, {"service": key[0], "error_type": etype, "message": message,
                                                  "count": 0, "last_at": None})
                entry["count"] += 1
                if finished_at and (entry["last_at"] is None or finished_at > entry["last_at"]):
                    entry["last_at"] = finished_at
            minutes: dict[int, dict[str, Any]] = {}
            for status, finished_at in session.execute(
                select(JobRow.status, JobRow.finished_at).where(JobRow.finished_at >= now - window, JobRow.finished_at <= now + window,
                                                          JobRow.status.in_(FINAL_STATUSES), *mine)
            ):
                if finished_at is None:  # excluded by the query; narrows the type
                    continue
                t = int(finished_at // 60 * 60)
                bucket = minutes.setdefault(t, {"t": t, "completed": 0, "failed": 0})
                bucket["completed" if status == JobStatus.COMPLETED.value else "failed"] += 1
        for svc, values in self.durations(tenant=tenant).items():
            entry = services.setdefault(svc, {"count": 0, "by_status": {}})
            entry.update(safe_summary(values))  # finite and overflow-free whatever is stored
        for entry in services.values():
            entry["completed"] = entry["by_status"].get(JobStatus.COMPLETED.value, 0)
            entry["failed"] = sum(entry["by_status"].get(s, 0) for s in FAILED_STATUSES)
            for stat in ("median", "mean", "min", "max", "p95"):
                entry.setdefault(stat, None)
            entry.setdefault("samples", 0)
        return {
            "services": services,
            "throughput": [minutes[t] for t in sorted(minutes)],
            "failures": sorted(failures.values(), key=lambda f: (-f["count"], f["service"], f["error_type"])),
        }

    def task_stats(self, tenant: str | None = None) -> dict[str, dict[str, Any]]:
        """Per Celery task name (any app's tasks, ``jobqueue.run_job`` for ours): how many, how many
        failed, the failure rate among ended ones, and the runtime p50/p95 of the most recent
        :data:`TASK_RUNTIME_SAMPLES` completed runs (``tenant``: of its jobs only)."""
        mine = [JobRow.tenant == tenant] if tenant is not None else []
        out: dict[str, dict[str, Any]] = {}
        with self.read() as session:
            for name, status, count in session.execute(
                select(JobRow.name, JobRow.status, func.count()).where(JobRow.name.is_not(None), *mine)
                .group_by(JobRow.name, JobRow.status)
            ):
                entry = out.setdefault(str(name), {"count": 0, "failed": 0, "ended": 0})
                entry["count"] += count
                entry["failed"] += count if status in FAILED_STATUSES else 0
                entry["ended"] += count if status in FINAL_STATUSES else 0
            runtimes: dict[str, list[float]] = {}
            for name, runtime in session.execute(
                select(JobRow.name, JobRow.runtime).where(JobRow.name.is_not(None), JobRow.runtime.is_not(None),
                                                          JobRow.status == JobStatus.COMPLETED.value, *mine)
                .order_by(JobRow.finished_at.desc()).limit(TASK_RUNTIME_SAMPLES)
            ):
                runtimes.setdefault(str(name), []).append(float(runtime or 0.0))
        for name, entry in out.items():
            ordered = sorted(finite_values(runtimes.get(name, [])))
            ended = entry.pop("ended")
            entry.update(failure_rate=round(entry["failed"] / ended, 4) if ended else None, samples=len(ordered),
                         p50=percentile(ordered, 0.5) if ordered else None,
                         p95=percentile(ordered, 0.95) if ordered else None)
        return out

    def known_queues(self) -> list[str]:
        """Queue names seen on workers and jobs."""
        names: set[str] = set()
        with self.read() as session:
            for (queues,) in session.execute(select(WorkerRow.queues)):
                names.update(q for q in (queues or []) if isinstance(q, str))
            names.update(q for q in session.scalars(select(JobRow.queue).distinct()) if q)
        return sorted(names)

    def task_names(self, tenant: str | None = None) -> list[str]:
        """Every task name the events have named, sorted (``tenant``: only that tenant's)."""
        mine = [JobRow.tenant == tenant] if tenant is not None else []
        with self.read() as session:
            return sorted(n for n in session.scalars(select(JobRow.name).where(*mine).distinct()) if n)

    def final_job_ids(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` are stored with a final status."""
        out: set[str] = set()
        with self.read() as session:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                out.update(session.scalars(select(JobRow.id).where(JobRow.id.in_(chunk), JobRow.status.in_(FINAL_STATUSES))))
        return out

    def open_jobs_on_workers(self) -> list[tuple[str, str | None, str]]:
        """(job id, worker, status) of every assigned/processing job."""
        with self.read() as session:
            return list(session.execute(
                select(JobRow.id, JobRow.worker, JobRow.status).where(JobRow.status.in_((*ON_WORKER_STATUSES, JobStatus.LOST.value)))
            ).tuples())
