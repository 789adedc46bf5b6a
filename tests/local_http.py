"""A small HTTP/1.1 server on 127.0.0.1 for tests that must not touch the network.

A test gives it one function, `Request -> Reply`; the server records every request it
sees (method, path, query, headers), serves byte ranges through `bytes_reply`, and can
cut a body short and drop the connection to stand for a broken transfer.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""  # for HEAD: what a GET would send (only its length goes out)
    cut_after: int | None = None  # send this many body bytes, then drop the connection


def bytes_reply(request: Request, data: bytes, *, honour_range: bool = True, headers: dict[str, str] | None = None,
                cut_after: int | None = None, content_type: str = "application/octet-stream") -> Reply:
    """`data` as a file, answering `Range: bytes=a-` / `bytes=a-b` with 206, or 416 past the end."""
    extra = {"Content-Type": content_type, "Accept-Ranges": "bytes" if honour_range else "none", **(headers or {})}
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("range", "")) if honour_range else None
    if match is None:
        return Reply(200, extra, data, cut_after)
    start = int(match[1])
    end = min(int(match[2]), len(data) - 1) if match[2] else len(data) - 1
    if start >= len(data) or end < start:
        return Reply(416, {**extra, "Content-Range": f"bytes */{len(data)}"})
    return Reply(206, {**extra, "Content-Range": f"bytes {start}-{end}/{len(data)}"}, data[start:end + 1], cut_after)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # an idle keep-alive connection's thread ends after this

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _serve(self) -> None:
        owner: LocalServer = self.server.owner  # type: ignore[attr-defined]
        split = urlsplit(self.path)
        request = Request(self.command, unquote(split.path), dict(parse_qsl(split.query, keep_blank_values=True)),
                          {name.lower(): value for name, value in self.headers.items()})
        owner.record(request)
        try:
            reply = owner.handler(request)
        except Exception as error:  # noqa: BLE001 -- a bug in a test's handler: answer 500 and keep the record
            owner.errors.append(error)
            reply = Reply(500, {"Content-Type": "text/plain"}, repr(error).encode())
        self.send_response(reply.status)
        for name, value in {"Content-Length": str(len(reply.body)), **reply.headers}.items():
            self.send_header(name, value)
        self.end_headers()
        body = reply.body if reply.cut_after is None else reply.body[:reply.cut_after]
        try:
            if self.command != "HEAD" and body:
                self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if reply.cut_after is not None and self.command != "HEAD":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class LocalServer:
    """`with LocalServer(handler) as server:` serves on `server.url` until the block ends."""

    def __init__(self, handler: Callable[[Request], Reply]) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self.errors: list[Exception] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def __enter__(self) -> LocalServer:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
