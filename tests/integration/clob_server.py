"""A local stand-in for Polymarket's CLOB REST book endpoints, on a real socket on 127.0.0.1.

``POST /books`` (body ``[{"token_id": ...}, ...]``) answers a JSON array of the books it has;
``GET /book?token_id=`` answers one book, or 404 with the service's error text. Books come from a
callable, so a test can serve recorded responses or a reference that moves with the stream. Faults on
demand: ``stall`` makes the next requests hang past the client's timeout, ``fail`` makes them answer 503,
and ``batch=False`` removes ``/books`` (404), as an older service would.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

Books = Callable[[list[str]], list[bytes]]


class ClobServer:
    def __init__(self, books: Books, *, batch: bool = True) -> None:
        self.books = books
        self.batch = batch
        self.stall = 0  # this many next requests hang for `stall_seconds` before answering
        self.stall_seconds = 2.0
        self.fail = 0  # this many next requests answer 503 (-1: every request)
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> ClobServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _fault(self, request: str) -> str | None:
        """Record the request; return the fault to act out for it, if any."""
        with self._lock:
            self.requests.append(request)
            if self.stall > 0:
                self.stall -= 1
                return "stall"
            if self.fail != 0:
                if self.fail > 0:
                    self.fail -= 1
                return "fail"
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the tests read `requests` instead."""

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self._fault_done(f"POST {self.path}"):
                    return
                if urlparse(self.path).path != "/books" or not server.batch:
                    self._answer(404, b"404 page not found")
                    return
                asset_ids = [entry["token_id"] for entry in json.loads(body)]
                self._answer(200, b"[" + b",".join(server.books(asset_ids)) + b"]")

            def do_GET(self) -> None:
                if not self._fault_done(f"GET {self.path}"):
                    return
                url = urlparse(self.path)
                asset_id = parse_qs(url.query).get("token_id", [""])[0]
                found = server.books([asset_id]) if url.path == "/book" else []
                if found:
                    self._answer(200, found[0])
                else:
                    self._answer(404, b'{"error":"No orderbook exists for the requested token id"}')

            def _fault_done(self, request: str) -> bool:
                """Act out a fault; False if the request has been answered (or abandoned) by it."""
                fault = server._fault(request)
                if fault == "stall":
                    time.sleep(server.stall_seconds)
                    return False  # the client gave up long ago; answer nothing
                if fault == "fail":
                    self._answer(503, b"service unavailable")
                    return False
                return True

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
