"""A worker's clock offset, estimated from its heartbeats (issue 28, point 3).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

``workers.clock_skew`` (seconds, positive: the worker's clock runs ahead) is what
:mod:`monitor.ingest.clocks` estimates; the worker card and ``/metrics`` show it. A new
nullable column: a store at 0004 gains it empty (not estimated yet).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("clock_skew", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("clock_skew")
