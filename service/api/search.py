"""/search: ranked full-text search over every stored segment, across the fleet's calls."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, current_app, jsonify
from spectree import Response as Resp

from service.api.errors import ApiError
from service.api.schemas import ErrorBody, SearchQuery, SearchResult
from service.api.spec import spec
from service.store import search

bp = Blueprint("search", __name__)


def _utc(value: datetime | None) -> datetime | None:
    """A time without a zone is taken as UTC, the zone every stored time is in."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@bp.get("/search")
@spec.validate(
    query=SearchQuery, resp=Resp(HTTP_200=SearchResult, HTTP_400=ErrorBody), tags=["search"]
)
def search_segments(query: SearchQuery):
    """Segments matching every term, best first (then newest), with the moment in the call
    and a snippet whose matched words are in `<mark>` (the rest HTML-escaped).

    `q`: words (all must occur, any case), `"a phrase"` (those words in that order),
    `prefix*` (a word starting so, 2 or more letters); no other operators. A query that
    cannot be searched for is `400 bad_query` with the reason. Filters: `speaker`, `call`,
    `node` (IM_NODE_ID), `revision`, and `since`/`until` on the call's start. Paging:
    `limit` (at most 100) and `offset` (the previous page's `next_offset`)."""
    node = current_app.extensions["intellimeet.node"]
    try:
        terms, filters = _parsed(query)
    except ApiError:
        node.metrics.searched("bad_query")
        raise
    try:
        # One row more than asked for says whether there is a next page.
        hits = node.store.search(terms, filters, query.limit + 1, query.offset)
    except Exception:
        node.metrics.searched("error")
        raise
    node.metrics.searched()
    more = len(hits) > query.limit
    return jsonify(
        {
            "query": query.q,
            "hits": [
                {
                    "segment_id": h.segment_id,
                    "call_id": h.call_id,
                    "node_id": h.node_id,
                    "speaker": h.speaker,
                    "revision": h.revision,
                    "start": h.start,
                    "end": h.end,
                    "text": h.text,
                    "snippet": search.snippet(h.text, terms),
                    "score": round(float(h.score), 6),
                }
                for h in hits[: query.limit]
            ],
            "next_offset": query.offset + query.limit if more else None,
        }
    )


def _parsed(query: SearchQuery) -> tuple[tuple[search.Term, ...], search.Filters]:
    """The query's terms and filters, or the 400 saying why it cannot be searched for."""
    try:
        terms = search.parse(query.q)
    except search.QueryError as exc:
        raise ApiError(400, "bad_query", str(exc)) from None
    if query.revision is not None and query.revision not in search.REVISIONS:
        known = ", ".join(search.REVISIONS)
        raise ApiError(400, "bad_query", f"unknown revision {query.revision!r}: {known}")
    since, until = _utc(query.since), _utc(query.until)
    if since is not None and until is not None and since >= until:
        raise ApiError(400, "bad_query", "`since` must be before `until`")
    filters = search.Filters(
        speaker=query.speaker,
        call=query.call,
        node=query.node,
        revision=query.revision,
        since=since,
        until=until,
    )
    return terms, filters
