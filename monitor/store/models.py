"""The monitor's tables as SQLAlchemy 2 models, and their indexes.

Row classes end in ``Row`` (``JobRow``, ``WorkerRow``, ...) so they never read as jobqueue's
own ``Job``/``Worker`` notions. Table and column names are those of every earlier monitor, so
existing SQLite files and PostgreSQL stores keep working. A change here needs a migration
(:mod:`monitor.store.migrations`; a test compares the two).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from monitor.store.statuses import MachineStatus, WorkerStatus


class Base(DeclarativeBase):
    """The declarative base of every monitor table (``metric_totals`` too)."""

    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class CounterRow(Base):
    """Named counters; ``seq`` is the global change sequence."""

    __tablename__ = "counters"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class MachineRow(Base):
    """A machine: the workers reporting its id, online while any of them is."""

    __tablename__ = "machines"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=MachineStatus.OFFLINE.value)
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)


class WorkerRow(Base):
    """A Celery worker node: identity, heartbeat, its job counts."""

    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    machine_id: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    gpu: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=WorkerStatus.ONLINE.value)
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


class ConnectorRow(Base):
    """The last status one worker reported for one of its connectors."""

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


class JobRow(Base):
    """A job as the monitor merged it from events and repair."""

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
    #: The customer the job belongs to (its options' ``tenant``; None: the fleet's own).
    tenant: Mapped[str | None] = mapped_column(String(64), nullable=True)
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
    #: What the events say of the task beyond the columns: args, kwargs, eta, expires,
    #: routing_key, exchange, group_id (:func:`monitor.merge.job_rules.fill_task`).
    task: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    parent_id: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    root_id: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    n_events: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)


class ServiceStatRow(Base):
    """Completion-time median of one service's recent completed jobs: what a client needs to
    estimate a queued job's wait. A row of its own so a changed median is a change (kind
    ``service``) with a seq, like any other object."""

    __tablename__ = "service_stats"
    service: Mapped[str] = mapped_column(String(255), primary_key=True)
    median: Mapped[float | None] = mapped_column(Float, nullable=True)
    samples: Mapped[int] = mapped_column(Integer, default=0)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)


class JobEventRow(Base):
    """One entry of a job's timeline."""

    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(255), index=True)
    type: Mapped[str] = mapped_column(String(64))
    timestamp: Mapped[float | None] = mapped_column(Float, nullable=True)
    fields: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class ChangeRow(Base):
    """One change-log entry: an object's full serialised form at ``seq`` (``data`` null: deleted)."""

    __tablename__ = "changes"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(512))
    data: Mapped[Any] = mapped_column(JSON, nullable=True)
    #: A job change's tenant (also of a deleted job, whose ``data`` is null): whose websocket
    #: clients may see it (see :mod:`monitor.web.tenancy`). None for other kinds.
    tenant: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ApiKeyRow(Base):
    """An API key: only the SHA-256 of its secret is kept (see :mod:`monitor.store.access`)."""

    __tablename__ = "api_keys"
    #: The key's public id, also the lookup prefix of the key (``jq_<id>_<secret>``).
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    role: Mapped[str] = mapped_column(String(16))
    tenant: Mapped[str | None] = mapped_column(String(255), nullable=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(255), default="")
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class AuditRow(Base):
    """One audited action: who (subject, role, tenant, address) did what to which target, and
    how it ended. Written only by the single writer, never changed, pruned after a while."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    subject: Mapped[str] = mapped_column(String(255))
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    tenant: Mapped[str | None] = mapped_column(String(255), nullable=True)
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(512), default="")
    outcome: Mapped[str] = mapped_column(String(16))
    status: Mapped[int] = mapped_column(Integer)
    detail: Mapped[str] = mapped_column(Text, default="")


class LeaseRow(Base):
    """The writer's lease (PostgreSQL stores shared by several monitors, :mod:`monitor.store.lease`):
    who writes (``holder``), under which ``term`` (bumped at every take-over) and until when
    (``expires_at``, the database's clock, Unix seconds)."""

    __tablename__ = "writer_lease"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255), default="")
    term: Mapped[int] = mapped_column(BigInteger, default=0)
    expires_at: Mapped[float] = mapped_column(Float, default=0.0)

Index("ix_jobs_status_finished", JobRow.status, JobRow.finished_at)
#: The snapshot's "most recent finished" list walks this backwards (no sort of all rows).
Index("ix_jobs_finished_id", JobRow.finished_at, JobRow.id)
#: A service's recent completed runtimes (its median) without scanning all its jobs.
Index("ix_jobs_service_status_finished", JobRow.service, JobRow.status, JobRow.finished_at)
#: The time /api/jobs orders by (newest first).
JOB_WHEN = func.coalesce(JobRow.submitted_at, JobRow.received_at, JobRow.started_at, JobRow.finished_at)
Index("ix_jobs_when", JOB_WHEN, JobRow.id)
Index("ix_jobs_status_when", JobRow.status, JOB_WHEN, JobRow.id)
Index("ix_jobs_worker_when", JobRow.worker, JOB_WHEN, JobRow.id)
Index("ix_jobs_service_when", JobRow.service, JOB_WHEN, JobRow.id)
#: A tenant's jobs, newest first (every read of a tenant's caller filters on it).
Index("ix_jobs_tenant_when", JobRow.tenant, JOB_WHEN, JobRow.id)
#: /api/jobs?sort=runtime, and repair's "changed since its last pass" (no scan of all jobs).
Index("ix_jobs_runtime_id", JobRow.runtime, JobRow.id)
Index("ix_jobs_updated", JobRow.updated_at)
#: Orders /api/jobs can sort by: the column and a tie-breaker.
JOB_SORTS = {"submitted": JOB_WHEN, "finished": JobRow.finished_at, "runtime": JobRow.runtime}
