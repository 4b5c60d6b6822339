"""`anynet serve` under abuse, as a real process: what slow and numerous clients can hold.

Each test starts `python -m anynet serve` on 127.0.0.1 and a free port, in a child limited to
MEMORY_MB of address space, and reads the child's threads and memory from /proc. Unlike
test_serve.py these tests assert times and sizes, because a bound is the point: a request cut
off at its deadline (not merely some day), threads that stay under --max-connections however many
clients come, memory that a flood of connections does not grow. The bounds carry generous slack
for a busy 2-core machine; what they catch is the unbounded (a thread per connection, a request
held for ever), which misses them by orders of magnitude.

Linux only (/proc); the model is test_serve.py's hand-made bars model.
"""

from __future__ import annotations

import http.client
import io
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from anynet.modelio import save_model
from anynet.network import TwoLayerNet

pytest.importorskip("PIL")
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="reads a process's threads and memory from /proc")

from test_serve import bar, bars_params, png  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MEMORY_MB = 1536  # the server's address space (numpy and Pillow map ~500 MB of it)
HANG = 60  # seconds: a hang guard only

# The child limits its own address space, restores Ctrl-C's default handler (a shell's
# background job inherits SIGINT ignored), then runs `python -m anynet ARGS`.
PROGRAM = """
import resource, runpy, signal, sys
limit = int(sys.argv.pop(1)) << 20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.argv[0] = "anynet"
runpy.run_module("anynet", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("limits") / "bars.npz"
    params = {k: v.astype(np.float32) for k, v in bars_params().items()}
    save_model(path, TwoLayerNet.from_params(params))
    return path


@dataclass
class Served:
    process: subprocess.Popen
    address: tuple[str, int]

    def status(self, field: str) -> int:
        """A number of /proc/PID/status: Threads, VmRSS (kB), VmHWM (kB)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)


