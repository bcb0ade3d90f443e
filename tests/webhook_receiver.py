"""A webhook receiver for the tests, run as its own process: every request it gets is
appended to a JSON-lines file (method, path, headers, body), then answered.

    python tests/webhook_receiver.py PORT LOG [--fail-first N] [--redirect-to URL]

``--fail-first N``: the first N requests get 503 (then 200); ``--redirect-to URL``: every
request gets 307 to URL. Ready once it prints ``ready`` on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("log")
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--redirect-to", default=None)
    args = parser.parse_args()
    lock = threading.Lock()
    seen = {"n": 0}
    log = open(args.log, "a", encoding="utf-8")  # noqa: SIM115  # open for the process's life

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # http.server's name
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with lock:
                seen["n"] += 1
                n = seen["n"]
                if args.redirect_to:
                    status = 307
                elif n <= args.fail_first:
                    status = 503
                else:
                    status = 200
                record = {
                    "n": n,
                    "at": time.time(),
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "body": body.decode("utf-8"),
                    "status": status,
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
            self.send_response(status)
            if args.redirect_to:
                self.send_header("location", args.redirect_to)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print("ready", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
