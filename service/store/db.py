"""Opening the database, bringing its schema up to date, and every query the node makes.

The URL decides the database. For SQLite the node turns on WAL (readers never block the
writer, and a killed process loses no committed transaction), foreign keys (off by default
in SQLite) and synchronous=FULL so a commit is on disk before the segment is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .models import Call, Segment

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if path.parent and str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


def upgrade(url: str) -> None:
    """Run Alembic to head; the node does this at every start so a fresh or older database
    is always usable without a separate migration step."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    # Alembic announces each of its plugins at INFO; only the migrations themselves matter.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    command.upgrade(cfg, "head")


@dataclass(frozen=True)
class SegmentIn:
    speaker: str
    number: int
    start_s: float
    end_s: float
    text: str
    language: str | None = None
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s, s.begin():
            yield s

    def upgrade(self) -> None:
        upgrade(self.url)

    def add_call(self, **fields: Any) -> Call:
        call = Call(created_at=utcnow(), **fields)
        with self.session() as s:
            s.add(call)
        return call

    def update_call(self, call_id: str, **fields: Any) -> None:
        with self.session() as s:
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

    def add_segment(self, call_id: str, seg: SegmentIn) -> Segment | None:
        """Commit one final segment. Returns None when that (speaker, number) is already
        stored, so a segment delivered twice is stored once."""
        row = Segment(call_id=call_id, created_at=utcnow(), **seg.__dict__)
        try:
            with self.session() as s:
                s.add(row)
        except IntegrityError:
            with self.session() as s:
                existing = s.scalar(
                    select(Segment).where(
                        Segment.call_id == call_id,
                        Segment.speaker == seg.speaker,
                        Segment.number == seg.number,
                    )
                )
            if existing is None:
                raise
            return None
        return row

    def segments(self, call_id: str, after_id: int | None = None) -> list[Segment]:
        """Both speakers in time order; ties keep arrival order."""
        with self.session() as s:
            stmt = select(Segment).where(Segment.call_id == call_id)
            if after_id is not None:
                stmt = stmt.where(Segment.id > after_id)
            stmt = stmt.order_by(Segment.start_s, Segment.id)
            return list(s.scalars(stmt))

    def mark_unfinished_calls(self, state: str, reason: str) -> int:
        """Calls a previous run of this node left open (it was killed) are closed here."""
        with self.session() as s:
            calls = s.scalars(select(Call).where(Call.ended_at.is_(None))).all()
            for call in calls:
                call.state = state
                call.end_reason = reason
                call.ended_at = utcnow()
            return len(calls)
