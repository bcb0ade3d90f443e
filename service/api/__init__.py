"""The control API: a Flask app factory with one blueprint per area."""

from __future__ import annotations

from flask import Flask

from service.api import (
    events,
    metrics,
    recordings,
    revisions,
    search,
    sessions,
    system,
    webhooks,
)
from service.api.auth import bearer_guard
from service.api.errors import register_error_handlers
from service.api.guard import feed_limit, register_feed_limit, request_guard
from service.api.spec import spec
from service.node import Node


def create_app(node: Node) -> Flask:
    app = Flask("intellimeet")
    app.json.sort_keys = False  # type: ignore[attr-defined]  # DefaultJSONProvider's
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024  # no request body needs more
    app.extensions["intellimeet.node"] = node
    app.register_blueprint(sessions.bp)
    app.register_blueprint(events.bp)
    app.register_blueprint(system.bp)
    app.register_blueprint(search.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(recordings.bp)
    app.register_blueprint(revisions.bp)
    register_error_handlers(app)
    # In this order: a foreign Host or a cross-origin write is refused before the token
    # is even looked at, and only an authorized feed takes one of the feed slots.
    app.before_request(request_guard(node.settings))
    if node.settings.api_token or node.settings.metrics_token:
        # IM_METRICS_TOKEN opens /metrics (and only that); the API token opens everything.
        only = {metrics.ENDPOINT: node.settings.metrics_token}
        app.before_request(bearer_guard(node.settings.api_token, only))
    register_feed_limit(app, feed_limit(node.settings))
    spec.register(app)
    return app
