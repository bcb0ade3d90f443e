"""The live feed (`GET /sessions/<id>/events`, Server-Sent Events) and transcript polling
(`?since=`), read by real HTTP clients (requests + sseclient-py) over real sockets.

Two kinds of server: a node served in this process by gevent's WSGIServer (no Whisper model;
fast: errors, replay after a restart, keepalives, a client that never reads), and two real
node processes in a call with real speech (slow: states, stats, finals, partials, resume).
The in-process server runs on this thread's gevent hub, so every HTTP client here runs on
its own OS thread while this thread waits cooperatively (helpers.wait_until).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent
import pytest
import requests
from gevent.pywsgi import WSGIServer
from helpers import NodeFactory, wait_until
from sseclient import SSEClient

from service.api import create_app
from service.api import events as events_api
from service.calls.events import Partial
from service.node import Node
from service.vocab import Segment, Speaker

SONNETS = "en_long_librivox_shakespeare_sonnets_1_to_3.wav"  # 160 s, many utterances


# --- an SSE client ------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic() on arrival
    kind: str
    id: int | None
    data: dict[str, Any]


class Feed:
    """Reads one event stream on its own thread until the server ends it, `until` matches
    (then it hangs up itself), or the stream errs."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        until: Callable[[Received], bool] | None = None,
    ) -> None:
        self.response = requests.get(
            url,
            headers={"Accept": "text/event-stream", **(headers or {})},
            params=params,
            stream=True,
            timeout=(5, 60),
        )
        assert self.response.status_code == 200, self.response.text
        assert self.response.headers["Content-Type"].startswith("text/event-stream")
        self.events: list[Received] = []
        self.error: BaseException | None = None
        self.ended_by_server = False
        self.done = threading.Event()
        self._until = until
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            # chunk_size=None: hand each chunk on as it arrives, not in 128-byte reads.
            for e in SSEClient(self.response.iter_content(chunk_size=None)).events():
                got = Received(time.monotonic(), e.event, int(e.id) if e.id else None, {})
                got = Received(got.at, got.kind, got.id, json.loads(e.data))
                self.events.append(got)
                if self._until is not None and self._until(got):
                    return
            self.ended_by_server = True
        except BaseException as exc:
            self.error = exc
        finally:
            self.response.close()
            self.done.set()

    def of(self, kind: str) -> list[Received]:
        return [e for e in self.events if e.kind == kind]

    def wait(self, predicate: Callable[[Feed], bool], timeout: float, what: str) -> None:
        def met() -> bool:
            if predicate(self):
                return True
            if self.done.is_set() and not predicate(self):
                raise AssertionError(f"stream ended before {what}: {self.summary()}")
            return False

        wait_until(met, timeout, lambda: f"{what}: {self.summary()}", step=0.05)

    def wait_closed(self, timeout: float) -> None:
        assert self.done.wait(timeout), f"stream still open after {timeout} s: {self.summary()}"
        assert self.error is None, f"stream failed: {self.error!r}"
        assert self.ended_by_server

    def summary(self) -> str:
        return str([(e.kind, e.id, e.data.get("state") or e.data.get("text")) for e in self.events])


def first_state_index(feed: Feed) -> int | None:
    """Finals before the first state event were replayed from the store; after it, live.
    None while the replay is still coming (no state event yet)."""
    return next((i for i, e in enumerate(list(feed.events)) if e.kind == "state"), None)


def split_replay(feed: Feed) -> tuple[list[int], list[int]]:
    cut = first_state_index(feed)
    if cut is None:
        return [], []
    replayed = [e.id for e in feed.events[:cut] if e.kind == "final"]
    live = [e.id for e in feed.events[cut:] if e.kind == "final"]
    return replayed, live


# --- a node served in this process ---------------------------------------------------------


