"""The TUF repository's metadata over real HTTP, for the tests of the repository and of the
device's trust: what ``GET /tuf/{name}`` serves, with a hook for an attacker on the path."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edgeloop.server.tuf_repo import TufRepository

Replacement = bytes | Callable[[BaseHTTPRequestHandler], None]


class MetadataServer:
    """``repo``'s metadata over real HTTP as ``GET /tuf/{name}``, the route the control
    plane serves. ``replace[name]`` serves other bytes (or runs a handler) under ``name``,
    as an attacker on the path would; ``authorizations`` records each request's header."""

    def __init__(self, repo: TufRepository, *, require: str | None = None) -> None:
        self.repo = repo
        self.require = require
        self.replace: dict[str, Replacement] = {}
        self.authorizations: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.authorizations.append(self.headers.get("Authorization"))
                if server.require is not None and self.headers["Authorization"] != server.require:
                    self.send_error(401)
                    return
                name = self.path.removeprefix("/tuf/")
                served = server.replace.get(name)
                if callable(served):
                    served(self)
                    return
                try:
                    data = served if served is not None else server.repo.metadata_bytes(name)
                except (ValueError, FileNotFoundError):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_port}/tuf/"

    def __enter__(self) -> MetadataServer:
        threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()
