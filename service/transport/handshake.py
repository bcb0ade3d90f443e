"""The call handshake's cryptography: nonces, the transcript hash and the proofs.

Both sides prove they hold the call token without sending it: each proof is an
HMAC-SHA256 keyed with the token over a hash of *both* hellos exactly as they were sent.
Both hellos carry a fresh random nonce, so a recorded handshake proves nothing on another
connection (replay), and since the hellos also carry the codec lists, a man in the middle
who edits them (a downgrade) breaks the proofs. The role label keeps a listener from
simply reflecting the dialer's proof back to it.

Pure functions, no sockets: the session drives the messages (see calls/session.py).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct

from service.transport.protocol import Hello, hello_body

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
