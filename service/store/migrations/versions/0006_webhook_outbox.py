"""The webhook outbox, written in the same transaction as the row it announces.

One row per event and endpoint (service/store/models.py ``OutboxRow``); the delivery
worker (service/webhooks/) deletes a row once its endpoint took it. Plain types only, so
the same table is made on SQLite and PostgreSQL.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLE = "webhook_outbox"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("event_id", sa.String(40), nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("call_id", sa.String(32), nullable=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("due_at", sa.Float(), nullable=False),
        sa.Column("claimed_until", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_index("ix_webhook_outbox_endpoint_call", TABLE, ["endpoint", "call_id", "id"])
    op.create_index("ix_webhook_outbox_endpoint_id", TABLE, ["endpoint", "id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_outbox_endpoint_id", table_name=TABLE)
    op.drop_index("ix_webhook_outbox_endpoint_call", table_name=TABLE)
    op.drop_table(TABLE)
