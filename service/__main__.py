"""`python -m service`: start a call node.

gevent's monkey-patching must happen before anything else imports socket or threading,
which is why this module patches first and imports the rest afterwards.
"""

from gevent import monkey

monkey.patch_all()

import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

from service.config import ConfigError, load_settings  # noqa: E402

log = logging.getLogger("service")


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from service.api import create_app
    from service.api.server import BoundedWSGIServer
    from service.node import Node

    node = Node(settings)
    try:
        node.start()
    except Exception as exc:
        log.error("node failed to start: %s", exc)
        return 1
    app = create_app(node)
    # Bounded connections and idle time: silent sockets cannot exhaust descriptors.
    server = BoundedWSGIServer(
        (settings.api_host, settings.api_port),
        app,
        max_connections=settings.http_max_connections,
        idle_timeout_s=settings.http_idle_timeout_s,
        log=None,
        error_log=log,
    )
    app.extensions["intellimeet.http_server"] = server  # its counters, for GET /metrics
    try:
        server.start()
    except OSError as exc:
        log.error("cannot serve the API on %s:%s: %s", settings.api_host, settings.api_port, exc)
        node.close()
        return 1
    log.info(
        "API on http://%s:%s (model %s on %s)",
        settings.api_host,
        server.server_port,
        settings.model,
        node.engine.device if node.engine else "-",
    )
    stop = Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    stop.wait()
    log.info("shutting down: ending live calls")
    # Calls first: each one drains its last transcription, says bye and closes its live
    # feeds with a final state event; only then do the HTTP connections go.
    node.close()
    server.stop(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
