"""add jobs.view_paths: the input artifacts of a multiview job's other views

Nullable, so every job stored before this revision reads as a single-image job.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 21:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("view_paths", sa.JSON(), nullable=True))


def downgrade() -> None:
    # SQLite cannot drop a column in place: the batch rebuilds the table there
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("view_paths")
