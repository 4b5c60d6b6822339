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


def test_static_files_are_package_data():
    """Every file of static/ is matched by pyproject's package-data, so a wheel ships it."""
    import fnmatch
    import re

    text = (ROOT / "pyproject.toml").read_text()
    patterns = re.findall(r'"(static/[^"]+)"', text.split("[tool.setuptools.package-data]")[1])
    static = ROOT / "anynet" / "serve" / "static"
    files = sorted(p.name for p in static.iterdir())
    assert {"index.html", "app.js", "style.css"} <= set(files)
    for name in files:
        assert any(fnmatch.fnmatch(f"static/{name}", p) for p in patterns), name
    assert set(server_module.static_files()) == set(files)


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
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{h}\r\n" for h in lines)
            + "\r\n").encode()


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
    for partial in (b"POST /api/predict HTTP/1.1\r\nHost: x\r\n",  # headers never end
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

        def __init__(self, address, predictor, log):
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
