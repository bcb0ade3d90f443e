"""Opening the database, bringing its schema up to date, and every query the node makes.

The URL decides the database: SQLite (a file next to the node, the default) or PostgreSQL
through psycopg 3 (a server and a database that a fleet of nodes can share: each call row
names its node, see ``Store.node_id``, and migrations take a lock). For SQLite
the node turns on WAL (readers never block the writer, and a killed process loses no
committed transaction), foreign keys (off by default in SQLite) and synchronous=FULL so a
commit is on disk before the segment is reported; PostgreSQL does all of that by default.
Under gevent, psycopg sees the monkey-patched `select` and waits on its socket cooperatively,
so a query never blocks the hub.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, delete, event, func, or_, select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from service.vocab import Segment

from . import outbox, search
from .models import Call, SegmentRow, TranscriptPass

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"  # shipped inside the package


def utcnow() -> datetime:
    return datetime.now(UTC)


LIVE, FINAL = "live", "final"  # transcript revisions (models.SegmentRow.revision)
PASS_OPEN = ("pending", "running")  # a post-call pass not yet done or failed

# Backends the models and migrations are written and tested for, with the driver each uses.
DRIVERS = {"sqlite": "pysqlite", "postgresql": "psycopg"}
# "INSERT ... ON CONFLICT DO NOTHING" exists in both, spelled by each dialect's own insert().
_INSERT: dict[str, Any] = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}


def parse_url(url: str | URL) -> URL:
    """Parse and check a store URL; a bare `postgresql://` means psycopg 3, the driver we ship.

    Anything else is refused here, with the URL's password hidden, rather than failing later
    inside a migration written for the two backends we test.
    """
    u = make_url(url)
    backend, driver = u.get_backend_name(), u.get_driver_name()
    if backend not in DRIVERS:
        raise ValueError(
            f"unsupported database {u.render_as_string(hide_password=True)!r}: "
            "use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB"
        )
    if "+" not in u.drivername:
        u = u.set(drivername=f"{backend}+{DRIVERS[backend]}")
    elif driver != DRIVERS[backend]:
        raise ValueError(f"unsupported driver {u.drivername!r}: use {backend}+{DRIVERS[backend]}")
    return u


def make_engine(url: str | URL) -> Engine:
    u = parse_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(u, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # pre_ping: a node outlives server restarts and idle-connection reapers.
    return create_engine(u, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


def alembic_config(url: str | URL) -> Config:
    """Alembic's configuration for this store, built in code so the node needs no alembic.ini."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    rendered = parse_url(url).render_as_string(hide_password=False)
    cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    # Alembic announces each of its plugins at INFO; only the migrations themselves matter.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    return cfg


