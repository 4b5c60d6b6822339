"""The HTTP side of `anynet serve`: Python's standard library only (http.server).

Endpoints:

    GET  /               the page (static/index.html)
    GET  /static/NAME    the page's files: only those shipped in static/, nothing else
    GET  /api/model      JSON: the model's description (Predictor.describe)
    POST /api/predict    body: a PNG or JPEG (Content-Type image/png or image/jpeg), at most
                         MAX_BODY bytes -> JSON {"prediction", "top", "input"}

Every error is JSON {"error": "..."}: 400 an unreadable or blank picture or a bad
Content-Length, 404, 405 (with Allow), 408 a body that does not arrive in time, 411 no
Content-Length, 413 a body over MAX_BODY or a picture over the pixel limit, 415 another content
type, 500 a bug (its traceback goes to the server's stderr, never to the client).

Each connection has its own thread (ThreadingHTTPServer) and a socket timeout, so a slow or
stalled client holds only its own thread, and only for TIMEOUT seconds at a time (BODY_DEADLINE
in all for a body).

Not for: the open internet. There is no authentication and no TLS; it binds loopback unless
told otherwise.
"""

from __future__ import annotations

import http.server
import json
import socket
import socketserver
import sys
import time
import traceback
from importlib import resources
from typing import Any

from anynet.serve.predictor import BadImage, ImageTooLarge, Predictor, UnsupportedType

MAX_BODY = 2 * 2**20  # bytes of a picture sent to /api/predict (2 MiB)
TIMEOUT = 10.0  # seconds a connection may stay silent (socket timeout)
BODY_DEADLINE = 30.0  # seconds a whole request body may take to arrive
_CHUNK = 1 << 16

_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml",
          ".png": "image/png", ".ico": "image/x-icon"}
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Everything the page needs is its own; the canvas hands images out as blob:/data: URLs.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                               "frame-ancestors 'none'",
}
_ROUTES = {"/": "GET", "/index.html": "GET", "/api/model": "GET", "/api/predict": "POST"}


