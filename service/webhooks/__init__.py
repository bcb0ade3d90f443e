"""Signed webhooks: events from the store's outbox, delivered to every endpoint at least
once, in order per call (docs/webhooks.md).

- ``signing``: the Standard Webhooks headers (id, timestamp, HMAC-SHA256 signature);
- ``sender``: one HTTP try, bounded in time, never following a redirect;
- ``worker``: the delivery loop per endpoint: claim due rows, send, delete or reschedule
  with backoff, and keep the outbox within its bound.

The events themselves are written by the store, in the transaction of what they announce
(service/store/outbox.py); nothing here runs inside a call.
"""
