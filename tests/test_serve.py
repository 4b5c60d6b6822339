"""Tests for `anynet serve`: the HTTP API, its errors and abuse, load, and the command line.

The server runs in this process on 127.0.0.1 and a free port (never another address), with a
model of known weights built by hand: hidden unit 0 sums the ink in the centre columns and votes
for "1", unit 1 the ink in the centre rows and votes for "7". A vertical bar is then a 1 and a
horizontal bar a 7, whatever the backend, so every answer under load can be checked. The
browser tests, with a model trained on genuine MNIST, are in test_serve_browser.py.

No test asserts a time: the timeouts here only keep a broken server from hanging the suite.
"""

from __future__ import annotations

import http.client
import io
import json
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from anynet.cli import main
from anynet.modelio import load_model, save_model
from anynet.network import TwoLayerNet

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from anynet.serve import server as server_module  # noqa: E402
from anynet.serve.predictor import MAX_PIXELS, Predictor  # noqa: E402
from anynet.serve.server import MAX_BODY, Server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "docs" / "digits"
HANG = 60  # seconds: a hang guard only, never a performance limit


# --- a model whose answers are known ---------------------------------------------------------


def bars_params() -> dict:
    """784-2-10: unit 0 = ink in columns 12..15 minus ink elsewhere, unit 1 the same for rows;
    unit 0 votes for class 1, unit 1 for class 7."""
    cols, rows = np.zeros((28, 28)), np.zeros((28, 28))
    cols[:, 12:16] = 1.0
    rows[12:16, :] = 1.0
    W1 = np.stack([(2 * cols - 1).ravel(), (2 * rows - 1).ravel()], axis=1) * 0.2
    W2 = np.zeros((2, 10))
    W2[0, 1] = W2[1, 7] = 1.0
    return {"W1": W1, "b1": np.zeros(2), "W2": W2, "b2": np.zeros(10)}


@pytest.fixture(scope="module")
def bars_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "bars.npz"
    params = {k: v.astype(np.float32) for k, v in bars_params().items()}
    save_model(path, TwoLayerNet.from_params(params), {"metrics": {"test_accuracy": 0.5,
                                                                   "epochs": 1}})
    return path


def png(image: np.ndarray, fmt: str = "PNG") -> bytes:
    """(H, W) uint8 grey -> the bytes of a PNG (or JPEG) file."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt)
    return buffer.getvalue()


def bar(vertical: bool, size: int = 200, shift: int = 0, thickness: int = 18) -> np.ndarray:
    """Black bar on white paper, like a pen stroke: a "1" if vertical, a "7" (ours) if not."""
    image = np.full((size, size), 255, dtype=np.uint8)
    lo, hi = size // 2 - thickness // 2 + shift, size // 2 + thickness // 2 + shift
    if vertical:
        image[20:-20, lo:hi] = 0
    else:
        image[lo:hi, 20:-20] = 0
    return image


# --- the server, in this process, on loopback --------------------------------------------------


@pytest.fixture(scope="module")
def served(bars_model, backend):
    """(host, port) of a server for the bars model on the backend under test."""
    net, record = load_model(bars_model, backend=backend)
    predictor = Predictor(net, record, bars_model)
    server = Server(("127.0.0.1", 0), predictor, log=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[:2]
    server.shutdown()
    server.server_close()
    predictor.close()
    thread.join(HANG)


def call(served, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request on a fresh connection."""
    conn = http.client.HTTPConnection(*served, timeout=HANG)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def predict(served, body: bytes, ctype: str = "image/png") -> tuple[int, dict]:
    status, _headers, data = call(served, "POST", "/api/predict", body, {"Content-Type": ctype})
    return status, json.loads(data)


def raw(served, data: bytes, *, shutdown: bool = True) -> bytes:
    """Send `data` as it is on a socket; return everything the server answers until it closes."""
    with socket.create_connection(served, timeout=HANG) as s:
        try:
            s.sendall(data)
            if shutdown:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking it all
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def error_of(answer: bytes) -> str:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])["error"]


def assert_serving(served) -> None:
    status, _h, body = call(served, "GET", "/api/model")
    assert status == 200 and json.loads(body)["architecture"] == "784-2-10"


# --- the page and its files ------------------------------------------------------------------