def static_files() -> dict[str, tuple[bytes, str]]:
    """The files of static/ shipped with the package: name -> (contents, content type).

    Read once at start; the server answers /static/NAME from this table alone, so no path a
    client sends can reach another file.
    """
    files = {}
    for entry in resources.files("anynet.serve").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in _TYPES:
            files[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return files


class _Reply(Exception):
    """An error answer: HTTP `status` with JSON {"error": message}."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class Handler(http.server.BaseHTTPRequestHandler):
    """One connection's requests. The server object carries `predictor`, `static` and `log`."""

    protocol_version = "HTTP/1.1"  # keep-alive: a page drawing sends many requests
    server_version = "anynet"
    timeout = TIMEOUT  # socket timeout for every read and write of this connection
    # Headers and body go out in separate writes: with Nagle's algorithm on, the body waits for
    # the client's delayed ACK (~40 ms on Linux) of the headers.
    disable_nagle_algorithm = True

    def version_string(self) -> str:
        return self.server_version

    # --- dispatch ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_OPTIONS(self) -> None:
        self._handle("OPTIONS")

    def _handle(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path != "/api/predict" and (self.headers.get("Content-Length", "0").strip() != "0"
                                           or self.headers.get("Transfer-Encoding")):
                self.close_connection = True  # a body nobody reads: the connection cannot go on
            if path.startswith("/static/"):
                allowed = "GET"
            else:
                allowed = _ROUTES.get(path)
                if allowed is None:
                    raise _Reply(404, f"no such page: {_clip(path)}")
            if method not in (allowed, "HEAD" if allowed == "GET" else allowed):
                raise _Reply(405, f"{path} takes {allowed} only", {"Allow": allowed})
            if path == "/api/predict":
                self._read_request_body()
                self._predict()
            elif path == "/api/model":
                self._send_json(200, self.server.predictor.describe())
            else:
                name = "index.html" if path in ("/", "/index.html") else path[len("/static/"):]
                if name not in self.server.static:
                    raise _Reply(404, f"no such file: {_clip(path)}")
                body, ctype = self.server.static[name]
                self._send(200, body, ctype, {"Cache-Control": "no-cache"}, head=method == "HEAD")
        except _Reply as e:
            self._error = str(e)  # for the log
            self._send_json(e.status, {"error": str(e)}, e.headers, head=method == "HEAD")
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:  # a bug: the client learns nothing of the server's insides
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            self._send_json(500, {"error": "internal error (the server's log has the details)"})

    # --- the prediction ------------------------------------------------------------------------

    def _read_request_body(self) -> None:
        """Read the request body into self._body, or refuse it unread (closing the connection)."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise _Reply(411, "send the picture with a Content-Length, not chunked")
        if length is None:
            self.close_connection = True
            raise _Reply(411, "a Content-Length header is required")
        if not length.strip().isdigit():
            self.close_connection = True
            raise _Reply(400, f"bad Content-Length {_clip(length)!r}")
        n = int(length)
        if n > MAX_BODY:
            self.close_connection = True  # the body is never read: the connection cannot go on
            raise _Reply(413, f"the body is {n:,} bytes, more than the {MAX_BODY:,} this server "
                              "takes")
        self._body = self._read_body(n)

    def _read_body(self, n: int) -> bytes:
        deadline = time.monotonic() + BODY_DEADLINE
        chunks, left = [], n
        while left:
            if time.monotonic() > deadline:
                self.close_connection = True
                raise _Reply(408, f"the body did not arrive within {BODY_DEADLINE:g} s")
            try:
                chunk = self.rfile.read1(min(left, _CHUNK))
            except TimeoutError:
                self.close_connection = True
                raise _Reply(408, f"the body stopped arriving (silent for {TIMEOUT:g} s)") \
                    from None
            if not chunk:
                self.close_connection = True
                raise _Reply(400, f"the body ended after {n - left:,} of the {n:,} bytes its "
                                  "Content-Length promised")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _predict(self) -> None:
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        try:
            answer = self.server.predictor.predict(self._body, ctype)
        except UnsupportedType as e:
            raise _Reply(415, str(e)) from None
        except ImageTooLarge as e:
            raise _Reply(413, str(e)) from None
        except BadImage as e:
            raise _Reply(400, str(e)) from None
        self._send_json(200, answer)

    # --- answers -------------------------------------------------------------------------------

    def _send_json(self, status: int, document: Any, headers: dict | None = None,
                   head: bool = False) -> None:
        body = json.dumps(document, separators=(",", ":")).encode()
        self._send(status, body, "application/json",
                   {"Cache-Control": "no-store", **(headers or {})}, head=head)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict,
              head: bool = False) -> None:
        self.send_response(status)
        for key, value in {**_HEADERS, **headers, "Content-Type": ctype,
                           "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None):
        """http.server's own errors (a malformed request line, headers too long) as JSON too."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # an unparsable request line: answer in HTTP/1.1
            self.request_version = self.protocol_version
        try:
            self._send_json(code, {"error": message or self.responses.get(code, ("",))[0]})
        except OSError:
            pass

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        if self.server.log and (not isinstance(code, int) or int(code) >= 400):
            # only what went wrong (drawing sends many requests), and why
            error = getattr(self, "_error", None)
            self.log_message('"%s" %s%s', self.requestline, str(code),
                             f": {error}" if error else "")

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log:
            super().log_message(format, *args)


class Server(http.server.ThreadingHTTPServer):
    """A ThreadingHTTPServer holding the Predictor and the static files for its handlers."""

    daemon_threads = True  # a stalled connection never keeps the process from exiting
    request_queue_size = 128  # connections waiting to be accepted (socketserver's 5 drops some)
    block_on_close = False

    def __init__(self, address: tuple[str, int], predictor: Predictor, *, log: bool = True):
        self.predictor, self.static, self.log = predictor, static_files(), log
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        """Bind, without http.server's reverse DNS lookup of the address (slow offline)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address) -> None:
        if self.log:
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
