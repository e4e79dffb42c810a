"""A network attacker between devices and the control plane, for attack tests and benchmarks.

:class:`Interceptor` is a plain HTTP proxy on a free loopback port: a device configured with its
URL as ``server`` fetches metadata and artifacts through it. By default it passes every request
through unchanged (headers, Range, status); :attr:`Interceptor.tamper` rewrites what it
relays, and :meth:`Interceptor.recorded` hands back what an earlier request answered, so a test
can replay old metadata, alter bytes, swap one file for another, or send endless data, as
someone on the path could.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

Tamper = Callable[[str, bytes], bytes | None]
"""``(path, upstream body) -> body to send instead`` (None: send the upstream body)."""

RELAYED_HEADERS = ("Authorization", "Range", "If-None-Match", "If-Range")
ANSWER_HEADERS = ("Content-Range", "Accept-Ranges", "ETag", "Cache-Control", "Content-Type")


class Interceptor:
    """Relays HTTP to ``upstream``; what it answers can be rewritten by :attr:`tamper`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.tamper: Tamper | None = None
        self.history: dict[str, bytes] = {}
        """The last upstream body seen for each path (what a replay sends)."""
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._http = requests.Session()
        interceptor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                interceptor._relay(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Interceptor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def recorded(self, path: str) -> bytes:
        with self._lock:
            return self.history[path]

    def _relay(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        headers = {k: v for k in RELAYED_HEADERS if (v := handler.headers.get(k)) is not None}
        upstream = self._http.get(self.upstream + path, headers=headers, timeout=30)
        body = upstream.content
        with self._lock:
            self.requests.append(path)
            if upstream.ok:
                self.history[path] = body
        tamper = self.tamper
        replaced = tamper(path, body) if tamper is not None else None
        status = upstream.status_code
        if replaced is not None:
            body, status = replaced, 200
        handler.send_response(status)
        for name in ANSWER_HEADERS:
            value = upstream.headers.get(name)
            if value is not None and not (replaced is not None and name == "Content-Range"):
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        try:
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # a client that stopped reading (an over-long answer) is what we wanted
