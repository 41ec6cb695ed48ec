"""A real local HTTP server (http.server in a thread) that receives alert webhooks, for the tests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookReceiver:
    """Records every POST's JSON body and headers; answers ``fail_first`` requests with HTTP 500 first."""

    def __init__(self, fail_first: int = 0):
        self.received: list[dict] = []
        self.headers: list[dict] = []
        self.attempts = 0
        self.fail_first = fail_first
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.attempts += 1
                    fail = receiver.attempts <= receiver.fail_first
                    if not fail:
                        receiver.received.append(json.loads(body))
                        receiver.headers.append(dict(self.headers))
                self.send_response(500 if fail else 204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def of_kind(self, kind: str) -> list[dict]:
        with self._lock:
            return [a for a in self.received if a["kind"] == kind]
