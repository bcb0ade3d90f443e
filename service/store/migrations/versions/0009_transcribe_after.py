"""Calls that are transcribed after they end, without live captions ("transcribe": "after").

A node whose ASR worker is saturated admits such a call (issue 15), and a restart must know
that an interrupted one still wants its post-call pass. Existing rows get false.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "calls",
        sa.Column("transcribe_after", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("transcribe_after")
