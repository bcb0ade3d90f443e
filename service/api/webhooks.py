"""GET /webhooks: each endpoint's outbox and what became of its events since start.

The same figures as the im_webhook_* metrics, for a person with curl: how many events
wait, were delivered, failed (by reason) or were dropped at the bound, and the last error.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from pydantic import BaseModel
from spectree import Response as Resp

from service.api.spec import spec

bp = Blueprint("webhooks", __name__)


class WebhookEndpointStatus(BaseModel):
    name: str
    url: str  # without query or credentials
    pending: int
    delivered: int
    failed: dict[str, int]
    dropped: int
    max_pending: int
    last_error: str | None
    last_error_at: float | None  # epoch seconds
    last_delivered_at: float | None


class WebhookStatus(BaseModel):
    enabled: bool
    endpoints: list[WebhookEndpointStatus]


@bp.get("/webhooks")
@spec.validate(resp=Resp(HTTP_200=WebhookStatus), tags=["system"])
def webhooks():
    """Webhook endpoints (IM_WEBHOOK_URL, IM_WEBHOOKS) and their delivery figures."""
    deliverer = current_app.extensions["intellimeet.node"].webhooks
    endpoints = deliverer.status() if deliverer is not None else []
    return jsonify({"enabled": deliverer is not None, "endpoints": endpoints})