def test_page_and_its_files_are_served(served):
    status, headers, page = call(served, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<canvas id="pad"' in page and b'id="clear"' in page
    assert "default-src 'self'" in headers["Content-Security-Policy"]  # nothing from elsewhere
    for name in ("app.js", "style.css", "favicon.svg"):
        assert f"/static/{name}".encode() in page
        status, headers, body = call(served, "GET", f"/static/{name}")
        assert status == 200 and body, name
    assert call(served, "GET", "/static/app.js")[1]["Content-Type"].startswith("text/javascript")
    status, headers, body = call(served, "HEAD", "/")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(page)


def test_static_files_ship_in_the_installed_package():
    """The installed distribution's file list (its wheel's RECORD) holds every file of static/:
    the build backend (flit_core) ships everything under anynet/, and this holds it to that."""
    from importlib import metadata

    static = ROOT / "anynet" / "serve" / "static"
    files = sorted(p.name for p in static.iterdir())
    assert {"index.html", "app.js", "style.css"} <= set(files)
    assert set(server_module.static_files()) == set(files)
    try:
        installed = metadata.files("anynet")
    except metadata.PackageNotFoundError:
        pytest.skip("anynet is not installed here (run from the checkout); nox installs it")
    if installed is None or not any(str(p).startswith("anynet/") for p in installed):
        pytest.skip("anynet is installed in development mode: no wheel's file list to read")
    shipped = {str(p) for p in installed}
    for name in files:
        assert f"anynet/serve/static/{name}" in shipped, name


def test_page_cannot_be_framed_or_post_forms(served):
    """The CSP forbids forms posting anywhere, framing by other sites, <base> and plugins."""
    csp = call(served, "GET", "/")[1]["Content-Security-Policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives["form-action"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"] and directives["object-src"] == ["'none'"]
    for path in ("/", "/api/model", "/nope"):
        assert call(served, "GET", path)[1]["X-Frame-Options"] == "DENY", path


def test_page_script_never_builds_markup():
    """app.js puts what the server sends into the page as text: none of the sinks that parse
    HTML appear in its code (comments aside), so a model file cannot inject markup."""
    import re

    code = (ROOT / "anynet" / "serve" / "static" / "app.js").read_text()
    code = "\n".join(line.split("//")[0] for line in code.splitlines())  # drop comments
    sinks = re.findall(r"\b(innerHTML|outerHTML|insertAdjacentHTML|document\.write(?:ln)?|"
                       r"createContextualFragment|DOMParser|srcdoc|eval|Function)\b", code)
    assert sinks == []
    assert "textContent" in code and "createElement" in code


def test_model_description(served):
    status, headers, body = call(served, "GET", "/api/model")
    assert status == 200 and headers["Content-Type"] == "application/json"
    model = json.loads(body)
    assert model["architecture"] == "784-2-10" and model["classes"] == 10
    assert model["test_accuracy"] == 0.5 and model["epochs"] == 1
    assert model["trained_at"].endswith("Z")


# --- predictions -----------------------------------------------------------------------------


@pytest.mark.parametrize(("vertical", "expected"), [(True, 1), (False, 7)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_bars_are_read_as_their_digit(served, vertical, expected, fmt):
    ctype = "image/png" if fmt == "PNG" else "image/jpeg"
    status, answer = predict(served, png(bar(vertical), fmt), ctype)
    assert status == 200, answer
    assert answer["prediction"] == expected
    top = answer["top"]
    assert top[0]["class"] == expected
    assert sorted(t["class"] for t in top) == list(range(10))
    probs = [t["probability"] for t in top]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)
    seen = np.array(answer["input"])
    assert seen.shape == (28, 28) and seen.min() >= 0 and seen.max() == 1


def test_answer_is_anynet_predict(served, bars_model, capsys):
    """The same picture through the API and through `anynet predict --json`: the same numbers,
    and the image the API says the network saw is predict's preprocessing of the file."""
    from anynet.images import preprocess_digit, read_image

    for picture in sorted(DIGITS.glob("*.png")):
        status, answer = predict(served, picture.read_bytes())
        assert status == 200, answer
        assert main(["predict", str(bars_model), str(picture), "--json", "--top", "10"]) == 0
        expected = json.loads(capsys.readouterr().out)[0]
        assert answer["prediction"] == expected["prediction"]
        assert [t["class"] for t in answer["top"]] == [t["class"] for t in expected["top"]]
        np.testing.assert_allclose([t["probability"] for t in answer["top"]],
                                   [t["probability"] for t in expected["top"]], rtol=1e-5)
        pixels = preprocess_digit(read_image(picture)).reshape(28, 28)
        np.testing.assert_allclose(answer["input"], pixels / 255, atol=1e-4)


# --- errors, malformed requests and abuse: each its 4xx, and the server goes on --------------


def _bilevel_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (width, height), 1).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("body", "ctype", "status", "words"), [
    (b"\x89PNG\r\n\x1a\n" + b"garbage" * 100, "image/png", 400, "not an image|damaged"),
    (b"hello, not a picture", "image/png", 400, "not a PNG"),
    (bytes(range(256)) * 8, "image/jpeg", 400, "not a JPEG"),
    ("png-truncated", "image/png", 400, "damaged"),
    ("blank", "image/png", 400, "blank"),
    ("huge", "image/png", 413, "pixels"),
    ("bomb", "image/png", 413, "too large"),
    ("one-bar", "text/plain", 415, "image/png"),
    ("one-bar", "", 415, "image/png"),
    ("one-bar", "image/gif", 415, "image/png"),
])
def test_bad_pictures(served, body, ctype, status, words):
    import re

    if body == "png-truncated":
        body = png(bar(True))[:300]
    elif body == "blank":
        body = png(np.full((50, 50), 255, dtype=np.uint8))
    elif body == "huge":
        body = _bilevel_png(10_000, 10_000)
        assert len(body) < MAX_BODY and 10_000**2 > MAX_PIXELS
    elif body == "bomb":  # past Pillow's own limit too (2 x 89 million pixels)
        body = _bilevel_png(20_000, 20_000)
    elif body == "one-bar":
        body = png(bar(True))
    code, answer = predict(served, body, ctype)
    assert code == status and re.search(words, answer["error"]), answer
    assert "/tmp" not in answer["error"] and "anynet-serve" not in answer["error"]
    assert_serving(served)