# pg_advisory_lock key of "this database is being migrated" (any fixed 64-bit number).
MIGRATION_LOCK_KEY = 0x494D_5F4D_4947_5241  # "IM_MIGRA"
MIGRATION_LOCK_WAIT_S = 600.0  # a large PostgreSQL upgrade (a reindex) may take minutes


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Run Alembic to head; the node does this at every start so a fresh or older database
    is always usable without a separate migration step. Under a lock, so nodes of a fleet
    that start at once migrate one after the other (the later ones find it done)."""
    from alembic import command

    with migration_lock(url):
        command.upgrade(alembic_config(url), revision)


@contextmanager
def migration_lock(url: str | URL) -> Iterator[None]:
    """Held while migrating. PostgreSQL: a session advisory lock on a connection of its own
    (the server frees it if the process dies). SQLite: an flock on ``DB.migrate-lock``
    beside the file (the kernel frees it likewise); in-memory databases need none. Waits
    in short steps, with one log line, and gives up after MIGRATION_LOCK_WAIT_S."""
    u = parse_url(url)
    deadline = time.monotonic() + MIGRATION_LOCK_WAIT_S
    if u.get_backend_name() == "postgresql":
        engine = create_engine(u, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                try_lock = text("SELECT pg_try_advisory_lock(:k)").bindparams(k=MIGRATION_LOCK_KEY)
                _wait_for(lambda: bool(conn.scalar(try_lock)), deadline)
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                    conn.commit()
        finally:
            engine.dispose()
        return
    if not u.database or u.database == ":memory:":
        yield
        return
    path = Path(u.database + ".migrate-lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:

        def try_flock() -> bool:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        _wait_for(try_flock, deadline)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _wait_for(acquire: Any, deadline: float) -> None:
    if acquire():
        return
    log.info("another node is migrating this database; waiting for it")
    while not acquire():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the migration lock was not free within {MIGRATION_LOCK_WAIT_S} s")
        time.sleep(0.2)


class Store:
    def __init__(self, url: str, node_id: str = "") -> None:
        self.url = url
        # Stamped on every call this store adds; only this node's open calls are closed at
        # its start (mark_unfinished_calls), so nodes can share one database.
        self.node_id = node_id
        self.engine = make_engine(url)
        self._insert = _INSERT[self.engine.dialect.name]
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Why the last write failed (a full disk, a lost server), until one succeeds again:
        # /healthz reports it, so a node that cannot keep transcripts does not say "ok".
        self.write_error: str | None = None
        # Webhook events, written in the transaction of what they announce (outbox.py);
        # off until the node names its endpoints.
        self.outbox = outbox.Outbox(self.session)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s, s.begin():
            yield s

    @contextmanager
    def writing(self, clears: bool = True) -> Iterator[Session]:
        """A session for a write, whose failure sets ``write_error``. Only a write that adds
        rows (``clears``) clears it: a nearly full disk may still take an update in place
        while every new segment fails, and that is not a node that keeps transcripts."""
        try:
            with self.session() as s:
                yield s
        except SQLAlchemyError as exc:
            self.write_error = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
            raise
        if clears:
            self.write_error = None
        if self.outbox.wrote(s):
            self.outbox.wake()

    def upgrade(self) -> None:
        upgrade(self.url)

    def add_call(self, **fields: Any) -> Call:
        call = Call(created_at=utcnow(), **{"node_id": self.node_id, **fields})
        with self.writing() as s:
            s.add(call)
            s.flush()  # the column defaults, for the event
            self.outbox.add(
                s, outbox.CALL_STARTED, call.id, outbox.call_data(call), call.created_at
            )
        return call

    def update_call(self, call_id: str, **fields: Any) -> None:
        with self.writing(clears=False) as s:
            call = s.get(Call, call_id)
            if call is None:
                raise KeyError(call_id)
            for key, value in fields.items():
                setattr(call, key, value)
            if fields.get("ended_at") is not None:
                self.outbox.add(s, outbox.CALL_ENDED, call.id, outbox.call_data(call), utcnow())

    def get_call(self, call_id: str) -> Call | None:
        with self.session() as s:
            return s.get(Call, call_id)

    def list_calls(self, limit: int = 100, node: str | None = None) -> list[Call]:
        """The newest calls, of every node sharing the database or of ``node`` only."""
        with self.session() as s:
            stmt = select(Call).order_by(Call.created_at.desc(), Call.id.desc()).limit(limit)
            if node is not None:
                stmt = stmt.where(Call.node_id == node)
            return list(s.scalars(stmt))

    def search(
        self, terms: tuple[search.Term, ...], filters: search.Filters, limit: int, offset: int
    ) -> list[search.Hit]:
        """Ranked segments matching every term (``search.parse`` makes them)."""
        stmt = search.statement(self.engine.dialect.name, terms, filters, limit, offset)
        with self.session() as s:
            # A plan for these words, never a generic one: psycopg prepares a statement
            # run five times, and PostgreSQL may then plan it once for any tsquery (its
            # default estimate of a match's share), which for a phrase of common words
            # chose a full bitmap scan, 2-3x slower (docs/benchmarks.md#search).
            if self.engine.dialect.name == "postgresql":
                s.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
            return [search.Hit(*row) for row in s.execute(stmt)]

    def add_segment(self, call_id: str, segment: Segment) -> int | None:
        """Commit one final segment (numbered, with its speaker); its row id, or None when
        that (speaker, number) is already stored, so a segment delivered twice is stored
        once.

        One statement decides, in the database, under its unique constraint: two nodes or
        greenlets racing with the same segment cannot both store it, and a duplicate is not
        an error (PostgreSQL would otherwise log every one and abort the transaction).
        """
        if segment.speaker is None or segment.number is None:
            raise ValueError("a segment is given its speaker and number before it is stored")
        stmt = (
            self._insert(SegmentRow)
            .values(
                call_id=call_id,
                created_at=utcnow(),
                speaker=segment.speaker,
                number=segment.number,
                start_s=segment.start,
                end_s=segment.end,
                text=segment.text,
                language=segment.language,
                task=segment.task,
                avg_logprob=segment.avg_logprob,
                no_speech_prob=segment.no_speech_prob,
                compression_ratio=segment.compression_ratio,
            )
            .on_conflict_do_nothing(index_elements=["call_id", "revision", "speaker", "number"])
            .returning(SegmentRow.id)
        )
        with self.writing() as s:
            row_id = s.scalar(stmt)
            if row_id is not None:  # stored now, not a duplicate: announce it with it
                data = outbox.segment_data(call_id, row_id, segment)
                self.outbox.add(s, outbox.SEGMENT_FINAL, call_id, data, utcnow())
            return row_id

    def segment_counts(self, call_ids: list[str]) -> dict[str, dict[str, int]]:
        """Stored segments per call and speaker, in one query (for the session views)."""
        counts: dict[str, dict[str, int]] = {c: {"local": 0, "remote": 0} for c in call_ids}
        if not call_ids:
            return counts
        with self.session() as s:
            stmt = (
                select(SegmentRow.call_id, SegmentRow.speaker, func.count())
                .where(SegmentRow.call_id.in_(call_ids), SegmentRow.revision == LIVE)
                .group_by(SegmentRow.call_id, SegmentRow.speaker)
            )
            for call_id, speaker, n in s.execute(stmt):
                counts[call_id][speaker] = n
        return counts

    def segments(
        self, call_id: str, after_id: int | None = None, revision: str = "live"
    ) -> list[SegmentRow]:
        """Both speakers of one revision in time order; ties keep arrival order."""
        with self.session() as s:
            stmt = select(SegmentRow).where(
                SegmentRow.call_id == call_id, SegmentRow.revision == revision
            )
            if after_id is not None:
                stmt = stmt.where(SegmentRow.id > after_id)
            stmt = stmt.order_by(SegmentRow.start_s, SegmentRow.id)
            return list(s.scalars(stmt))

    def mark_unfinished_calls(self, state: str, reason: str) -> int:
        """Calls a previous run of this node left open (it was killed) are closed here:
        those of this node id, and those from before node ids (""), never another node's."""
        with self.writing(clears=False) as s:
            mine = or_(Call.node_id == self.node_id, Call.node_id == "")
            calls = s.scalars(select(Call).where(Call.ended_at.is_(None), mine)).all()
            for call in calls:
                call.state = state
                call.end_reason = reason
                call.ended_at = utcnow()
                self.outbox.add(s, outbox.CALL_ENDED, call.id, outbox.call_data(call), utcnow())
            return len(calls)

    def announce_revision(
        self,
        s: Session,
        call_id: str,
        revision: str,
        previous: str | None,
        segments: int,
        reason: str,
    ) -> None:
        """The hook for whatever stores a new transcript revision (``store_revision`` does):
        call it inside the transaction that stores the revision (a ``writing()`` one), and
        ``transcript.revised`` is sent exactly when the revision is committed
        (docs/webhooks.md)."""
        data = outbox.revision_data(call_id, revision, previous, segments, reason)
        self.outbox.add(s, outbox.TRANSCRIPT_REVISED, call_id, data, utcnow())

    # -- post-call passes (service/calls/postcall.py) --------------------------------------

    def add_pass(self, call_id: str, model: str) -> TranscriptPass | None:
        """Queue a pass making the final revision of a call; None when one is already
        pending or running (checked and added in one transaction)."""
        with self.writing() as s:
            open_pass = s.scalar(
                select(TranscriptPass.id).where(
                    TranscriptPass.call_id == call_id, TranscriptPass.state.in_(PASS_OPEN)
                )
            )
            if open_pass is not None:
                return None
            row = TranscriptPass(
                call_id=call_id, revision=FINAL, model=model, state="pending", created_at=utcnow()
            )
            s.add(row)
        return row

    def update_pass(self, pass_id: int, **fields: Any) -> None:
        with self.writing(clears=False) as s:
            row = s.get(TranscriptPass, pass_id)
            if row is None:
                raise KeyError(pass_id)
            for key, value in fields.items():
                setattr(row, key, value)

    def has_final(self, call_id: str) -> bool:
        """Whether a pass stored the call's final revision (empty, for a silent call)."""
        with self.session() as s:
            stmt = select(TranscriptPass.id).where(
                TranscriptPass.call_id == call_id, TranscriptPass.state == "done"
            )
            return s.scalar(stmt.limit(1)) is not None

    def latest_pass(self, call_id: str) -> TranscriptPass | None:
        with self.session() as s:
            stmt = (
                select(TranscriptPass)
                .where(TranscriptPass.call_id == call_id)
                .order_by(TranscriptPass.id.desc())
                .limit(1)
            )
            return s.scalar(stmt)

    def open_passes(self) -> list[TranscriptPass]:
        """Pending and running passes, oldest first. Only this node's calls: a fleet's
        nodes each hold their own recordings."""
        with self.session() as s:
            stmt = (
                select(TranscriptPass)
                .join(Call, Call.id == TranscriptPass.call_id)
                .where(TranscriptPass.state.in_(PASS_OPEN), Call.node_id == self.node_id)
                .order_by(TranscriptPass.id)
            )
            return list(s.scalars(stmt))

    def calls_without_pass(self, state: str) -> list[str]:
        """Ids of this node's calls in ``state`` that no pass was ever queued for (calls a
        killed node left open, closed at its restart)."""
        with self.session() as s:
            has_pass = select(TranscriptPass.id).where(TranscriptPass.call_id == Call.id)
            stmt = (
                select(Call.id)
                .where(Call.state == state, Call.node_id == self.node_id, ~has_pass.exists())
                .order_by(Call.created_at)
            )
            return list(s.scalars(stmt))

    def store_revision(
        self, pass_id: int, call_id: str, revision: str, rows: list[dict[str, Any]]
    ) -> None:
        """Replace the call's ``revision`` with ``rows`` (SegmentRow fields) and mark the
        pass done, in one transaction: a reader sees the old revision or the whole new one."""
        with self.writing() as s:
            s.execute(
                delete(SegmentRow).where(
                    SegmentRow.call_id == call_id, SegmentRow.revision == revision
                )
            )
            now = utcnow()
            s.add_all(
                SegmentRow(call_id=call_id, revision=revision, created_at=now, **row)
                for row in rows
            )
            previous = LIVE if revision != LIVE else None  # webhooks: transcript.revised
            self.announce_revision(s, call_id, revision, previous, len(rows), "post-call pass")
            done = s.get(TranscriptPass, pass_id)
            if done is not None:
                done.state = "done"
                done.progress = 1.0
                done.segments = len(rows)
                done.missed = sum(1 for row in rows if row.get("live_missed"))
                done.finished_at = now
