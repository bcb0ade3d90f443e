"""Opening the database, bringing its schema up to date, and every query the node makes.

The URL decides the database: SQLite (a file next to the node, the default) or PostgreSQL
through psycopg 3 (a server that many nodes can share, one database per node). For SQLite
the node turns on WAL (readers never block the writer, and a killed process loses no
committed transaction), foreign keys (off by default in SQLite) and synchronous=FULL so a
commit is on disk before the segment is reported; PostgreSQL does all of that by default.
Under gevent, psycopg sees the monkey-patched `select` and waits on its socket cooperatively,
so a query never blocks the hub.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.vocab import Segment

from .models import Call, SegmentRow

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"  # shipped inside the package


def utcnow() -> datetime:
    return datetime.now(UTC)


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


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Run Alembic to head; the node does this at every start so a fresh or older database
    is always usable without a separate migration step."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._insert = _INSERT[self.engine.dialect.name]
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Why the last write failed (a full disk, a lost server), until one succeeds again:
        # /healthz reports it, so a node that cannot keep transcripts does not say "ok".
        self.write_error: str | None = None

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

    def upgrade(self) -> None:
        upgrade(self.url)

    def add_call(self, **fields: Any) -> Call:
        call = Call(created_at=utcnow(), **fields)
        with self.writing() as s:
            s.add(call)
        return call

    def update_call(self, call_id: str, **fields: Any) -> None:
        with self.writing(clears=False) as s:
            call = s.get(Call, call_id)
            if call is None:
                raise KeyError(call_id)
            for key, value in fields.items():
                setattr(call, key, value)

    def get_call(self, call_id: str) -> Call | None:
        with self.session() as s:
            return s.get(Call, call_id)

    def list_calls(self, limit: int = 100) -> list[Call]:
        with self.session() as s:
            stmt = select(Call).order_by(Call.created_at.desc(), Call.id.desc()).limit(limit)
            return list(s.scalars(stmt))

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
            .on_conflict_do_nothing(index_elements=["call_id", "speaker", "number"])
            .returning(SegmentRow.id)
        )
        with self.writing() as s:
            return s.scalar(stmt)

    def segment_counts(self, call_ids: list[str]) -> dict[str, dict[str, int]]:
        """Stored segments per call and speaker, in one query (for the session views)."""
        counts: dict[str, dict[str, int]] = {c: {"local": 0, "remote": 0} for c in call_ids}
        if not call_ids:
            return counts
        with self.session() as s:
            stmt = (
                select(SegmentRow.call_id, SegmentRow.speaker, func.count())
                .where(SegmentRow.call_id.in_(call_ids))
                .group_by(SegmentRow.call_id, SegmentRow.speaker)
            )
            for call_id, speaker, n in s.execute(stmt):
                counts[call_id][speaker] = n
        return counts

    def segments(self, call_id: str, after_id: int | None = None) -> list[SegmentRow]:
        """Both speakers in time order; ties keep arrival order."""
        with self.session() as s:
            stmt = select(SegmentRow).where(SegmentRow.call_id == call_id)
            if after_id is not None:
                stmt = stmt.where(SegmentRow.id > after_id)
            stmt = stmt.order_by(SegmentRow.start_s, SegmentRow.id)
            return list(s.scalars(stmt))

    def mark_unfinished_calls(self, state: str, reason: str) -> int:
        """Calls a previous run of this node left open (it was killed) are closed here."""
        with self.writing(clears=False) as s:
            calls = s.scalars(select(Call).where(Call.ended_at.is_(None))).all()
            for call in calls:
                call.state = state
                call.end_reason = reason
                call.ended_at = utcnow()
            return len(calls)
