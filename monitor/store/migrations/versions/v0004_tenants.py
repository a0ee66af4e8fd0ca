"""Tenants: whose each job is (issue 24, point 5).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

``jobs.tenant`` is the customer a job belongs to (its options' ``tenant``), filtered on by
every read of a tenant's caller (index ``ix_jobs_tenant_when``); ``changes.tenant`` the tenant
of a job change, also of a deleted job (whose ``data`` is null), so the websocket sends it only
to the clients that may see it. Jobs already stored get their tenant from their stored
options (``meta``), so an upgraded store shows what a fresh one rebuilt from events would.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: A valid tenant name (``jobqueue.shared.tenants.TENANT_PATTERN``, copied: a revision is frozen).
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: What ``/api/jobs`` orders by (``monitor.store.models.JOB_WHEN``).
JOB_WHEN = sa.text("coalesce(submitted_at, received_at, started_at, finished_at)")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("tenant", sa.String(length=64), nullable=True))
    op.add_column("changes", sa.Column("tenant", sa.String(length=64), nullable=True))
    op.create_index("ix_jobs_tenant_when", "jobs", ["tenant", JOB_WHEN, "id"])
    _backfill()


def _backfill() -> None:
    """Each stored job's tenant from its stored options, in batches."""
    bind = op.get_bind()
    jobs = sa.table("jobs", sa.column("id", sa.String()), sa.column("meta", sa.JSON()),
                    sa.column("tenant", sa.String()))
    found: list[dict[str, str]] = []
    for job_id, meta in bind.execute(sa.select(jobs.c.id, jobs.c.meta).where(jobs.c.meta.is_not(None))):
        tenant = meta.get("tenant") if isinstance(meta, dict) else None
        if isinstance(tenant, str) and _TENANT.fullmatch(tenant):
            found.append({"job_id": job_id, "value": tenant})
    update = sa.update(jobs).where(jobs.c.id == sa.bindparam("job_id")).values(tenant=sa.bindparam("value"))
    for start in range(0, len(found), 500):
        bind.execute(update, found[start:start + 500])


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_when", table_name="jobs")
    op.drop_column("changes", "tenant")
    op.drop_column("jobs", "tenant")
