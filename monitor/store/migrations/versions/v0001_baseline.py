"""Baseline: the schema every monitor before migrations created (commit f702de3 and earlier).

Revision ID: 0001
Revises:
Create Date: 2026-12-06

Every CREATE here is IF NOT EXISTS, for one reason: a store of a monitor from before
migrations is adopted by running this revision on it (:func:`monitor.store.migrate.upgrade`),
which then adds only what such a store may lack -- ``metric_totals`` and ``stats_hourly``
(which older monitors created only once their metrics started), and indexes added after its
tables -- and stamps it. The workers' ``ended`` column, which those monitors added by hand
to older tables, is added before this runs. Revisions after this one are plain.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

#: What ``/api/jobs`` orders by (``monitor.store.models.JOB_WHEN``).
JOB_WHEN = sa.text("coalesce(submitted_at, received_at, started_at, finished_at)")
TABLES = ("connectors", "workers", "machines", "counters", "changes", "jobs", "job_events",
          "service_stats", "metric_totals", "stats_hourly")


def upgrade() -> None:
    _counters_and_changes()
    _machines_and_workers()
    _connectors()
    _jobs()
    _job_indexes()
    _job_events_and_service_stats()
    _metrics()


def downgrade() -> None:
    for table in TABLES:
        op.drop_table(table)


def _counters_and_changes() -> None:
    op.create_table(
        "counters",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        if_not_exists=True,
    )
    # The change sequence starts at 0 (here, under the upgrade's lock: two monitors opening
    # one new store never both insert it).
    op.execute("INSERT INTO counters (name, value) SELECT 'seq', 0 "
               "WHERE NOT EXISTS (SELECT 1 FROM counters WHERE name = 'seq')")
    op.create_table(
        "changes",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        if_not_exists=True,
    )


def _machines_and_workers() -> None:
    op.create_table(
        "machines",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )
    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("machine_id", sa.String(length=255), nullable=True),
        sa.Column("gpu", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("draining", sa.Boolean(), nullable=False),
        sa.Column("identity_source", sa.String(length=16), nullable=True),
        sa.Column("identity_warning", sa.Text(), nullable=True),
        sa.Column("services", sa.JSON(), nullable=True),
        sa.Column("queues", sa.JSON(), nullable=True),
        sa.Column("active", sa.Integer(), nullable=False),
        sa.Column("processed", sa.Integer(), nullable=False),
        sa.Column("ended", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("current_job", sa.String(length=255), nullable=True),
        sa.Column("heartbeat_at", sa.Float(), nullable=True),
        sa.Column("heartbeat_received", sa.Float(), nullable=True),
        sa.Column("freq", sa.Float(), nullable=True),
        sa.Column("online_at", sa.Float(), nullable=True),
        sa.Column("sw_ver", sa.String(length=64), nullable=True),
        sa.Column("loadavg", sa.JSON(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        if_not_exists=True,
    )
    op.create_index("ix_workers_machine_id", "workers", ["machine_id"], if_not_exists=True)


def _connectors() -> None:
    op.create_table(
        "connectors",
        sa.Column("worker", sa.String(length=255), nullable=False),
        sa.Column("service", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=True),
        sa.Column("received_at", sa.Float(), nullable=True),
        sa.Column("event_seq", sa.BigInteger(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("interval", sa.Float(), nullable=True),
        sa.Column("stale", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["worker"], ["workers.name"]),
        sa.PrimaryKeyConstraint("worker", "service"),
        if_not_exists=True,
    )


def _jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("service", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("machine_id", sa.String(length=255), nullable=True),
        sa.Column("queue", sa.String(length=255), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=True),
        sa.Column("workflow_id", sa.String(length=255), nullable=True),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("attempt_since", sa.Float(), nullable=True),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.Column("submitted_at", sa.Float(), nullable=True),
        sa.Column("received_at", sa.Float(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("runtime", sa.Float(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=True),
        sa.Column("n_events", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )


def _job_indexes() -> None:
    for column in ("service", "status", "worker", "workflow_id", "finished_at"):
        op.create_index(f"ix_jobs_{column}", "jobs", [column], if_not_exists=True)
    indexes: dict[str, list[str | sa.TextClause]] = {
        "ix_jobs_status_finished": ["status", "finished_at"],
        "ix_jobs_finished_id": ["finished_at", "id"],
        "ix_jobs_service_status_finished": ["service", "status", "finished_at"],
        "ix_jobs_when": [JOB_WHEN, "id"],
        "ix_jobs_status_when": ["status", JOB_WHEN, "id"],
        "ix_jobs_worker_when": ["worker", JOB_WHEN, "id"],
        "ix_jobs_service_when": ["service", JOB_WHEN, "id"],
        "ix_jobs_runtime_id": ["runtime", "id"],
        "ix_jobs_updated": ["updated_at"],
    }
    for name, columns in indexes.items():
        op.create_index(name, "jobs", columns, if_not_exists=True)


def _job_events_and_service_stats() -> None:
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("timestamp", sa.Float(), nullable=True),
        sa.Column("fields", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )
    op.create_index("ix_job_events_job_id", "job_events", ["job_id"], if_not_exists=True)
    op.create_table(
        "service_stats",
        sa.Column("service", sa.String(length=255), nullable=False),
        sa.Column("median", sa.Float(), nullable=True),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("service"),
        if_not_exists=True,
    )


def _metrics() -> None:
    op.create_table(
        "metric_totals",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("labels", sa.String(length=512), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", "labels"),
        if_not_exists=True,
    )
    op.create_table(
        "stats_hourly",
        sa.Column("hour", sa.Integer(), nullable=False),
        sa.Column("service", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("jobs", sa.Integer(), nullable=False),
        sa.Column("runtime_sum", sa.Float(), nullable=False),
        sa.Column("runtime_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("hour", "service", "status"),
        if_not_exists=True,
    )
