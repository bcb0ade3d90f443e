"""Transcript revisions: the live one, and the final one a post-call pass makes.

A segment's `revision`: `live` (what the live pass caught during the call: every row so
far) or `final` (the post-call pass over the recording). A segment says whether the live
pass never produced it (`live_missed`: no live segment of that speaker overlaps it in
time) and, in the final revision, holds its words with their times and probabilities
(`words`, JSON). A segment's number is unique per call, revision and speaker.
`transcript_passes` is each post-call pass: what it runs with, where it is and how it
ended, so that a restarted node resumes the pending ones.

On SQLite, changing the unique constraint copies the `segments` table (a batch
migration), which drops its triggers: whatever triggers are on it (0005's search index)
are read first and created again on the copy, so the index covers both revisions.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

LIVE_KEY = ["call_id", "speaker", "number"]
REVISION_KEY = ["call_id", "revision", "speaker", "number"]


def _segment_triggers() -> list[str]:
    """The CREATE TRIGGER statements on `segments` (SQLite only: elsewhere ALTER TABLE
    keeps them)."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return []
    rows = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'segments'"
    )
    return [sql for (sql,) in rows if sql]


def _restore(triggers: list[str]) -> None:
    for sql in triggers:
        op.execute(sql)


def upgrade() -> None:
    triggers = _segment_triggers()
    with op.batch_alter_table("segments") as batch:
        batch.add_column(sa.Column("revision", sa.String(8), nullable=False, server_default="live"))
        batch.add_column(
            sa.Column("live_missed", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("words", sa.JSON(), nullable=True))
        batch.drop_constraint("uq_segment_number", type_="unique")
        batch.create_unique_constraint("uq_segment_number", REVISION_KEY)
        batch.create_check_constraint("ck_segment_revision", "revision IN ('live', 'final')")
    _restore(triggers)
    op.create_table(
        "transcript_passes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column(
            "call_id",
            sa.String(32),
            sa.ForeignKey("calls.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("revision", sa.String(8), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False, server_default=sa.text("0")),
        sa.Column("error", sa.Text()),
        sa.Column("segments", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("missed", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "state IN ('pending', 'running', 'done', 'failed')", name="ck_pass_state"
        ),
    )
    op.create_index("ix_transcript_passes_call_id", "transcript_passes", ["call_id"])
    op.create_index("ix_transcript_passes_state", "transcript_passes", ["state"])


def downgrade() -> None:
    # The final revisions go with the table that made them: the live transcript is what
    # the schema before this one holds.
    op.drop_index("ix_transcript_passes_state", "transcript_passes")
    op.drop_index("ix_transcript_passes_call_id", "transcript_passes")
    op.drop_table("transcript_passes")
    op.execute("DELETE FROM segments WHERE revision <> 'live'")
    triggers = _segment_triggers()
    with op.batch_alter_table("segments") as batch:
        batch.drop_constraint("ck_segment_revision", type_="check")
        batch.drop_constraint("uq_segment_number", type_="unique")
        batch.create_unique_constraint("uq_segment_number", LIVE_KEY)
        batch.drop_column("words")
        batch.drop_column("live_missed")
        batch.drop_column("revision")
    _restore(triggers)
