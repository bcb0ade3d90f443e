"""The call handshake's cryptography: nonces, the transcript hash and the proofs.

Both sides prove they hold the call token without sending it: each proof is an
HMAC-SHA256 keyed with the token over a hash of *both* hellos exactly as they were sent.
Both hellos carry a fresh random nonce, so a recorded handshake proves nothing on another
connection (replay), and since the hellos also carry the codec lists, a man in the middle
who edits them (a downgrade) breaks the proofs. The role label keeps a listener from
simply reflecting the dialer's proof back to it.

The proofs are pure functions; the two exchanges (``answer`` for a listener, ``call`` for a
dialer) run them over anything with a link's ``send``/``recv`` (a TCP link, or an in-memory
pair in tests), within one deadline that covers the whole exchange.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
import time
from collections.abc import Callable
from typing import Protocol

from service.transport.protocol import (
    PROTOCOL_VERSION,
    Auth,
    Bye,
    Hello,
    Message,
    ProtocolError,
    hello_body,
)

NONCE_BYTES = 32
DIALER = b"dialer"
LISTENER = b"listener"
_CONTEXT = b"intellimeet-call handshake v2\x00"
_LENGTH = struct.Struct(">I")


def new_nonce() -> str:
    return secrets.token_bytes(NONCE_BYTES).hex()


def transcript_hash(dialer_hello: Hello, listener_hello: Hello) -> bytes:
    """H: SHA-256 over both hello bodies, each length-prefixed so that no two different
    pairs of bodies hash alike by shifting bytes from one into the other."""
    h = hashlib.sha256(_CONTEXT)
    for hello in (dialer_hello, listener_hello):
        body = hello_body(hello)
        h.update(_LENGTH.pack(len(body)))
        h.update(body)
    return h.digest()


def proof(token: str, role: bytes, transcript: bytes) -> str:
    """HMAC-SHA256(key=token, role || H), hex."""
    return hmac.new(token.encode(), role + transcript, hashlib.sha256).hexdigest()


def verify(token: str, role: bytes, transcript: bytes, claimed: str) -> bool:
    """Constant-time check of a peer's proof."""
    return hmac.compare_digest(proof(token, role, transcript).encode(), claimed.encode())


class Channel(Protocol):
    """What the exchanges need of a link."""

    def send(self, message: Message) -> None: ...

    def recv(self, timeout: float | None = None, pings_keep_alive: bool = False) -> Message: ...


class Refused(Exception):
    """The other side may not join; ``reason`` is what it is told (a bye) and logged."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _left(deadline: float) -> float:
    """Seconds until ``deadline``, never negative (one deadline covers a whole handshake)."""
    return max(0.0, deadline - time.monotonic())


def answer(
    link: Channel, token: str, mine: Hello, deadline: float, claim: Callable[[], bool]
) -> Hello:
    """The listener's half: the dialer's hello once it proved ``token``, after our own
    proof went back. ``claim`` is asked, after the dialer's proof checked out and before our
    reply (which yields), whether this caller may have the call: two right callers arriving
    together cannot both be connected. Raises Refused (tell the caller why), ProtocolError,
    or the link's errors (TimeoutError at the deadline)."""
    hello = link.recv(timeout=_left(deadline))
    if not isinstance(hello, Hello):
        raise ProtocolError(f"expected a hello, got {type(hello).__name__}")
    if hello.version != PROTOCOL_VERSION:
        raise Refused(f"unsupported protocol version {hello.version}")
    link.send(mine)
    auth = link.recv(timeout=_left(deadline))
    if not isinstance(auth, Auth):
        raise ProtocolError(f"expected auth, got {type(auth).__name__}")
    transcript = transcript_hash(hello, mine)
    if not verify(token, DIALER, transcript, auth.proof):
        raise Refused("wrong call token")
    if not claim():
        raise Refused("call is no longer listening")
    link.send(Auth(proof=proof(token, LISTENER, transcript)))
    return hello


def call(link: Channel, token: str, mine: Hello, deadline: float) -> Hello | str:
    """The dialer's half: the listener's hello once both sides have proved ``token``, or
    why the call cannot go on (a reason for the call's end)."""
    link.send(mine)
    reply = link.recv(timeout=_left(deadline))
    if isinstance(reply, Bye):
        return reply.reason
    if not isinstance(reply, Hello) or reply.version != PROTOCOL_VERSION:
        return "handshake_failed: peer did not answer with a compatible hello"
    transcript = transcript_hash(mine, reply)
    link.send(Auth(proof=proof(token, DIALER, transcript)))
    verdict = link.recv(timeout=_left(deadline))
    if isinstance(verdict, Bye):
        return verdict.reason  # "rejected: wrong call token", typically
    if not isinstance(verdict, Auth) or not verify(token, LISTENER, transcript, verdict.proof):
        return "handshake_failed: listener could not prove the call token"
    return reply
