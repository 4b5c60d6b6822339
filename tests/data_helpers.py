"""Small synthetic MNIST-format datasets for tests: valid, learnable, and quick to make.

`make_mnist_dir(folder)` writes the four IDX files under their standard names. Each class is a
blurred 5 x 7 bitmap glyph of its digit, scaled to 15 x 21 pixels, and every example is that glyph
shifted by up to 2 pixels, dimmed at random and covered in noise: a 784-H-10 network learns it
to well over 90% test accuracy within a few epochs, so training tests can assert real learning in
seconds. These are NOT genuine MNIST: load them with `verify=False` / `--no-verify`.

`pins_for(folder)` computes the catalog entries (`anynet.data.MnistFile`) that describe such a
folder, so download tests can treat synthetic files as "genuine" by swapping the pins;
`Mirror` is a scriptable HTTP server on 127.0.0.1 that plays a web mirror (good, cut-off, wrong,
404, stalled files), and `catalog_override_code` carries pins and mirrors into a child process.
"""

from __future__ import annotations

import gzip as _gzip
import hashlib
import http.server
import json
import threading
import time
from pathlib import Path

import numpy as np

from anynet.data.catalog import MNIST_FILES, MnistFile
from anynet.data.idx import write_idx

_GLYPHS = {
    0: [".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."],
    1: ["..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."],
    2: [".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"],
    3: ["#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."],
    4: ["...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."],
    5: ["#####", "#....", "####.", "....#", "....#", "#...#", ".###."],
    6: ["..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."],
    7: ["#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."],
    8: [".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."],
    9: [".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."],
}
_SHIFT = 2  # examples move by up to this many pixels each way


