"""One write transaction of the monitor's single writer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import JSON, inspect, select
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.orm.util import identity_key

from jobqueue.states import ConnectorStatus, empty_progress
from monitor.store.counts import job_counts
from monitor.store.models import ConnectorRow, JobRow, MachineRow, WorkerRow
from monitor.store.plain_jobs import AnyJob, PlainJob, load_jobs, write_jobs
from monitor.store.statuses import MachineStatus, WorkerStatus

#: Timeline entries kept per job (progress events of a long job are many).
MAX_EVENTS_PER_JOB = 300
#: One recorded change: ``(seq, kind, key, data)``; ``data`` is None for a deleted object.
Change = tuple[int, str, str, Any]
#: A new job's columns other than those :meth:`Tx.job` sets, all NULL -- but not the JSON ones,
#: which would store a JSON ``null`` instead of SQL's NULL.
_NEW_JOB: dict[str, Any] = {attr.key: None for attr in inspect(JobRow).column_attrs
                            if attr.key not in ("id", "status", "attempt", "n_events", "seq", "progress")
                            and not isinstance(attr.columns[0].type, JSON)}
#: Workers, each with every connector it has (one row per connector; None: it has none).
_WORKERS_WITH_CONNECTORS = select(WorkerRow, ConnectorRow).outerjoin(ConnectorRow, ConnectorRow.worker == WorkerRow.name)
#: What a job was when a transaction first saw it: (status, attempt, started_at); None: new.
Before = tuple[str, int, float | None] | None


class Tx:
    """One write transaction: get-or-create rows, record timeline events, mark changes.

    :func:`monitor.merge.apply.apply` works through this; :meth:`Store.write` turns what was
    marked into sequence numbers and change-log rows at commit. The session does not
    autoflush: rows this transaction looked up or created are kept in its own identity map
    (so a lookup never flushes the pending batch nor misses a row created earlier in it), and
    :meth:`prefetch` loads a whole batch's jobs and workers in one query each. Queries that
    must see pending changes (``jobs_of_worker``, ``workers_of_machine``) flush first.

    The event merge's jobs are plain objects (:meth:`merge_job`, :mod:`monitor.store.plain_jobs`),
    written with one executemany per shape: before any ORM statement that could read the jobs
    table (:meth:`before_orm_execute`, hooked by the store) and at commit. A job is held either
    plain or as an ORM row, never both: an ORM lookup of a plain job (:meth:`job`) writes the
    plain ones and lets the ORM load it.
    """

    def __init__(self, session: Session, now: float) -> None:
        self.session = session
        self.now = now
        self.dirty: dict[tuple[str, str], None] = {}
        #: Deleted objects, each with its tenant (a job's; see :attr:`ChangeRow.tenant`).
        self.deleted: dict[tuple[str, str], str | None] = {}
        self._jobs: dict[str, AnyJob | None] = {}
        #: The plain jobs held (see :meth:`merge_job`), by id.
        self._plain: dict[str, PlainJob] = {}
        #: What each plain job was when this transaction first saw it (see :data:`Before`).
        self.job_before: dict[str, Before] = {}
        self._workers: dict[str, WorkerRow | None] = {}
        self._connectors: dict[tuple[str, str], ConnectorRow | None] = {}
        #: Workers whose every stored connector :meth:`prefetch` loaded into ``_connectors``.
        self._connectors_loaded: set[str] = set()
        self._machines: dict[str, MachineRow | None] = {}
        self.events: list[dict[str, Any]] = []
        #: What the commit recorded, ``(seq, kind, key, data)`` in seq order; set by
        #: :meth:`monitor.store.Store.write` once the block is done (empty before).
        self.changes: list[Change] = []
        #: Called, in order, once this transaction committed (not when it rolled back).
        self.after_commit: list[Callable[[], None]] = []

    def prefetch(self, job_ids: set[str], worker_names: set[str], *, plain_jobs: bool = False) -> None:
        """Load the jobs, workers and those workers' connectors a batch refers to, in one
        ``SELECT ... WHERE id IN (...)`` per table and chunk; what is not found is
        remembered as absent (no second lookup). ``plain_jobs``: the jobs as plain objects,
        for :meth:`merge_job` (the event merge)."""
        session = self.session
        ids = sorted(job_ids - self._jobs.keys())
        if plain_jobs:
            ids = [one for one in ids if identity_key(JobRow, one) not in session.identity_map]
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            if plain_jobs:
                for job in load_jobs(session.connection(), chunk):
                    self._hold(job)
                for one in chunk:
                    self._jobs.setdefault(one, None)  # known absent
                continue
            jobs = {j.id: j for j in session.scalars(select(JobRow).where(JobRow.id.in_(chunk)))}
            self._jobs.update((one, jobs.get(one)) for one in chunk)
        todo = sorted(worker_names - self._workers.keys())
        for start in range(0, len(todo), 500):
            chunk = todo[start:start + 500]
            # The workers with their connectors, in one statement (a fixed cost per transaction).
            workers: dict[str, WorkerRow] = {}
            for worker, conn in session.execute(_WORKERS_WITH_CONNECTORS.where(WorkerRow.name.in_(chunk))):
                workers[worker.name] = worker
                if conn is not None:
                    self._connectors[(conn.worker, conn.service)] = conn
            self._workers.update((one, workers.get(one)) for one in chunk)
            self._connectors_loaded.update(workers)
        names = sorted(n for n in worker_names if n not in self._connectors_loaded and self._workers.get(n) is not None)
        for start in range(0, len(names), 500):
            chunk = names[start:start + 500]
            for conn in session.scalars(select(ConnectorRow).where(ConnectorRow.worker.in_(chunk))):
                self._connectors[(conn.worker, conn.service)] = conn
            self._connectors_loaded.update(chunk)

    def _hold(self, job: PlainJob) -> None:
        self._jobs[job.id] = self._plain[job.id] = job
        if job.id not in self.job_before:
            self.job_before[job.id] = None if job.loaded is None else (job.status, job.attempt or 0, job.started_at)

    def merge_job(self, job_id: str) -> AnyJob:
        """The job ``job_id`` for the event merge: held as a plain object unless the ORM holds
        it already; a new one (status "") when it is not stored."""
        job = self.stored_job(job_id)
        if job is not None:
            return job
        if identity_key(JobRow, job_id) in self.session.identity_map:
            found = self.job(job_id)
            assert found is not None
            return found
        self._hold(PlainJob.new(job_id))
        return self._plain[job_id]

    def stored_job(self, job_id: str) -> AnyJob | None:
        """The stored job ``job_id`` for a merge that never creates one (truth repair): as
        :meth:`merge_job` holds it (plain unless the ORM holds it already); None when it is
        not stored. A plain lookup keeps the batch's other plain jobs held (an ORM lookup
        would write and release them all, so the rest of the batch would load each again)."""
        job = self._jobs.get(job_id)
        if job is not None or job_id in self._jobs:
            return job
        if identity_key(JobRow, job_id) in self.session.identity_map:
            return self.job(job_id, create=False)
        plain = load_jobs(self.session.connection(), [job_id])
        if not plain:
            self._jobs[job_id] = None  # known absent
            return None
        self._hold(plain[0])
        return self._plain[job_id]

    def peek_job(self, job_id: str) -> AnyJob | None:
        """The job ``job_id`` as this transaction holds it (plain or ORM), for reading."""
        job = self._jobs.get(job_id)
        return job if job is not None else self.job(job_id, create=False)

    def write_plain_jobs(self, *, release: bool = True) -> None:
        """Write the plain jobs' changes (:func:`write_jobs`); ``release``: and hold them no
        longer, so the ORM may load them (a plain job the ORM loads is released first)."""
        if not self._plain:
            return
        write_jobs(self.session.connection(), list(self._plain.values()))
        if release:
            for job_id in self._plain:
                del self._jobs[job_id]
            self._plain.clear()

    def before_orm_execute(self, state: ORMExecuteState) -> None:
        """Before an ORM statement: write the plain jobs first when it may read jobs (any
        statement that is not only about other tables)."""
        if self._plain and (not state.all_mappers or any(m.class_ is JobRow for m in state.all_mappers)):
            self.write_plain_jobs()

    def job(self, job_id: str, create: bool = True) -> JobRow | None:
        """The job ``job_id`` as an ORM row; a new one with status "" (not yet known) when ``create``."""
        if job_id in self._plain:
            self.write_plain_jobs()
        if job_id in self._jobs:
            job = self._jobs[job_id]
            assert not isinstance(job, PlainJob)
        else:
            job = self._jobs[job_id] = self.session.get(JobRow, job_id)
        if job is None and create:
            # Every other column set (to NULL, what the insert would store): an attribute never
            # set costs a trip through SQLAlchemy on every read of a new row (and a SELECT
            # once the row is flushed).
            job = JobRow(**_NEW_JOB, id=job_id, status="", attempt=0, n_events=0, seq=0, progress=empty_progress())
            self.session.add(job)
            self._jobs[job_id] = job
        return job

    def worker(self, name: str, create: bool = True) -> WorkerRow | None:
        """The worker ``name``; a new online one, with the counts of its stored jobs, when ``create``."""
        if name in self._workers:
            worker = self._workers[name]
        else:
            worker = self._workers[name] = self.session.get(WorkerRow, name)
        if worker is None and create:
            worker = WorkerRow(name=name, status=WorkerStatus.ONLINE.value, draining=False, active=0, processed=0, ended=0,
                            failed=0, seq=0)
            # Jobs that ended on it before it was known count from the start (flushed first,
            # so jobs ended earlier in this transaction are seen); later ends bump the counts.
            self.session.flush()
            worker.ended, worker.failed = job_counts(self.session, name).get(name, (0, 0))
            self.session.add(worker)
            self.session.flush()
            self._workers[name] = worker
        return worker

    def connector(self, worker: str, service: str, create: bool = True) -> ConnectorRow | None:
        """The connector ``service`` of ``worker``; a new starting one when ``create``."""
        key = (worker, service)
        if key in self._connectors:
            conn = self._connectors[key]
        else:
            conn = self._connectors[key] = self.session.get(ConnectorRow, key)
        if conn is None and create:
            conn = ConnectorRow(worker=worker, service=service, status=ConnectorStatus.STARTING.value, message="", stale=False)
            self.session.add(conn)
            self._connectors[key] = conn
        return conn

    def connectors_of(self, workers: list[str]) -> tuple[dict[str, list[ConnectorRow]], list[str]]:
        """Every connector (those created in this transaction too) of each of ``workers`` whose
        stored ones :meth:`prefetch` loaded (connectors are never deleted, so the loaded ones
        and the new ones are all), and the workers this transaction does not know them all of."""
        known: dict[str, list[ConnectorRow]] = {name: [] for name in workers if name in self._connectors_loaded}
        for (name, _), conn in self._connectors.items():
            if conn is not None and name in known:
                known[name].append(conn)
        return {name: conns for name, conns in known.items() if conns}, [n for n in workers if n not in known]

    def machine(self, machine_id: str, create: bool = True) -> MachineRow | None:
        """The machine ``machine_id``; a new offline one when ``create``."""
        if machine_id in self._machines:
            machine = self._machines[machine_id]
        else:
            machine = self._machines[machine_id] = self.session.get(MachineRow, machine_id)
        if machine is None and create:
            machine = MachineRow(id=machine_id, status=MachineStatus.OFFLINE.value, seq=0)
            self.session.add(machine)
            self._machines[machine_id] = machine
        return machine

    def jobs_of_worker(self, worker: str, statuses: tuple[str, ...]) -> list[JobRow]:
        """The jobs of ``worker`` in one of ``statuses`` (this transaction's changes included)."""
        self.session.flush()
        return list(self.session.scalars(select(JobRow).where(JobRow.worker == worker, JobRow.status.in_(statuses))))

    def workers_of_machine(self, machine_id: str) -> list[WorkerRow]:
        """The workers on ``machine_id`` (this transaction's changes included)."""
        self.session.flush()
        return list(self.session.scalars(select(WorkerRow).where(WorkerRow.machine_id == machine_id)))

    def add_event(self, job: AnyJob, type_: str, timestamp: float | None, fields: dict[str, Any]) -> None:
        """Add a timeline entry (written with one bulk insert at commit)."""
        if job.n_events >= MAX_EVENTS_PER_JOB:
            return
        job.n_events += 1
        self.events.append({"job_id": job.id, "type": type_, "timestamp": timestamp, "fields": fields})

    def forget_job(self, job_id: str) -> None:
        """A job deleted in this transaction: no lookup finds it, no timeline row is added."""
        self._jobs[job_id] = None
        self._plain.pop(job_id, None)
        if any(e["job_id"] == job_id for e in self.events):
            self.events = [e for e in self.events if e["job_id"] != job_id]

    def set_draining(self, name: str, draining: bool) -> bool:
        """Record that a worker was asked to stop/restart consuming (a change if it differs);
        False when no such worker is stored."""
        worker = self.worker(name, create=False)
        if worker is None:
            return False
        if worker.draining != draining:
            worker.draining = draining
            self.touch("worker", name)
        return True

    def touch(self, kind: str, key: str) -> None:
        """Mark an object changed: it gets a new seq and a change-log row at commit."""
        self.dirty[(kind, key)] = None

    def drop(self, kind: str, key: str, tenant: str | None = None) -> None:
        """Mark an object deleted (a change with ``data: null``; ``tenant``: a job's)."""
        self.dirty.pop((kind, key), None)
        self.deleted[(kind, key)] = tenant
