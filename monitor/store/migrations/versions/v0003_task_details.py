"""Any Celery task is a first-class row (issue 28): its args and kwargs as the events carry them,
parent and root ids, ETA, expiry, routing key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

``jobs.task`` (JSON) holds what the task-sent/-received events say of a task beyond the columns
(``args``, ``kwargs``, ``eta``, ``expires``, ``routing_key``, ``exchange``, ``group_id``);
``jobs.parent_id`` and ``jobs.root_id`` (indexed) tie chain, group and chord members to their
parents and their canvas. New nullable columns: a store at 0002 gains them empty.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("task", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("parent_id", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("root_id", sa.String(length=255), nullable=True))
    op.create_index("ix_jobs_parent_id", "jobs", ["parent_id"])
    op.create_index("ix_jobs_root_id", "jobs", ["root_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_root_id", table_name="jobs")
    op.drop_index("ix_jobs_parent_id", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("root_id")
        batch.drop_column("parent_id")
        batch.drop_column("task")
