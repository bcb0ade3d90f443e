"""Calls and transcript segments.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("local_address", sa.String(300)),
        sa.Column("peer_address", sa.String(300)),
        sa.Column("input", sa.String(300)),
        sa.Column("output", sa.String(300)),
        sa.Column("language", sa.String(16)),
        sa.Column("transcribe", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("connected_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("end_reason", sa.String(200)),
        sa.Column("frames_sent", sa.Integer, nullable=False),
        sa.Column("frames_received", sa.Integer, nullable=False),
        sa.Column("bytes_sent", sa.Integer, nullable=False),
        sa.Column("bytes_received", sa.Integer, nullable=False),
    )
    op.create_index("ix_calls_state", "calls", ["state"])
    op.create_index("ix_calls_created_at", "calls", ["created_at"])
    op.create_table(
        "segments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "call_id",
            sa.String(32),
            sa.ForeignKey("calls.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("speaker", sa.String(8), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("start_s", sa.Float, nullable=False),
        sa.Column("end_s", sa.Float, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("language", sa.String(16)),
        sa.Column("avg_logprob", sa.Float),
        sa.Column("no_speech_prob", sa.Float),
        sa.Column("compression_ratio", sa.Float),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("call_id", "speaker", "number", name="uq_segment_number"),
        sa.CheckConstraint("speaker IN ('local', 'remote')", name="ck_segment_speaker"),
    )
    op.create_index("ix_segments_call_id", "segments", ["call_id"])


def downgrade() -> None:
    op.drop_index("ix_segments_call_id", "segments")
    op.drop_table("segments")
    op.drop_index("ix_calls_created_at", "calls")
    op.drop_index("ix_calls_state", "calls")
    op.drop_table("calls")
