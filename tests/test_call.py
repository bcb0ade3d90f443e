"""Two real nodes (separate processes, ports and databases) in a call over real TCP on
loopback, with a real speech recording as the dialer's microphone and tiny.en transcribing."""

from __future__ import annotations

import socket
import time
import wave

import jiwer
import numpy as np
import pytest
from helpers import JFK_CLIP, PROCESS_ENV, reference, wait_state, wait_until
from whisper.normalizers import EnglishTextNormalizer
from wire import dial_handshake

from service.localnodes import NodeProcess, start_call, wait_for_final_transcripts
from service.transport import protocol as p

pytestmark = pytest.mark.slow
CLIP = "en_librispeech_1995-1837-0001.wav"


@pytest.fixture(scope="module")
def node_pair_env() -> dict[str, str]:
    return {"IM_HELLO_TIMEOUT_S": "1"}


def wer(ref: str, hyp: str) -> float:
    norm = EnglishTextNormalizer()
    return jiwer.wer(norm(ref), norm(hyp))


def test_both_nodes_transcribe_the_dialers_speech(node_pair, speech_dir):
    a, b = node_pair
    call_a, call_b = start_call(
        a,
        b,
        listen={"input": "silence", "output": None},
        dial={"input": b.media(speech_dir / CLIP), "output": None},
    )
    done = wait_for_final_transcripts(b, call_b["id"], a, call_a["id"], timeout=90)
    ref = reference(speech_dir, CLIP)

    on_b, on_a = done["speaker_segments"], done["peer_segments"]
    assert on_b and {s["speaker"] for s in on_b} == {"local"}
    assert {s["speaker"] for s in on_a} == {"remote"}  # A's silent microphone said nothing
    assert [(s["start"], s["end"], s["text"]) for s in on_a] == [
        (s["start"], s["end"], s["text"]) for s in on_b
    ]
    for segs in (on_a, on_b):
        assert wer(ref, " ".join(s["text"] for s in segs)) <= 0.25
        assert all(s["start"] <= s["end"] for s in segs)
        assert [s["start"] for s in segs] == sorted(s["start"] for s in segs)

    live = a.call("GET", f"/sessions/{call_a['id']}")
    assert live["state"] == "connected"
    assert live["stats"]["frames_received"] >= 8.7 / 0.02  # the whole clip arrived
    assert live["stats"]["frames_sent"] > 0

    ended = b.call("DELETE", f"/sessions/{call_b['id']}")
    assert ended["state"] == "ended" and ended["end_reason"] == "hangup"
    peer = wait_state(a, call_a["id"], {"ended"})
    assert peer["end_reason"] == "peer_hangup"
    # Everything said is still there after the call.
    after = a.call("GET", f"/sessions/{call_a['id']}/transcript")["segments"]
    assert [s["text"] for s in after] == [s["text"] for s in on_a]
    text = a.call("GET", f"/sessions/{call_a['id']}/transcript?format=text")
    assert "Remote:" in text and "Local:" not in text


def write_wav(path, pcm: np.ndarray):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


