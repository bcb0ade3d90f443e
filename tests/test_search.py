"""GET /search on SQLite (FTS5) and on a real PostgreSQL server (tsvector + GIN): the same
queries, the same answers. Every test taking ``database_url`` runs on both.

The query language (words, "phrases", prefix*) is parsed by service/store/search.py into
the backends' own syntax; what cannot be searched for is a 400 with the reason, and a fuzzed
query never makes a 500. Segments are indexed by the insert itself (one statement), also
those a database held before migration 0005.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from helpers import store_call
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, inspect, text

from service.store import search
from service.store.db import Store, alembic_config, upgrade
from service.store.offhub import OffHub
from service.vocab import Segment, Speaker

MARKED = re.compile(r"<mark>(.*?)</mark>")


@pytest.fixture
def node(node_factory, database_url):
    return node_factory(IM_DATABASE_URL=database_url, IM_NODE_ID="node-a")


def add(store: Store, call_id: str, texts: list[str], speaker=Speaker.LOCAL, first: int = 0):
    for n, words in enumerate(texts, first):
        store.add_segment(
            call_id,
            Segment(speaker=speaker, number=n, start=2.0 * n, end=2.0 * n + 1.5, text=words),
        )


def hits(client, expect: int = 200, **params) -> list[dict]:
    r = client.get("/search", query_string=params)
    assert r.status_code == expect, r.get_json()
    return r.get_json()["hits"] if expect == 200 else r.get_json()


@pytest.fixture
def archive(node):
    store = node.store
    store_call(store, "c1")
    add(
        store,
        "c1",
        [
            "The quick brown fox jumps over the lazy dog",
            "a brown dog barks at the quick fox",
            "nothing to see here",
            "Meeting notes: the well-known budget, 3.5 million, Café Müller",
        ],
    )
    add(store, "c1", ["the fox said <b>hello</b> & left"], Speaker.REMOTE, first=10)
    return node


def test_words_phrases_and_prefixes_find_the_same_segments_on_both_backends(client, archive):
    def texts(q: str) -> set[str]:
        return {h["text"] for h in hits(client, q=q)}

    assert texts("quick fox") == {
        "The quick brown fox jumps over the lazy dog",
        "a brown dog barks at the quick fox",
    }
    assert texts("QUICK Fox") == texts("quick fox")  # any case
    assert texts('"quick brown"') == {"The quick brown fox jumps over the lazy dog"}
    assert texts('"brown quick"') == set()  # a phrase keeps its order
    assert texts("bar*") == {"a brown dog barks at the quick fox"}
    assert texts('"the quick bro"*') == {"The quick brown fox jumps over the lazy dog"}
    assert texts("well-known 3.5") == texts('"well known" "3 5"')  # punctuation splits words
    assert len(texts("well-known 3.5")) == 1
    assert texts("café müller") == texts("CAFÉ MÜLLER") != set()  # letters beyond ASCII
    assert texts("cafe") == set()  # diacritics are kept, on both
    assert texts("fox OR zebra") == set()  # no operators: OR is a word that is not there
    assert texts("hello") == {"the fox said <b>hello</b> & left"}


def test_a_hit_gives_the_call_node_speaker_moment_and_a_marked_escaped_snippet(client, archive):
    (hit,) = hits(client, q="hello")
    assert hit["call_id"] == "c1" and hit["node_id"] == "node-a"
    assert hit["speaker"] == "remote" and hit["revision"] == "live"
    assert (hit["start"], hit["end"]) == (20.0, 21.5)
    assert hit["text"] == "the fox said <b>hello</b> & left"
    # HTML: the text escaped, so a transcript cannot inject markup; the match marked.
    assert hit["snippet"] == "the fox said &lt;b&gt;<mark>hello</mark>&lt;/b&gt; &amp; left"
    (hit,) = hits(client, q='"quick brown" jum*')
    assert MARKED.findall(hit["snippet"]) == ["quick", "brown", "jumps"]


def test_more_occurrences_rank_first_then_newest(client, node):
    store_call(node.store, "c1")
    add(node.store, "c1", ["budget", "budget budget budget", "the budget is", "nothing"])
    got = [h["text"] for h in hits(client, q="budget")]
    assert got[0] == "budget budget budget"
    assert set(got) == {"budget", "budget budget budget", "the budget is"}
    scores = [h["score"] for h in hits(client, q="budget")]
    assert scores == sorted(scores, reverse=True)


def test_filters_by_speaker_call_node_time_and_revision(client, node, database_url):
    other = Store(database_url, node_id="node-b")
    try:
        store_call(node.store, "mine")
        add(node.store, "mine", ["agenda item one"], Speaker.LOCAL)
        add(node.store, "mine", ["agenda item two"], Speaker.REMOTE, first=5)
        store_call(other, "theirs")
        add(other, "theirs", ["agenda item three"])
    finally:
        other.engine.dispose()

    def calls_and_texts(**params) -> set[tuple[str, str]]:
        return {(h["call_id"], h["text"]) for h in hits(client, q="agenda", **params)}

    assert len(calls_and_texts()) == 3  # the whole fleet's calls
    assert calls_and_texts(speaker="remote") == {("mine", "agenda item two")}
    assert calls_and_texts(call="theirs") == {("theirs", "agenda item three")}
    assert {c for c, _ in calls_and_texts(node="node-a")} == {"mine"}
    assert calls_and_texts(node="node-c") == set()
    now = datetime.now(UTC)
    assert len(calls_and_texts(since=(now - timedelta(hours=1)).isoformat())) == 3
    assert calls_and_texts(since=(now + timedelta(hours=1)).isoformat()) == set()
    assert calls_and_texts(until=(now - timedelta(hours=1)).isoformat()) == set()
    naive = (now + timedelta(hours=1)).replace(tzinfo=None).isoformat()  # taken as UTC
    assert len(calls_and_texts(until=naive)) == 3
    assert len(calls_and_texts(revision="live")) == 3
    if "final" in search.REVISIONS:  # once a post-call pass keeps a final revision
        assert calls_and_texts(revision="final") == set()
    body = hits(client, 400, q="agenda", revision="draft")
    assert body["error"]["code"] == "bad_query" and "draft" in body["error"]["message"]


def test_pages_cover_every_hit_once(client, node):
    store_call(node.store, "c1")
    add(node.store, "c1", [f"status report number {i}" for i in range(25)])
    seen, offset, pages = [], 0, 0
    while offset is not None:
        r = client.get("/search", query_string={"q": "report", "limit": 10, "offset": offset})
        body = r.get_json()
        seen += [h["segment_id"] for h in body["hits"]]
        offset, pages = body["next_offset"], pages + 1
    assert pages == 3 and len(seen) == 25 == len(set(seen))


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"q": '"unbalanced'}, "unbalanced quote"),
        ({"q": ""}, "no words"),
        ({"q": "   -- & "}, "no words"),
        ({"q": '""'}, "empty phrase"),
        ({"q": "a*"}, "prefix needs"),
        ({"q": "*"}, "prefix needs"),
        ({"q": "fo*o"}, "may only end a word"),
        ({"q": " ".join(f"w{i}" for i in range(11))}, "more than 10 terms"),
        ({"q": '"' + " ".join(f"w{i}" for i in range(33)) + '"'}, "more than 32 words"),
        ({"q": "x" * 201}, "200 characters"),
        ({"q": "fox", "limit": 101}, "limit"),
        ({"q": "fox", "offset": -1}, "offset"),
        ({"q": "fox", "speaker": "both"}, "speaker"),
        ({"q": "fox", "node": "bad node!"}, "node"),
        ({"q": "fox", "since": "yesterday"}, "since"),
        ({"q": "fox", "since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "before"),
        ({}, "q"),
    ],
)
def test_a_query_that_cannot_be_searched_is_a_400_with_the_reason(client, params, reason):
    body = hits(client, 400, **params)
    assert body["error"]["code"] in ("bad_query", "invalid_request")
    assert reason in body["error"]["message"], body


# Query syntax and the characters each backend's own parser treats specially, and any text.
SPECIAL = [*"ab fox\"*-'()&|!:^~<>.%_\\;", "é", "日", "\x00", "\u200b"]
QUERY_TEXT = st.text(alphabet=st.sampled_from(SPECIAL), max_size=60) | st.text(max_size=220)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(q=QUERY_TEXT)
def test_no_query_text_makes_a_500(client, archive, q):
    r = client.get("/search", query_string={"q": q})
    assert r.status_code in (200, 400), (q, r.get_json())
    if r.status_code == 400:
        assert r.get_json()["error"]["message"]


@settings(max_examples=500, deadline=None)
@given(q=QUERY_TEXT)
def test_what_reaches_a_backend_is_made_of_letters_and_digits_only(q):
    """Whatever the user wrote, each backend's query is its words (letters and digits),
    quoted, and the syntax this module writes: nothing else can reach FTS5 or to_tsquery."""
    try:
        terms = search.parse(q)
    except search.QueryError as exc:
        assert str(exc)
        return
    assert 1 <= len(terms) <= search.MAX_TERMS
    for term in terms:
        assert term.words and all(w.isalnum() for w in term.words)
    assert re.fullmatch(r'(?:"[^\W_]+(?: [^\W_]+)*"\*? ?)+', search.fts5_match(terms) + " ")
    lexeme = r"'[^\W_]+'"
    term = rf"\({lexeme}(?: <-> {lexeme})*(?::\*)?\)"
    assert re.fullmatch(rf"{term}(?: & {term})*", search.tsquery(terms))


def test_the_index_is_written_by_the_insert_itself(node):
    """No extra round trip on the hot path: add_segment is one statement (with no webhook
    endpoint, whose outbox row would be the only other), and the segment is searchable as
    soon as it is committed; a duplicate is not indexed twice."""
    store_call(node.store, "c1")
    statements: list[tuple[int, str]] = []

    def count(conn, cursor, statement, *args):
        statements.append((id(conn), statement))

    event.listen(node.store.engine, "before_cursor_execute", count)
    try:
        add(node.store, "c1", ["an unusual zeppelin"])
    finally:
        event.remove(node.store.engine, "before_cursor_execute", count)
    # Only the insert's own connection: the node's other work (the post-call loop) may
    # query the store from its threads meanwhile.
    (conn,) = {c for c, s in statements if s.lstrip().upper().startswith("INSERT INTO SEGMENTS")}
    mine = [s for c, s in statements if c == conn]
    assert len(mine) == 1 and mine[0].lstrip().upper().startswith("INSERT")
    terms = search.parse("zeppelin")
    assert len(node.store.search(terms, search.Filters(), 10, 0)) == 1
    add(node.store, "c1", ["an unusual zeppelin, again"])  # the same number: not stored
    assert len(node.store.search(terms, search.Filters(), 10, 0)) == 1


def test_upgrade_indexes_the_segments_already_stored(database_url):
    """A database from before migration 0005 keeps its calls (node_id "") and every old
    segment is found; downgrading to 0004 removes the index and upgrading builds it again."""
    upgrade(database_url, "0004")
    store = Store(database_url)
    try:
        with store.engine.begin() as conn:
            conn.execute(
                text(
                    "insert into calls (id, mode, state, transcribe, created_at, frames_sent,"
                    " frames_received, bytes_sent, bytes_received)"
                    " values ('old', 'listen', 'ended', true, :t, 0, 0, 0, 0)"
                ),
                {"t": datetime(2026, 1, 2, tzinfo=UTC)},
            )
            for n in range(3):
                conn.execute(
                    text(
                        "insert into segments (call_id, speaker, number, start_s, end_s, text,"
                        " created_at) values ('old', 'local', :n, :n, :n + 1, :txt, :t)"
                    ),
                    {"n": n, "txt": f"archived line {n}", "t": datetime(2026, 1, 2, tzinfo=UTC)},
                )
        terms = search.parse("archived line")
        for _ in range(2):
            upgrade(database_url)
            assert store.get_call("old").node_id == ""
            found = store.search(terms, search.Filters(), 10, 0)
            assert sorted(h.text for h in found) == [f"archived line {n}" for n in range(3)]
            command.downgrade(alembic_config(database_url), "0004")
            tables = set(inspect(store.engine).get_table_names())
            columns = {c["name"] for c in inspect(store.engine).get_columns("segments")}
            assert not any(t.startswith(search.FTS_TABLE) for t in tables)
            assert search.VECTOR_COLUMN not in columns
    finally:
        store.engine.dispose()


def test_search_needs_the_token_like_every_other_route(node_factory, tmp_path):
    from service.api import create_app

    token = "t" * 24
    node = node_factory("guarded", IM_API_TOKEN=token)
    client = create_app(node).test_client()
    assert client.get("/search?q=fox").status_code == 401
    ok = client.get("/search?q=fox", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.get_json()["hits"] == []
    doc = client.get("/openapi.json", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert {"200", "400", "401"} <= set(doc["paths"]["/search"]["get"]["responses"])


def test_every_query_is_counted_by_outcome_for_metrics(client, node):
    def count(outcome: str) -> float:
        value = node.metrics.registry.get_sample_value(
            "im_search_queries_total", {"outcome": outcome}
        )
        return value or 0.0

    hits(client, q="fox")
    hits(client, q="fox*")
    hits(client, 400, q='"open')
    assert (count("ok"), count("bad_query"), count("error")) == (2, 1, 0)


def test_a_search_on_sqlite_waits_off_the_hub(tmp_path):
    """sqlite3 runs in its caller's thread: in the hub a search would stall every call.
    The node's store (service/store/offhub.py) runs it on an OS thread, so the waiting
    greenlet yields to the hub."""
    from gevent.util import assert_switches

    threads = OffHub(Store(f"sqlite:///{tmp_path / 'search.db'}"))
    store = threads.proxy
    try:
        store.upgrade()
        store_call(store, "c1")
        add(store, "c1", ["a quiet search", "another quiet line"])
        with assert_switches():
            found = store.search(search.parse("quiet"), search.Filters(), 10, 0)
        assert len(found) == 2
    finally:
        threads.close()
        store.engine.dispose()
