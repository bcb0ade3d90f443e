"""Final segments kept from the live pass (``from_live``).

A node killed mid-call leaves a recording that ends a second or two before the call did,
and the live pass may have stored words from that stretch: the post-call pass keeps those
live segments in the final revision (service/calls/postcall.py), and this column says which
they are (they have no word timings). Existing rows get false.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "segments",
        sa.Column("from_live", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    # Plain ALTER TABLE on both backends (SQLite has it since 3.35): a batch copy of the
    # table would drop its search triggers.
    op.execute("ALTER TABLE segments DROP COLUMN from_live")
