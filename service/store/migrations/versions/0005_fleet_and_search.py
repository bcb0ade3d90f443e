"""Node ids on calls (a fleet on one database) and full-text search over segments.

* ``calls.node_id``: the node (IM_NODE_ID) that holds the call, so that a restarting node
  closes only its own open calls. Rows from before get ``""``: they come from the days of one
  node per database, and the first node to start on the upgraded database closes those left
  open (service/store/db.py, ``mark_unfinished_calls``).
* The search index, per backend (service/store/search.py says how both see words):
  SQLite: an external-content FTS5 table over ``segments.text`` (no second copy of the text),
  kept in step by triggers, so the segment insert writes it in the same statement;
  PostgreSQL: a stored generated ``tsvector`` column with a GIN index, computed by the
  insert itself. Existing segments are indexed here (FTS5 ``rebuild``; PostgreSQL computes
  the column for every row as it adds it).

A later SQLite migration that rebuilds ``segments`` (a batch migration: copy, drop, rename)
drops these triggers with the old table and must create them again on the copy, as 0008
does; the search tests, run at head, find nothing otherwise.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FTS = "segments_fts"
SQLITE_UP = (
    f"CREATE VIRTUAL TABLE {FTS} USING fts5(text, content='segments', content_rowid='id',"
    " tokenize='unicode61 remove_diacritics 0')",
    f"CREATE TRIGGER {FTS}_insert AFTER INSERT ON segments BEGIN"
    f" INSERT INTO {FTS}(rowid, text) VALUES (new.id, new.text); END",
    f"CREATE TRIGGER {FTS}_delete AFTER DELETE ON segments BEGIN"
    f" INSERT INTO {FTS}({FTS}, rowid, text) VALUES ('delete', old.id, old.text); END",
    f"CREATE TRIGGER {FTS}_update AFTER UPDATE OF text ON segments BEGIN"
    f" INSERT INTO {FTS}({FTS}, rowid, text) VALUES ('delete', old.id, old.text);"
    f" INSERT INTO {FTS}(rowid, text) VALUES (new.id, new.text); END",
    f"INSERT INTO {FTS}({FTS}) VALUES ('rebuild')",
)
SQLITE_DOWN = (
    f"DROP TRIGGER IF EXISTS {FTS}_insert",
    f"DROP TRIGGER IF EXISTS {FTS}_delete",
    f"DROP TRIGGER IF EXISTS {FTS}_update",
    f"DROP TABLE IF EXISTS {FTS}",
)
# Every character but letters and digits becomes a space first, so that PostgreSQL's parser
# sees the same words as FTS5's unicode61 (no URLs, hyphenated compounds or tags of its own).
PG_VECTOR = "to_tsvector('simple'::regconfig, regexp_replace(text, '[^[:alnum:]]+', ' ', 'g'))"


def upgrade() -> None:
    op.add_column(
        "calls",
        sa.Column("node_id", sa.String(64), nullable=False, server_default=sa.text("''")),
    )
    op.create_index("ix_calls_node_id", "calls", ["node_id"])
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_UP:
            op.execute(statement)
    else:
        op.add_column(
            "segments",
            sa.Column(
                "search_vector", postgresql.TSVECTOR(), sa.Computed(PG_VECTOR, persisted=True)
            ),
        )
        op.create_index("ix_segments_search", "segments", ["search_vector"], postgresql_using="gin")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_DOWN:
            op.execute(statement)
    else:
        op.drop_index("ix_segments_search", table_name="segments")
        op.drop_column("segments", "search_vector")
    op.drop_index("ix_calls_node_id", table_name="calls")
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("node_id")