def head(path: str = "/api/predict", lines: tuple = (), method: str = "POST") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + "".join(f"{h}\r\n" for h in lines)
            + "\r\n").encode("latin-1")


@pytest.mark.parametrize(("request_bytes", "status"), [
    (head(lines=("Content-Type: image/png",)), 411),
    (head(lines=("Content-Type: image/png", "Transfer-Encoding: chunked")) + b"0\r\n\r\n", 411),
    (head(lines=("Content-Type: image/png", "Content-Length: abc")), 400),
    (head(lines=("Content-Type: image/png", "Content-Length: -5")), 400),
    (head(lines=("Content-Type: image/png", "Content-Length: 1e3")), 400),
    # truncated: promises 1000 bytes, sends 100 and stops
    (head(lines=("Content-Type: image/png", "Content-Length: 1000")) + b"\x89PNG" * 25, 400),
    # a lie the other way: 10 MB promised, nothing sent; refused before reading
    (head(lines=("Content-Type: image/png", f"Content-Length: {10 * 2**20}")), 413),
    # garbage instead of HTTP
    (bytes(range(256)) * 4, 400),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
])
def test_malformed_requests(served, request_bytes, status):
    answer = raw(served, request_bytes)
    assert status_of(answer) == status, answer[:300]
    assert error_of(answer)
    assert_serving(served)


@pytest.mark.parametrize(("lines", "status", "words"), [
    # RFC 9112 6.3: two lengths, even equal ones, are a framing error
    (("Content-Length: 5", "Content-Length: 6"), 400, "2 Content-Length headers"),
    (("Content-Length: 5", "Content-Length: 5"), 400, "2 Content-Length headers"),
    (("Content-Length: 5, 5",), 400, "bad Content-Length"),
    (("Content-Length: 5", "Transfer-Encoding: chunked"), 400, "both"),
    # digits, but not ASCII ones: superscript two, three and one (latin-1 0xB2, 0xB3, 0xB9)
    (("Content-Length: \xb2",), 400, "ASCII digits"),
    (("Content-Length: 1\xb3",), 400, "ASCII digits"),
    (("Content-Length: \xb9",), 400, "ASCII digits"),
    (("Content-Length: +5",), 400, "ASCII digits"),
    (("Content-Length: 5 5",), 400, "ASCII digits"),
    (("Content-Length: ",), 400, "ASCII digits"),
    # a number too long to be a body this server takes is never parsed
    (("Content-Length: " + "9" * 5000,), 413, "5,000 digits"),
])
@pytest.mark.parametrize("path", ["/api/predict", "/api/model"])
def test_content_length_is_one_header_of_ascii_digits(served, lines, status, words, path):
    """Checked on every path, before anything else; the connection is closed after."""
    method = "POST" if path == "/api/predict" else "GET"
    answer = raw(served, head(path, ("Content-Type: image/png", *lines), method) + b"abc")
    assert status_of(answer) == status, answer[:300]
    assert words in error_of(answer) and b"Connection: close" in answer
    assert_serving(served)


