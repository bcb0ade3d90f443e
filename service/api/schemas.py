"""Request and response shapes of the control API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from service.store.search import MAX_LIMIT, MAX_OFFSET, MAX_QUERY_CHARS

# What CreateSession._mode_fields enforces, stated in the schema as well, so that clients
# (and schemathesis) know a dial needs `peer` and `token`, a listen takes neither, and an
# input device index is not negative.
MODE_RULES = {
    "allOf": [
        {
            "if": {"properties": {"mode": {"const": "dial"}}},
            "then": {
                "required": ["peer", "token"],
                "properties": {
                    "peer": {"type": "string", "minLength": 1},
                    "token": {"type": "string"},
                    "port": {"type": "null"},
                },
            },
            "else": {"properties": {"peer": {"type": "null"}, "token": {"type": "null"}}},
        },
        {"properties": {"input": {"not": {"type": "integer", "maximum": -1}}}},
    ]
}


class CreateSession(BaseModel):
    """Start a call: `listen` waits for a peer on a TCP port; `dial` calls one."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=lambda s: s.update(MODE_RULES))

    mode: Literal["listen", "dial"]
    # strict: JSON `true` is not port 1, nor "7000" a number (the schema says integer).
    port: StrictInt | None = Field(
        None,
        ge=0,
        le=65535,
        description="listen: TCP port (0 = any free port; default IM_CALL_PORT)",
    )
    peer: str | None = Field(None, max_length=300, description="dial: HOST:PORT of the listener")
    token: str | None = Field(
        None, min_length=1, max_length=256, description="dial: the listener's call token"
    )
    input: str | StrictInt = Field(  # `true` is not device 1
        "default",
        description="PortAudio device index or name, `default`, `file:PATH` (WAV, real time), "
        "`tone:HZ`, or `silence`",
    )
    output: str | StrictInt | None = Field(
        "default",
        description="PortAudio device index or name, `default`, `file:PATH`, or null",
    )
    language: str | None = Field(
        None, min_length=2, max_length=16, description="spoken language (ISO 639-1); auto if unset"
    )
    transcribe: StrictBool | Literal["after"] = Field(
        True,
        description="live captions; `after`: none live, the post-call pass transcribes the "
        "recording (admitted when the node answers `503 asr_saturated` to `true`)",
    )
    task: Literal["transcribe", "translate"] = Field(
        "transcribe", description="`translate`: transcripts in English (multilingual model only)"
    )
    record: bool | None = Field(
        None, description="keep both sides' audio (GET .../recording); default IM_RECORD"
    )

    @model_validator(mode="after")
    def _mode_fields(self) -> CreateSession:
        if self.mode == "dial":
            if not self.peer or not self.token:
                raise ValueError("dial needs `peer` (HOST:PORT) and `token`")
            if self.port is not None:
                raise ValueError("`port` is for listen; a dial names `peer`")
        elif self.peer is not None or self.token is not None:
            raise ValueError("listen takes no `peer` or `token` (the node makes a token)")
        if isinstance(self.input, int) and self.input < 0:
            raise ValueError("input device index must be >= 0")
        return self


# Segment ids are SQLite/PostgreSQL 64-bit integers; a larger cursor is refused up front
# rather than overflowing the query.
MAX_SEGMENT_ID = 2**63 - 1


class TranscriptQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["json", "text", "srt", "vtt"] = "json"
    since: int | None = Field(
        None,
        ge=0,
        le=MAX_SEGMENT_ID,
        description="json only: just the segments stored after this cursor (the previous "
        "response's `next_cursor`, or an event id from the live feed)",
    )
    revision: Literal["live", "final"] | None = Field(
        None,
        description="`live`: what the live pass caught during the call; `final`: the "
        "post-call pass over the recording, with word timings (default: final once it "
        "exists, else live)",
    )

    @model_validator(mode="after")
    def _since_is_json_only(self) -> TranscriptQuery:
        if self.since is not None and self.format != "json":
            raise ValueError("`since` is for format=json, whose `next_cursor` is the next cursor")
        return self


class EventsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    last_event_id: int | None = Field(
        None,
        ge=0,
        le=MAX_SEGMENT_ID,
        description="replay the finals stored after this id first (the `Last-Event-ID` "
        "header does the same and wins); default 0: every final of the call",
    )
    stats: bool = Field(True, description="send a `stats` event about once a second")
    revision: bool = Field(
        False,
        description="after the call's end, stay open while its post-call pass runs and "
        "send one `revision` event when it is done or failed",
    )


class RecordingQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    speaker: Literal["local", "remote", "both"] = Field(
        "both", description="one side, or both as stereo (local left)"
    )
    format: Literal["opus", "flac"] = Field(
        "opus",
        description="Ogg Opus, or `flac`: the local side's lossless copy (IM_RECORD_LOSSLESS)",
    )


class RecordingDeleted(BaseModel):
    call_id: str
    deleted: bool
    live: bool


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class SessionOut(BaseModel):
    """A call's state, addresses, times and live counters (see README for every field)."""

    model_config = ConfigDict(extra="allow")

    id: str
    node_id: str = Field("", description="the node holding the call (IM_NODE_ID)")
    mode: Literal["listen", "dial"]
    state: str
    address: str | None = None
    peer: str | None = None
    token: str | None = Field(None, description="only in the response that created a listen call")
    end_reason: str | None = None


class NewRevision(BaseModel):
    """`POST /sessions/<id>/transcript/revisions`: `{}` (the pass uses IM_FINAL_MODEL)."""

    model_config = ConfigDict(extra="forbid")


class PassOut(BaseModel):
    """A post-call pass (`postcall` of a session): it makes the call's final revision."""

    model_config = ConfigDict(extra="allow")

    id: int
    call_id: str
    state: Literal["pending", "running", "done", "failed"]
    model: str
    progress: float = Field(description="share of the recording decoded so far, 0 to 1")


class SessionList(BaseModel):
    sessions: list[SessionOut]


# IM_NODE_ID's form (service/config.py): a `node` filter of any other form matches nothing.
NODE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


class SessionsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str | None = Field(
        None, pattern=NODE_ID_PATTERN, description="only the calls of this node (IM_NODE_ID)"
    )


class Health(BaseModel):
    status: Literal["ok", "loading", "storage_failed"]
    model: str
    model_loaded: bool
    device: str | None
    live_calls: int
    storage_error: str | None = None


class DeviceOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    index: int
    name: str


class DeviceList(BaseModel):
    inputs: list[DeviceOut]
    outputs: list[DeviceOut]
    reason: str | None = None


class SearchQuery(BaseModel):
    """`GET /search`: the query language is in docs/api.md (service/store/search.py)."""

    model_config = ConfigDict(extra="forbid")

    q: str = Field(
        max_length=MAX_QUERY_CHARS,
        description='words (all must occur), "a phrase", prefix* (2 or more letters)',
    )
    speaker: Literal["local", "remote"] | None = None
    since: datetime | None = Field(None, description="calls started at or after (ISO 8601)")
    until: datetime | None = Field(None, description="calls started before (ISO 8601)")
    call: str | None = Field(None, max_length=32, description="one call's segments only")
    node: str | None = Field(None, pattern=NODE_ID_PATTERN, description="one node's calls only")
    revision: str | None = Field(None, max_length=16, description="`live` (or `final`, once kept)")
    limit: int = Field(20, ge=1, le=MAX_LIMIT)
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="the previous page's `next_offset`")


class SearchHit(BaseModel):
    segment_id: int
    call_id: str
    node_id: str
    speaker: str
    revision: str
    start: float = Field(description="seconds into the call")
    end: float
    text: str
    snippet: str = Field(description="HTML: the text escaped, matched words in <mark>")
    score: float = Field(description="higher is better; comparable within one response")


class SearchResult(BaseModel):
    query: str
    hits: list[SearchHit]
    next_offset: int | None = Field(description="the next page's `offset`; null: no more")
