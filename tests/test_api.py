"""Control API contract: validation, error shapes and statuses, transcript formats.

Runs the real app over a real Node and SQLite file; only the Whisper model is not loaded
(these tests are about the API, and the call tests load it for real).
"""

from __future__ import annotations

import socket
import time

import pytest
from helpers import wait_state

from service.api import create_app
from service.vocab import Segment


@pytest.fixture
def node(node_factory, database_url):
    return node_factory(IM_DATABASE_URL=database_url)  # each test twice: SQLite, PostgreSQL


def error(resp, status, code):
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


def no_sessions(client):
    return client.get("/sessions").get_json()["sessions"] == []


def test_malformed_json_is_400_and_creates_nothing(client):
    r = client.post("/sessions", data='{"mode": "listen",', content_type="application/json")
    error(r, 400, "malformed_json")
    error(client.post("/sessions", data="", content_type="application/json"), 400, "malformed_json")
    err = error(client.post("/sessions", data='{"mode": "listen"}'), 400, "malformed_json")
    assert "Content-Type: application/json" in err["message"]
    assert no_sessions(client)


@pytest.mark.parametrize(
    "body,field",
    [
        ({"mode": "shout"}, "mode"),
        ({"mode": "dial", "peer": "127.0.0.1:7000"}, "token"),
        ({"mode": "listen", "peer": "127.0.0.1:7000"}, "peer"),
        ({"mode": "listen", "port": 70000}, "port"),
        ({"mode": "listen", "colour": "blue"}, "colour"),
        ({"mode": "listen", "transcribe": "maybe"}, "transcribe"),
        # JSON booleans and strings are not integers: `true` was taken as port 1.
        ({"mode": "listen", "port": True}, "port"),
        ({"mode": "listen", "port": "7000"}, "port"),
        ({"mode": "listen", "input": True}, "input"),
        ({"mode": "listen", "input": "silence", "output": False}, "output"),
        ([1, 2, 3], ""),
    ],
)
def test_schema_violations_are_400_with_the_field_named(client, body, field):
    err = error(client.post("/sessions", json=body), 400, "invalid_request")
    assert field in err["message"]
    assert no_sessions(client)


@pytest.mark.parametrize(
    "body,code,words",
    [
        (
            {"mode": "listen", "port": 0, "input": "file:no-such.wav"},
            "unusable_device",
            "file input refused",
        ),
        (
            {"mode": "listen", "port": 0, "input": "no-such-microphone"},
            "unusable_device",
            "no-such",
        ),
        (
            {"mode": "listen", "port": 0, "input": "silence", "output": "no-such-speaker"},
            "unusable_device",
            "no-such",
        ),
        ({"mode": "listen", "port": 0, "input": "tone:abc"}, "unusable_device", "tone"),
        (
            {"mode": "listen", "port": 0, "input": "silence", "output": "file:no/such/dir/x.wav"},
            "unusable_device",
            "file output refused",
        ),
        (
            {"mode": "listen", "port": 0, "input": "silence", "output": f"file:{__file__}"},
            "unusable_device",
            "never overwritten",
        ),
        (
            {"mode": "dial", "peer": "nowhere.invalid:7000", "token": "t", "input": "silence"},
            "unusable_address",
            "resolve",
        ),
        (
            {"mode": "dial", "peer": "no-port-here", "token": "t", "input": "silence"},
            "unusable_address",
            "HOST:PORT",
        ),
        # Only ASCII digits make a port, and a host has no NUL, control character or space.
        (
            {
                "mode": "dial",
                "peer": "127.0.0.1:\u0667\u0660\u0660\u0660",
                "token": "t",
                "input": "silence",
            },
            "unusable_address",
            "HOST:PORT",
        ),
        (
            {"mode": "dial", "peer": "127.0.0.1\u0000:7000", "token": "t", "input": "silence"},
            "unusable_address",
            "host name",
        ),
        (
            {"mode": "dial", "peer": "evil host:7000", "token": "t", "input": "silence"},
            "unusable_address",
            "host name",
        ),
        (
            {"mode": "listen", "port": 0, "input": "silence", "language": "xx"},
            "unsupported_language",
            "xx",
        ),
    ],
)
def test_unusable_devices_and_addresses_are_422(client, body, code, words):
    err = error(client.post("/sessions", json=body), 422, code)
    assert words in err["message"]
    assert no_sessions(client)


