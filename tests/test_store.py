"""The store: migrations on a fresh file, SQLite pragmas, durable and idempotent segments."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import inspect

from service.store.db import SegmentIn, Store


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'db' / 'calls.db'}")
    s.upgrade()
    yield s
    s.engine.dispose()


def add_call(store, call_id="c1", **extra):
    return store.add_call(
        id=call_id,
        mode="dial",
        state="connected",
        transcribe=True,
        frames_sent=0,
        frames_received=0,
        bytes_sent=0,
        bytes_received=0,
        **extra,
    )


def seg(speaker="local", number=0, start=0.0, text="hello"):
    return SegmentIn(speaker=speaker, number=number, start_s=start, end_s=start + 1, text=text)


def test_migration_creates_schema_on_fresh_database(store, tmp_path):
    tables = set(inspect(store.engine).get_table_names())
    assert {"calls", "segments", "alembic_version"} <= tables
    with sqlite3.connect(tmp_path / "db" / "calls.db") as raw:
        assert raw.execute("select version_num from alembic_version").fetchone() == ("0001",)
        assert raw.execute("pragma journal_mode").fetchone() == ("wal",)
    store.upgrade()  # a second start is a no-op, not an error


def test_foreign_keys_are_enforced(store):
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError):
        store.add_segment("no-such-call", seg())


def test_segments_come_back_in_time_order_with_both_speakers(store):
    add_call(store)
    store.add_segment("c1", seg("remote", 0, start=2.0, text="second"))
    store.add_segment("c1", seg("local", 0, start=0.5, text="first"))
    store.add_segment("c1", seg("local", 1, start=4.0, text="third"))
    got = store.segments("c1")
    assert [(s.speaker, s.text) for s in got] == [
        ("local", "first"),
        ("remote", "second"),
        ("local", "third"),
    ]
    assert got[0].created_at.tzinfo is not None
    # The cursor follows arrival (the id), not speech time: a poller misses nothing that
    # arrives late for an earlier moment of the call.
    first_stored = min(s.id for s in got)
    after = store.segments("c1", after_id=first_stored)
    assert [s.text for s in after] == ["first", "third"]


def test_a_segment_delivered_twice_is_stored_once(store):
    add_call(store)
    assert store.add_segment("c1", seg("remote", 5)) is not None
    assert store.add_segment("c1", seg("remote", 5, text="again")) is None
    assert [s.text for s in store.segments("c1")] == ["hello"]


def test_committed_segments_survive_reopening(store, tmp_path):
    add_call(store)
    store.add_segment("c1", seg())
    store.engine.dispose()
    again = Store(store.url)
    assert [s.text for s in again.segments("c1")] == ["hello"]


def test_unfinished_calls_are_marked_at_restart(store):
    add_call(store, "open")
    add_call(store, "done")
    from service.store.db import utcnow

    store.update_call("done", state="ended", ended_at=utcnow(), end_reason="hangup")
    assert store.mark_unfinished_calls("interrupted", "node_restarted") == 1
    assert store.get_call("open").state == "interrupted"
    assert store.get_call("done").state == "ended"
