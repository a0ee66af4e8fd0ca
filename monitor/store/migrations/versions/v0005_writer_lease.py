"""The writer's lease: two monitors on one PostgreSQL store, one writing (issue 29, point 3).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

``writer_lease`` holds one row, ``writer``: the monitor that may write (``holder``), its
``term`` (bumped by every take-over; each write transaction checks it, so a paused old leader
cannot write once another took over) and ``expires_at`` (Unix seconds on the database's
clock). See :mod:`monitor.store.lease`. The row starts expired: the first monitor takes it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    lease = op.create_table(
        "writer_lease",
        sa.Column("name", sa.String(length=32), primary_key=True),
        sa.Column("holder", sa.String(length=255), nullable=False),
        sa.Column("term", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.bulk_insert(lease, [{"name": "writer", "holder": "", "term": 0, "expires_at": 0.0}])


def downgrade() -> None:
    op.drop_table("writer_lease")