def test_a_port_in_use_is_422(client):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        body = {"mode": "listen", "port": port, "input": "silence", "output": None}
        err = error(client.post("/sessions", json=body), 422, "unusable_address")
    assert str(port) in err["message"]


def test_unknown_ids_and_routes_are_404_json(client):
    error(client.get("/sessions/nope"), 404, "not_found")
    error(client.delete("/sessions/nope"), 404, "not_found")
    error(client.get("/sessions/nope/transcript"), 404, "not_found")
    error(client.get("/no/such/route"), 404, "not_found")


def test_listen_then_hang_up(client):
    r = client.post(
        "/sessions", json={"mode": "listen", "port": 0, "input": "silence", "output": None}
    )
    assert r.status_code == 201
    created = r.get_json()
    assert created["state"] == "listening"
    assert len(created["token"]) >= 32
    host, port = created["address"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    with socket.create_connection(("127.0.0.1", int(port)), timeout=2):
        pass  # really listening
    got = client.get(f"/sessions/{created['id']}").get_json()
    assert got["state"] == "listening" and "token" not in got
    listed = client.get("/sessions").get_json()["sessions"]
    assert [s["id"] for s in listed] == [created["id"]]

    ended = client.delete(f"/sessions/{created['id']}").get_json()
    assert ended["state"] == "ended" and ended["end_reason"] == "hangup"
    error(client.delete(f"/sessions/{created['id']}"), 409, "not_live")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(port)), timeout=2)
    assert client.get(f"/sessions/{created['id']}").get_json()["state"] == "ended"


def test_sessions_are_listed_newest_first(client):
    ids = []
    for _ in range(3):
        r = client.post(
            "/sessions", json={"mode": "listen", "port": 0, "input": "silence", "output": None}
        )
        ids.append(r.get_json()["id"])
    assert [s["id"] for s in client.get("/sessions").get_json()["sessions"]] == ids[::-1]


@pytest.fixture
def call_with_segments(client, node):
    r = client.post(
        "/sessions", json={"mode": "listen", "port": 0, "input": "silence", "output": None}
    )
    call_id = r.get_json()["id"]
    for speaker, number, start, text in [
        ("local", 0, 0.5, "Hello there."),
        ("remote", 0, 1.25, "Hi <you> & me."),
        ("local", 1, 3661.5, "Much later."),
    ]:
        node.store.add_segment(
            call_id,
            Segment(
                speaker=speaker,
                number=number,
                start=start,
                end=start + 1.0,
                text=text,
                language="en",
                avg_logprob=-0.25,
                no_speech_prob=0.01,
                compression_ratio=1.2,
            ),
        )
    return call_id


def test_transcript_json(client, call_with_segments):
    body = client.get(f"/sessions/{call_with_segments}/transcript").get_json()
    assert [(s["speaker"], s["text"]) for s in body["segments"]] == [
        ("local", "Hello there."),
        ("remote", "Hi <you> & me."),
        ("local", "Much later."),
    ]
    assert body["segments"][0]["avg_logprob"] == -0.25


def test_transcript_text_srt_vtt(client, call_with_segments):
    text = client.get(f"/sessions/{call_with_segments}/transcript?format=text")
    assert text.mimetype == "text/plain"
    assert text.get_data(as_text=True).splitlines() == [
        "[00:00:00.500] Local: Hello there.",
        "[00:00:01.250] Remote: Hi <you> & me.",
        "[01:01:01.500] Local: Much later.",
    ]
    srt = client.get(f"/sessions/{call_with_segments}/transcript?format=srt").get_data(as_text=True)
    assert srt.startswith("1\n00:00:00,500 --> 00:00:01,500\nLocal: Hello there.\n\n2\n")
    assert "3\n01:01:01,500 --> 01:01:02,500\nLocal: Much later.\n" in srt
    vtt = client.get(f"/sessions/{call_with_segments}/transcript?format=vtt")
    assert vtt.mimetype == "text/vtt"
    body = vtt.get_data(as_text=True)
    assert body.startswith("WEBVTT\n\n00:00:00.500 --> 00:00:01.500\n<v Local>Hello there.\n")
    assert "<v Remote>Hi &lt;you&gt; &amp; me.\n" in body
    error(
        client.get(f"/sessions/{call_with_segments}/transcript?format=pdf"), 400, "invalid_request"
    )