def digit_templates() -> np.ndarray:
    """The ten class templates, float64 (10, 28, 28) in 0..255: blurred glyphs, centred."""
    templates = np.zeros((10, 28, 28))
    for digit, rows in _GLYPHS.items():
        glyph = np.array([[c == "#" for c in row] for row in rows], dtype=float)  # (7, 5)
        big = np.kron(glyph, np.ones((3, 3)))  # (21, 15)
        templates[digit, 3:24, 6:21] = big
    # A 3 x 3 box blur, twice: soft strokes like pen on paper, no SciPy needed.
    for _ in range(2):
        padded = np.pad(templates, ((0, 0), (1, 1), (1, 1)))
        templates = sum(
            padded[:, 1 + dy : 29 + dy, 1 + dx : 29 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
        ) / 9.0
    return templates * (255.0 / templates.max())


def synthetic_mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` synthetic examples: images uint8 (n, 28, 28), labels uint8 (n,), balanced classes."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    padded = np.pad(digit_templates(), ((0, 0), (_SHIFT, _SHIFT), (_SHIFT, _SHIFT)))
    dy = rng.integers(0, 2 * _SHIFT + 1, size=n)
    dx = rng.integers(0, 2 * _SHIFT + 1, size=n)
    rows = dy[:, None] + np.arange(28)  # (n, 28)
    cols = dx[:, None] + np.arange(28)
    images = padded[labels[:, None, None], rows[:, :, None], cols[:, None, :]]  # (n, 28, 28)
    images = images * rng.uniform(0.6, 1.0, size=(n, 1, 1)) + rng.normal(0, 25, size=images.shape)
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels


def make_mnist_dir(
    folder: str | Path,
    n_train: int = 600,
    n_test: int = 100,
    seed: int = 0,
    gzip: bool = False,
) -> Path:
    """Write a small, valid, learnable MNIST-format dataset (four IDX files) into `folder`.

    Train and test share the class templates and differ in their random draws (`seed` for the
    training set, `seed + 1` for the test set). `gzip=True` writes NAME.gz files. Returns `folder`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gzip else ""
    for split, n, split_seed in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = synthetic_mnist(n, split_seed)
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images, gzip=gzip)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, gzip=gzip)
    return folder


def pins_for(folder: str | Path) -> tuple[MnistFile, ...]:
    """Catalog entries that make the four files in `folder` count as "genuine".

    Raw size and SHA-256 come from the raw IDX bytes (decompressed if the folder holds .gz
    files); the .gz size and MD5 from `NAME.gz` if present, else from a reproducible gzip of
    the raw bytes (what `gzip_bytes` makes, so a test server can serve it).
    """
    folder = Path(folder)
    pins = []
    for spec in MNIST_FILES:
        raw_path, gz_path = folder / spec.stem, folder / f"{spec.stem}.gz"
        if raw_path.exists():
            raw = raw_path.read_bytes()
            gz = gz_path.read_bytes() if gz_path.exists() else gzip_bytes(raw)
        else:
            gz = gz_path.read_bytes()
            raw = _gzip.decompress(gz)
        pins.append(
            MnistFile(
                spec.stem, spec.split, spec.kind,
                len(raw), hashlib.sha256(raw).hexdigest(),
                len(gz), hashlib.md5(gz).hexdigest(),
            )
        )
    return tuple(pins)


def gzip_bytes(raw: bytes) -> bytes:
    """`raw` gzip'd reproducibly (no timestamp), as `pins_for` assumes."""
    return _gzip.compress(raw, compresslevel=6, mtime=0)


def catalog_override_code(pins, mirrors, npm_package=None) -> str:
    """Python source that, run first in a child process, gives anynet these pins and sources."""
    rows = json.dumps([spec.__dict__ for spec in pins])
    return (
        "import json\n"
        "from anynet.data import catalog\n"
        "from anynet.data.catalog import MnistFile\n"
        f"catalog.MNIST_FILES = tuple(MnistFile(**d) for d in json.loads({rows!r}))\n"
        f"catalog.MIRRORS = {list(mirrors)!r}\n"
        f"catalog.NPM_PACKAGE = {npm_package!r}\n"
    )


class Mirror:
    """An HTTP server on 127.0.0.1. `routes[path]` is a list of behaviours, one per request (the
    last one repeats): ("ok", body), ("404",), ("cut", body, n) sends the full Content-Length
    but closes after n bytes, ("stall", body, n, seconds) sends n bytes then waits,
    ("no-length", body) sends without Content-Length, ("trickle", body, seconds) sends one byte
    every `seconds`, ("redirect", location) answers 302 to `location` (itself: a loop)."""

    def __init__(self):
        self.routes: dict[str, list[tuple]] = {}
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                mirror.requests.append(self.path)
                plan = mirror.routes.get(self.path, [("404",)])
                action = plan.pop(0) if len(plan) > 1 else plan[0]
                kind = action[0]
                if kind == "404":
                    self.send_error(404, "Not Found")
                    return
                if kind == "redirect":
                    self.send_response(302)
                    self.send_header("Location", action[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = action[1]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if kind != "no-length":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if kind in ("ok", "no-length"):
                    self.wfile.write(body)
                elif kind == "cut":
                    self.wfile.write(body[: action[2]])
                    self.wfile.flush()
                    self.close_connection = True
                elif kind == "trickle":
                    try:
                        for i in range(len(body)):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(action[2])
                    except OSError:  # the client gave up
                        pass
                elif kind == "stall":
                    self.wfile.write(body[: action[2]])
                    self.wfile.flush()
                    time.sleep(action[3])

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def serve(self, prefix: str, folder: Path, overrides: dict[str, list[tuple]] | None = None):
        """Serve the four files of `folder` (gzip'd reproducibly) under `prefix`, with some
        stems given other behaviours. Returns the base URL."""
        for stem in (spec.stem for spec in MNIST_FILES):
            body = gzip_bytes((folder / stem).read_bytes())
            self.routes[f"/{prefix}/{stem}.gz"] = [("ok", body)]
        for stem, plan in (overrides or {}).items():
            self.routes[f"/{prefix}/{stem}.gz"] = plan
        return f"{self.url}/{prefix}/"

    def count(self, fragment: str) -> int:
        return sum(fragment in path for path in self.requests)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def isolate_cache(tmp_path: Path, monkeypatch) -> Path:
    """Point the cache at an empty folder under `tmp_path`, unset ANYNET_DATA_DIR, and switch off
    every download source (tests that download put their own back). Returns the cache folder."""
    from anynet.data import catalog

    cache_home = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    monkeypatch.delenv("ANYNET_DATA_DIR", raising=False)
    monkeypatch.setattr(catalog, "MIRRORS", [])
    monkeypatch.setattr(catalog, "NPM_PACKAGE", None)
    return cache_home / "anynet" / "mnist"