def test_a_minute_of_silence_and_of_low_noise_through_a_call_gives_no_segment(node_pair, tmp_path):
    """Whisper turns silence and noise into "Thank you." or "Thanks for watching!" when it
    is fed them; none of that may reach a transcript. A hears a minute of digital silence
    from its own microphone, and B sends a minute of low noise (hiss plus a hum, about
    -45 dBFS) that A transcribes, because B says it will not.

    Each minute is followed by the same 11 s of speech, through the same path: that A
    transcribes it, on both sides and only there, shows that both of A's transcribers ran on
    the whole minute (a transcriber that never ran would give no segment either)."""
    a, b = node_pair
    rng = np.random.default_rng(7)
    t = np.arange(16_000 * 60) / 16_000
    noise = rng.normal(0, 120, t.size) + 60 * np.sin(2 * np.pi * 50 * t)
    with wave.open(str(JFK_CLIP)) as w:
        speech = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    silence_then_speech = np.concatenate([np.zeros(t.size), speech])
    noise_then_speech = np.concatenate([noise, speech])
    call_a, call_b = start_call(
        a,
        b,
        listen={
            "input": a.media(write_wav(tmp_path / "silence.wav", silence_then_speech)),
            "output": None,
        },
        dial={
            "input": b.media(write_wav(tmp_path / "noise.wav", noise_then_speech)),
            "output": None,
            "transcribe": False,
        },
    )
    session_a, session_b = f"/sessions/{call_a['id']}", f"/sessions/{call_b['id']}"

    def both_inputs_ended() -> dict | None:
        stats_a = a.call("GET", session_a)["stats"]
        ended = stats_a["input"]["ended"] and b.call("GET", session_b)["stats"]["input"]["ended"]
        return stats_a if ended else None

    stats_a = wait_until(both_inputs_ended, 150, "both minutes and their speech to be sent")
    wait_until(
        lambda: (
            (s := a.call("GET", session_a)["stats"])["segments"]["remote"] >= 1
            and s["asr_pending"] == 0
            and not s["in_speech"]
        ),
        60,
        "A to transcribe the speech B sent after its minute of noise",
    )
    ended = b.call("DELETE", session_b)
    assert ended["state"] == "ended"
    wait_state(a, call_a["id"], {"ended"})
    # A transcribed both sides (B said it would not) and heard the whole of each.
    assert stats_a["frames_received"] >= 70 / 0.02
    on_a = a.call("GET", f"{session_a}/transcript")["segments"]
    on_b = b.call("GET", f"{session_b}/transcript")["segments"]
    ref = reference(JFK_CLIP.parent, JFK_CLIP.name)
    for speaker in ("local", "remote"):
        said = [s for s in on_a if s["speaker"] == speaker]
        # Nothing from the minute of silence or noise: every segment is of the speech.
        assert said and all(s["start"] >= 59.0 for s in said), (speaker, said)
        assert wer(ref, " ".join(s["text"] for s in said)) <= 0.25, (speaker, said)
    # B transcribes nothing itself, and was told A's own speech only.
    assert [s["text"] for s in on_b] == [s["text"] for s in on_a if s["speaker"] == "local"]
    assert {s["speaker"] for s in on_b} == {"remote"}


def dial_silently(node, peer: str, token: str) -> dict:
    body = {"mode": "dial", "peer": peer, "token": token, "input": "silence", "output": None}
    return node.call("POST", "/sessions", 201, json=body)


def test_wrong_callers_are_turned_away_and_the_call_keeps_listening(node_pair):
    a, b = node_pair
    listen = a.call(
        "POST",
        "/sessions",
        201,
        json={"mode": "listen", "port": 0, "input": "silence", "output": None},
    )
    host, port = listen["address"].rsplit(":", 1)

    # A dialer with the wrong token fails, and says why.
    bad = dial_silently(b, listen["address"], "wrong")
    failed = wait_state(b, bad["id"], {"failed"})
    assert "wrong call token" in failed["end_reason"]

    # Garbage, and a connection that never says hello, are dropped too.
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100) == b""  # closed on us
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.settimeout(5)
        assert s.recv(100) == b""  # hello deadline (1 s here)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        answer, _ = dial_handshake(s, "also-wrong")
        assert answer == p.Bye(reason="rejected: wrong call token")  # a bye, with the reason

    snap = a.call("GET", f"/sessions/{listen['id']}")
    assert snap["state"] == "listening"
    assert snap["stats"]["rejected_connections"] == 4

    good = dial_silently(b, listen["address"], listen["token"])
    wait_state(b, good["id"], {"connected"})
    wait_state(a, listen["id"], {"connected"})
    a.call("DELETE", f"/sessions/{listen['id']}")
    assert wait_state(b, good["id"], {"ended"})["end_reason"] == "peer_hangup"


def test_a_vanished_peer_ends_the_call_and_keeps_what_was_said(
    node_pair, tmp_path, model_dir, speech_dir
):
    a, _ = node_pair
    c = NodeProcess("C", tmp_path / "c", env=PROCESS_ENV, model_dir=model_dir).start()
    try:
        call_a, call_c = start_call(
            a,
            c,
            listen={"input": "silence", "output": None},
            dial={
                "input": c.media(speech_dir / "en_arctic_prompts_cathy_b0006.wav"),
                "output": None,
            },
        )
        done = wait_for_final_transcripts(c, call_c["id"], a, call_a["id"], timeout=60)
        assert done["peer_segments"]
        c.kill()  # SIGKILL: no bye, no goodbye
        t0 = time.monotonic()
        snap = wait_state(a, call_a["id"], {"ended"}, timeout=10)
        assert time.monotonic() - t0 < 5
        assert snap["end_reason"] == "peer_lost"
        kept = a.call("GET", f"/sessions/{call_a['id']}/transcript")["segments"]
        assert [s["text"] for s in kept] == [s["text"] for s in done["peer_segments"]]
    finally:
        c.kill()
