"""Full-text search over stored segments: its SQL on each backend (the query language and
what a word is are service/store/searchtext.py's, re-exported here).

The index is written by the segment insert itself (SQLite: triggers into an external-content
FTS5 table, migration 0005; PostgreSQL: a ``tsvector`` column written by a trigger, with a
GIN index, migrations 0005 and 0010), so indexing costs the hot path no extra round trip.
Ranking is the backend's own (FTS5's bm25, PostgreSQL's ``ts_rank``): scores are comparable
within one answer, not across backends.

What one query reads is bounded by design, not by the planner's luck (docs/benchmarks.md
has the plans): the filters on the segment itself (speaker, call, revision, and on
PostgreSQL the call's node too) are entries of the index, so the index yields only the
matches within the filter; of those only the newest MAX_RANKED are ranked, and only the
page's rows are joined to their segment and call.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    bindparam,
    cast,
    column,
    func,
    literal_column,
    select,
    table,
)
from sqlalchemy.dialects.postgresql import TSQUERY

from .models import Call, SegmentRow
from .searchtext import MAX_QUERY_CHARS as MAX_QUERY_CHARS
from .searchtext import MAX_TERMS as MAX_TERMS
from .searchtext import MAX_WORDS as MAX_WORDS
from .searchtext import MIN_PREFIX_CHARS as MIN_PREFIX_CHARS
from .searchtext import QueryError as QueryError
from .searchtext import Term as Term
from .searchtext import fts5_match as fts5_match
from .searchtext import parse as parse
from .searchtext import snippet as snippet
from .searchtext import tsquery as tsquery

MAX_LIMIT = 100
MAX_RANKED = 2000  # the newest matches ranked per query (see statement)
MAX_OFFSET = MAX_RANKED - MAX_LIMIT  # every page lies within the ranked matches
# Transcript revisions a segment can belong to (migration 0008): what the live pass caught,
# and the post-call pass's.
REVISIONS = ("live", "final")

# Names of the search objects migrations 0005 and 0010 create besides the models' tables.
FTS_TABLE = "segments_fts"  # SQLite: FTS5 table (and its shadow tables segments_fts_*)
VECTOR_COLUMN = "search_vector"  # PostgreSQL: tsvector column of `segments`
VECTOR_INDEX = "ix_segments_search"  # PostgreSQL: its GIN index


@dataclass(frozen=True)
class Filters:
    speaker: str | None = None
    call: str | None = None
    node: str | None = None
    revision: str | None = None
    since: datetime | None = None  # the call's start, inclusive
    until: datetime | None = None  # the call's start, exclusive


@dataclass(frozen=True)
class Hit:
    segment_id: int
    call_id: str
    node_id: str
    speaker: str
    revision: str
    start: float
    end: float
    text: str
    score: float


def statement(
    dialect: str, terms: tuple[Term, ...], filters: Filters, limit: int, offset: int
) -> Select[Any]:
    """The ranked query on ``dialect``: best first, then newest; ``limit`` rows from
    ``offset``. Columns: the fields of ``Hit``, in its order.

    Only the newest MAX_RANKED matches are ranked: ranking reads every candidate's index
    entry, and a word in most segments ("the") would cost the whole archive per query. A
    rarer query has fewer matches than that and is ranked whole. Only the page's rows are
    then joined to their segment and call.
    """
    s, c = SegmentRow.__table__.c, Call.__table__.c
    if dialect == "sqlite":
        newest = _sqlite_newest(terms, filters)
    elif dialect == "postgresql":
        newest = _postgresql_newest(terms, filters)
    else:  # pragma: no cover - parse_url admits only these two
        raise ValueError(f"no search on {dialect}")
    best = (
        select(newest)
        .order_by(newest.c.score.desc(), newest.c.id.desc())
        .limit(limit)
        .offset(offset)
    ).subquery("page")
    return (
        select(
            s.id,
            s.call_id,
            c.node_id,
            s.speaker,
            s.revision,
            s.start_s,
            s.end_s,
            s.text,
            best.c.score,
        )
        .select_from(
            best.join(SegmentRow.__table__, s.id == best.c.id).join(
                Call.__table__, c.id == s.call_id
            )
        )
        .order_by(best.c.score.desc(), best.c.id.desc())
    )


def _on_call(filters: Filters) -> list[ColumnElement[bool]]:
    c = Call.__table__.c
    on_call: list[ColumnElement[bool]] = []
    if filters.since is not None:
        on_call.append(c.created_at >= filters.since)
    if filters.until is not None:
        on_call.append(c.created_at < filters.until)
    return on_call


def _sqlite_newest(terms: tuple[Term, ...], filters: Filters) -> FromClause:
    """(id, score) of the newest MAX_RANKED matches within ``filters``. FTS5 reads its
    matches in rowid (= segment id) order itself, newest first here, so an order on the
    segment id would sort every match. The terms are matched in the ``text`` column and
    the filters as ``tags`` (``filter_tags``) in the same MATCH, so FTS5 yields only the
    matches within the filters, from the index alone; only a time filter needs the calls.

    bm25 (lower is better) gives every phrase of its MATCH an IDF, counted over all the
    rows that phrase is in: for a tag, that is the whole filter (a speaker: half the
    archive). So with tags, the matches are chosen first without a score, and then scored
    by a second cursor on the terms alone, within those matches' rowid range: the work is
    the terms' own matches, as without a filter."""
    s, c = SegmentRow.__table__.c, Call.__table__.c
    words = f"{{text}} : ({fts5_match(terms)})"
    tags = filter_tags(filters)
    on_call = _on_call(filters)
    fts = table(FTS_TABLE, column("rowid"), column(FTS_TABLE)).alias("matches")
    matches: FromClause = fts
    if on_call:
        matches = fts.join(SegmentRow.__table__, s.id == fts.c.rowid).join(
            Call.__table__, c.id == s.call_id
        )
    wanted = words + (f" AND {{tags}} : ({' '.join(tags)})" if tags else "")
    newest = (
        select(fts.c.rowid.label("id"))
        .select_from(matches)
        .where(fts.c[FTS_TABLE].op("MATCH")(wanted), *on_call)
        .order_by(fts.c.rowid.desc())
        .limit(MAX_RANKED)
    )
    if not tags:  # one cursor: bm25 sees the terms only
        score = -func.bm25(fts.c[FTS_TABLE], 1.0, 0.0)
        return newest.add_columns(score.label("score")).subquery("newest")
    chosen = newest.cte("chosen")
    ranked = table(FTS_TABLE, column("rowid"), column(FTS_TABLE)).alias("ranked")
    return (
        select(
            ranked.c.rowid.label("id"),
            (-func.bm25(ranked.c[FTS_TABLE], 1.0, 0.0)).label("score"),
        )
        .where(
            ranked.c[FTS_TABLE].op("MATCH")(words),
            ranked.c.rowid >= select(func.min(chosen.c.id)).scalar_subquery(),
            # `+ 0`: a test on each row, not a rowid lookup per chosen match
            (ranked.c.rowid + 0).in_(select(chosen.c.id)),
        )
        .subquery("newest")
    )