def test_devices_never_crash(client):
    body = client.get("/devices").get_json()
    assert set(body) >= {"inputs", "outputs", "reason"}
    if not body["inputs"] and not body["outputs"]:
        assert body["reason"]


def test_health_and_openapi(client):
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.get_json()["model_loaded"] is False
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    post = doc["paths"]["/sessions"]["post"]
    assert "requestBody" in post
    schema_ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert {"mode", "port", "peer", "token", "input", "output"} <= set(schema["properties"])
    assert "/sessions/{call_id}/transcript" in doc["paths"]


def test_dial_to_a_closed_port_fails_with_the_reason(client):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        body = {
            "mode": "dial",
            "peer": f"127.0.0.1:{port}",
            "token": "t",
            "input": "silence",
            "output": None,
        }
        r = client.post("/sessions", json=body)
        assert r.status_code == 201 and r.get_json()["state"] == "connecting"
        snap = wait_state(client, r.get_json()["id"], {"failed"})
    assert snap["end_reason"].startswith("connect_failed")


def test_hanging_up_a_dial_that_is_still_connecting_ends_it(client):
    with socket.socket() as silent_peer:  # accepts TCP, never answers the hello
        silent_peer.bind(("127.0.0.1", 0))
        silent_peer.listen()
        peer = f"127.0.0.1:{silent_peer.getsockname()[1]}"
        body = {"mode": "dial", "peer": peer, "token": "t", "input": "silence", "output": None}
        created = client.post("/sessions", json=body).get_json()
        assert created["state"] == "connecting"
        ended = client.delete(f"/sessions/{created['id']}").get_json()
    assert (ended["state"], ended["end_reason"]) == ("ended", "hangup")


def test_a_peer_that_goes_silent_is_dropped_as_peer_lost(client):
    """The TCP connection stays open, but nothing arrives: the call must not hang forever."""
    from gevent import socket as gsocket
    from wire import dial_handshake

    from service.calls.media import PEER_SILENCE_S
    from service.transport import protocol as p

    body = {"mode": "listen", "port": 0, "input": "silence", "output": None}
    created = client.post("/sessions", json=body).get_json()
    host, port = created["address"].rsplit(":", 1)
    with gsocket.create_connection((host, int(port)), timeout=5) as frozen:
        answer, _ = dial_handshake(frozen, created["token"])  # then never a word (nor pong)
        assert isinstance(answer, p.Auth)
        wait_state(client, created["id"], {"connected"})
        t0 = time.monotonic()
        snap = wait_state(client, created["id"], {"ended"}, timeout=PEER_SILENCE_S + 5)
        waited = time.monotonic() - t0
    assert snap["end_reason"] == "peer_lost"
    assert PEER_SILENCE_S - 1 <= waited <= PEER_SILENCE_S + 2


TOKEN = "correct-horse-battery-staple"


@pytest.fixture
def guarded(node_factory):
    return create_app(node_factory("guarded", IM_API_TOKEN=TOKEN)).test_client()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-wrong-token"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ],
    ids=["missing", "wrong", "no-scheme", "basic"],
)
def test_without_the_token_every_endpoint_is_401(guarded, headers):
    for method, path in [
        ("GET", "/sessions"),
        ("POST", "/sessions"),
        ("GET", "/devices"),
        ("GET", "/openapi.json"),
        ("DELETE", "/sessions/x"),
    ]:
        r = guarded.open(path, method=method, headers=headers, json={"mode": "listen"})
        err = error(r, 401, "unauthorized")
        assert TOKEN not in err["message"]
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert guarded.get("/sessions", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_health_needs_no_token(guarded):
    assert guarded.get("/healthz").status_code == 200
    doc = guarded.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).get_json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["paths"]["/healthz"]["get"]["security"] == []
