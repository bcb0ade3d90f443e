"""The control API: a Flask app factory with one blueprint per area."""

from __future__ import annotations

from flask import Flask

from service.api import events, sessions, system
from service.api.auth import bearer_guard
from service.api.errors import register_error_handlers
from service.api.spec import spec
from service.node import Node


def create_app(node: Node) -> Flask:
    app = Flask("intellimeet")
    app.json.sort_keys = False
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024  # no request body needs more
    app.extensions["intellimeet.node"] = node
    app.register_blueprint(sessions.bp)
    app.register_blueprint(events.bp)
    app.register_blueprint(system.bp)
    register_error_handlers(app)
    if node.settings.api_token:
        app.before_request(bearer_guard(node.settings.api_token))
    spec.register(app)
    return app
