"""How a call was asked for: what the API's POST /sessions carries into the calls layer."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from service.vocab import Task


@dataclass(frozen=True)
class CallOptions:
    input: str | int
    output: str | int | None
    language: str | None
    transcribe: bool  # live captions
    task: Task = Task.TRANSCRIBE  # or translate (to English; needs a multilingual model)
    record: bool = True  # keep both sides' audio (service/recordings/); IM_RECORD by default
    # No live captions; the post-call pass transcribes the recording ("transcribe": "after"):
    # admitted even when the ASR worker has no headroom left for live captions.
    transcribe_after: bool = False


def new_token() -> str:
    """A listening call's token: the dialer proves it holds it (transport/handshake.py)."""
    return secrets.token_urlsafe(24)
