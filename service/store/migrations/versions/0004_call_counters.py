"""Counters an ended call keeps: connections turned away, peer segments refused.

Before, only the live session showed them, so an ended call seemed never to have been
attacked. Existing rows get 0.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = ("rejected_connections", "segments_refused")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column(
            "calls", sa.Column(name, sa.Integer(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        for name in COLUMNS:
            batch.drop_column(name)
