"""What a search reads, on SQLite and on a real PostgreSQL server: the filters on a segment
(speaker, call, revision, node) are answered by the search index itself (migration 0010),
so a filtered search reads the matches within the filter, not every match of its words;
and that index stays right when a call's node changes or a call goes away, and is built
for the segments a database held before the migration."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic import command
from helpers import store_call
from sqlalchemy import text
from sqlalchemy.dialects import postgresql

from service.store import search
from service.store.db import Store, alembic_config, upgrade
from service.vocab import Segment, Speaker


@pytest.fixture
def store(database_url):
    store = Store(database_url, node_id="n1")
    store.upgrade()
    yield store
    store.engine.dispose()


def add(store: Store, call_id: str, texts: list[str], speaker=Speaker.LOCAL, first: int = 0):
    for n, words in enumerate(texts, first):
        store.add_segment(
            call_id,
            Segment(speaker=speaker, number=n, start=2.0 * n, end=2.0 * n + 1.5, text=words),
        )


def find(store: Store, q: str, **filters) -> list[str]:
    return sorted(h.text for h in store.search(search.parse(q), search.Filters(**filters), 50, 0))


def segments_read(store: Store, stmt) -> int:
    """PostgreSQL: the rows the plan read from `segments` (kept or filtered away) when it
    reads them through bitmaps of its indexes (no sequential or id-ordered scan), so that
    a tiny table shows what the indexes can answer: a large one's planner picks that
    plan itself for a selective filter (docs/benchmarks.md)."""
    sql = str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    with store.engine.connect() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        conn.execute(text("SET LOCAL enable_indexscan = off"))
        (plan,) = conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)).scalar_one()
    read, todo = 0, [plan["Plan"]]
    while todo:
        node = todo.pop()
        todo += node.get("Plans", [])
        if node.get("Relation Name") == "segments":
            kept = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
            read += (kept + node.get("Rows Removed by Index Recheck", 0)) * node["Actual Loops"]
    return read


def test_a_filtered_search_reads_only_the_matches_within_the_filter(store):
    """200 segments of another node say "alpha", 3 of this node's remote speaker do, among
    200 of its others: the search reads those 3 (and their 3 rows for the page), neither
    the other node's matches nor this node's other segments."""
    store_call(store, "mine")
    store_call(store, "theirs", node_id="n2")
    add(store, "theirs", [f"alpha beta {n}" for n in range(200)], Speaker.REMOTE)
    add(store, "mine", ["alpha one", "alpha two", "alpha three"], Speaker.REMOTE)
    add(store, "mine", ["alpha local"], Speaker.LOCAL, first=10)
    add(store, "mine", [f"other words {n}" for n in range(200)], Speaker.REMOTE, first=20)
    filters = search.Filters(node="n1", speaker="remote")
    stmt = search.statement(store.engine.dialect.name, search.parse("alpha"), filters, 21, 0)
    assert find(store, "alpha", node="n1", speaker="remote") == [
        "alpha one",
        "alpha three",
        "alpha two",
    ]
    if store.engine.dialect.name == "postgresql":
        assert segments_read(store, stmt) <= 3 + 3
    else:
        compiled = stmt.compile(
            dialect=store.engine.dialect, compile_kwargs={"literal_binds": True}
        )
        with store.engine.connect() as conn:
            plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled))]
        # FTS5 alone picks the matches; segments and calls are read once, for the page
        assert [step for step in plan if "segments " in step or "calls" in step] == [
            "SEARCH segments USING INTEGER PRIMARY KEY (rowid=?)",
            "SEARCH calls USING INDEX sqlite_autoindex_calls_1 (id=?)",
        ], plan


@pytest.mark.parametrize("odd", ["it's", "a\\b", "=node:n1", "x' | 'y", "n1 n2", ""])
def test_any_filter_value_is_one_exact_value(store, odd):
    """Node and call ids are the operator's and the API's: quotes, backslashes, spaces or
    tsquery syntax in one filter only that very value, on both backends."""
    store_call(store, "odd", node_id=odd)
    store_call(store, odd or "empty")
    add(store, "odd", ["gamma odd node"])
    add(store, odd or "empty", ["gamma odd call"])
    assert find(store, "gamma", node=odd) == ["gamma odd node"]
    assert find(store, "gamma", call=odd or "empty") == ["gamma odd call"]
    assert find(store, "gamma", node=odd + "x") == []


def test_the_index_follows_a_call_whose_node_changes_or_that_is_deleted(store):
    """The index holds the call's node for each segment: it is rewritten when the node
    changes, and goes with the segments when the call is deleted."""
    store_call(store, "c1")
    add(store, "c1", ["delta moved"])
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE calls SET node_id = 'n9' WHERE id = 'c1'"))
    assert find(store, "delta", node="n9") == ["delta moved"]
    assert find(store, "delta", node="n1") == []
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM calls WHERE id = 'c1'"))
    assert find(store, "delta") == []
    store_call(store, "c1")
    add(store, "c1", ["delta again"])
    assert find(store, "delta", node="n1") == ["delta again"]
    if store.engine.dialect.name == "sqlite":
        # A contentless FTS5 row is deleted by naming its tokens: with the wrong node (the
        # call already gone) its tags would stay behind.
        (tag,) = search.filter_tags(search.Filters(node="n9"))
        with store.engine.connect() as conn:
            left = conn.execute(
                text(f"SELECT rowid FROM {search.FTS_TABLE} WHERE {search.FTS_TABLE} MATCH :m"),
                {"m": f"{{tags}} : {tag}"},
            ).all()
        assert left == []


def test_upgrade_puts_the_filters_of_stored_segments_into_the_index(database_url):
    """Segments stored before migration 0010 are found by every filter after it, and
    after a downgrade to 0009 and an upgrade again."""
    upgrade(database_url, "0009")
    store = Store(database_url)
    try:
        t = datetime(2026, 1, 2, tzinfo=UTC)
        with store.engine.begin() as conn:
            conn.execute(
                text(
                    "insert into calls (id, mode, state, transcribe, created_at, frames_sent,"
                    " frames_received, bytes_sent, bytes_received, node_id)"
                    " values ('old', 'listen', 'ended', true, :t, 0, 0, 0, 0, 'n7')"
                ),
                {"t": t},
            )
            conn.execute(
                text(
                    "insert into segments (call_id, speaker, number, start_s, end_s, text,"
                    " created_at, revision) values ('old', 'remote', 0, 0, 1, 'epsilon', :t,"
                    " 'final')"
                ),
                {"t": t},
            )
        for _ in range(2):
            upgrade(database_url)
            wanted = {"node": "n7", "speaker": "remote", "revision": "final", "call": "old"}
            assert find(store, "epsilon", **wanted) == ["epsilon"]
            assert find(store, "epsilon", node="n1") == []
            command.downgrade(alembic_config(database_url), "0009")
    finally:
        store.engine.dispose()


def test_a_search_repeated_on_postgresql_is_planned_for_its_own_words_every_time(postgres_url):
    # psycopg prepares a statement it has run five times, and PostgreSQL may then plan it
    # once for any tsquery: the plan of a rare word for a phrase of common ones (seen at
    # 10^5 segments: 58 ms instead of 18-24 ms, docs/benchmarks.md#search).
    store = Store(postgres_url, node_id="n1")
    store.upgrade()
    call_id = "c" * 32
    store_call(store, call_id)
    add(store, call_id, [f"the node call number {n}" for n in range(50)])
    terms = search.parse('"the node"')
    for _ in range(12):
        assert len(store.search(terms, search.Filters(), 21, 0)) == 21
    with store.engine.connect() as conn:  # the pool's one connection, which ran them
        rows = conn.execute(
            text(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE '%to_tsquery%'"
            )
        ).all()
    assert rows, "psycopg prepared no search statement: the test shows nothing"
    store.engine.dispose()
    assert all(generic == 0 for generic, _ in rows), rows
