"""Signed webhooks, against a real receiver process (tests/webhook_receiver.py) and checked
with the Standard Webhooks reference verifier (``standardwebhooks``).

- settings: bad URLs, secrets and endpoint lists stop the node at start, naming the variable;
- the outbox on SQLite and PostgreSQL: an event is written exactly when the row it
  announces is committed, one per endpoint, and only the head of each call's queue is due;
- the verifier accepts what the node signs and rejects a wrong secret or a changed byte;
- a redirect is a failure, never followed; the outbox keeps its bound, dropping the oldest;
- with real node processes and tiny.en: a receiver down during a whole call gets every
  event, in order per call, once it is up; a node SIGKILLed with events pending delivers
  them after its restart, the interrupted calls' call.ended included.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    JFK_CLIP,
    PROCESS_ENV,
    ROOT,
    looped_clip,
    parse_metrics,
    store_call,
    wait_state,
    wait_until,
)
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.api.views import stored_session
from service.config import ConfigError, load_settings
from service.localnodes import NodeProcess, free_port, start_call, wait_for_final_transcripts
from service.store import outbox
from service.store.db import Store, utcnow
from service.store.models import Call, OutboxRow
from service.vocab import Segment, Speaker

RECEIVER = ROOT / "tests" / "webhook_receiver.py"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def hook_env(port: int, secret: str, **more: str) -> dict[str, str]:
    return {
        "IM_WEBHOOK_URL": f"http://127.0.0.1:{port}/hooks",
        "IM_WEBHOOK_SECRET": secret,
        "IM_WEBHOOK_RETRY_MAX_S": "2",
        **more,
    }


class Receiver:
    """The receiver process: started on ``port``, recording to ``log``."""

    def __init__(self, port: int, log: Path, *args: str) -> None:
        self.port = port
        self.log = log
        self.args = args
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Receiver:
        self.proc = subprocess.Popen(
            [sys.executable, str(RECEIVER), str(self.port), str(self.log), *self.args],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def records(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def delivered(self) -> list[dict[str, Any]]:
        """What it answered 200 to, first time per webhook-id (at-least-once may repeat)."""
        seen: set[str] = set()
        out = []
        for r in self.records():
            msg_id = r["headers"]["webhook-id"]
            if r["status"] == 200 and msg_id not in seen:
                seen.add(msg_id)
                out.append(r)
        return out


def payloads(records: list[dict[str, Any]], secret: str) -> list[dict[str, Any]]:
    """Every record verified with the reference verifier (raises on any bad one)."""
    return [Webhook(secret).verify(r["body"], r["headers"]) for r in records]


def by_call(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    calls: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        calls[e["data"]["call_id"]].append(e)
    return calls


def assert_in_order(events: list[dict[str, Any]]) -> None:
    """One call's events as delivered: started first, then its finals in commit order,
    ended last."""
    types = [e["type"] for e in events]
    assert types[0] == "call.started" and types[-1] == "call.ended", types
    assert set(types[1:-1]) <= {"segment.final"}, types
    ids = [e["data"]["id"] for e in events[1:-1]]
    assert ids == sorted(ids), ids


def scrape(node: Any) -> dict[str, float]:
    """GET /metrics of a Flask test client or a NodeProcess, parsed."""
    text = node.get("/metrics").text if hasattr(node, "get") else node.call("GET", "/metrics")
    return parse_metrics(text)


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"IM_WEBHOOK_URL": "http://127.0.0.1:9/x"}, "go together"),
        ({"IM_WEBHOOK_URL": "ftp://host/x", "IM_WEBHOOK_SECRET": new_secret()}, "IM_WEBHOOK_URL"),
        ({"IM_WEBHOOK_URL": "http://h/x", "IM_WEBHOOK_SECRET": "s3cret"}, "whsec_"),
        ({"IM_WEBHOOK_URL": "http://h/x", "IM_WEBHOOK_SECRET": "whsec_!!"}, "base64"),
        ({"IM_WEBHOOK_URL": "http://h/x", "IM_WEBHOOK_SECRET": "whsec_YWJj"}, "24 to 64"),
        ({"IM_WEBHOOKS": "[{"}, "not valid JSON"),
        ({"IM_WEBHOOKS": '[{"name": "a", "url": "http://h"}]'}, 'exactly "name"'),
        ({"IM_WEBHOOKS": "/no/such/file.json"}, "cannot read"),
        ({"IM_WEBHOOK_MAX_PENDING": "5"}, "IM_WEBHOOK_MAX_PENDING"),
        ({"IM_WEBHOOK_RETRY_MAX_S": "0.1"}, "IM_WEBHOOK_RETRY_MAX_S"),
        ({"IM_METRICS_TOKEN": "short"}, "IM_METRICS_TOKEN"),
    ],
)
def test_bad_webhook_settings_stop_the_node_at_start(env, says):
    with pytest.raises(ConfigError, match=says):
        load_settings(env)


def test_endpoints_from_the_url_and_a_file_each_named_once(tmp_path):
    secret = new_secret()
    listed = tmp_path / "hooks.json"
    listed.write_text(json.dumps([{"name": "crm", "url": "https://crm/in", "secret": secret}]))
    env = {"IM_WEBHOOK_URL": "http://h/x", "IM_WEBHOOK_SECRET": secret}
    settings = load_settings({**env, "IM_WEBHOOKS": str(listed)})
    assert [e.name for e in settings.webhook_endpoints] == ["default", "crm"]
    assert secret not in repr(settings)
    twice = json.dumps([{"name": "default", "url": "http://h", "secret": secret}])
    with pytest.raises(ConfigError, match="used twice"):
        load_settings({**env, "IM_WEBHOOKS": twice})


# -- the outbox (SQLite and PostgreSQL) -------------------------------------------------------


@pytest.fixture
def store(database_url):
    s = Store(database_url)
    s.upgrade()
    s.outbox.endpoints = ("a", "b")
    yield s
    s.engine.dispose()


def add_call(store: Store, call_id: str) -> None:
    store_call(store, call_id, mode="dial", state="connecting")


def final(number: int, text: str = "hello") -> Segment:
    return Segment(float(number), number + 0.5, text, speaker=Speaker.LOCAL, number=number)


def rows(store: Store, endpoint: str = "a") -> list[tuple[str, str | None, str]]:
    with store.session() as s:
        got = s.query(OutboxRow).filter_by(endpoint=endpoint).order_by(OutboxRow.id)
        return [(r.type, r.call_id, r.event_id) for r in got]


def test_a_calls_event_describes_it_as_the_api_does(store):
    # A call with no live captions (transcribe: "after") and a node id: the event said
    # "transcribe": false, and null for a row from before node ids.
    for call_id, fields in (("c1", {"transcribe": False, "transcribe_after": True}), ("c2", {})):
        store_call(store, call_id, mode="dial", state="connecting", node_id="node-a", **fields)
    store_call(store, "c3", mode="dial", state="connecting")  # node_id "": before node ids
    with store.session() as s:
        sent = {
            r.call_id: json.loads(r.body)["data"]
            for r in s.query(OutboxRow).filter_by(endpoint="a", type="call.started")
        }
        shown = {c.id: c for c in s.query(Call)}
    assert sent["c1"]["transcribe"] == "after" and sent["c2"]["transcribe"] is True
    assert sent["c1"]["node_id"] == "node-a" and sent["c3"]["node_id"] == ""
    for call_id, data in sent.items():  # the same as GET /sessions/<id> shows
        view = stored_session(shown[call_id], {})
        assert (data["transcribe"], data["node_id"]) == (view["transcribe"], view["node_id"])


def test_an_event_is_written_exactly_when_its_row_is_committed(store):
    add_call(store, "c1")
    first = store.add_segment("c1", final(0))
    assert store.add_segment("c1", final(0)) is None  # delivered twice: stored once
    store.update_call("c1", state="connected")  # not an event
    with pytest.raises(RuntimeError), store.writing() as s:
        store.announce_revision(s, "c1", "final", "live", 1, "post-call pass")
        raise RuntimeError("the revision's own write failed")
    assert [r[:2] for r in rows(store)] == [("call.started", "c1"), ("segment.final", "c1")]
    # One row per endpoint, with the same event id (it is one event).
    assert [r[2] for r in rows(store, "b")] == [r[2] for r in rows(store)]
    with store.writing() as s:
        store.announce_revision(s, "c1", "final", "live", 1, "post-call pass")
    store.update_call("c1", state="ended", ended_at=utcnow(), end_reason="hangup")
    assert [r[0] for r in rows(store)] == [
        "call.started",
        "segment.final",
        "transcript.revised",
        "call.ended",
    ]
    with store.session() as s:
        bodies = [
            json.loads(r.body) for r in s.query(OutboxRow).filter_by(endpoint="a").order_by("id")
        ]
    assert bodies[1]["data"]["id"] == first and bodies[1]["data"]["text"] == "hello"
    assert bodies[2]["data"] == outbox.revision_data("c1", "final", "live", 1, "post-call pass")
    assert bodies[3]["data"]["state"] == "ended" and bodies[3]["data"]["end_reason"] == "hangup"


def test_each_commit_wakes_the_worker_for_its_own_events_only(store):
    # The node's writes run on several threads at once (service/store/offhub.py): one
    # transaction's failure, or its commit, must not take another's wake-up with it.
    add_call(store, "c1")
    woken: list[str] = []
    store.outbox.wake = lambda: woken.append("wake")
    with store.writing() as s:
        store.announce_revision(s, "c1", "final", "live", 1, "post-call pass")
        with pytest.raises(SQLAlchemyError), store.writing() as other:
            other.execute(text("SELECT * FROM no_such_table"))  # another write that fails
        assert woken == []  # not yet committed: nothing to deliver
    assert woken == ["wake"]
    store.update_call("c1", state="connected")  # a commit that wrote no event
    assert woken == ["wake"]


def test_storing_a_revision_announces_it_in_the_same_transaction(store):
    add_call(store, "c1")
    store.add_segment("c1", final(0, "hello"))
    row = {"speaker": "local", "number": 0, "start_s": 0.0, "end_s": 0.5, "text": "Hello."}
    store.store_revision(0, "c1", "final", [row])  # what the post-call pass calls
    with store.session() as s:
        last = s.query(OutboxRow).filter_by(endpoint="a").order_by(OutboxRow.id.desc()).first()
        assert last is not None
        event = json.loads(last.body)
    assert event["type"] == "transcript.revised"
    assert event["data"] == outbox.revision_data("c1", "final", "live", 1, "post-call pass")


def test_only_the_head_of_each_calls_queue_is_due(store):
    add_call(store, "c1")
    add_call(store, "c2")
    store.add_segment("c1", final(0))
    store.add_segment("c2", final(0))
    box = store.outbox
    heads = box.due("a", limit=10)
    assert [(d.call_id, d.type) for d in heads] == [("c1", "call.started"), ("c2", "call.started")]
    assert box.due("a", limit=10) == []  # claimed: not handed out twice
    c1, c2 = heads
    box.failed(c1.id, 1, due_at=2e9, error="HTTP 503")  # c1 waits far ahead
    box.delivered([c2.id])
    # c2 moves on to its segment; c1's segment waits behind its call.started.
    assert [(d.call_id, d.type) for d in box.due("a", limit=10)] == [("c2", "segment.final")]
    # A restart tries c1 again at once, and frees the claim on c2's (killed, say) try.
    assert box.retry_now(("a",)) == 2
    assert [(d.call_id, d.type, d.attempts) for d in box.due("a", limit=10)] == [
        ("c1", "call.started", 1),
        ("c2", "segment.final", 0),
    ]
    assert box.prune("a", most=2) == (2, 1)  # oldest gone: c1's call.started
    assert [r[0] for r in rows(store)] == ["segment.final", "segment.final"]
    assert box.pending() == {"a": 2, "b": 4}


# -- in-process nodes (model-less): signing, redirects, the bound ----------------------------


def listen_and_hang_up(client: Any) -> str:
    r = client.post(
        "/sessions", json={"mode": "listen", "port": 0, "input": "silence", "output": None}
    )
    assert r.status_code == 201, r.get_json()
    call_id = r.get_json()["id"]
    assert client.delete(f"/sessions/{call_id}").status_code == 200
    return call_id


def test_the_reference_verifier_accepts_our_signature_and_rejects_forgeries(node_factory, tmp_path):
    from service.api import create_app

    secret, port = new_secret(), free_port()
    with Receiver(port, tmp_path / "rx.jsonl") as rx:
        node = node_factory("n", **hook_env(port, secret))
        call_id = listen_and_hang_up(create_app(node).test_client())
        wait_until(lambda: len(rx.delivered()) == 2, 20, "both events")
    started, ended = rx.delivered()
    assert [p["type"] for p in payloads([started, ended], secret)] == ["call.started", "call.ended"]
    assert Webhook(secret).verify(started["body"], started["headers"])["data"]["call_id"] == call_id
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(started["body"], started["headers"])  # wrong secret
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(started["body"].replace(call_id, "0" * 32), started["headers"])
    with pytest.raises(WebhookVerificationError):  # another event's id on this body
        forged = {**started["headers"], "webhook-id": ended["headers"]["webhook-id"]}
        Webhook(secret).verify(started["body"], forged)


def test_a_redirect_is_a_failure_and_never_followed(node_factory, tmp_path):
    from service.api import create_app

    secret, port, elsewhere = new_secret(), free_port(), free_port()
    with (
        Receiver(elsewhere, tmp_path / "elsewhere.jsonl") as target,
        Receiver(
            port, tmp_path / "rx.jsonl", "--redirect-to", f"http://127.0.0.1:{elsewhere}/"
        ) as redirecting,
    ):
        node = node_factory("n", **hook_env(port, secret, IM_WEBHOOK_RETRY_MAX_S="1"))
        client = create_app(node).test_client()
        listen_and_hang_up(client)
        metric = "im_webhook_failures_total{endpoint=default,reason=redirect}"
        wait_until(lambda: scrape(client)[metric] >= 3, 20, "three redirected tries")
        tries = redirecting.records()
        assert target.records() == []  # nothing went where the redirect pointed
    # The same event, tried again and again under its one id, and never delivered.
    first_id = tries[0]["headers"]["webhook-id"]
    assert sum(t["headers"]["webhook-id"] == first_id for t in tries) >= 2
    assert {t["status"] for t in tries} == {307}
    assert scrape(client)["im_webhook_deliveries_total{endpoint=default}"] == 0
    status = client.get("/webhooks").get_json()["endpoints"][0]
    assert status["delivered"] == 0 and status["failed"]["redirect"] >= 3
    assert "redirects are not followed" in status["last_error"]


def test_the_outbox_keeps_its_bound_dropping_the_oldest(node_factory, tmp_path, caplog):
    from service.api import create_app

    secret, port = new_secret(), free_port()  # nothing listens there yet
    node = node_factory("n", **hook_env(port, secret, IM_WEBHOOK_MAX_PENDING="100"))
    client = create_app(node).test_client()
    with caplog.at_level(logging.WARNING, logger="service.webhooks.worker"):
        calls = [listen_and_hang_up(client) for _ in range(60)]  # 120 events
        wait_until(
            lambda: client.get("/webhooks").get_json()["endpoints"][0]["dropped"] == 20,
            20,
            "the 20 oldest events to be dropped",
        )
    status = client.get("/webhooks").get_json()["endpoints"][0]
    assert status["pending"] == 100 and status["delivered"] == 0
    metrics = scrape(client)
    assert metrics["im_webhook_events_dropped_total{endpoint=default}"] == 20
    assert metrics["im_webhook_pending{endpoint=default}"] == 100
    full = [r for r in caplog.records if "outbox full" in r.getMessage()]
    assert 1 <= len(full) <= 3  # logged, at a bounded rate
    with Receiver(port, tmp_path / "rx.jsonl") as rx:
        wait_until(lambda: len(rx.delivered()) == 100, 30, "the 100 kept events")
    got = by_call(payloads(rx.delivered(), secret))
    assert sorted(got) == sorted(calls[10:])  # the first ten calls' events were the oldest
    for events in got.values():
        assert [e["type"] for e in events] == ["call.started", "call.ended"]


# -- real node processes with tiny.en ----------------------------------------------------------


@pytest.mark.slow
def test_a_receiver_down_for_a_whole_call_gets_every_event_in_order(tmp_path, model_dir):
    secret, port = new_secret(), free_port()
    node = NodeProcess(
        "A", tmp_path / "a", env={**PROCESS_ENV, **hook_env(port, secret)}, model_dir=model_dir
    )
    with node:
        # The node calls itself: the dialling session speaks (its finals are `local`), the
        # listening one hears them from its peer (`remote`): both speakers' finals.
        listen, dial = start_call(
            node,
            node,
            listen={"input": "silence", "output": None},
            dial={"input": node.media(JFK_CLIP), "output": None},
        )
        settled = wait_for_final_transcripts(node, dial["id"], node, listen["id"])
        node.call("DELETE", f"/sessions/{dial['id']}")
        wait_state(node, listen["id"], {"ended"})
        segments = len(settled["speaker_segments"]) + len(settled["peer_segments"])
        expected = 2 + segments + 2
        status = node.call("GET", "/webhooks")["endpoints"][0]
        assert status["delivered"] == 0 and status["failed"]["connection"] >= 1
        wait_until(lambda: node.call("GET", "/webhooks")["endpoints"][0]["pending"] == expected)

        with Receiver(port, tmp_path / "rx.jsonl", "--fail-first", "3") as rx:
            wait_until(lambda: len(rx.delivered()) == expected, 60, "every event")
            records = rx.records()
        metrics = scrape(node)

    events = payloads(rx.delivered(), secret)
    calls = by_call(events)
    assert sorted(calls) == sorted([listen["id"], dial["id"]])
    for events_of_call in calls.values():
        assert_in_order(events_of_call)
    finals = [e["data"] for e in events if e["type"] == "segment.final"]
    assert {f["speaker"] for f in finals} == {"local", "remote"}
    stored = {(s["id"], s["text"]) for s in settled["speaker_segments"] + settled["peer_segments"]}
    assert {(f["id"], f["text"]) for f in finals} == stored
    # The three answered 503 came again under the same id, and were then delivered.
    refused = [r["headers"]["webhook-id"] for r in records if r["status"] == 503]
    assert len(refused) == 3
    delivered_ids = [r["headers"]["webhook-id"] for r in rx.delivered()]
    assert set(refused) <= set(delivered_ids)
    assert metrics["im_webhook_deliveries_total{endpoint=default}"] == expected
    assert metrics["im_webhook_failures_total{endpoint=default,reason=status}"] == 3
    assert metrics["im_webhook_failures_total{endpoint=default,reason=connection}"] >= 1


@pytest.mark.slow
def test_a_node_killed_with_events_pending_delivers_them_after_restart(tmp_path, model_dir):
    secret, port = new_secret(), free_port()
    env = {**PROCESS_ENV, **hook_env(port, secret)}
    node = NodeProcess("A", tmp_path / "a", env=env, model_dir=model_dir)
    speech = looped_clip(tmp_path / "jfk-x3.wav", 3)
    try:
        node.start()
        listen, dial = start_call(
            node,
            node,
            listen={"input": "silence", "output": None},
            dial={"input": node.media(speech), "output": None},
        )

        def two_finals() -> bool:
            return len(node.call("GET", f"/sessions/{dial['id']}/transcript")["segments"]) >= 2

        wait_until(two_finals, 90, "two finals")
        node.kill()  # SIGKILL mid-call: every event so far is undelivered
        with Receiver(port, tmp_path / "rx.jsonl") as rx:
            node.restart()
            stored = {
                (s["id"], s["speaker"], s["text"])
                for call in (listen, dial)
                for s in node.call("GET", f"/sessions/{call['id']}/transcript")["segments"]
            }
            expected = 2 + len(stored) + 2
            wait_until(lambda: len(rx.delivered()) == expected, 60, "every event")
    finally:
        node.kill()
    events = payloads(rx.delivered(), secret)
    calls = by_call(events)
    for events_of_call in calls.values():
        assert_in_order(events_of_call)
        ended = events_of_call[-1]["data"]
        assert (ended["state"], ended["end_reason"]) == ("interrupted", "node_restarted")
    finals = {
        (e["data"]["id"], e["data"]["speaker"], e["data"]["text"])
        for e in events
        if e["type"] == "segment.final"
    }
    assert finals == stored  # every final stored before the kill, none lost
    assert {speaker for _, speaker, _ in stored} == {"local", "remote"}
