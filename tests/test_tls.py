"""Calls over TLS: settings refused at start when unusable, a TLS call that carries audio,
and clean, prompt failures when one side speaks TLS and the other does not, or when the
listener's certificate does not verify. Real certificates (scripts/make-cert), real sockets."""

from __future__ import annotations

import functools
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from helpers import wait_until
from wire import dial, listen, wait_state

from service.api import views
from service.calls.options import CallOptions
from service.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[1]


def make_cert(directory: Path, *names: str) -> tuple[Path, Path]:
    subprocess.run(
        [str(ROOT / "scripts/make-cert"), str(directory), *names],
        check=True,
        capture_output=True,
    )
    return directory / "call.crt", directory / "call.key"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    root = tmp_path_factory.mktemp("certs")
    return {
        "loopback": make_cert(root / "loopback", "127.0.0.1"),
        "other": make_cert(root / "other", "127.0.0.1"),  # a different self-signed CA
        "name-only": make_cert(root / "name-only", "call.example"),
    }


def tls_env(cert: Path, key: Path, ca: Path | None) -> dict[str, str]:
    env = {"IM_TLS_CERT": str(cert), "IM_TLS_KEY": str(key)}
    return env | ({"IM_TLS_CA": str(ca)} if ca else {"IM_TLS_INSECURE": "1"})


@pytest.fixture
def node_factory(node_factory):
    """In-process nodes with a hello deadline of 1 s, as wire.make_node's."""
    return functools.partial(node_factory, IM_HELLO_TIMEOUT_S="1")


