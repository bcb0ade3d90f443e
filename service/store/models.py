"""Tables for calls and their transcript segments, the same on SQLite and PostgreSQL.

A segment keeps Whisper's own confidence figures next to the text, so that a reader (or a
later quality pass) can tell a confident line from a doubtful one without re-running ASR.

Types are chosen for the stricter of the two databases: PostgreSQL enforces VARCHAR lengths
and has 32-bit INTEGER, where SQLite enforces neither, so text that comes from users or peers
(device names, file paths, addresses, error messages) is TEXT, and counters that a long call
can push past 2**31 (bytes) are BIGINT.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from service.vocab import Segment, Speaker, Task


class UTCDateTime(TypeDecorator):
    """Timestamps are written and read in UTC, whatever the database does with zones.

    SQLite forgets the zone, so it is given back on read; PostgreSQL answers in the session's
    TimeZone setting, so the value is converted back, and the API shows the same `+00:00`
    times on either database.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Call(Base):
    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    mode: Mapped[str] = mapped_column(String(8))  # listen | dial
    state: Mapped[str] = mapped_column(String(16), index=True)
    local_address: Mapped[str | None] = mapped_column(Text)
    peer_address: Mapped[str | None] = mapped_column(Text)
    input: Mapped[str | None] = mapped_column(Text)
    output: Mapped[str | None] = mapped_column(Text)
    language: Mapped[str | None] = mapped_column(String(16))
    task: Mapped[str | None] = mapped_column(String(16))  # transcribe | translate
    transcribe: Mapped[bool] = mapped_column(Boolean, default=True)  # live captions
    # No live captions, a post-call pass instead ("transcribe": "after"; migration 0009)
    transcribe_after: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    connected_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    end_reason: Mapped[str | None] = mapped_column(Text)
    frames_sent: Mapped[int] = mapped_column(Integer, default=0)
    frames_received: Mapped[int] = mapped_column(Integer, default=0)
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_received: Mapped[int] = mapped_column(BigInteger, default=0)
    # Kept when the call ends, so an ended session still shows what was turned away.
    rejected_connections: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    segments_refused: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The node (IM_NODE_ID) that holds the call: a restarting node closes only its own
    # open calls. "" for calls from before node ids (migration 0005).
    node_id: Mapped[str] = mapped_column(String(64), default="", server_default="", index=True)
    # Recordings (migration 0007, service/recordings/): whether this side recorded, whether
    # the peer said it records (None: it did not say), why recording stopped early, and
    # when the audio was deleted.
    record: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    peer_records: Mapped[bool | None] = mapped_column(Boolean)
    recording_stopped: Mapped[str | None] = mapped_column(Text)
    recording_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    segments: Mapped[list[SegmentRow]] = relationship(
        back_populates="call", cascade="all, delete-orphan", order_by="SegmentRow.id"
    )

    @property
    def transcribe_field(self) -> bool | str:
        """``transcribe`` as the API takes and shows it: true, false or "after"."""
        return "after" if self.transcribe_after else self.transcribe


class SegmentRow(Base):
    """A stored ``vocab.Segment`` (``to_segment`` gives it back), with its row id (the
    order of arrival, and the polling cursor) and when it was committed."""

    __tablename__ = "segments"
    __table_args__ = (
        UniqueConstraint("call_id", "revision", "speaker", "number", name="uq_segment_number"),
        CheckConstraint("speaker IN ('local', 'remote')", name="ck_segment_speaker"),
        CheckConstraint("revision IN ('live', 'final')", name="ck_segment_revision"),
    )

    # The autoincrementing id is the stable order of arrival and the cursor for polling.
    # BIGINT on PostgreSQL (a shared server outlives 2**31 segments); SQLite keeps INTEGER,
    # the only type it makes an alias of the rowid, and which is 64-bit there anyway.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    speaker: Mapped[str] = mapped_column(String(8))  # local | remote
    # The transcribing side's running number: makes a re-sent segment idempotent.
    number: Mapped[int] = mapped_column(Integer)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    text: Mapped[str] = mapped_column(Text)
    language: Mapped[str | None] = mapped_column(String(16))
    task: Mapped[str | None] = mapped_column(String(16))  # transcribe | translate
    avg_logprob: Mapped[float | None] = mapped_column(Float)
    no_speech_prob: Mapped[float | None] = mapped_column(Float)
    compression_ratio: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Transcript revisions (migration 0008): "live", what the live pass caught during the
    # call; "final", the post-call pass over the recording (service/calls/postcall.py),
    # with its words and whether the live pass never produced the segment.
    revision: Mapped[str] = mapped_column(String(8), default="live", server_default="live")
    live_missed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # A final segment the live pass made, kept where the recording ends before the call did
    # (a kill: migration 0011): it has no word timings.
    from_live: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    words: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)

    call: Mapped[Call] = relationship(back_populates="segments")

    def to_segment(self) -> Segment:
        return Segment(
            start=self.start_s,
            end=self.end_s,
            text=self.text,
            language=self.language,
            task=Task(self.task) if self.task else None,
            avg_logprob=self.avg_logprob,
            no_speech_prob=self.no_speech_prob,
            compression_ratio=self.compression_ratio,
            speaker=Speaker(self.speaker),
            number=self.number,
        )


class OutboxRow(Base):
    """A webhook event waiting for one endpoint: written in the transaction of the row it
    announces, deleted once the endpoint answered 2xx (service/store/outbox.py,
    service/webhooks/). One row per event and endpoint, so each endpoint's progress is its
    own; ``event_id`` is the event's, the same on every try and for every endpoint."""

    __tablename__ = "webhook_outbox"
    __table_args__ = (
        # The head of each call's queue (min id per call), and the oldest rows to prune.
        Index("ix_webhook_outbox_endpoint_call", "endpoint", "call_id", "id"),
        Index("ix_webhook_outbox_endpoint_id", "endpoint", "id"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[str] = mapped_column(String(40))
    endpoint: Mapped[str] = mapped_column(String(32))
    # No foreign key: an event outlives nothing it points to, and keeps its order per call.
    call_id: Mapped[str | None] = mapped_column(String(32))
    type: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)  # the exact JSON sent, the same on every try
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    due_at: Mapped[float] = mapped_column(Float)  # epoch seconds of the next try
    # While a sender holds it (a try in flight): another node or a restart leaves it alone
    # until then, so a call's next event cannot overtake it.
    claimed_until: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)


class TranscriptPass(Base):
    """One post-call pass over a call's recording (service/calls/postcall.py), kept in the
    store so that a restarted node resumes what was pending or running."""

    __tablename__ = "transcript_passes"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'running', 'done', 'failed')", name="ck_pass_state"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    revision: Mapped[str] = mapped_column(String(8))  # what it makes: final
    model: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(8), index=True)  # pending|running|done|failed
    progress: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")  # 0..1
    error: Mapped[str | None] = mapped_column(Text)
    segments: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    missed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # live_missed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
