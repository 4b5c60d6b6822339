"""How many predictions a second does `anynet serve` answer, and how long does one take?

    python bench/serve.py MODEL                      # 20 clients, 500 predictions, 320x320 PNGs
    python bench/serve.py MODEL --clients 1 4 20     # one row per client count
    python bench/serve.py MODEL --picture docs/digits/seven.png

Starts `anynet serve MODEL --port 0` as its own process (on 127.0.0.1, as a user would), then
C client threads, each on one keep-alive connection like a drawing page, send R predictions in
all; every answer must be 200 and name the expected class, or the run fails. Prints requests per
second and the median and 99th-percentile latency (from sending a request to reading the whole
answer). The default picture is what the page sends while drawing: a 320x320 PNG of a black pen
stroke on white (a "1"); with --picture, that file (its class from --expect, default: whatever
the first answer says).

On a shared machine the numbers move with the load of others; the clients share the machine
with the server, so they are a floor for what the server alone could do.

Not for: correctness (tests/test_serve.py checks every answer, under load too).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def canvas_png(size: int = 320) -> bytes:
    """A vertical pen stroke on a white size x size canvas, as the page's canvas.toBlob gives."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    width = round(0.065 * size)
    draw.line([(size * 0.52, size * 0.15), (size * 0.48, size * 0.85)], fill=0, width=width)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def start_server(model: str, backend: str, threads: int | None) -> tuple[subprocess.Popen, int]:
    argv = [sys.executable, "-m", "anynet", "serve", model, "--port", "0", "--backend", backend]
    if threads:
        argv += ["--threads", str(threads)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    first = process.stdout.readline()
    if not first.startswith("anynet serve: http://127.0.0.1:"):
        process.kill()
        raise SystemExit(f"anynet serve did not start: {first!r}")
    return process, int(first.split("http://127.0.0.1:")[1].split("/")[0])


def run(port: int, body: bytes, expected: int, clients: int, requests: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(clients)

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        go.wait()
        try:
            for _ in range(i, requests, clients):
                t0 = time.perf_counter()
                conn.request("POST", "/api/predict", body, {"Content-Type": "image/png"})
                response = conn.getresponse()
                answer = json.loads(response.read())
                mine.append(time.perf_counter() - t0)
                if response.status != 200 or answer.get("prediction") != expected:
                    errors.append(f"{response.status} {str(answer)[:120]}")
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)

    workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    if errors or len(latencies) != requests:
        raise SystemExit(f"{len(errors)} wrong answers, e.g. {errors[:3]}")
    latencies.sort()
    return {"clients": clients, "requests": requests, "seconds": elapsed,
            "per_second": requests / elapsed, "median_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model file written by anynet train")
    parser.add_argument("--clients", type=int, nargs="+", default=[20])
    parser.add_argument("--requests", type=int, default=500, help="predictions per row")
    parser.add_argument("--picture", help="a PNG to send (default: a drawn 320x320 '1')")
    parser.add_argument("--expect", type=int, default=None,
                        help="its class (default: 1 for the drawn picture, else the first answer)")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--threads", type=int, default=None, help="the server's --threads")
    args = parser.parse_args()

    body = Path(args.picture).read_bytes() if args.picture else canvas_png()
    process, port = start_server(args.model, args.backend, args.threads)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(20):  # warm up: imports, Pillow's plugins, BLAS
            conn.request("POST", "/api/predict", body, {"Content-Type": "image/png"})
            first = json.loads(conn.getresponse().read())
        conn.close()
        expected = args.expect if args.expect is not None else (
            1 if not args.picture else first["prediction"])
        picture = args.picture or "a drawn 320x320 PNG"
        print(f"anynet serve {args.model} on {args.backend}; picture {picture} "
              f"({len(body):,} bytes), class {expected}")
        print(f"{'clients':>8} {'requests':>9} {'req/s':>8} {'median ms':>10} {'p99 ms':>8}")
        for clients in args.clients:
            row = run(port, body, expected, clients, args.requests)
            print(f"{row['clients']:>8} {row['requests']:>9} {row['per_second']:>8.0f} "
                  f"{row['median_ms']:>10.1f} {row['p99_ms']:>8.1f}")
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