def test_content_length_with_leading_zeros_is_its_number(served):
    answer = raw(served, head(lines=("Content-Type: image/png", "Content-Length: " + "0" * 5000
                                     + "5")) + b"\x89PNG")
    assert status_of(answer) == 400 and "ended after 4 of the 5 bytes" in error_of(answer)


def rebound(served, name: str, path: str = "/api/model", method: str = "GET",
            body: bytes = b"") -> bytes:
    """A request as a browser sends it from a page of `name` once that name points here."""
    port = served[1]
    lines = (f"Origin: http://{name}:{port}", f"Content-Length: {len(body)}",
             "Content-Type: image/png")
    return raw(served, head(path, lines, method).replace(
        b"Host: 127.0.0.1", f"Host: {name}:{port}".encode()) + body)


@pytest.mark.parametrize("name", ["attacker.example", "127.0.0.1.nip.io", "xn--80ak6aa92e.com",
                                  "localhost.attacker.example", "localtest.me"])
def test_dns_rebinding_is_refused(served, name):
    """A page of another site whose name was rebound to 127.0.0.1 is same-origin with what it
    fetches, so only the Host header tells the request apart: 421, and no model, no answer."""
    answer = rebound(served, name)
    assert status_of(answer) == 421, answer[:300]
    assert "--allow-host" in error_of(answer) and b"784-2-10" not in answer
    answer = rebound(served, name, "/api/predict", "POST", png(bar(True)))
    assert status_of(answer) == 421 and b"prediction" not in answer
    assert_serving(served)


@pytest.mark.parametrize(("host_lines", "status"), [
    ((), 400),  # HTTP/1.1 requires a Host
    (("Host: 127.0.0.1", "Host: attacker.example"), 400),
    (("Host: 127.0.0.1", "Host: 127.0.0.1"), 400),
    (("Host: a/b",), 400), (("Host: 127.0.0.1:80:80",), 400), (("Host: [::1",), 400),
    (("Host: local host",), 400), (("Host: \xb2",), 400), (("Host: ..",), 400),
    (("Host: localhost",), 200), (("Host: LOCALHOST.:8000",), 200), (("Host: 127.0.0.1:1",), 200),
    (("Host: [::1]:8000",), 200), (("Host: 127.0.0.2",), 200),  # loopback, any port (tunnels)
])
def test_host_header_must_name_this_server(served, host_lines, status):
    request = ("GET /api/model HTTP/1.1\r\n" + "".join(f"{h}\r\n" for h in host_lines)
               + "Connection: close\r\n\r\n").encode("latin-1")
    answer = raw(served, request)
    assert status_of(answer) == status, answer[:300]
    assert_serving(served)


def test_allow_host_names_more(bars_model):
    net, record = load_model(bars_model)
    predictor = Predictor(net, record, bars_model)
    with Server(("127.0.0.1", 0), predictor, log=False,
                allowed_hosts=("Digits.LAN", "[fd00::7]")) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            here = server.server_address[:2]
            for name, status in (("digits.lan", 200), ("DIGITS.lan.", 200), ("[fd00::7]", 200),
                                 ("[FD00:0::7]:9", 200), ("other.lan", 421)):
                answer = raw(here, head("/api/model", method="GET").replace(
                    b"127.0.0.1", name.encode()))
                assert status_of(answer) == status, (name, answer[:200])
        finally:
            server.shutdown()
            predictor.close()


