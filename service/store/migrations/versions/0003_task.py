"""What Whisper was asked to do: a call's `task`, and the task each segment was made with.

`transcribe` keeps the spoken language; `translate` turns it into English. A segment's
`language` is the language that was spoken (given, or detected per utterance), so with both
columns a reader can tell a translated line from a transcribed one. Nullable, so rows from
before (and segments received from a peer that does not say) stay valid.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("calls", sa.Column("task", sa.String(16), nullable=True))
    op.add_column("segments", sa.Column("task", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("segments") as batch:
        batch.drop_column("task")
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("task")
