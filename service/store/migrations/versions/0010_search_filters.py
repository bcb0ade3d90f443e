"""Search filters inside the search index, so that a filtered search reads only its matches.

A filtered search (`speaker`, `call`, `node`, `revision`) used to find every segment that
matches its words in the index and then read each one's row (and call) to test the
filters: a common word in a narrow filter cost all the word's matches. Now each indexed
segment also carries one index entry per filter value, and the search asks the index for
the words *and* the filter entries together, so the rows it reads are the matches within
the filter (service/store/search.py).

* PostgreSQL: ``search_vector`` is no longer a generated column (a generated column cannot
  read the call's node) but is written by a ``BEFORE INSERT OR UPDATE`` trigger, still
  within the insert's one statement: the text's words as before, plus the lexemes
  ``=speaker:…``, ``=revision:…``, ``=call:…`` and ``=node:…`` (without positions: phrases
  and ``ts_rank`` see only the words). A lexeme starting with ``=`` is never a word nor a
  word's prefix, so no query text reaches them. A call's ``node_id`` is set when the call
  is made; should it change, a trigger on ``calls`` rewrites its segments' vectors.
* SQLite: the FTS5 table gets a second column, ``tags``: the tokens ``s<speaker>``,
  ``r<revision>``, ``c<call id>`` and ``n<node id>`` (each value in hex, so any value is one
  token of letters and digits). The user's terms are searched in the ``text`` column only,
  so no query text reaches the tags either. The table is now contentless (``content=''``:
  the tags are in no table FTS5 could read back), written by the triggers as before; a
  contentless row is deleted by naming the values it was indexed with, so the triggers
  read the call's node while the call still exists: a call's segments are deleted before
  the call (what the foreign key's cascade did after it), and a change of a call's node
  re-indexes its segments.

Downgrade puts back 0005's generated column and its GIN index.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

INDEX = "ix_segments_search"
# Migration 0005's words of a text (every character but letters and digits a space first).
WORDS = "to_tsvector('simple'::regconfig, regexp_replace({}, '[^[:alnum:]]+', ' ', 'g'))"
PG_UP = (
    # One place for what a segment's vector is: used by the triggers and the backfill.
    "CREATE FUNCTION segment_search_vector(body text, speaker text, revision text,"
    " call_id text, node_id text) RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE"
    f" AS $$ SELECT {WORDS.format('body')} || array_to_tsvector(ARRAY['=speaker:' || speaker,"
    " '=revision:' || revision, '=call:' || call_id, '=node:' || coalesce(node_id, '')]) $$",
    "CREATE FUNCTION segments_search_vector() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " NEW.search_vector := segment_search_vector(NEW.text, NEW.speaker, NEW.revision,"
    " NEW.call_id, (SELECT node_id FROM calls WHERE id = NEW.call_id)); RETURN NEW; END $$",
    "CREATE TRIGGER segments_search_vector BEFORE INSERT OR UPDATE OF text, speaker,"
    " revision, call_id ON segments FOR EACH ROW EXECUTE FUNCTION segments_search_vector()",
    "CREATE FUNCTION calls_search_node() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " UPDATE segments SET search_vector = segment_search_vector(text, speaker, revision,"
    " call_id, NEW.node_id) WHERE call_id = NEW.id; RETURN NULL; END $$",
    "CREATE TRIGGER calls_search_node AFTER UPDATE OF node_id ON calls FOR EACH ROW"
    " WHEN (OLD.node_id IS DISTINCT FROM NEW.node_id) EXECUTE FUNCTION calls_search_node()",
    "UPDATE segments SET search_vector = segment_search_vector(segments.text,"
    " segments.speaker, segments.revision, segments.call_id, calls.node_id)"
    " FROM calls WHERE calls.id = segments.call_id",
)
PG_DOWN = (
    "DROP TRIGGER IF EXISTS calls_search_node ON calls",
    "DROP FUNCTION IF EXISTS calls_search_node()",
    "DROP TRIGGER IF EXISTS segments_search_vector ON segments",
    "DROP FUNCTION IF EXISTS segments_search_vector()",
    "DROP FUNCTION IF EXISTS segment_search_vector(text, text, text, text, text)",
)


FTS = "segments_fts"
# A segment's tags: the search filters' values as tokens (see the docstring).
TAGS = (
    "'s' || hex({r}.speaker) || ' r' || hex({r}.revision) || ' c' || hex({r}.call_id)"
    " || ' n' || hex(coalesce({node}, ''))"
)
NODE_OF = "(SELECT node_id FROM calls WHERE id = {r}.call_id)"
INDEX_NEW = (
    f"INSERT INTO {FTS}(rowid, text, tags) VALUES (new.id, new.text,"
    f" {TAGS.format(r='new', node=NODE_OF.format(r='new'))});"
)
UNINDEX_OLD = (
    f"INSERT INTO {FTS}({FTS}, rowid, text, tags) VALUES ('delete', old.id, old.text,"
    f" {TAGS.format(r='old', node=NODE_OF.format(r='old'))});"
)
SQLITE_UP = (
    f"DROP TRIGGER IF EXISTS {FTS}_insert",
    f"DROP TRIGGER IF EXISTS {FTS}_delete",
    f"DROP TRIGGER IF EXISTS {FTS}_update",
    f"DROP TABLE IF EXISTS {FTS}",
    f"CREATE VIRTUAL TABLE {FTS} USING fts5(text, tags, content='',"
    " tokenize='unicode61 remove_diacritics 0')",
    f"CREATE TRIGGER {FTS}_insert AFTER INSERT ON segments BEGIN {INDEX_NEW} END",
    f"CREATE TRIGGER {FTS}_delete AFTER DELETE ON segments BEGIN {UNINDEX_OLD} END",
    f"CREATE TRIGGER {FTS}_update AFTER UPDATE OF text, speaker, revision, call_id"
    f" ON segments BEGIN {UNINDEX_OLD} {INDEX_NEW} END",
    f"CREATE TRIGGER {FTS}_call_delete BEFORE DELETE ON calls BEGIN"
    " DELETE FROM segments WHERE call_id = old.id; END",
    f"CREATE TRIGGER {FTS}_call_node AFTER UPDATE OF node_id ON calls"
    f" WHEN old.node_id IS NOT new.node_id BEGIN"
    f" INSERT INTO {FTS}({FTS}, rowid, text, tags) SELECT 'delete', s.id, s.text,"
    f" {TAGS.format(r='s', node='old.node_id')} FROM segments AS s WHERE s.call_id = old.id;"
    f" INSERT INTO {FTS}(rowid, text, tags) SELECT s.id, s.text,"
    f" {TAGS.format(r='s', node='new.node_id')} FROM segments AS s WHERE s.call_id = new.id;"
    " END",
    f"INSERT INTO {FTS}(rowid, text, tags) SELECT s.id, s.text,"
    f" {TAGS.format(r='s', node='c.node_id')} FROM segments AS s"
    " LEFT JOIN calls AS c ON c.id = s.call_id",
)
SQLITE_DOWN = (
    f"DROP TRIGGER {FTS}_call_node",
    f"DROP TRIGGER {FTS}_call_delete",
    f"DROP TRIGGER {FTS}_insert",
    f"DROP TRIGGER {FTS}_delete",
    f"DROP TRIGGER {FTS}_update",
    f"DROP TABLE {FTS}",
)


def _migration_0005() -> ModuleType:
    """Migration 0005's module, whose SQLite statements make the index downgrade returns to."""
    path = Path(__file__).with_name("0005_fleet_and_search.py")
    spec = importlib.util.spec_from_file_location("migration_0005", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_UP:
            op.execute(statement)
        return
    # Drop the index and the column first: the backfill then writes each row once and
    # the index is built once, over the final vectors.
    op.drop_index(INDEX, table_name="segments")
    op.drop_column("segments", "search_vector")
    op.add_column("segments", sa.Column("search_vector", postgresql.TSVECTOR()))
    for statement in PG_UP:
        op.execute(statement)
    op.create_index(INDEX, "segments", ["search_vector"], postgresql_using="gin")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in (*SQLITE_DOWN, *_migration_0005().SQLITE_UP):
            op.execute(statement)
        return
    for statement in PG_DOWN:
        op.execute(statement)
    op.drop_index(INDEX, table_name="segments")
    op.drop_column("segments", "search_vector")
    words = sa.Computed(WORDS.format("text"), persisted=True)
    op.add_column("segments", sa.Column("search_vector", postgresql.TSVECTOR(), words))
    op.create_index(INDEX, "segments", ["search_vector"], postgresql_using="gin")
