"""The monitor's store: machines, workers, connectors, jobs, their event timeline, and the
change log that feeds websocket clients.

SQLAlchemy 2 models and every query live here (views never write SQL). SQLite by default (WAL,
so readers never block the single writer), any SQLAlchemy URL works (PostgreSQL is tested).

Every change bumps one global sequence number: the writer (:meth:`Store.write`) collects the
objects an apply touched, and at commit gives each one the next ``seq`` and appends its full
serialised form to ``changes``. A snapshot is read with its ``seq`` in one read transaction, so
"snapshot at N, then every change > N from the change log" has no gap and no duplicate, also
in a process that is not the writer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.schema import CreateIndex

from jobqueue.config import Settings
from jobqueue.states import FINAL_JOB_STATES, JobStatus, empty_progress
from monitor import capabilities
from monitor.safestats import safe_median
from monitor.safestats import summary as safe_summary

#: Job statuses that count as "unfinished" in a snapshot.
OPEN_STATUSES = tuple(s.value for s in JobStatus if s not in FINAL_JOB_STATES)
#: Final job statuses as stored strings.
FINAL_STATUSES = tuple(s.value for s in FINAL_JOB_STATES)
#: Timeline entries kept per job (progress events of a long job are many).
MAX_EVENTS_PER_JOB = 300


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Counter(Base):
    """Named counters; ``seq`` is the global change sequence."""

    __tablename__ = "counters"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class Machine(Base):
    __tablename__ = "machines"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="offline")
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)


class Worker(Base):
    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    machine_id: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    gpu: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="online")
    draining: Mapped[bool] = mapped_column(Boolean, default=False)
    identity_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    identity_warning: Mapped[str | None] = mapped_column(Text, nullable=True)
    services: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    queues: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    active: Mapped[int] = mapped_column(Integer, default=0)
    #: Celery's own per-process counter (from heartbeats), shown as ``celery_processed``.
    processed: Mapped[int] = mapped_column(Integer, default=0)
    #: Jobs held in the store that ended on this worker, and the failed/timed-out ones of
    #: them: bumped where a job first reaches a final state, lowered where one is pruned.
    ended: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, default=0)
    current_job: Mapped[str | None] = mapped_column(String(255), nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    heartbeat_received: Mapped[float | None] = mapped_column(Float, nullable=True)
    freq: Mapped[float | None] = mapped_column(Float, nullable=True)
    online_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    sw_ver: Mapped[str | None] = mapped_column(String(64), nullable=True)
    loadavg: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)


class Connector(Base):
    __tablename__ = "connectors"
    worker: Mapped[str] = mapped_column(String(255), ForeignKey("workers.name"), primary_key=True)
    service: Mapped[str] = mapped_column(String(255), primary_key=True)
    status: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    received_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    event_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    interval: Mapped[float | None] = mapped_column(Float, nullable=True)
    stale: Mapped[bool] = mapped_column(Boolean, default=False)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    service: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    machine_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    queue: Mapped[str | None] = mapped_column(String(255), nullable=True)
    priority: Mapped[int | None] = mapped_column(Integer, nullable=True)
    workflow_id: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    attempt_since: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    submitted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    received_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    runtime: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result: Mapped[Any] = mapped_column(JSON, nullable=True)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    n_events: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)


class ServiceStat(Base):
    """Completion-time median of one service's recent completed jobs: what a client needs to
    estimate a queued job's wait. A row of its own so a changed median is a change (kind
    ``service``) with a seq, like any other object."""

    __tablename__ = "service_stats"
    service: Mapped[str] = mapped_column(String(255), primary_key=True)
    median: Mapped[float | None] = mapped_column(Float, nullable=True)
    samples: Mapped[int] = mapped_column(Integer, default=0)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)


class JobEvent(Base):
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(255), index=True)
    type: Mapped[str] = mapped_column(String(64))
    timestamp: Mapped[float | None] = mapped_column(Float, nullable=True)
    fields: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Change(Base):
    __tablename__ = "changes"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(512))
    data: Mapped[Any] = mapped_column(JSON, nullable=True)


Index("ix_jobs_status_finished", Job.status, Job.finished_at)
#: The snapshot's "most recent finished" list walks this backwards (no sort of all rows).
Index("ix_jobs_finished_id", Job.finished_at, Job.id)
#: A service's recent completed runtimes (its median) without scanning all its jobs.
Index("ix_jobs_service_status_finished", Job.service, Job.status, Job.finished_at)
#: The time /api/jobs orders by (newest first).
JOB_WHEN = func.coalesce(Job.submitted_at, Job.received_at, Job.started_at, Job.finished_at)
Index("ix_jobs_when", JOB_WHEN, Job.id)
Index("ix_jobs_status_when", Job.status, JOB_WHEN, Job.id)
Index("ix_jobs_worker_when", Job.worker, JOB_WHEN, Job.id)
Index("ix_jobs_service_when", Job.service, JOB_WHEN, Job.id)
#: /api/jobs?sort=runtime, and repair's "changed since its last pass" (no scan of all jobs).
Index("ix_jobs_runtime_id", Job.runtime, Job.id)
Index("ix_jobs_updated", Job.updated_at)
#: Orders /api/jobs can sort by: the column and a tie-breaker.
JOB_SORTS = {"submitted": JOB_WHEN, "finished": Job.finished_at, "runtime": Job.runtime}

# -- serialisation -------------------------------------------------------------------------


def connector_dict(c: Connector) -> dict[str, Any]:
    return {
        "status": c.status,
        "message": c.message,
        "details": c.details or {},
        "updated_at": c.updated_at,
        "seq": c.event_seq,
        "interval": c.interval,
        "stale": bool(c.stale),
    }


def worker_dict(w: Worker, connectors: list[Connector], now: float) -> dict[str, Any]:
    """A worker as the API shows it; ``processed``/``failed`` count the jobs the store holds
    that ended on it (see :func:`monitor.apply._count_end`)."""
    status = w.status
    if status == "online" and w.draining:
        status = "draining"
    return {
        "name": w.name,
        "machine_id": w.machine_id,
        "gpu": w.gpu,
        "status": status,
        "identity_complete": bool(w.machine_id) and w.gpu is not None and not w.identity_warning,
        "identity_warning": w.identity_warning,
        "connectors": {c.service: connector_dict(c) for c in sorted(connectors, key=lambda c: c.service)},
        "capabilities": capabilities.summary({c.service: {"details": c.details} for c in connectors}),
        "services": list(w.services or []),
        "queues": list(w.queues or []),
        "active": w.active,
        "processed": w.ended or 0,
        "failed": w.failed or 0,
        "celery_processed": w.processed,
        "current_job": w.current_job,
        "heartbeat_at": w.heartbeat_at,
        "heartbeat_age": None if w.heartbeat_received is None else round(max(0.0, now - w.heartbeat_received), 3),
        "freq": w.freq,
        "online_at": w.online_at,
        "sw_ver": w.sw_ver,
        "loadavg": w.loadavg,
        "pid": w.pid,
        "seq": w.seq,
    }


def machine_dict(m: Machine, workers: list[str]) -> dict[str, Any]:
    return {"id": m.id, "workers": sorted(workers), "status": m.status, "last_seen": m.last_seen, "seq": m.seq}


def _meta_int(meta: dict[str, Any], key: str) -> int | None:
    value = meta.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _meta_str(meta: dict[str, Any], key: str) -> str | None:
    value = meta.get(key)
    return value[:255] if isinstance(value, str) and value else None


def job_dict(j: Job) -> dict[str, Any]:
    """A job as the API and the websocket show it.

    Nothing here depends on the clock of the reader, so a snapshot and the deltas carry the
    same values: a processing job's ``eta_seconds`` is the one its worker computed from the
    observed rate with its last progress report, taken at ``eta_at``.
    """
    progress = empty_progress()
    progress.update(j.progress or {})
    reported_at = progress.pop("reported_at", None)
    meta = j.meta or {}
    processing = j.status == JobStatus.PROCESSING.value
    return {
        "id": j.id,
        "name": j.name,
        "service": j.service,
        "status": j.status,
        "worker": j.worker,
        "machine_id": j.machine_id,
        "queue": j.queue,
        "priority": j.priority,
        "workflow_id": j.workflow_id,
        "step": j.step,
        "workflow_steps": _meta_int(meta, "workflow_steps"),
        "batch_id": _meta_str(meta, "batch_id"),
        "batch_index": _meta_int(meta, "batch_index"),
        "batch_size": _meta_int(meta, "batch_size"),
        "attempt": j.attempt,
        "retries": j.attempt,
        "progress": progress,
        "submitted_at": j.submitted_at,
        "received_at": j.received_at,
        "started_at": j.started_at,
        "finished_at": j.finished_at,
        "runtime": j.runtime,
        "eta_seconds": progress["eta_seconds"] if processing else None,
        "eta_at": reported_at if processing and progress["eta_seconds"] is not None else None,
        "queue_position": None,
        "error": j.error,
        "result": j.result,
        "payload_summary": _meta_str(meta, "payload_summary"),
        "requires": meta.get("requires") if isinstance(meta.get("requires"), dict) else None,
        "seq": j.seq,
    }


#: Step statuses that end a workflow with that status (the first such step's).
_BAD_STEP = ("failed", "timed_out", "cancelled")


def workflow_status(statuses: list[str], total: int) -> str:
    """A workflow's status from its known steps' (as ``WorkflowHandle.status``): the first
    failed/timed-out/cancelled step's; completed when all ``total`` steps are; processing
    once any step left the queue; else queued."""
    for status in statuses:
        if status in _BAD_STEP:
            return status
    if len(statuses) >= total and all(s == "completed" for s in statuses):
        return "completed"
    if any(s != "queued" for s in statuses):
        return "processing"
    return "queued"


def service_dict(s: ServiceStat) -> dict[str, Any]:
    return {"service": s.service, "median": s.median, "samples": s.samples, "seq": s.seq}


def _new_service_stat(session: Session, service: str) -> ServiceStat:
    stat = ServiceStat(service=service, median=None, samples=0, seq=0)
    session.add(stat)
    return stat


#: Completed runtimes per service a median is taken over (the most recent ones).
MEDIAN_WINDOW = 1000


def _recent_runtimes(session: Session, service: str) -> list[float]:
    rows = session.scalars(
        select(Job.runtime).where(Job.service == service, Job.status == JobStatus.COMPLETED.value,
                                  Job.runtime.is_not(None))
        .order_by(Job.finished_at.desc()).limit(MEDIAN_WINDOW)
    )
    return [float(r) for r in rows if r is not None]


class Tx:
    """One write transaction: get-or-create rows, record timeline events, mark changes.

    :func:`monitor.apply.apply` works through this; :meth:`Store.write` turns what was
    marked into sequence numbers and change-log rows at commit. The session does not
    autoflush: rows this transaction looked up or created are kept in its own identity map
    (so a lookup never flushes the pending batch nor misses a row created earlier in it), and
    :meth:`prefetch` loads a whole batch's jobs and workers in one query each. Queries that
    must see pending changes (``jobs_of_worker``, ``workers_of_machine``) flush first.
    """

    def __init__(self, session: Session, now: float) -> None:
        self.session = session
        self.now = now
        self.dirty: dict[tuple[str, str], None] = {}
        self.deleted: dict[tuple[str, str], None] = {}
        self._jobs: dict[str, Job | None] = {}
        self._workers: dict[str, Worker | None] = {}
        self._connectors: dict[tuple[str, str], Connector | None] = {}
        self._machines: dict[str, Machine | None] = {}
        self.events: list[dict[str, Any]] = []

    def prefetch(self, job_ids: set[str], worker_names: set[str]) -> None:
        """Load the jobs, workers and those workers' connectors a batch refers to, in one
        ``SELECT ... WHERE id IN (...)`` per table and chunk; what is not found is
        remembered as absent (no second lookup)."""
        session = self.session
        ids = sorted(job_ids - self._jobs.keys())
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(chunk)))}
            self._jobs.update((one, jobs.get(one)) for one in chunk)
        todo = sorted(worker_names - self._workers.keys())
        for start in range(0, len(todo), 500):
            chunk = todo[start:start + 500]
            workers = {w.name: w for w in session.scalars(select(Worker).where(Worker.name.in_(chunk)))}
            self._workers.update((one, workers.get(one)) for one in chunk)
        names = sorted(n for n in worker_names if self._workers.get(n) is not None)
        for start in range(0, len(names), 500):
            chunk = names[start:start + 500]
            for conn in session.scalars(select(Connector).where(Connector.worker.in_(chunk))):
                self._connectors[(conn.worker, conn.service)] = conn

    def job(self, job_id: str, create: bool = True) -> Job | None:
        if job_id in self._jobs:
            job = self._jobs[job_id]
        else:
            job = self._jobs[job_id] = self.session.get(Job, job_id)
        if job is None and create:
            job = Job(id=job_id, status="", attempt=0, n_events=0, seq=0, progress=empty_progress())
            self.session.add(job)
            self._jobs[job_id] = job
        return job

    def worker(self, name: str, create: bool = True) -> Worker | None:
        if name in self._workers:
            worker = self._workers[name]
        else:
            worker = self._workers[name] = self.session.get(Worker, name)
        if worker is None and create:
            worker = Worker(name=name, status="online", draining=False, active=0, processed=0, ended=0,
                            failed=0, seq=0)
            # Jobs that ended on it before it was known count from the start (flushed first,
            # so jobs ended earlier in this transaction are seen); later ends bump the counts.
            self.session.flush()
            worker.ended, worker.failed = job_counts(self.session, name).get(name, (0, 0))
            self.session.add(worker)
            self.session.flush()
            self._workers[name] = worker
        return worker

    def connector(self, worker: str, service: str, create: bool = True) -> Connector | None:
        key = (worker, service)
        if key in self._connectors:
            conn = self._connectors[key]
        else:
            conn = self._connectors[key] = self.session.get(Connector, key)
        if conn is None and create:
            conn = Connector(worker=worker, service=service, status="starting", message="", stale=False)
            self.session.add(conn)
            self._connectors[key] = conn
        return conn

    def machine(self, machine_id: str, create: bool = True) -> Machine | None:
        if machine_id in self._machines:
            machine = self._machines[machine_id]
        else:
            machine = self._machines[machine_id] = self.session.get(Machine, machine_id)
        if machine is None and create:
            machine = Machine(id=machine_id, status="offline", seq=0)
            self.session.add(machine)
            self._machines[machine_id] = machine
        return machine

    def jobs_of_worker(self, worker: str, statuses: tuple[str, ...]) -> list[Job]:
        self.session.flush()
        return list(self.session.scalars(select(Job).where(Job.worker == worker, Job.status.in_(statuses))))

    def workers_of_machine(self, machine_id: str) -> list[Worker]:
        self.session.flush()
        return list(self.session.scalars(select(Worker).where(Worker.machine_id == machine_id)))

    def add_event(self, job: Job, type_: str, timestamp: float | None, fields: dict[str, Any]) -> None:
        """Add a timeline entry (written with one bulk insert at commit)."""
        if job.n_events >= MAX_EVENTS_PER_JOB:
            return
        job.n_events += 1
        self.events.append({"job_id": job.id, "type": type_, "timestamp": timestamp, "fields": fields})

    def forget_job(self, job_id: str) -> None:
        """A job deleted in this transaction: no lookup finds it, no timeline row is added."""
        self._jobs[job_id] = None
        if any(e["job_id"] == job_id for e in self.events):
            self.events = [e for e in self.events if e["job_id"] != job_id]

    def touch(self, kind: str, key: str) -> None:
        """Mark an object changed: it gets a new seq and a change-log row at commit."""
        self.dirty[(kind, key)] = None

    def drop(self, kind: str, key: str) -> None:
        """Mark an object deleted (a change with ``data: null``)."""
        self.dirty.pop((kind, key), None)
        self.deleted[(kind, key)] = None


class Store:
    """All reads and writes of the monitor's database."""

    def __init__(
        self,
        url: str,
        *,
        keep_jobs: int = 1_000_000,
        keep_seconds: float = 7 * 24 * 3600.0,
        changes_keep: int = 20000,
        echo: bool = False,
    ) -> None:
        self.url = url
        self.keep_jobs = keep_jobs
        self.keep_seconds = keep_seconds
        self.changes_keep = changes_keep
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            _sqlite_setup(self.engine)
        self._create_schema()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        with self._sessions.begin() as session:
            if session.get(Counter, "seq") is None:
                session.add(Counter(name="seq", value=0))

    def _create_schema(self) -> None:
        """Create missing tables and indexes; bring a database of an older monitor up to date
        (the workers' job counters, counted once from the jobs it holds)."""
        Base.metadata.create_all(self.engine)
        columns = {c["name"] for c in inspect(self.engine).get_columns("workers")}
        with self.engine.begin() as conn:
            for table in (Job.__table__, Worker.__table__):
                for index in table.indexes:  # type: ignore[attr-defined]  # create_all adds indexes only with a new table
                    conn.execute(CreateIndex(index, if_not_exists=True))
            if "ended" not in columns:
                conn.execute(text("ALTER TABLE workers ADD COLUMN ended INTEGER NOT NULL DEFAULT 0"))
                with Session(conn) as session:
                    for name, (ended, failed) in job_counts(session).items():
                        session.execute(update(Worker).where(Worker.name == name).values(ended=ended, failed=failed))

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls(
            settings.monitor_db,
            keep_jobs=settings.monitor_keep_jobs,
            keep_seconds=settings.monitor_keep_seconds,
            changes_keep=settings.monitor_changes_keep,
        )

    def close(self) -> None:
        self.engine.dispose()

    # -- writing ---------------------------------------------------------------------------
    @contextmanager
    def write(self, now: float | None = None) -> Iterator[Tx]:
        """A write transaction; marked objects get their seq and change rows at commit.

        Yields a :class:`Tx`; ``tx.changes`` (after the block) lists ``(seq, kind, key, data)``.
        """
        with self._sessions.begin() as session:
            # BEGIN IMMEDIATE on SQLite: take the write lock up front, so two writers queue
            # on the busy timeout instead of failing on a lock upgrade.
            session.connection(execution_options={"jobqueue_write": True})
            tx = Tx(session, time.time() if now is None else now)
            with session.no_autoflush:
                yield tx
            if tx.events:
                session.execute(insert(JobEvent), tx.events)
            tx.changes = self._record_changes(tx)  # type: ignore[attr-defined]

    def _record_changes(self, tx: Tx) -> list[tuple[int, str, str, Any]]:
        session = tx.session
        if not tx.dirty and not tx.deleted:
            return []
        session.flush()
        counter = session.get(Counter, "seq", with_for_update=not self.is_sqlite)
        assert counter is not None
        seq = counter.value
        out: list[tuple[int, str, str, Any]] = []
        for kind, key in list(tx.deleted):
            seq += 1
            out.append((seq, kind, key, None))
        # One query for the connectors of every changed worker, not one per worker.
        names = sorted(key for kind, key in tx.dirty if kind == "worker")
        conns: dict[str, list[Connector]] = {}
        for start in range(0, len(names), 500):
            for c in session.scalars(select(Connector).where(Connector.worker.in_(names[start:start + 500]))):
                conns.setdefault(c.worker, []).append(c)
        for kind, key in list(tx.dirty):
            seq += 1
            obj = self._obj(tx, kind, key)
            if obj is None:
                out.append((seq, kind, key, None))
                continue
            obj.seq = seq
            out.append((seq, kind, key, self._serialise(session, kind, obj, tx.now, conns)))
        counter.value = seq
        if out:
            session.execute(insert(Change), [{"seq": s, "kind": k, "key": key, "data": d} for s, k, key, d in out])
        return out

    @staticmethod
    def _obj(tx: Tx, kind: str, key: str) -> Any:
        if kind == "service":
            return tx.session.get(ServiceStat, key) or _new_service_stat(tx.session, key)
        if kind == "job":
            return tx.job(key, create=False)
        if kind == "worker":
            return tx.worker(key, create=False)
        return tx.machine(key, create=False)

    def _serialise(self, session: Session, kind: str, obj: Any, now: float,
                   conns: dict[str, list[Connector]]) -> dict[str, Any]:
        if kind == "service":
            values = _recent_runtimes(session, obj.service)
            obj.median = safe_median(values)
            obj.samples = len(values)
            return service_dict(obj)
        if kind == "job":
            return job_dict(obj)
        if kind == "worker":
            return worker_dict(obj, conns.get(obj.name, []), now)
        names = list(session.scalars(select(Worker.name).where(Worker.machine_id == obj.id)))
        return machine_dict(obj, names)

    def prune(self, now: float | None = None) -> int:
        """Delete finished jobs beyond the age/count limits and old change rows. Returns how
        many jobs were pruned (each one a ``data: null`` change)."""
        now = time.time() if now is None else now
        with self.write(now) as tx:
            session = tx.session
            old = set(session.scalars(
                select(Job.id).where(Job.status.in_(FINAL_STATUSES), Job.finished_at < now - self.keep_seconds)
            ))
            extra = set(session.scalars(
                select(Job.id).where(Job.status.in_(FINAL_STATUSES))
                .order_by(Job.finished_at.desc(), Job.id).offset(self.keep_jobs)
            ))
            ids = sorted(old | extra)
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                # Their workers' counts and their services' medians change with them.
                for svc in session.scalars(select(Job.service).where(Job.id.in_(chunk)).distinct()):
                    if svc:
                        tx.touch("service", svc)
                for name, (ended, failed) in job_counts(session, ids=chunk).items():
                    worker = tx.worker(name, create=False)
                    if worker is not None:
                        worker.ended = max(0, (worker.ended or 0) - ended)
                        worker.failed = max(0, (worker.failed or 0) - failed)
                        tx.touch("worker", name)
                session.execute(delete(JobEvent).where(JobEvent.job_id.in_(chunk)))
                session.execute(delete(Job).where(Job.id.in_(chunk)))
                for job_id in chunk:
                    tx.drop("job", job_id)
        with self._sessions.begin() as session:
            top = session.get(Counter, "seq")
            assert top is not None
            session.execute(delete(Change).where(Change.seq <= top.value - self.changes_keep))
        return len(ids)

    # -- reading ---------------------------------------------------------------------------
    @contextmanager
    def read(self) -> Iterator[Session]:
        """One read transaction that sees one consistent snapshot of the database."""
        session = self._sessions()
        try:
            if self.is_sqlite:
                session.connection()
            else:
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield session
        finally:
            session.rollback()
            session.close()

    def seq(self) -> int:
        with self.read() as session:
            counter = session.get(Counter, "seq")
            return counter.value if counter else 0

    def snapshot(self, finished_limit: int = 200, now: float | None = None) -> dict[str, Any]:
        """The whole state at one seq: machines, workers, unfinished jobs and the most
        recent ``finished_limit`` finished ones."""
        now = time.time() if now is None else now
        with self.read() as session:
            counter = session.get(Counter, "seq")
            seq = counter.value if counter else 0
            workers = self._workers(session, now)
            machines = self._machines(session)
            jobs = list(session.scalars(select(Job).where(Job.status.in_(OPEN_STATUSES)).order_by(Job.submitted_at, Job.id)))
            finished = list(session.scalars(
                # (finished_at DESC, id DESC) walks ix_jobs_finished_id backwards and stops
                # after the limit, instead of sorting every finished job. ``status || ''``
                # keeps SQLite's planner off ix_jobs_status, which would fetch all finished
                # jobs first (it has no statistics to know they are most of the table).
                select(Job).where((Job.status + "").in_(FINAL_STATUSES))
                .order_by(Job.finished_at.desc(), Job.id.desc()).limit(max(0, finished_limit))
            ))
            services = [service_dict(x) for x in session.scalars(select(ServiceStat).order_by(ServiceStat.service))]
            return {
                "seq": seq,
                "machines": machines,
                "workers": workers,
                "jobs": [job_dict(j) for j in jobs + finished],
                "services": services,
            }

    def changes_since(self, since: int, limit: int = 1000) -> list[dict[str, Any]] | None:
        """Changes with seq > ``since`` in order; None when the log no longer holds them all
        (the client then needs a fresh snapshot)."""
        with self.read() as session:
            counter = session.get(Counter, "seq")
            top = counter.value if counter else 0
            if since >= top:
                return [] if since == top else None
            first = session.scalar(select(func.min(Change.seq)))
            if first is None or first > since + 1:
                return None
            rows = session.scalars(select(Change).where(Change.seq > since).order_by(Change.seq).limit(limit))
            return [{"seq": c.seq, "kind": c.kind, "id": c.key, "data": c.data} for c in rows]

    def _workers(self, session: Session, now: float) -> list[dict[str, Any]]:
        conns: dict[str, list[Connector]] = {}
        for c in session.scalars(select(Connector)):
            conns.setdefault(c.worker, []).append(c)
        return [worker_dict(w, conns.get(w.name, []), now)
                for w in session.scalars(select(Worker).order_by(Worker.name))]

    def _machines(self, session: Session) -> list[dict[str, Any]]:
        names: dict[str, list[str]] = {}
        for name, machine_id in session.execute(select(Worker.name, Worker.machine_id)):
            if machine_id:
                names.setdefault(machine_id, []).append(name)
        return [machine_dict(m, names.get(m.id, [])) for m in session.scalars(select(Machine).order_by(Machine.id))]

    def machines(self) -> list[dict[str, Any]]:
        with self.read() as session:
            return self._machines(session)

    def workers(self, now: float | None = None) -> list[dict[str, Any]]:
        with self.read() as session:
            return self._workers(session, time.time() if now is None else now)

    def worker(self, name: str, now: float | None = None) -> dict[str, Any] | None:
        with self.read() as session:
            w = session.get(Worker, name)
            if w is None:
                return None
            conns = list(session.scalars(select(Connector).where(Connector.worker == name)))
            return worker_dict(w, conns, time.time() if now is None else now)

    def job(self, job_id: str, with_events: bool = True) -> dict[str, Any] | None:
        with self.read() as session:
            j = session.get(Job, job_id)
            if j is None:
                return None
            data = job_dict(j)
            data["meta"] = j.meta or {}
            if with_events:
                rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
                data["events"] = [{"type": e.type, "timestamp": e.timestamp, "fields": e.fields or {}} for e in rows]
            return data

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
        limit: int = 50,
        offset: int = 0,
        sort: str = "submitted",
        descending: bool = True,
    ) -> tuple[list[dict[str, Any]], int]:
        """Jobs matching the filters, in ``sort`` order (:data:`JOB_SORTS`; newest first by
        default; a workflow's: in step order), and exactly how many match (a count over the
        same filters, answered from the indexes)."""
        conds = []
        if workflow:
            conds.append(Job.workflow_id == workflow)
        if state:
            conds.append(Job.status.in_(state))
        if service:
            conds.append(Job.service == service)
        if worker:
            conds.append(Job.worker == worker)
        if machine:
            conds.append(Job.machine_id == machine)
        when = JOB_WHEN
        if since is not None:
            conds.append(when >= since)
        if until is not None:
            conds.append(when < until)
        if q:
            pattern = f"%{q}%"
            conds.append(or_(Job.id.like(pattern), Job.service.like(pattern), Job.worker.like(pattern),
                             Job.workflow_id.like(pattern)))
        with self.read() as session:
            # count(*), not count(id): SQLite then walks its narrowest covering index.
            total = int(session.scalar(select(func.count()).select_from(Job).where(*conds)) or 0)
            # (when DESC, id DESC) walks ix_jobs_when backwards instead of sorting every match.
            column = JOB_SORTS.get(sort, when)
            order = (Job.step, when, Job.id) if workflow else \
                ((column.desc(), Job.id.desc()) if descending else (column.asc(), Job.id.asc()))
            rows = session.scalars(select(Job).where(*conds).order_by(*order).limit(limit).offset(offset))
            return [job_dict(j) for j in rows], total

    def workflow(self, workflow_id: str) -> dict[str, Any] | None:
        """A workflow's steps the monitor has seen, in step order, and its status; None when
        no job of it is known. Later steps are published only when the previous one ends, so
        ``total_steps`` (from the steps' metadata) may exceed ``len(steps)``."""
        with self.read() as session:
            rows = list(session.scalars(
                select(Job).where(Job.workflow_id == workflow_id).order_by(Job.step, Job.submitted_at, Job.id)
            ))
            steps = [job_dict(j) for j in rows]
            meta = (rows[0].meta or {}) if rows else {}
        if not steps:
            return None
        total = max([s["workflow_steps"] or 0 for s in steps] + [s["step"] or 0 for s in steps])
        submitted = meta.get("workflow_submitted_at")
        return {
            "id": workflow_id,
            "status": workflow_status([s["status"] for s in steps], total),
            "total_steps": total,
            "priority": steps[0]["priority"],
            "submitted_at": submitted if isinstance(submitted, (int, float)) else steps[0]["submitted_at"],
            "steps": steps,
        }

    def queued_jobs(self) -> list[dict[str, Any]]:
        """Queued jobs in the order they will be taken: priority first, then age."""
        with self.read() as session:
            rows = session.scalars(
                select(Job).where(Job.status == JobStatus.QUEUED.value)
                .order_by(Job.priority.desc(), Job.submitted_at, Job.id)
            )
            return [job_dict(j) for j in rows]

    def queue_order(self) -> list[dict[str, Any]]:
        """Like :meth:`queued_jobs`, with only the fields a queue position and wait need (a
        backlog may be long: 20,000 whole jobs take seconds to build)."""
        with self.read() as session:
            rows = session.execute(
                select(Job.id, Job.status, Job.queue, Job.service, Job.priority, Job.submitted_at)
                .where(Job.status == JobStatus.QUEUED.value)
                .order_by(Job.priority.desc(), Job.submitted_at, Job.id)
            )
            keys = ("id", "status", "queue", "service", "priority", "submitted_at")
            return [dict(zip(keys, row, strict=True)) for row in rows]

    def service_medians(self) -> dict[str, float | None]:
        """Each service's completion-time median (the ``service`` objects' ``median``)."""
        with self.read() as session:
            return {s.service: s.median for s in session.scalars(select(ServiceStat))}

    def durations(self, service: str | None = None, limit: int = 1000) -> dict[str, list[float]]:
        """Recent completed runtimes per service (seconds), newest first."""
        conds = [Job.status == JobStatus.COMPLETED.value, Job.runtime.is_not(None)]
        if service:
            conds.append(Job.service == service)
        out: dict[str, list[float]] = {}
        with self.read() as session:
            rows = session.execute(
                select(Job.service, Job.runtime).where(*conds).order_by(Job.finished_at.desc()).limit(limit * 20)
            )
            for svc, runtime in rows:
                bucket = out.setdefault(svc or "unknown", [])
                if runtime is not None and len(bucket) < limit:
                    bucket.append(float(runtime))
        return out

    def stats(self, now: float | None = None, window: float = 3600.0) -> dict[str, Any]:
        """Per-service counts and completion-time statistics, failure patterns, throughput."""
        now = time.time() if now is None else now
        services: dict[str, dict[str, Any]] = {}
        with self.read() as session:
            for svc, status, count in session.execute(
                select(Job.service, Job.status, func.count()).group_by(Job.service, Job.status)
            ):
                entry = services.setdefault(svc or "unknown", {"count": 0, "by_status": {}})
                entry["count"] += count
                entry["by_status"][status] = count
            failures: dict[tuple[str, str, str], dict[str, Any]] = {}
            rows = session.execute(
                select(Job.service, Job.error, Job.finished_at)
                .where(Job.status.in_(("failed", "timed_out", "retrying", "lost", "cancelled")), Job.error.is_not(None))
                .order_by(Job.finished_at.desc()).limit(5000)
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
                select(Job.status, Job.finished_at).where(Job.finished_at >= now - window, Job.finished_at <= now + window,
                                                          Job.status.in_(FINAL_STATUSES))
            ):
                if finished_at is None:  # excluded by the query; narrows the type
                    continue
                t = int(finished_at // 60 * 60)
                bucket = minutes.setdefault(t, {"t": t, "completed": 0, "failed": 0})
                bucket["completed" if status == "completed" else "failed"] += 1
        for svc, values in self.durations().items():
            entry = services.setdefault(svc, {"count": 0, "by_status": {}})
            entry.update(safe_summary(values))  # finite and overflow-free whatever is stored
        for entry in services.values():
            entry["completed"] = entry["by_status"].get("completed", 0)
            entry["failed"] = sum(entry["by_status"].get(s, 0) for s in ("failed", "timed_out"))
            for stat in ("median", "mean", "min", "max", "p95"):
                entry.setdefault(stat, None)
            entry.setdefault("samples", 0)
        return {
            "services": services,
            "throughput": [minutes[t] for t in sorted(minutes)],
            "failures": sorted(failures.values(), key=lambda f: (-f["count"], f["service"], f["error_type"])),
        }

    def known_queues(self) -> list[str]:
        """Queue names seen on workers and jobs."""
        names: set[str] = set()
        with self.read() as session:
            for (queues,) in session.execute(select(Worker.queues)):
                names.update(q for q in (queues or []) if isinstance(q, str))
            names.update(q for q in session.scalars(select(Job.queue).distinct()) if q)
        return sorted(names)

    def final_job_ids(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` are stored with a final status."""
        out: set[str] = set()
        with self.read() as session:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                out.update(session.scalars(select(Job.id).where(Job.id.in_(chunk), Job.status.in_(FINAL_STATUSES))))
        return out

    def open_jobs_on_workers(self) -> list[tuple[str, str | None, str]]:
        """(job id, worker, status) of every assigned/processing job."""
        with self.read() as session:
            return list(session.execute(
                select(Job.id, Job.worker, Job.status).where(Job.status.in_(("assigned", "processing", "lost")))
            ).tuples())

    def set_draining(self, name: str, draining: bool) -> bool:
        """Record that a worker was asked to stop/restart consuming (a change if it differs)."""
        with self.write() as tx:
            worker = tx.worker(name, create=False)
            if worker is None:
                return False
            if worker.draining != draining:
                worker.draining = draining
                tx.touch("worker", name)
            return True


#: Final statuses that count as a failure in a worker's failed count.
FAILED_STATUSES = ("failed", "timed_out")


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
    query = select(Job.worker, Job.status, func.count()).where(Job.status.in_(FINAL_STATUSES))
    if worker is not None:
        query = query.where(Job.worker == worker)
    if ids is not None:
        query = query.where(Job.id.in_(ids))
    out: dict[str, list[int]] = {}
    for name, status, n in session.execute(query.group_by(Job.worker, Job.status)):
        if not name:
            continue
        entry = out.setdefault(name, [0, 0])
        entry[0] += int(n)
        if status in FAILED_STATUSES:
            entry[1] += int(n)
    return {name: (p, f) for name, (p, f) in out.items()}


def _sqlite_setup(engine: Engine) -> None:
    """WAL, a busy timeout, and real BEGINs (pysqlite's implicit transactions would let a
    "snapshot" read see commits made between its SELECTs)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("jobqueue_write") else "BEGIN")