@contextmanager
def serving(model: Path, *options: str):
    """A real `anynet serve MODEL --port 0 OPTIONS` process; stopped with Ctrl-C after, and
    then its stderr must hold no traceback."""
    process = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, str(MEMORY_MB), "serve", str(model), "--port", "0",
         "--threads", "1", *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT, stdin=subprocess.DEVNULL)
    try:
        first = process.stdout.readline()  # blocks until the server is listening
        assert first.startswith("anynet serve: http://127.0.0.1:"), \
            first + process.communicate(timeout=HANG)[1]
        port = int(first.split("http://127.0.0.1:")[1].split("/")[0])
        served = Served(process, ("127.0.0.1", port))
        assert predict(served.address)[0] == 200  # warm: the first request imports Pillow
        yield served
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=HANG)
        assert process.returncode == 130, err
        assert "Traceback" not in err, err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def predict(address, timeout: float = HANG) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        conn.request("POST", "/api/predict", png(bar(True)), {"Content-Type": "image/png"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def until_closed(s: socket.socket) -> bytes:
    """Everything the server sends on `s` until it closes it (a reset counts as closed)."""
    chunks = []
    try:
        while chunk := s.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return b"".join(chunks)


def waiting(s: socket.socket) -> bytes | None:
    """What the server has sent on `s` and closed, b"" if it reset it; None if it is still
    open with nothing sent (a connection being served). Never waits."""
    s.setblocking(False)
    chunks = []
    try:
        while chunk := s.recv(65536):
            chunks.append(chunk)
    except BlockingIOError:
        return None if not chunks else b"".join(chunks)
    except ConnectionResetError:
        return b""
    return b"".join(chunks)


def trickle(address, head: bytes, data: bytes, every: float, out: dict, key: str) -> None:
    """Send `head` at once, then `data` a byte every `every` seconds until the server answers;
    record (seconds from the first byte to the answer, to the server's close, the answer)."""
    import select

    s = socket.create_connection(address, timeout=HANG)
    start = time.monotonic()
    answered = None
    try:
        s.sendall(head)
        for byte in data:
            if select.select([s], [], [], every)[0]:  # the server spoke (or closed)
                break
            s.send(bytes([byte]))
    except (BrokenPipeError, ConnectionResetError):
        pass  # cut off mid-request: as it should be
    finally:
        answered = time.monotonic() - start
        answer = until_closed(s)
        out[key] = (answered, time.monotonic() - start, answer)
        s.close()


def test_slow_senders_are_cut_off_at_the_deadline(model):
    """A byte every quarter second, in the request line, the headers or the body: each is
    answered 408 at the request's deadline (2 s here), where the 10 s silence timeout alone
    never fires, and closed LINGER (1 s) later at most; meanwhile everyone else is answered."""
    from anynet.serve.server import LINGER

    deadline, slack = 2.0, 1.0
    line = b"POST /api/predict HTTP/1.1\r\n"
    head = line + b"Host: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
    slow = {  # what is sent at once, what trickles
        "request line": (b"", line * 100),
        "headers": (line, b"Host: 127.0.0.1\r\nX-Pad: " + b"a" * 1000),
        "body": (head, b"\x89PNG" + b"\0" * 4996),
    }
    with serving(model, "--request-deadline", str(deadline)) as served:
        results: dict = {}
        threads = [threading.Thread(target=trickle, daemon=True,
                                    args=(served.address, *parts, 0.25, results, key))
                   for key, parts in slow.items()]
        for t in threads:
            t.start()
        time.sleep(0.5)
        start = time.monotonic()
        assert predict(served.address)[0] == 200  # others are served meanwhile
        assert time.monotonic() - start < 2.5
        for t in threads:
            t.join(HANG)
        for key, (answered, closed, answer) in results.items():
            assert deadline - 0.1 <= answered <= deadline + slack, (key, answered)
            assert closed <= deadline + LINGER + slack, (key, closed)
            assert answer.startswith(b"HTTP/1.1 408 "), (key, answer[:200])
            assert b"did not arrive within 2 s" in answer, (key, answer[-200:])
        print("\n408 after " + ", ".join(f"{key} {answered:.2f} s (closed {closed:.2f} s)"
                                          for key, (answered, closed, _) in results.items()))


def test_a_flood_of_connections_holds_bounded_threads_and_memory(model):
    """300 connections, each sending 30 KiB of headers that never end: the server runs at most
    --max-connections handler threads, refuses the rest with 503 at once, grows by megabytes,
    not hundreds, and serves again once the held ones pass their deadline."""
    limit, deadline, flood = 8, 3.0, 300
    with serving(model, "--max-connections", str(limit), "--request-deadline",
                 str(deadline)) as served:
        threads0, rss0 = served.status("Threads"), served.status("VmRSS")
        head = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(30)))
        sockets = []
        start = time.monotonic()
        try:
            for _ in range(flood):
                s = socket.create_connection(served.address, timeout=HANG)
                try:
                    s.sendall(head)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # refused and closed before the head was in
                sockets.append(s)
            opened = time.monotonic() - start
            held_threads = served.status("Threads")
            held_rss = served.status("VmRSS")
            # half a second on, every connection over the limit has been answered 503 and
            # closed (or reset): none waits for its turn
            time.sleep(0.5)
            answers = [waiting(s) for s in sockets]
            refused = sum(a.startswith(b"HTTP/1.1 503 ") for a in answers if a)
            held = answers.count(None)
            assert all(b"Retry-After: 1" in a for a in answers if a)
            # while `limit` are held, a newcomer is refused, not queued for ever
            with socket.create_connection(served.address, timeout=5) as s:
                s.sendall(b"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert until_closed(s).startswith(b"HTTP/1.1 503 ")
        finally:
            for s in sockets:
                s.close()
        assert held <= limit and held_threads <= threads0 + limit, (held, threads0, held_threads)
        assert held_rss - rss0 < 64 * 1024, (rss0, held_rss)  # kB: under 64 MB
        assert refused >= (flood - limit) // 2  # most read their 503 (the rest a reset)
        # the held ones are cut at their deadline: threads go back, the server serves again
        time.sleep(deadline + 0.5)
        assert predict(served.address, timeout=5)[0] == 200
        after = time.monotonic()
        while served.status("Threads") > threads0 + 1 and time.monotonic() - after < 10:
            time.sleep(0.1)
        assert served.status("Threads") <= threads0 + 1
        print(f"\n{flood} connections opened in {opened:.2f} s; threads {threads0} -> "
              f"{held_threads}; RSS {rss0 / 1024:.0f} -> {held_rss / 1024:.0f} MB; {held} held, "
              f"{refused} answered 503")


HOSTILE = [  # what a client sends -> the status it gets
    (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: \xb2\r\n\r\n", 400),
    (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " + b"9" * 5000
     + b"\r\n\r\n", 413),
    (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n"
     b"Content-Length: 400\r\n\r\nabcd", 400),
    (b"GET /api/model HTTP/1.1\r\nHost: attacker.example:8000\r\n\r\n", 421),
    (b"GET /api/model HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n", 400),
    (b"GET /api/model HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431),
    (b"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"y" * 40_000 + b"\r\n\r\n", 431),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100), 400),  # TLS to plain HTTP
]


def test_hostile_requests_get_4xx_and_no_traceback(model):
    """In a real process, whose stderr `serving` checks for tracebacks at the end: the lengths
    that were a 500 with a traceback, the Hosts and heads that must be refused."""
    with serving(model) as served:
        for request_bytes, status in HOSTILE:
            with socket.create_connection(served.address, timeout=HANG) as s:
                try:
                    s.sendall(request_bytes)
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # answered and closed before it was all sent
                answer = until_closed(s)
            assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:300]
        assert predict(served.address)[0] == 200


def scan_heavy_jpeg(side: int, scans: int) -> bytes:
    """A side x side progressive JPEG of a bar whose last scan is repeated `scans` times: each
    repeat is a few hundred bytes but costs the decoder a pass over every block."""
    from PIL import Image

    image = np.full((side, side), 255, np.uint8)
    image[side // 4: 3 * side // 4, side // 2 - side // 20: side // 2 + side // 20] = 0
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    i, last_scan = 2, None
    while data[i + 1] != 0xD9:  # segment by segment to the end of the image
        j = i + 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
        if data[i + 1] == 0xDA:  # a scan: its entropy-coded data runs to the next marker
            while not (data[j] == 0xFF and data[j + 1] not in (0x00, *range(0xD0, 0xD8))):
                j += 1
            last_scan = data[i:j]
        i = j
    return data[:i] + last_scan * scans + data[i:]


def test_pictures_that_decode_slowly_hold_others_at_most_decode_wait(model):
    """Two progressive JPEGs of 4,000 repeated scans (1 MB each, about half a minute of
    decoding here) take both decode slots; a normal picture sent meanwhile is answered 503
    after DECODE_WAIT (10 s), not after they finish (they held a normal request 62 s before).
    If the reader refuses such pictures outright (a bound on scans), all the better: then the
    normal picture is answered at once."""
    from anynet.serve.predictor import DECODE_WAIT

    heavy = scan_heavy_jpeg(2800, 4000)
    assert len(heavy) < 2 * 2**20
    with serving(model) as served:
        senders = []
        for _ in range(2):
            s = socket.create_connection(served.address, timeout=HANG)
            s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                      b"image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(heavy) + heavy)
            senders.append(s)
        time.sleep(1.0)  # both are decoding
        start = time.monotonic()
        status, answer = predict(served.address)
        waited = time.monotonic() - start
        for s in senders:
            s.close()
        assert status in (200, 503), answer
        assert waited <= DECODE_WAIT + 3, waited
        if status == 503:
            assert "busy" in answer["error"] and waited >= DECODE_WAIT - 0.5
        print(f"\na normal picture behind two scan-heavy ones: {status} after {waited:.1f} s")


def test_thin_pictures_cost_megabytes_not_gigabytes(model):
    """Two 1 x 8,000,000 PNGs (8 KB each, inked across their width; within the 8 MP limit) at
    once: answered in seconds, the server's peak memory under 1 GB (it was 2.8 GB for one: the
    resampling built dense (20, W) matrices)."""
    from PIL import Image

    thin = np.full((1, 8_000_000), 255, np.uint8)
    thin[0, ::2] = 0
    buffer = io.BytesIO()
    Image.fromarray(thin).save(buffer, "PNG")
    body = buffer.getvalue()
    with serving(model) as served:
        results: list = []

        def send():
            conn = http.client.HTTPConnection(*served.address, timeout=HANG)
            conn.request("POST", "/api/predict", body, {"Content-Type": "image/png"})
            response = conn.getresponse()
            results.append((response.status, response.read()))
            conn.close()

        start = time.monotonic()
        senders = [threading.Thread(target=send) for _ in range(2)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(HANG)
        seconds, peak = time.monotonic() - start, served.status("VmHWM") / 1024
        assert len(results) == 2 and all(200 <= status < 500 for status, _ in results), results
        assert seconds < 20 and peak < 1024, (seconds, peak)
        print(f"\ntwo thin pictures: {seconds:.1f} s, peak {peak:.0f} MB")