def test_every_address_answers_addresses_but_only_allowed_names():
    """Bound to 0.0.0.0 the machine's addresses are not known, and an IP address cannot be
    rebound: any is answered; names still need --allow-host. (No socket is bound here.)"""
    class Bound:
        answers_to = Server.answers_to

        def __init__(self, address, names):
            self.server_address = (address, 8000)
            self.allowed_hosts = {server_module.host_name(n) for n in names}

    wildcard = Bound("0.0.0.0", ["localhost", "digits.lan"])
    assert all(map(wildcard.answers_to, ["192.168.1.20", "10.0.0.1", "::1", "digits.lan"]))
    assert not wildcard.answers_to("attacker.example")
    loopback = Bound("127.0.0.1", ["localhost"])
    assert loopback.answers_to("127.0.0.5") and not loopback.answers_to("192.168.1.20")


def test_ten_megabyte_body_is_refused(served):
    answer = raw(served, head(lines=("Content-Type: image/png", f"Content-Length: {10 * 2**20}"))
                 + b"\0" * (10 * 2**20))
    assert status_of(answer) == 413 and "more than" in error_of(answer)
    assert_serving(served)


def test_a_short_lie_leaves_the_rest_as_a_bad_request(served):
    """Content-Length shorter than the body: the rest is read as the next request, refused."""
    body = png(bar(True))
    answer = raw(served, head(lines=("Content-Type: image/png", "Content-Length: 40")) + body)
    assert status_of(answer) == 400  # the first 40 bytes are a damaged PNG
    assert_serving(served)


@pytest.mark.parametrize("path", [
    "/static/../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2f..%2f..%2fetc%2fpasswd", "/static/%252e%252e/etc/passwd",
    "/static/....//....//etc/passwd", "/static//etc/passwd", "/static/..\\..\\etc\\passwd",
    "/../../etc/passwd", "/%2e%2e/etc/passwd", "/static/", "/static/app.js%00.png",
    "/static/../server.py", "/static/../predictor.py", "/etc/passwd", "/nope",
])
def test_nothing_outside_static_is_served(served, path):
    answer = raw(served, head(path, method="GET"))
    assert status_of(answer) == 404, answer[:200]
    assert b"root:" not in answer and b"import" not in answer
    assert_serving(served)


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/api/predict", "POST"), ("POST", "/", "GET"), ("DELETE", "/api/model", "GET"),
    ("PUT", "/static/app.js", "GET"), ("OPTIONS", "/api/predict", "POST"),
])
def test_wrong_method(served, method, path, allow):
    status, headers, body = call(served, method, path, b"x" if method in ("POST", "PUT") else None)
    assert status == 405 and headers["Allow"] == allow and json.loads(body)["error"]
    assert_serving(served)


def test_stalled_clients_time_out_without_holding_the_server(served, monkeypatch):
    monkeypatch.setattr(server_module.Handler, "timeout", 0.5)
    stalled = []
    for partial in (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n",  # headers never end
                    head(lines=("Content-Type: image/png", "Content-Length: 5000")) + b"\x89PNG"):
        s = socket.create_connection(served, timeout=HANG)
        s.sendall(partial)
        stalled.append(s)
    try:
        # while they hang, others are answered
        status, answer = predict(served, png(bar(True)))
        assert status == 200 and answer["prediction"] == 1
        # and each stalled connection is closed by the server (the body one with a 408)
        answers = [b"".join(iter(lambda s=s: s.recv(65536), b"")) for s in stalled]
        assert answers[0] == b"" or status_of(answers[0]) in (400, 408)
        assert status_of(answers[1]) == 408 and "silent" in error_of(answers[1])
    finally:
        for s in stalled:
            s.close()
    assert_serving(served)


def test_a_busy_server_says_so(served, bars_model, monkeypatch):
    """Requests wait for a decode slot DECODE_WAIT seconds at most, then get 503: a few slow
    pictures cannot keep every other request waiting without end."""
    from anynet.serve import predictor as predictor_module

    net, record = load_model(bars_model)
    predictor = Predictor(net, record, bars_model)
    monkeypatch.setattr(predictor_module, "DECODE_WAIT", 0.2)
    with Server(("127.0.0.1", 0), predictor, log=False) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            for _ in range(predictor_module.DECODE_SLOTS):  # every slot held
                predictor._decode.acquire()
            conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
            conn.request("POST", "/api/predict", png(bar(True)), {"Content-Type": "image/png"})
            response = conn.getresponse()
            assert response.status == 503 and response.getheader("Retry-After") == "1"
            assert "busy" in json.loads(response.read())["error"]
            for _ in range(predictor_module.DECODE_SLOTS):
                predictor._decode.release()
            conn.request("POST", "/api/predict", png(bar(True)), {"Content-Type": "image/png"})
            assert json.loads(conn.getresponse().read())["prediction"] == 1  # and it goes on
            conn.close()
        finally:
            server.shutdown()
            predictor.close()


