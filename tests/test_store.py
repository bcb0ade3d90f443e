"""The store on SQLite and on a real PostgreSQL server: migrations on a fresh database and on
one with data, the same schema as the models, durable and idempotent segments, UTC times.

Every test taking ``database_url`` runs twice (``[sqlite]`` and ``[postgresql]``); see
conftest.py for where the PostgreSQL server comes from.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from service.store.db import Store, alembic_config, parse_url, upgrade, utcnow
from service.store.models import Base
from service.store.search import include_name
from service.vocab import Segment, Speaker

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(database_url):
    s = Store(database_url)
    s.upgrade()
    yield s
    s.engine.dispose()


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


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


def seg(speaker=Speaker.LOCAL, number=0, start=0.0, text="hello"):
    return Segment(speaker=speaker, number=number, start=start, end=start + 1, text=text)


def test_migration_creates_schema_on_fresh_database(store):
    tables = set(inspect(store.engine).get_table_names())
    assert {"calls", "segments", "alembic_version"} <= tables
    with store.engine.connect() as conn:
        assert conn.scalar(text("select version_num from alembic_version")) == head_revision()
    store.upgrade()  # a second start is a no-op, not an error


def test_migrations_build_exactly_the_models_schema(store):
    """Catches a model changed without a migration (or the reverse), on each database."""
    with store.engine.connect() as conn:
        # The search index (migration 0005) is per backend, outside the models.
        context = MigrationContext.configure(conn, opts={"include_name": include_name})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_downgrade_to_base_and_upgrade_again(database_url):
    upgrade(database_url)
    cfg = alembic_config(database_url)
    command.downgrade(cfg, "base")
    s = Store(database_url)
    try:
        assert set(inspect(s.engine).get_table_names()) <= {"alembic_version"}
        s.upgrade()
        add_call(s)
        assert s.add_segment("c1", seg()) is not None
    finally:
        s.engine.dispose()


def test_upgrading_a_database_with_data_keeps_every_row(database_url):
    """An old node's database, migrated at the next start: no call or segment may go missing.
    (On SQLite, altering `calls` copies and drops the table, which with foreign keys on would
    cascade into `segments`.)"""
    upgrade(database_url, "0001")
    s = Store(database_url)
    try:
        with s.engine.begin() as conn:
            conn.execute(
                text(
                    "insert into calls (id, mode, state, transcribe, created_at, frames_sent,"
                    " frames_received, bytes_sent, bytes_received, input)"
                    " values ('old', 'listen', 'ended', true, :t, 1, 2, 3, 4, 'silence')"
                ),
                {"t": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)},
            )
            for n in range(3):
                conn.execute(
                    text(
                        "insert into segments (call_id, speaker, number, start_s, end_s, text,"
                        " created_at) values ('old', 'remote', :n, :n, :n + 1, :txt, :t)"
                    ),
                    {"n": n, "txt": f"line {n}", "t": datetime(2026, 1, 2, tzinfo=UTC)},
                )
        s.upgrade()
        call = s.get_call("old")
        assert (call.input, call.bytes_sent, call.bytes_received) == ("silence", 3, 4)
        assert call.created_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert [x.text for x in s.segments("old")] == ["line 0", "line 1", "line 2"]
        # The id sequence goes on after the existing rows.
        add_call(s, "new")
        new = s.add_segment("new", seg())
        assert new is not None and new > max(x.id for x in s.segments("old"))
    finally:
        s.engine.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path):
    path = tmp_path / "db" / "calls.db"
    s = Store(f"sqlite:///{path}")
    s.upgrade()
    try:
        with s.engine.connect() as conn:
            assert conn.exec_driver_sql("pragma foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("pragma synchronous").scalar() == 2  # FULL
        with sqlite3.connect(path) as raw:
            assert raw.execute("pragma journal_mode").fetchone() == ("wal",)
    finally:
        s.engine.dispose()


def test_foreign_keys_are_enforced(store):
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
    # The cursor follows arrival (the id), not speech time: a poller misses nothing that
    # arrives late for an earlier moment of the call.
    first_stored = min(s.id for s in got)
    after = store.segments("c1", after_id=first_stored)
    assert [s.text for s in after] == ["first", "third"]


def test_times_come_back_in_utc_whatever_the_database_zone(store):
    """conftest gives each PostgreSQL test database a zone of UTC-3:30."""
    connected = datetime(2026, 11, 23, 12, 0, 0, 250000, tzinfo=UTC)
    before = utcnow()
    add_call(store)
    store.update_call("c1", connected_at=connected)
    store.add_segment("c1", seg())
    call = store.get_call("c1")
    assert call.connected_at == connected and call.connected_at.utcoffset().total_seconds() == 0
    assert call.created_at.utcoffset().total_seconds() == 0
    assert before <= call.created_at <= utcnow()
    assert store.segments("c1")[0].created_at.utcoffset().total_seconds() == 0
    assert call.connected_at.isoformat() == "2026-11-23T12:00:00.250000+00:00"


def test_long_text_and_large_counters_are_stored_whole(store):
    """What SQLite always accepted must not fail on PostgreSQL: a long device path or error
    message, and the byte counters of a call longer than a day (over 2**31)."""
    path = "file:/" + "very-long-directory/" * 40 + "clip.wav"
    reason = "connect_failed: " + "x" * 500
    add_call(store, input=path, output=path, peer_address="h" * 400 + ":7000")
    store.update_call("c1", end_reason=reason, bytes_sent=3 * 2**31, bytes_received=2**40)
    call = store.get_call("c1")
    assert (call.input, call.output, call.end_reason) == (path, path, reason)
    assert (call.bytes_sent, call.bytes_received) == (3 * 2**31, 2**40)


def test_a_segment_delivered_twice_is_stored_once(store):
    add_call(store)
    assert store.add_segment("c1", seg("remote", 5)) is not None
    assert store.add_segment("c1", seg("remote", 5, text="again")) is None
    assert [s.text for s in store.segments("c1")] == ["hello"]


def test_racing_writers_store_a_segment_once(store):
    """Two nodes (here: eight connections) delivering the same segment at the same moment:
    the database, not a check-then-insert, decides which one stores it."""
    add_call(store)
    stores = [Store(store.url) for _ in range(8)]
    start = threading.Barrier(len(stores))
    results: list[object] = []
    errors: list[Exception] = []

    def deliver(s: Store, i: int) -> None:
        try:
            start.wait(timeout=10)
            results.append(s.add_segment("c1", seg("remote", 7, text=f"copy {i}")))
        except Exception as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in stores:
        s.engine.dispose()
    assert errors == []
    assert sum(r is not None for r in results) == 1 and len(results) == len(stores)
    assert len(store.segments("c1")) == 1


def test_committed_segments_survive_reopening(store):
    add_call(store)
    store.add_segment("c1", seg())
    store.engine.dispose()
    again = Store(store.url)
    try:
        assert [s.text for s in again.segments("c1")] == ["hello"]
    finally:
        again.engine.dispose()


def test_unfinished_calls_are_marked_at_restart(store):
    add_call(store, "open")
    add_call(store, "done")
    store.update_call("done", state="ended", ended_at=utcnow(), end_reason="hangup")
    assert store.mark_unfinished_calls("interrupted", "node_restarted") == 1
    assert store.get_call("open").state == "interrupted"
    assert store.get_call("open").ended_at is not None
    assert store.get_call("done").state == "ended"


@pytest.mark.slow  # runs in a process of its own
def test_postgresql_queries_do_not_block_the_gevent_hub(postgres_url):
    """The node commits segments on the gevent hub: a slow query must let other greenlets
    (the audio send loop, the API) run. Checked in a fresh, monkey-patched interpreter."""
    code = textwrap.dedent(
        """
        from gevent import monkey; monkey.patch_all()
        import sys, time, gevent
        from sqlalchemy import text
        from service.store.db import Store
        store = Store(sys.argv[1])
        with store.session() as s:
            s.execute(text("select 1"))  # connect first: only the query is timed
        ticks = 0
        def tick():
            global ticks
            while True:
                gevent.sleep(0.01)
                ticks += 1
        ticker = gevent.spawn(tick)
        with store.session() as s:
            s.execute(text("select pg_sleep(1)"))
        ticker.kill()
        print(ticks)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, postgres_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    ticks = int(proc.stdout.split()[-1])
    assert ticks >= 20, f"the hub ran only {ticks} 10 ms ticks during a 1 s query"


def test_urls_of_other_databases_are_refused_without_the_password():
    with pytest.raises(ValueError, match="unsupported database") as err:
        Store("mysql+pymysql://user:s3cret@db/im")
    assert "s3cret" not in str(err.value)
    with pytest.raises(ValueError, match="postgresql\\+psycopg"):
        parse_url("postgresql+psycopg2://user@db/im")
    # A bare postgresql:// means the driver that is installed, psycopg 3.
    assert parse_url("postgresql://user@db/im").drivername == "postgresql+psycopg"
