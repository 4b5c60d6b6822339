"""The HTTP side of `anynet serve`: Python's standard library only (http.server).

Endpoints:

    GET  /               the page (static/index.html)
    GET  /static/NAME    the page's files: only those shipped in static/, nothing else
    GET  /api/model      JSON: the model's description (Predictor.describe)
    POST /api/predict    body: a PNG or JPEG (Content-Type image/png or image/jpeg), at most
                         MAX_BODY bytes -> JSON {"prediction", "top", "input"}

Every error is JSON {"error": "..."}: 400 an unreadable or blank picture, a malformed request, a
missing, repeated or malformed Host, or a Content-Length that is not exactly one header of ASCII
digits; 404; 405 (with Allow); 408 a request that does not arrive in time; 411 no
Content-Length; 413 a body over MAX_BODY or a picture over the pixel limit; 414/431 a request
line or headers over MAX_HEAD; 415 another content type; 421 a Host this server does not answer
to (DNS rebinding: a page of another site whose name now points here); 503 too many connections
or pictures at once (with Retry-After). 500 is a bug in anynet, never a client's doing: its
traceback goes to the server's stderr, never to the client.

What one client can hold:
- a connection's thread, and only MAX_CONNECTIONS at once: the next is answered 503 by the
  accepting thread at once and closed, so threads and memory stay bounded however many come;
- each request DEADLINE seconds from the moment the server waits for it (request line, headers
  and body: a client sending a byte a second is cut off with 408), silent TIMEOUT seconds at most
  (then an idle connection is closed), and MAX_HEAD bytes of request line and headers;
- a closing connection LINGER seconds more, reading and dropping what the client still sends,
  so that an early answer (408, 413, 414) reaches it rather than being lost to a reset.

Not for: the open internet. There is no authentication and no TLS; it binds loopback unless
told otherwise, and answers only requests whose Host names it (`allowed_hosts`).
"""

from __future__ import annotations

import http.server
import io
import ipaddress
import json
import re
import socket
import socketserver
import sys
import threading
import time
import traceback
from importlib import resources
from typing import Any

from anynet.serve.predictor import BadImage, Busy, ImageTooLarge, Predictor, UnsupportedType

MAX_BODY = 2 * 2**20  # bytes of a picture sent to /api/predict (2 MiB)
MAX_HEAD = 32 * 2**10  # bytes of request line and headers (a browser sends well under 8 KiB)
TIMEOUT = 10.0  # seconds a connection may stay silent (socket timeout)
DEADLINE = 30.0  # seconds a whole request (line, headers, body) may take to arrive
MAX_CONNECTIONS = 32  # connections served at once (a browser opens about 6 to one server)
LINGER = 1.0  # seconds a closing connection drops what the client still sends (see Server)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")  # the Host names always answered
_CHUNK = 1 << 16

_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml",
          ".png": "image/png", ".ico": "image/x-icon"}
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Everything the page needs is its own; the canvas hands images out as blob:/data: URLs.
    # No form may post anywhere, no other site may frame the page, no <base> may move its URLs.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                               "object-src 'none'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Cross-Origin-Resource-Policy": "same-origin",  # no other site embeds the answers
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


class _TooLate(TimeoutError):
    """The request did not arrive in time: its deadline passed, or the client fell silent."""


class _HeadTooLarge(Exception):
    """The request line and headers are over MAX_HEAD bytes."""


class _Clock(io.RawIOBase):
    """A connection's reads, each bounded by the request's deadline and the silence timeout.

    http.server reads the request line and headers with readline, which keeps reading as long as
    bytes trickle in: a socket timeout alone bounds only silence. Here every read of the socket
    first sets the timeout to what is left of the request's deadline (at most `timeout`), so no
    request holds its thread past the deadline, however it is sent. `start` arms the clock for
    the next request; `head_done` and `stop` mark its phases.
    """

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, timeout: float, deadline: float):
        self._raw, self._sock, self.timeout, self.deadline = raw, sock, timeout, deadline
        self._due, self._head_budget, self.received = float("inf"), None, 0

    def start(self) -> None:
        self._due, self._head_budget, self.received = time.monotonic() + self.deadline, 0, 0

    def head_done(self) -> None:
        self._head_budget = None

    def stop(self) -> None:
        """The request is in: what follows (the answer) is bounded by the timeout alone."""
        self._due, self._head_budget = float("inf"), None
        self._sock.settimeout(self.timeout)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        if self._head_budget is not None and self._head_budget >= MAX_HEAD:
            raise _HeadTooLarge
        left = self._due - time.monotonic()
        if left <= 0:
            raise _TooLate(f"the request did not arrive within {self.deadline:g} s")
        self._sock.settimeout(min(self.timeout, left))
        try:
            n = self._raw.readinto(buffer)
        except TimeoutError:
            if left <= self.timeout:
                raise _TooLate(f"the request did not arrive within {self.deadline:g} s") \
                    from None
            raise _TooLate(f"the request stopped arriving (silent for {self.timeout:g} s)") \
                from None
        if n:
            self.received += n
            if self._head_budget is not None:
                self._head_budget += n
        return n

    def close(self) -> None:
        super().close()
        self._raw.close()


