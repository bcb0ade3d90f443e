"""Column types that hold on PostgreSQL what SQLite always held.

SQLite neither enforces VARCHAR lengths nor has a 32-bit integer, so 0001's types were only
ever checked there. On PostgreSQL they would turn a long device path, peer address or error
message into a failed write, and a call's byte counters overflow INTEGER after about 18
hours of audio. Free text becomes TEXT, byte counters BIGINT, and the segment id (with its
sequence) BIGINT on PostgreSQL; SQLite keeps INTEGER for the id, its rowid alias.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

FREE_TEXT = {
    "local_address": 300,
    "peer_address": 300,
    "input": 300,
    "output": 300,
    "end_reason": 200,
}
COUNTERS = ("bytes_sent", "bytes_received")


def upgrade() -> None:
    # A batch block is plain ALTER TABLE on PostgreSQL and a copy of `calls` on SQLite.
    with op.batch_alter_table("calls") as batch:
        for name, length in FREE_TEXT.items():
            batch.alter_column(name, type_=sa.Text(), existing_type=sa.String(length))
        for name in COUNTERS:
            batch.alter_column(
                name, type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False
            )
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "segments", "id", type_=sa.BigInteger(), existing_type=sa.Integer(), nullable=False
        )
        op.execute("ALTER SEQUENCE segments_id_seq AS bigint")


def downgrade() -> None:
    # Refuses (rather than truncates) text that no longer fits: a downgrade loses no data.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER SEQUENCE segments_id_seq AS integer")
        op.alter_column(
            "segments", "id", type_=sa.Integer(), existing_type=sa.BigInteger(), nullable=False
        )
    with op.batch_alter_table("calls") as batch:
        for name in COUNTERS:
            batch.alter_column(
                name, type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False
            )
        for name, length in FREE_TEXT.items():
            batch.alter_column(name, type_=sa.String(length), existing_type=sa.Text())
