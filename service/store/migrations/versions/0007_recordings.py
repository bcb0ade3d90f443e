"""What a call records, and what became of its recording (service/recordings/).

* ``calls.record``: whether this node recorded the call (IM_RECORD, or the call's own
  ``record``). Rows from before recorded nothing: false.
* ``calls.peer_records``: whether the peer said (in its hello) that it records too; NULL
  when it did not say (an older node) or the call never connected.
* ``calls.recording_stopped``: why the recording ended before the call did
  (``disk_full``, ``io_error: ...``); NULL when it did not.
* ``calls.recording_deleted_at``: when the audio was deleted (DELETE .../recording, or
  retention); the files are gone from then on, the transcript stays.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "calls", sa.Column("record", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column("calls", sa.Column("peer_records", sa.Boolean(), nullable=True))
    op.add_column("calls", sa.Column("recording_stopped", sa.Text(), nullable=True))
    op.add_column(
        "calls", sa.Column("recording_deleted_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        for name in ("recording_deleted_at", "recording_stopped", "peer_records", "record"):
            batch.drop_column(name)