def test_a_tls_call_connects_and_carries_audio(certs, node_factory, tmp_path):
    cert, key = certs["loopback"]
    a = node_factory("a", **tls_env(cert, key, ca=cert))
    b = node_factory("b", **tls_env(cert, key, ca=cert))
    heard = a.settings.media_dir / "heard.wav"
    listening = listen(
        a, CallOptions(input="silence", output="file:heard.wav", language=None, transcribe=False)
    )
    dialing = dial(
        b,
        listening.local_address,
        listening.token,
        CallOptions(input="tone:440", output=None, language=None, transcribe=False),
    )
    wait_state(dialing, {"connected"})
    wait_state(listening, {"connected"})
    assert dialing.link.tls and listening.link.tls
    wait_until(lambda: listening.link.stats.frames_received >= 25, 5, "half a second of audio")
    assert views.live_session(dialing)["stats"]["link"]["tls"] is True
    dialing.end()
    wait_state(listening, {"ended"})
    with wave.open(str(heard)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(float)
    assert len(pcm) >= 25 * 320
    spectrum = np.abs(np.fft.rfft(pcm[-8000:]))
    assert abs(np.argmax(spectrum) * 16000 / 8000 - 440) <= 4  # the tone, through TLS


def test_a_plain_dialer_at_a_tls_listener_fails_cleanly(certs, node_factory):
    cert, key = certs["loopback"]
    a = node_factory("a", **tls_env(cert, key, ca=cert))
    b = node_factory("b")
    listening = listen(a)
    t0 = time.monotonic()
    call = dial(b, listening.local_address, listening.token)
    reason = wait_state(call, {"failed"}).end_reason
    assert time.monotonic() - t0 < 3  # the hello deadline is 1 s here
    assert reason.startswith("handshake_failed") and "TLS listener" in reason
    assert listening.state == "listening"
    wait_until(lambda: listening.rejected_connections == 1, 3, "the connection turned away")


def test_a_tls_dialer_at_a_plain_listener_fails_cleanly(certs, node_factory):
    cert, key = certs["loopback"]
    a = node_factory("a")
    b = node_factory("b", **tls_env(cert, key, ca=cert))
    listening = listen(a)
    t0 = time.monotonic()
    call = dial(b, listening.local_address, listening.token)
    reason = wait_state(call, {"failed"}).end_reason
    assert time.monotonic() - t0 < 3
    assert reason.startswith("handshake_failed: TLS handshake failed")
    assert "is the listener using TLS?" in reason
    assert listening.state == "listening"
    wait_until(lambda: listening.rejected_connections == 1, 3, "the connection turned away")


@pytest.mark.parametrize(
    "listener_cert,dialer_trusts,why",
    [
        ("other", "loopback", "self-signed certificate"),  # signed by a CA the dialer lacks
        ("name-only", "name-only", "IP address mismatch"),  # trusted, but not for this host
    ],
)
def test_a_listener_certificate_that_does_not_verify_is_refused(
    certs, node_factory, listener_cert, dialer_trusts, why
):
    a = node_factory("a", **tls_env(*certs[listener_cert], ca=certs[listener_cert][0]))
    cert, key = certs["loopback"]
    b = node_factory("b", **tls_env(cert, key, ca=certs[dialer_trusts][0]))
    listening = listen(a)
    call = dial(b, listening.local_address, listening.token)
    reason = wait_state(call, {"failed"}).end_reason
    assert reason.startswith("handshake_failed: TLS certificate rejected") and why in reason
    assert listening.state == "listening"


def test_insecure_dialing_skips_verification_but_not_the_token(certs, node_factory):
    a = node_factory("a", **tls_env(*certs["other"], ca=certs["other"][0]))
    cert, key = certs["loopback"]
    b = node_factory("b", **tls_env(cert, key, ca=None))
    listening = listen(a)
    wrong = dial(b, listening.local_address, "not-the-token")
    assert wait_state(wrong, {"failed"}).end_reason == "rejected: wrong call token"
    right = dial(b, listening.local_address, listening.token)
    wait_state(right, {"connected"})
    assert right.link.tls
    right.end()


def test_tls_settings_are_checked_at_start(certs, tmp_path):
    cert, key = certs["loopback"]
    other_key = certs["other"][1]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    ok = load_settings(tls_env(cert, key, ca=cert))
    assert (ok.tls_cert, ok.tls_key, ok.tls_ca, ok.tls_insecure) == (cert, key, cert, False)
    assert load_settings(tls_env(cert, key, ca=None)).tls_insecure is True
    assert load_settings({}).tls_cert is None
    for env, match in [
        ({"IM_TLS_CERT": str(cert)}, "IM_TLS_KEY"),
        ({"IM_TLS_KEY": str(key)}, "IM_TLS_CERT"),
        ({"IM_TLS_CA": str(cert)}, "all its calls or for none"),
        ({"IM_TLS_INSECURE": "1"}, "all its calls or for none"),
        ({"IM_TLS_CERT": str(cert), "IM_TLS_KEY": str(key)}, "IM_TLS_CA"),
        (tls_env(cert, key, ca=cert) | {"IM_TLS_INSECURE": "1"}, "not both"),
        (tls_env(tmp_path / "nope.crt", key, ca=cert), "IM_TLS_CERT names no readable file"),
        (tls_env(cert, tmp_path / "nope.key", ca=cert), "IM_TLS_KEY names no readable file"),
        (tls_env(cert, key, ca=tmp_path / "nope.pem"), "IM_TLS_CA names no readable file"),
        (tls_env(cert, other_key, ca=cert), "IM_TLS_CERT/IM_TLS_KEY"),
        (tls_env(garbage, key, ca=cert), "IM_TLS_CERT/IM_TLS_KEY"),
        (tls_env(cert, key, ca=garbage), "IM_TLS_CA cannot be loaded"),
        (tls_env(cert, key, ca=None) | {"IM_TLS_INSECURE": "maybe"}, "IM_TLS_INSECURE"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_settings(env)


def test_one_deadline_covers_a_dialers_tls_and_hellos(certs, node_factory):
    """A listener that takes most of the hello timeout for TLS and then says nothing must
    not get a second full timeout for its hello."""
    import gevent
    from gevent import socket as gsocket

    from service.transport.tls import accept_tls, server_context

    cert, key = certs["loopback"]
    b = node_factory("b", **tls_env(cert, key, ca=cert))  # hello timeout: 1 s
    server = gsocket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    context = server_context(str(cert), str(key))
    held = []

    def slow_then_silent():
        conn, _ = server.accept()
        gevent.sleep(0.7)
        held.append(accept_tls(conn, context, 5.0))  # TLS done; no hello, ever

    greenlet = gevent.spawn(slow_then_silent)
    try:
        t0 = time.monotonic()
        call = dial(b, f"127.0.0.1:{server.getsockname()[1]}", "x" * 32)
        reason = wait_state(call, {"failed"}).end_reason
        took = time.monotonic() - t0
        assert held, "the TLS handshake never completed"
        assert reason.startswith("handshake_failed"), reason
        assert took < 1.5, f"{took:.2f} s: TLS and the hello each got their own deadline"
    finally:
        greenlet.kill()
        for s in (*held, server):
            s.close()