def _postgresql_newest(terms: tuple[Term, ...], filters: Filters) -> FromClause:
    """(id, score) of the newest MAX_RANKED matches within ``filters``. The GIN index is
    asked for the words and the filters' lexemes together (``filter_lexemes``), so the rows
    read are the matches within those filters; ``ts_rank`` sees the words alone, and runs
    only on the newest MAX_RANKED of them."""
    s, c = SegmentRow.__table__.c, Call.__table__.c
    vector: ColumnElement[Any] = literal_column(f"segments.{VECTOR_COLUMN}")
    words = func.to_tsquery(literal_column("'simple'"), tsquery(terms))
    lexemes = filter_lexemes(filters)
    wanted: ColumnElement[Any] = words
    if lexemes:
        wanted = words.op("&&")(cast(bindparam("filters", " & ".join(lexemes)), TSQUERY))
    on_call = _on_call(filters)
    matches: FromClause = SegmentRow.__table__
    if on_call:
        matches = matches.join(Call.__table__, c.id == s.call_id)
    newest = (
        select(s.id.label("id"), vector.label("vector"))
        .select_from(matches)
        .where(vector.op("@@")(wanted), *on_call)
        .order_by(s.id.desc())
        .limit(MAX_RANKED)
    ).subquery("newest")
    return select(newest.c.id, func.ts_rank(newest.c.vector, words).label("score")).subquery(
        "ranked"
    )


def _filter_values(filters: Filters) -> list[tuple[str, str]]:
    values = (
        ("speaker", filters.speaker),
        ("revision", filters.revision),
        ("call", filters.call),
        ("node", filters.node),
    )
    return [(key, value) for key, value in values if value is not None]


def filter_tags(filters: Filters) -> list[str]:
    """The FTS5 tokens (``n6770752d61``: key letter, value in hex) of the filters that
    migration 0010 puts into each segment's ``tags``: letters and digits only, whatever
    the value, so never FTS5 syntax."""
    return [key[0] + value.encode().hex() for key, value in _filter_values(filters)]


def filter_lexemes(filters: Filters) -> list[str]:
    """The quoted ``tsquery`` lexemes (``'=node:gpu-a'``) of the filters that migration
    0010 puts into each segment's vector. Quoted here (a quote doubled, a backslash
    escaped), so that any filter value is one lexeme and never tsquery syntax."""
    return [
        "'" + f"={key}:{value}".replace("\\", "\\\\").replace("'", "''") + "'"
        for key, value in _filter_values(filters)
    ]


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """For Alembic's schema comparison: leave out the search objects, which migrations 0005
    and 0010 make per backend and the models (the same on both) cannot declare."""
    if type_ == "table":
        return not (name or "").startswith(FTS_TABLE)
    if type_ == "column":
        return name != VECTOR_COLUMN
    if type_ == "index":
        return name != VECTOR_INDEX
    return True