# --- load: many clients at once, every answer right ------------------------------------------


def test_concurrent_clients_all_answered_correctly(served):
    pictures = [(png(bar(vertical, shift=shift, thickness=t)), 1 if vertical else 7)
                for vertical in (True, False) for shift in (-20, 0, 15) for t in (12, 24)]
    clients, total = 20, 500

    def client(i: int) -> list[tuple[int, int]]:
        conn = http.client.HTTPConnection(*served, timeout=HANG)  # keep-alive, as a page does
        results = []
        try:
            for j in range(i, total, clients):
                body, expected = pictures[j % len(pictures)]
                conn.request("POST", "/api/predict", body, {"Content-Type": "image/png"})
                response = conn.getresponse()
                answer = json.loads(response.read())
                assert response.status == 200, answer
                results.append((answer["prediction"], expected))
        finally:
            conn.close()
        return results

    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients), timeout=HANG * 5) for r in rs]
    assert len(results) == total
    assert all(got == expected for got, expected in results)
    assert_serving(served)


# --- the command line ------------------------------------------------------------------------


def test_missing_model_is_one_line(capsys, tmp_path):
    code = main(["serve", str(tmp_path / "nope.npz"), "--port", "0"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("anynet: error: ") and "does not exist" in err


def overflowing_params(where: str) -> dict:
    """The bars model made unusable: weights so large (but finite) that float32 outputs overflow
    for any bar ("everywhere"), or only for ink in the top-left corner, which a centred digit
    never has ("corner")."""
    params = {k: v.astype(np.float32) for k, v in bars_params().items()}
    if where == "everywhere":
        params["W1"] *= np.float32(1e30)
        params["W2"] *= np.float32(1e30)
    else:
        params["W1"][0, 0] = params["W2"][0, 1] = np.float32(3e38)
    return params


@pytest.mark.parametrize("where", ["everywhere", "corner"])
def test_model_that_cannot_predict_is_refused_at_start(capsys, tmp_path, where):
    """As `evaluate` and `predict` refuse it: one line, exit 2, before listening."""
    from anynet.evaluation import may_overflow

    model = tmp_path / "huge.npz"
    save_model(model, TwoLayerNet.from_params(overflowing_params(where)))
    assert may_overflow(load_model(model)[0])
    code = main(["serve", str(model), "--port", "0"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("anynet: error: ") and "non-finite (nan/inf)" in err
    if where == "everywhere":  # predict refuses it too (the corner never gets ink there)
        picture = tmp_path / "bar.png"
        picture.write_bytes(png(bar(True)))
        assert main(["predict", str(model), str(picture)]) == 2
        assert "not finite (nan/inf)" in capsys.readouterr().err


def test_may_overflow_judges_by_the_dtype(bars_model):
    """A bound from the weights alone: trained-size weights pass far from it, float64 holds
    what float32 cannot, and a weight that is already inf or nan never passes."""
    from anynet.evaluation import may_overflow

    assert not may_overflow(load_model(bars_model)[0])
    huge = overflowing_params("everywhere")
    assert may_overflow(TwoLayerNet.from_params(huge))
    assert not may_overflow(TwoLayerNet.from_params({k: v.astype(np.float64)
                                                     for k, v in huge.items()}))
    params = {k: v.astype(np.float32) for k, v in bars_params().items()}
    params["b2"][3] = np.float32(1.5e38)  # 4 x 1.5e38 is past float32's 3.4e38
    assert may_overflow(TwoLayerNet.from_params(params))


@pytest.mark.parametrize(("option", "value"), [
    ("--allow-host", "http://digits.lan/"), ("--allow-host", "a/b"), ("--allow-host", ""),
    ("--allow-host", "digits.lan:8000x"), ("--request-deadline", "0"),
    ("--request-deadline", "601"), ("--request-deadline", "nan"), ("--request-deadline", "inf"),
    ("--max-connections", "0"), ("--max-connections", "1025"), ("--max-connections", "1e9"),
])
def test_limits_out_of_range_are_usage_errors(capsys, bars_model, option, value):
    assert main(["serve", str(bars_model), option, value]) == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err


def test_serve_options_fuzzed_parse_in_range_or_are_refused():
    """Any text for serve's numeric and host options: parsed into its range, or a usage error
    (SystemExit 2) naming the option; never another exception."""
    import math

    import fuzz_helpers  # noqa: F401  (its hypothesis profiles: ci, deep)
    from hypothesis import given
    from hypothesis import strategies as st

    from anynet.cli import build_parser

    odd = st.sampled_from(["", " ", "nan", "inf", "-inf", "1e308", "-1", "0", "0.5", "1", "600",
                           "601", "1024", "1025", "65535", "65536", "9" * 40, "\u0663", "\uff11",
                           "0x10", "1_000", "localhost", "[::1]", "::1", "a b", "x" * 300,
                           "http://a/", "\xb2"]) | st.text(max_size=20)
    option = st.sampled_from(["--port", "--request-deadline", "--max-connections",
                              "--allow-host", "--host"])
    parser = build_parser()

    @given(option, odd)
    def check(name, value):
        try:
            args = parser.parse_args(["serve", "m.npz", name, value])
        except SystemExit as e:
            assert e.code == 2
            return
        if name == "--request-deadline":
            assert 0 < args.request_deadline <= 600 and math.isfinite(args.request_deadline)
        elif name == "--max-connections":
            assert 1 <= args.max_connections <= 1024
        elif name == "--port":
            assert 0 <= args.port <= 65535
        elif name == "--allow-host":
            assert server_module.host_name(args.allow_host[0]) == args.allow_host[0]

    import contextlib
    import os

    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
        check()


def test_bad_port_is_a_usage_error(capsys, bars_model):
    assert main(["serve", str(bars_model), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_port_in_use_is_one_line(capsys, bars_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", str(bars_model), "--port", str(port)])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"cannot listen on 127.0.0.1 port {port}" in err


def test_other_addresses_are_warned_about(capsys, bars_model, monkeypatch):
    """--host 0.0.0.0 warns; the test never binds it (a stand-in server stops at once)."""
    bound = []

    class Stub:
        url = "http://0.0.0.0:8000/"

        def __init__(self, address, predictor, log, **limits):
            bound.append(address)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def serve_forever(self):
            raise KeyboardInterrupt

    monkeypatch.setattr(server_module, "Server", Stub)
    assert main(["serve", str(bars_model), "--host", "0.0.0.0"]) == 130
    err = capsys.readouterr().err
    assert bound == [("0.0.0.0", 8000)]
    assert "warning: listening on 0.0.0.0: anyone" in err and "interrupted" in err
    assert main(["serve", str(bars_model), "--host", "127.0.0.1"]) == 130
    assert "warning" not in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="sends POSIX signals")
@pytest.mark.parametrize(("signum", "code", "last_words"), [
    (signal.SIGINT, 130, "anynet: interrupted"), (signal.SIGTERM, 143, "anynet: terminated")])
def test_command_serves_until_stopped(bars_model, tmp_path, signum, code, last_words):
    """A real `anynet serve` process: prints its address, answers, stops on Ctrl-C (130) or
    SIGTERM (143) with one line, and leaves no temporary files behind."""
    import os

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    # Ctrl-C's default handler even where this test runs as a shell's background job, whose
    # children inherit an ignored SIGINT
    program = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "from anynet.cli import main; sys.exit(main(sys.argv[1:]))")
    process = subprocess.Popen(
        [sys.executable, "-c", program, "serve", str(bars_model), "--port", "0", "--threads",
         "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        first = process.stdout.readline()  # blocks until the server is listening
        assert first.startswith("anynet serve: http://127.0.0.1:"), first
        port = int(first.split("http://127.0.0.1:")[1].split("/")[0])
        status, answer = predict(("127.0.0.1", port), png(bar(False)))
        assert status == 200 and answer["prediction"] == 7
        assert any(scratch.iterdir())  # its folder for uploads
        process.send_signal(signum)
        _out, err = process.communicate(timeout=HANG)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == code, err
    assert err.strip().splitlines()[-1].startswith(last_words) and "Traceback" not in err
    assert not any(scratch.iterdir())
