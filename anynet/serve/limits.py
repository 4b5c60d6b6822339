"""The HTTP framing and limits of `anynet serve`: what one client can hold (see
`anynet.serve.server` for the endpoints and the answers).

- `Clock`: a connection's reads, each bounded by the request's DEADLINE and the silence TIMEOUT,
  and the request line and headers by MAX_HEAD bytes;
- `BoundedServer`: at most MAX_CONNECTIONS connections (the next answered 503 by the accepting
  thread), each closed lingering LINGER seconds so that an early answer reaches the client;
- `host_name` and `BoundedServer.answers_to`: the Host check against DNS rebinding.

Python's standard library only. Not for: routing or answers (`anynet.serve.server`).
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

MAX_BODY = 2 * 2**20  # bytes of a picture sent to /api/predict (2 MiB)
MAX_HEAD = 32 * 2**10  # bytes of request line and headers (a browser sends well under 8 KiB)
TIMEOUT = 10.0  # seconds a connection may stay silent (socket timeout)
DEADLINE = 30.0  # seconds a whole request (line, headers, body) may take to arrive
MAX_CONNECTIONS = 32  # connections served at once (a browser opens about 6 to one server)
LINGER = 1.0  # seconds a closing connection drops what the client still sends (see Server)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")  # the Host names always answered
READ_CHUNK = 1 << 16  # bytes asked of a socket at a time: a body, or what a closing one drops


class Reply(Exception):
    """An error answer: HTTP `status` with JSON {"error": message}."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class TooLate(TimeoutError):
    """The request did not arrive in time: its deadline passed, or the client fell silent."""


class HeadTooLarge(Exception):
    """The request line and headers are over MAX_HEAD bytes."""


class Clock(io.RawIOBase):
    """A connection's reads, each bounded by the request's deadline and the silence timeout.

    http.server reads the request line and headers with readline, which keeps reading as long as
    bytes trickle in: a socket timeout alone bounds only silence. Here every read of the socket
    first sets the timeout to what is left of the request's deadline (at most `timeout`), so no
    request holds its thread past the deadline, however it is sent. `start` arms the clock for
    the next request; `head_done` and `stop` mark its phases.
    """

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, timeout: float, deadline: float):
        self._raw, self._sock, self.timeout, self.deadline = raw, sock, timeout, deadline
        self._due, self.received = float("inf"), 0
        self._head_budget: int | None = None

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
            raise HeadTooLarge
        left = self._due - time.monotonic()
        if left <= 0:
            raise TooLate(f"the request did not arrive within {self.deadline:g} s")
        self._sock.settimeout(min(self.timeout, left))
        try:
            n = self._raw.readinto(buffer)
        except TimeoutError:
            if left <= self.timeout:
                raise TooLate(f"the request did not arrive within {self.deadline:g} s") \
                    from None
            raise TooLate(f"the request stopped arriving (silent for {self.timeout:g} s)") \
                from None
        if n:
            self.received += n
            if self._head_budget is not None:
                self._head_budget += n
        return n

    def close(self) -> None:
        super().close()
        self._raw.close()


class BoundedServer(http.server.ThreadingHTTPServer):
    """A ThreadingHTTPServer within limits: at most `max_connections` connections at once (one
    more is answered 503 and closed), each closed lingering (`shutdown_request`), and a Host
    check (`answers_to`) for its handlers. `allowed_hosts`: Host names answered besides
    LOOPBACK_NAMES and the bound address (names or IP addresses, as `host_name` gives them).
    `deadline`: seconds a request may take to arrive (read by the handler's `Clock`)."""

    daemon_threads = True  # a stalled connection never keeps the process from exiting
    request_queue_size = 128  # connections waiting to be accepted (socketserver's 5 drops some)
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type, *, log: bool = True,
                 allowed_hosts: tuple[str, ...] = (), deadline: float = DEADLINE,
                 max_connections: int = MAX_CONNECTIONS):
        self.log, self.deadline, self.max_connections = log, deadline, max_connections
        self.allowed_hosts = {name for h in (*LOOPBACK_NAMES, address[0], *allowed_hosts)
                              if (name := host_name(h)) is not None}
        self._open, self._refused, self._refusals_logged = 0, 0, 0.0
        self._count = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def server_bind(self) -> None:
        """Bind, without http.server's reverse DNS lookup of the address (slow offline)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

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
        bound = ipaddress.ip_address(str(self.server_address[0]))
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

    def shutdown_request(self, request) -> None:
        """Close a served connection, lingering: the answer goes out (FIN after it), then what
        the client is still sending is read and dropped for at most LINGER seconds and MAX_BODY
        bytes. Closed at once with unread bytes, the connection would be reset, and the client
        could lose an answer such as 413 or 414 sent before its request was all in."""
        try:
            request.shutdown(socket.SHUT_WR)
            end, dropped = time.monotonic() + LINGER, 0
            while dropped < MAX_BODY and (left := end - time.monotonic()) > 0:
                request.settimeout(left)
                chunk = request.recv(READ_CHUNK)
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
        host, port = str(self.server_address[0]), self.server_address[1]
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


def clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