def off_hub(fn: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Run a blocking HTTP client call on a thread while the hub keeps serving."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_until(lambda: not t.is_alive(), timeout, "HTTP answer", step=0.01)
    if "error" in box:
        raise box["error"]
    return box["value"]


class Served:
    """A Node without a model, its API on a free loopback port, on this thread's hub."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.server = WSGIServer(("127.0.0.1", 0), create_app(self.node), log=None)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return off_hub(lambda: requests.get(self.url + path, timeout=30, **kwargs))

    def post(self, path: str, body: dict) -> requests.Response:
        return off_hub(lambda: requests.post(self.url + path, json=body, timeout=30))

    def delete(self, path: str) -> requests.Response:
        return off_hub(lambda: requests.delete(self.url + path, timeout=30))

    def feed(self, call_id: str, **kwargs: Any) -> Feed:
        return off_hub(lambda: Feed(f"{self.url}/sessions/{call_id}/events", **kwargs))

    def listen(self) -> str:
        r = self.post(
            "/sessions", {"mode": "listen", "port": 0, "input": "silence", "output": None}
        )
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def close(self) -> None:
        self.server.stop(timeout=1)


@pytest.fixture
def served(node: Node) -> Iterator[Served]:
    s = Served(node)
    yield s
    s.close()


def add_final(node: Node, call_id: str, number: int, text: str) -> int:
    row_id = node.store.add_segment(
        call_id,
        Segment(speaker=Speaker.LOCAL, number=number, start=number, end=number + 0.5, text=text),
    )
    assert row_id is not None
    return row_id


def error_code(r: requests.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and body["error"]["message"]
    return body["error"]["code"]


# --- fast: in-process ------------------------------------------------------------------------


def test_unknown_calls_and_bad_cursors_get_the_standard_errors(served):
    assert error_code(served.get("/sessions/no-such-call/events"), 404) == "not_found"
    call_id = served.listen()
    events = f"/sessions/{call_id}/events"
    for bad in ("abc", "-1", "1.5", str(2**63)):
        r = served.get(events, headers={"Last-Event-ID": bad})
        assert error_code(r, 400) == "invalid_request", bad
        r = served.get(events, params={"last_event_id": bad})
        assert error_code(r, 400) == "invalid_request", bad
    transcript = f"/sessions/{call_id}/transcript"
    for bad in ("abc", "-1", "1.5", str(2**63)):
        assert error_code(served.get(transcript, params={"since": bad}), 400) == "invalid_request"
    r = served.get(transcript, params={"since": "0", "format": "text"})
    assert error_code(r, 400) == "invalid_request"
    assert "format=json" in r.json()["error"]["message"]
    assert served.node.registry.get(call_id).events.listeners == 0  # nothing left subscribed


def test_polling_with_since_returns_only_newer_segments(served):
    call_id = served.listen()
    ids = [add_final(served.node, call_id, n, f"line {n}") for n in range(3)]
    path = f"/sessions/{call_id}/transcript"

    everything = served.get(path).json()
    assert [s["id"] for s in everything["segments"]] == ids
    assert everything["next_cursor"] == str(ids[-1])

    newer = served.get(path, params={"since": everything["segments"][0]["id"]}).json()
    assert [s["id"] for s in newer["segments"]] == ids[1:]
    assert newer["next_cursor"] == str(ids[-1])

    nothing = served.get(path, params={"since": everything["next_cursor"]}).json()
    assert nothing["segments"] == [] and nothing["next_cursor"] == everything["next_cursor"]
    later = add_final(served.node, call_id, 3, "line 3")
    polled = served.get(path, params={"since": nothing["next_cursor"]}).json()
    assert [s["id"] for s in polled["segments"]] == [later]
    assert polled["next_cursor"] == str(later)


def test_an_ended_call_replays_its_finals_then_its_state_and_closes_even_after_a_restart(
    node_factory: NodeFactory,
):
    first = Served(node_factory("n"))
    try:
        call_id = first.listen()
        ids = [add_final(first.node, call_id, n, f"line {n}") for n in range(4)]
        assert first.delete(f"/sessions/{call_id}").status_code == 200
    finally:
        first.close()
        node_factory.close(first.node)

    # A new node on the same database: the call is only stored now.
    again = Served(node_factory("n"))
    try:
        assert again.node.registry.get(call_id) is None
        everything = again.feed(call_id)
        everything.wait_closed(10)
        assert [e.kind for e in everything.events] == ["final"] * 4 + ["state"]
        assert [e.id for e in everything.of("final")] == ids
        assert [e.data["text"] for e in everything.of("final")] == [f"line {n}" for n in range(4)]
        assert all(
            e.data["id"] == e.id and e.data["call_id"] == call_id for e in everything.events[:4]
        )
        assert everything.events[-1].data == {
            "call_id": call_id,
            "state": "ended",
            "end_reason": "hangup",
        }

        resumed = again.feed(call_id, headers={"Last-Event-ID": str(ids[1])})
        resumed.wait_closed(10)
        assert [e.id for e in resumed.of("final")] == ids[2:]
        # The header wins over the query (it is what a reconnecting EventSource sends).
        both = again.feed(
            call_id, headers={"Last-Event-ID": str(ids[2])}, params={"last_event_id": 0}
        )
        both.wait_closed(10)
        assert [e.id for e in both.of("final")] == ids[3:]
        up_to_date = again.feed(call_id, params={"last_event_id": ids[-1]})
        up_to_date.wait_closed(10)
        assert [e.kind for e in up_to_date.events] == ["state"]
    finally:
        again.close()


def test_an_idle_feed_gets_keepalives_and_ends_with_the_call(served, monkeypatch):
    monkeypatch.setattr(events_api, "KEEPALIVE_S", 0.2)
    call_id = served.listen()
    r = off_hub(
        lambda: requests.get(
            f"{served.url}/sessions/{call_id}/events",
            params={"stats": "false"},
            stream=True,
            timeout=10,
        )
    )
    raw = bytearray()

    def read() -> None:
        for chunk in r.iter_content(chunk_size=None):
            raw.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_until(lambda: raw.count(b": keepalive\n\n") >= 2, 10, "keepalives")
    assert b"event: stats" not in raw  # asked for none
    assert served.delete(f"/sessions/{call_id}").status_code == 200
    wait_until(lambda: not reader.is_alive(), 10, "end of the stream")
    assert raw.endswith(b'"state":"ended","end_reason":"hangup"}\n\n')


def test_a_client_that_leaves_is_unsubscribed(served):
    call_id = served.listen()
    bus = served.node.registry.get(call_id).events
    feed = served.feed(call_id, until=lambda e: e.kind == "state")  # then it hangs up
    wait_until(feed.done.is_set, 10, "the client to leave")
    # The next write (a stats event within a second) finds the client gone.
    wait_until(lambda: bus.listeners == 0, 10, "the listener to be dropped")


def test_a_client_that_never_reads_is_cut_off_while_one_that_reads_gets_everything(served):
    call_id = served.listen()
    bus = served.node.registry.get(call_id).events
    path = f"/sessions/{call_id}/events?stats=false"

    # The stuck client: a tiny receive window, one request, then it never reads.
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", served.server.server_port))
    stuck.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    reader = served.feed(call_id, params={"stats": "false"})
    wait_until(lambda: bus.listeners == 2, 10, "both listeners")

    text = "w" * 2000
    sent = 0
    while bus.listeners_cut_off == 0 and sent < 5000:
        bus.publish(Partial(Speaker.LOCAL, sent, text, 0.0, 0.0))
        sent += 1
        gevent.sleep(0.001)  # the pace of a busy call, far above the real one
    assert bus.listeners_cut_off == 1, f"the stuck client was never cut off ({sent} events)"
    assert bus.listeners == 1  # the stuck one holds no queue on the bus any more
    for n in range(sent, sent + 20):
        bus.publish(Partial(Speaker.LOCAL, n, text, 0.0, 0.0))
    wait_until(lambda: len(reader.of("partial")) == sent + 20, 30, "every partial at the reader")
    assert [e.data["utterance"] for e in reader.of("partial")] == list(range(sent + 20))

    # When the stuck client reads at last, its stream ends with the reason; it can resume.
    stuck.settimeout(10)
    raw = bytearray()

    def drain() -> None:
        while chunk := stuck.recv(65536):
            raw.extend(chunk)
            if raw.endswith(b"0\r\n\r\n"):  # the end of the chunked body
                return

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    wait_until(lambda: not drainer.is_alive(), 20, "the stuck stream to end")
    stuck.close()
    assert b"event: cut_off" in raw
    assert raw.count(b"event: partial") < sent  # it did not get the backlog it fell behind on
    assert served.delete(f"/sessions/{call_id}").status_code == 200
    wait_until(reader.done.is_set, 10, "the reader's stream to end")
    assert reader.events[-1].kind == "state" and reader.events[-1].data["state"] == "ended"


# --- slow: two real nodes in a call with real speech ---------------------------------------


def partial_then_final(feed: Feed) -> bool:
    """Some final came after a partial of the same speaker and utterance."""
    events = list(feed.events)
    seen = {(e.data["speaker"], e.data["utterance"]) for e in events if e.kind == "partial"}
    return any(
        (e.data["speaker"], e.data["utterance"]) in seen for e in events if e.kind == "final"
    )


# The tests on this call take 600 s, not the default 300, because whichever of them runs
# first also runs the call (and starts the nodes) in its setup.
@pytest.fixture(scope="module")
def call_feeds(node_pair, speech_dir) -> dict[str, Any]:
    """One call, B speaking the sonnets to A, watched through several feeds:

    a_full: A's feed from before the call connects to its end;
    a_first: A's feed, hung up by the client after the first final;
    a_resumed: reopened with Last-Event-ID = that final's id once more finals are stored,
        then kept to the end (so finals come both replayed and live);
    b_full: B's feed (B transcribes its own speech: partials appear there).
    A hangs up once a_resumed has had a live final."""
    a, b = node_pair
    listen = a.call(
        "POST",
        "/sessions",
        201,
        json={"mode": "listen", "port": 0, "input": "silence", "output": None},
    )
    a_events = f"{a.url}/sessions/{listen['id']}/events"
    a_full = Feed(a_events)
    a_full.wait(lambda f: bool(f.of("state")), 10, "the first state")
    a_first = Feed(a_events, until=lambda e: e.kind == "final")

    dial = b.call(
        "POST",
        "/sessions",
        201,
        json={
            "mode": "dial",
            "peer": listen["address"],
            "token": listen["token"],
            "input": b.media(speech_dir / SONNETS),
            "output": None,
        },
    )
    b_full = Feed(f"{b.url}/sessions/{dial['id']}/events")
    a_first.wait(lambda f: bool(f.of("final")), 90, "a first final on A")
    assert a_first.done.wait(10)
    seen = a_first.of("final")[-1].id

    # Miss two finals, then come back.
    transcript = f"/sessions/{listen['id']}/transcript"
    wait_until(
        lambda: len(a.call("GET", f"{transcript}?since={seen}")["segments"]) >= 2,
        90,
        "further finals on A",
        step=0.2,
    )
    a_resumed = Feed(a_events, headers={"Last-Event-ID": str(seen)})
    a_resumed.wait(lambda f: bool(split_replay(f)[1]), 90, "a live final after resuming")

    # Partials are the first thing an overloaded ASR worker gives up (by design), so on
    # a busy machine give the speech time for one utterance to get partials and its final.
    with contextlib.suppress(AssertionError):  # the test on partials says so if none came
        wait_until(lambda: partial_then_final(b_full), 90, "a partial, then its final", step=0.2)
    a.call("DELETE", f"/sessions/{listen['id']}")
    for feed in (a_full, a_resumed, b_full):
        feed.wait_closed(60)
    return {
        "listen": listen,
        "dial": dial,
        "seen": seen,
        "a_full": a_full,
        "a_first": a_first,
        "a_resumed": a_resumed,
        "b_full": b_full,
        "a_segments": a.call("GET", transcript)["segments"],
        "b_segments": b.call("GET", f"/sessions/{dial['id']}/transcript")["segments"],
    }


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_state_events_follow_the_call_and_the_stream_closes_at_its_end(call_feeds):
    feed = call_feeds["a_full"]
    states = [(e.data["state"], e.data["end_reason"]) for e in feed.of("state")]
    assert states == [("listening", None), ("connected", None), ("ended", "hangup")]
    assert feed.events[-1].kind == "state"  # nothing after the end, and the server closed
    assert all(e.data["call_id"] == call_feeds["listen"]["id"] for e in feed.events)
    b_states = [(e.data["state"], e.data["end_reason"]) for e in call_feeds["b_full"].of("state")]
    # B's feed opened right after the dial: it may have seen the call still connecting.
    assert b_states[-2:] == [("connected", None), ("ended", "peer_hangup")]
    assert b_states[:-2] in ([], [("connecting", None)])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_finals_arrive_live_with_their_segment_ids(call_feeds):
    stored = call_feeds["a_segments"]
    finals = call_feeds["a_full"].of("final")
    assert len(stored) >= 4
    assert sorted(e.id for e in finals) == sorted(s["id"] for s in stored)
    assert [e.id for e in finals] == sorted(e.id for e in finals)  # commit order
    by_id = {s["id"]: s for s in stored}
    for e in finals:
        assert e.data["id"] == e.id
        assert (e.data["speaker"], e.data["text"]) == ("remote", by_id[e.id]["text"])
        assert (e.data["start"], e.data["end"]) == (by_id[e.id]["start"], by_id[e.id]["end"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stats_arrive_about_every_second_while_connected(call_feeds):
    feed = call_feeds["a_full"]
    connected = next(e.at for e in feed.of("state") if e.data["state"] == "connected")
    ended = feed.of("state")[-1].at
    stats = [e for e in feed.of("stats") if connected < e.at < ended]
    assert len(stats) >= (ended - connected) / 3  # ~1 s apart; generous for a busy machine
    received = [e.data["stats"]["frames_received"] for e in stats]
    assert received == sorted(received) and received[-1] > received[0]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_resume_replays_exactly_the_missed_finals_then_goes_live(call_feeds):
    seen = call_feeds["seen"]
    replayed, live = split_replay(call_feeds["a_resumed"])
    expected = sorted(s["id"] for s in call_feeds["a_segments"] if s["id"] > seen)
    assert len(replayed) >= 2 and live
    assert replayed + live == expected  # no gap, no duplicate, in order
    assert all(e.id is None for e in call_feeds["a_resumed"].events if e.kind != "final")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_partials_arrive_during_speech_then_the_final_replaces_them(call_feeds):
    feed = call_feeds["b_full"]
    partials = feed.of("partial")
    assert partials, "no partial events on the speaking node's feed"
    assert all(e.id is None and e.data["speaker"] == "local" for e in partials)
    finals = feed.of("final")
    assert finals
    replaced = 0
    for final in finals:
        key = (final.data["speaker"], final.data["utterance"])
        mine = [p for p in partials if (p.data["speaker"], p.data["utterance"]) == key]
        assert all(p.at < final.at for p in mine), "a partial came after its final"
        replaced += bool(mine and any(p.data["text"].strip() for p in mine))
    assert replaced >= 1, "no final was preceded by a partial of its utterance"