class Handler(http.server.BaseHTTPRequestHandler):
    """One connection's requests. The server object carries `predictor`, `static`, `log`,
    `deadline` and `allowed_hosts`."""

    protocol_version = "HTTP/1.1"  # keep-alive: a page drawing sends many requests
    server_version = "anynet"
    timeout = TIMEOUT  # socket timeout for every read and write of this connection
    # Headers and body go out in separate writes: with Nagle's algorithm on, the body waits for
    # the client's delayed ACK (~40 ms on Linux) of the headers.
    disable_nagle_algorithm = True

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self._clock = _Clock(self.rfile.detach(), self.connection, self.timeout,
                             getattr(self.server, "deadline", DEADLINE))
        self.rfile = io.BufferedReader(self._clock)

    def handle_one_request(self) -> None:
        """http.server's, with the request under the clock, and its own answers when the request
        is too slow (408) or its head too large (414, 431)."""
        self._clock.start()
        self.raw_requestline, self._error = b"", None
        # what parse_request sets, for an answer given before it runs
        self.requestline, self.command = "", None
        self.request_version = self.default_request_version
        try:
            try:
                self.raw_requestline = self.rfile.readline(65537)
            except _HeadTooLarge:
                return self.send_error(414, f"the request line is longer than {MAX_HEAD:,} bytes")
            if len(self.raw_requestline) > 65536:
                return self.send_error(414)
            if not self.raw_requestline:
                self.close_connection = True
                return
            try:
                if not self.parse_request():
                    return  # parse_request has answered
            except _HeadTooLarge:
                return self.send_error(431, f"the request line and headers are more than "
                                            f"{MAX_HEAD:,} bytes")
            self._clock.head_done()
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                return self.send_error(501, f"unsupported method {_clip(self.command)!r}")
            method()
            self.wfile.flush()
        except _TooLate as e:
            self.close_connection = True
            if self._clock.received:  # a request began: say why it was cut off
                self._error = str(e)
                self.send_error(408, str(e))
            # else an idle keep-alive connection: closed without a word
        except (ConnectionError, _HeadTooLarge):
            self.close_connection = True

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
            keep = self.close_connection
            self.close_connection = True  # until the request's framing is known good
            length = self._content_length()  # how the request ends, before anything else
            self.close_connection = keep
            if path != "/api/predict" and (length or self.headers.get("Transfer-Encoding")):
                self.close_connection = True  # a body nobody reads: the connection cannot go on
            self._check_host()
            if path.startswith("/static/"):
                allowed = "GET"
            else:
                allowed = _ROUTES.get(path)
                if allowed is None:
                    raise _Reply(404, f"no such page: {_clip(path)}")
            if method not in (allowed, "HEAD" if allowed == "GET" else allowed):
                raise _Reply(405, f"{path} takes {allowed} only", {"Allow": allowed})
            if path == "/api/predict":
                self._read_request_body(length)
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
        except _TooLate:
            raise  # handle_one_request answers 408
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:  # a bug: the client learns nothing of the server's insides
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            self._send_json(500, {"error": "internal error (the server's log has the details)"})

    # --- what the request says about itself ----------------------------------------------------

    def _content_length(self) -> int | None:
        """The body's length: None if the request has no Content-Length, else exactly one header
        of ASCII digits (RFC 9112 6.3: anything else is a framing error, 400, and the connection
        is closed, so that no two readers of this request can disagree on where it ends)."""
        values = self.headers.get_all("Content-Length") or []
        if not values:
            return None
        if len(values) > 1:
            raise _Reply(400, f"{len(values)} Content-Length headers; send exactly one")
        if self.headers.get("Transfer-Encoding"):
            raise _Reply(400, "both Content-Length and Transfer-Encoding; send a Content-Length "
                              "only")
        text = values[0].strip(" \t")
        if not re.fullmatch(r"[0-9]+", text):
            raise _Reply(400, f"bad Content-Length {_clip(text)!r}: send the body's length in "
                              "bytes, in ASCII digits")
        digits = text.lstrip("0") or "0"
        if len(digits) > len(str(MAX_BODY)):  # never parse an unbounded number
            raise _Reply(413, f"the body is more than the {MAX_BODY:,} bytes this server takes "
                              f"(Content-Length has {len(digits):,} digits)")
        return int(digits)

    def _check_host(self) -> None:
        """The Host header must name this server (RFC 9112 3.2: exactly one, required in
        HTTP/1.1). A page of another site whose DNS name was rebound to this machine sends its
        own name here: 421, and the page learns nothing. The port is not checked (an SSH tunnel
        changes it, and rebinding cannot be done with a port alone)."""
        values, keep = self.headers.get_all("Host") or [], self.close_connection
        self.close_connection = True  # until the Host is known good: a stranger is not kept
        if len(values) > 1:
            raise _Reply(400, f"{len(values)} Host headers; send exactly one")
        if not values and self.request_version == "HTTP/1.0":
            self.close_connection = keep
            return  # HTTP/1.0 had no Host; no browser sends such a request
        if not values:
            raise _Reply(400, "no Host header; HTTP/1.1 requires one")
        name = host_name(values[0])
        if name is None:
            raise _Reply(400, f"bad Host header {_clip(values[0])!r}")
        if not self.server.answers_to(name):
            raise _Reply(421, f"this server does not answer to the name {_clip(name)!r}; start "
                              f"it with --allow-host {_clip(name)} to use that name")
        self.close_connection = keep

    # --- the prediction ------------------------------------------------------------------------

    def _read_request_body(self, length: int | None) -> None:
        """Read the request body into self._body, or refuse it unread (closing the connection)."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise _Reply(411, "send the picture with a Content-Length, not chunked")
        if length is None:
            self.close_connection = True
            raise _Reply(411, "a Content-Length header is required")
        if length > MAX_BODY:
            self.close_connection = True  # the body is never read: the connection cannot go on
            raise _Reply(413, f"the body is {length:,} bytes, more than the {MAX_BODY:,} this "
                              "server takes")
        self._body = self._read_body(length)

    def _read_body(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            try:
                chunk = self.rfile.read1(min(left, _CHUNK))
            except _TooLate as e:
                self.close_connection = True
                raise _Reply(408, str(e)) from None
            if not chunk:
                self.close_connection = True
                raise _Reply(400, f"the body ended after {n - left:,} of the {n:,} bytes its "
                                  "Content-Length promised")
            chunks.append(chunk)
            left -= len(chunk)
        self._clock.stop()
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
        except Busy as e:
            raise _Reply(503, str(e), {"Retry-After": "1"}) from None
        self._send_json(200, answer)

    # --- answers -------------------------------------------------------------------------------

    def _send_json(self, status: int, document: Any, headers: dict | None = None,
                   head: bool = False) -> None:
        body = json.dumps(document, separators=(",", ":")).encode()
        self._send(status, body, "application/json",
                   {"Cache-Control": "no-store", **(headers or {})}, head=head)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict,
              head: bool = False) -> None:
        self._clock.stop()  # the answer: bounded by the timeout, not what is left of the deadline
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
        self._error = self._error or message
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
    """A ThreadingHTTPServer holding the Predictor and the static files for its handlers.

    `allowed_hosts`: Host names answered besides LOOPBACK_NAMES and the bound address (names or
    IP addresses, as `host_name` gives them). `deadline`: seconds a request may take to arrive.
    `max_connections`: connections served at once; one more is answered 503 and closed.
    """

    daemon_threads = True  # a stalled connection never keeps the process from exiting
    request_queue_size = 128  # connections waiting to be accepted (socketserver's 5 drops some)
    block_on_close = False

    def __init__(self, address: tuple[str, int], predictor: Predictor, *, log: bool = True,
                 allowed_hosts: tuple[str, ...] = (), deadline: float = DEADLINE,
                 max_connections: int = MAX_CONNECTIONS):
        self.predictor, self.static, self.log = predictor, static_files(), log
        self.deadline, self.max_connections = deadline, max_connections
        self.allowed_hosts = {name for h in (*LOOPBACK_NAMES, address[0], *allowed_hosts)
                              if (name := host_name(h)) is not None}
        self._open, self._refused, self._refusals_logged = 0, 0, 0.0
        self._count = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        """Bind, without http.server's reverse DNS lookup of the address (slow offline)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def answers_to(self, name: str) -> bool:
        """Whether a request whose Host names `name` (as `host_name` gives it) is answered: a name
        of `allowed_hosts`, or an IP address that is loopback or this server's. When bound to
        every address (0.0.0.0, ::) any IP address is: an address cannot be rebound (DNS
        rebinding needs a name), and the machine's own addresses are not known here."""
        if name in self.allowed_hosts:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        bound = ipaddress.ip_address(self.server_address[0])
        return address.is_loopback or bound.is_unspecified or address == bound

    # --- a bounded number of connections -------------------------------------------------------

    def process_request(self, request, client_address) -> None:
        with self._count:
            full = self._open >= self.max_connections
            if not full:
                self._open += 1
        if full:
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)  # its thread
        except BaseException:
            with self._count:
                self._open -= 1
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count:
                self._open -= 1

    def _refuse(self, request: socket.socket) -> None:
        """503 on a connection over the limit, from the accepting thread: without blocking (the
        send fits an empty socket buffer), and closed at once."""
        body = json.dumps({"error": f"more than {self.max_connections} connections at once; "
                                    "try again in a moment"}).encode()
        answer = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nCache-Control: no-store\r\n"
                  f"Connection: close\r\n\r\n").encode() + body
        try:
            request.setblocking(False)
            request.send(answer)
            request.shutdown(socket.SHUT_WR)
            request.recv(MAX_HEAD)  # what already came: unread, closing would reset the answer
        except OSError:
            pass
        self.close_request(request)
        self._refused += 1
        now = time.monotonic()
        if self.log and now - self._refusals_logged >= 10:  # one line in 10 s, not a flood
            self._refusals_logged = now
            print(f"anynet serve: refused {self._refused:,} connection(s) so far with 503: more "
                  f"than {self.max_connections} at once (--max-connections)", file=sys.stderr,
                  flush=True)

    def shutdown_request(self, request: socket.socket) -> None:
        """Close a served connection, lingering: the answer goes out (FIN after it), then what
        the client is still sending is read and dropped for at most LINGER seconds and MAX_BODY
        bytes. Closed at once with unread bytes, the connection would be reset, and the client
        could lose an answer such as 413 or 414 sent before its request was all in."""
        try:
            request.shutdown(socket.SHUT_WR)
            end, dropped = time.monotonic() + LINGER, 0
            while dropped < MAX_BODY and (left := end - time.monotonic()) > 0:
                request.settimeout(left)
                chunk = request.recv(_CHUNK)
                if not chunk:
                    break
                dropped += len(chunk)
        except OSError:
            pass
        self.close_request(request)

    def handle_error(self, request, client_address) -> None:
        if self.log:
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


# a Host header (RFC 9110 7.2): [IPv6] or a name of dot-separated labels (an IPv4 address is
# one), with an optional trailing dot, then an optional port
_HOST = re.compile(r"(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_-]+(?:\.[a-z0-9_-]+)*)\.?)"
                   r"(?::[0-9]{0,5})?")


def host_name(text: str) -> str | None:
    """The name in a Host header ("Example.org.:8000" -> "example.org", "[::1]:80" -> "::1"), or
    in an --allow-host value (a bare IPv6 address too); None if it is not a valid one."""
    text = text.strip(" \t").lower()
    try:
        return str(ipaddress.IPv6Address(text))  # a bare IPv6 address, as --host takes it
    except ValueError:
        pass
    match = _HOST.fullmatch(text)
    if match is None:
        return None
    if match["ip6"] is not None:
        try:
            return str(ipaddress.IPv6Address(match["ip6"]))
        except ValueError:
            return None
    return match["name"]  # without a trailing dot: "localhost." is "localhost"


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
