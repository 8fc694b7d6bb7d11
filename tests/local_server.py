"""A threaded HTTP server on 127.0.0.1 for the test doubles of remote services (the OpenAI-
compatible server, the fine-tuning stub): the port, start/stop and `with` use they share, and a
handler base that answers JSON."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default listen backlog (5) refuses bursts of new connections


class JSONHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server: clients reuse connections

    def log_message(self, *args) -> None:  # quiet: tests read the servers' counters instead
        pass

    def send(self, status: int, payload: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)


class LocalServer:
    """Serves `handler` (a BaseHTTPRequestHandler class) on 127.0.0.1:port (0: any free port)."""

    poll_interval = 0.05  # how soon stop() is noticed

    def __init__(self, handler: type, port: int = 0):
        self.httpd = _Server(("127.0.0.1", port), handler)
        self.thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": self.poll_interval}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
