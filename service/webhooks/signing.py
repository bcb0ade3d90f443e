"""Standard Webhooks signatures (https://www.standardwebhooks.com/): what a receiver checks
with any of its verifiers.

The signed content is ``<webhook-id>.<webhook-timestamp>.<body>``, the MAC is HMAC-SHA256
keyed with the secret's bytes (the base64 after ``whsec_``), sent as ``v1,<base64>``. The
id stays the same on every try of an event (a receiver drops what it has seen); the
timestamp is the try's own, so a receiver can refuse stale replays.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def signature(key: bytes, msg_id: str, timestamp: int, body: str) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def headers(key: bytes, msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The request headers of one try of an event."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, msg_id, timestamp, body),
        "content-type": "application/json",
    }
