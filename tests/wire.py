"""A hand-driven dialer for tests that must speak the call protocol themselves (frozen
peers, replays, forged proofs): plain sockets, every step visible."""

from __future__ import annotations

import socket
from collections import deque
from pathlib import Path

from helpers import start_node, wait_until

from service.calls.options import CallOptions
from service.calls.session import CallSession
from service.node import Node
from service.transport import handshake
from service.transport import protocol as p


class Reader:
    """Whole messages from a socket, one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = p.Decoder()
        self.pending: deque[p.Message] = deque()

    def next(self) -> p.Message | None:
        """The next message, or None when the connection closed first."""
        while not self.pending:
            data = self.sock.recv(4096)
            if not data:
                return None
            self.pending.extend(self.decoder.feed(data))
        return self.pending.popleft()


def dial_handshake(
    sock: socket.socket, token: str, transcribes: bool = False
) -> tuple[p.Message | None, Reader]:
    """Run the dialer's side with ``token``; returns the listener's last answer (its Auth
    when the token was right, a Bye otherwise) and the reader, for reading on."""
    reader = Reader(sock)
    mine = p.Hello(transcribes=transcribes, nonce=handshake.new_nonce())
    sock.sendall(p.encode(mine))
    theirs = reader.next()
    if not isinstance(theirs, p.Hello):
        return theirs, reader
    transcript = handshake.transcript_hash(mine, theirs)
    sock.sendall(p.encode(p.Auth(proof=handshake.proof(token, handshake.DIALER, transcript))))
    return reader.next(), reader


# -- in-process nodes ---------------------------------------------------------------------
# Two Nodes in the test process (no Whisper model: these tests are about the wire). The
# process is not monkey-patched, so the tests wait with helpers.wait_until and use gevent
# sockets, which lets the nodes' greenlets run.


def make_node(root: Path, name: str, **env: str) -> Node:
    return start_node(root / name, **{"IM_HELLO_TIMEOUT_S": "1", **env})


SILENT = CallOptions(input="silence", output=None, language=None, transcribe=False)


def listen(node: Node, options: CallOptions = SILENT) -> CallSession:
    return node.registry.listen(0, options)


def dial(node: Node, address: str, token: str, options: CallOptions = SILENT) -> CallSession:
    return node.registry.dial(address, token, options)


def wait_state(session: CallSession, states: set[str], timeout: float = 5.0) -> CallSession:
    """An in-process call in one of ``states`` (helpers.wait_state reads one over HTTP)."""
    return wait_until(
        lambda: session.state in states and session,
        timeout,
        lambda: f"call {session.id} ({session.state}) to reach {sorted(states)}",
    )
