"""The IDX reader and writer: round trips; every kind of damage rejected with its own message."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import signal
import struct
import tracemalloc
import zlib
from contextlib import contextmanager

import numpy as np
import pytest

from anynet.data import idx
from anynet.data.idx import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    describe_magic,
    encode_idx,
    idx_header,
    read_idx,
    read_idx_header,
    read_idx_with_sha256,
    write_idx,
)
from anynet.errors import DataError

MNIST_IMAGES = {"magic": IMAGES_MAGIC, "shape": (None, 28, 28)}


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)


# --- valid files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True])
def test_images_round_trip(tmp_path, images, compressed):
    path = write_idx(tmp_path / "x", images, gzip=compressed)
    back = read_idx(path, **MNIST_IMAGES)
    assert back.dtype == np.uint8
    assert back.shape == (5, 28, 28)
    np.testing.assert_array_equal(back, images)
    assert back.flags.writeable  # backends (torch) warn on read-only arrays


def test_header_bytes_are_the_mnist_ones(images):
    data = encode_idx(images)
    assert data[:4] == b"\x00\x00\x08\x03"  # 2051
    assert struct.unpack(">4I", data[:16]) == (2051, 5, 28, 28)
    assert len(data) == 16 + 5 * 784
    labels = encode_idx(np.arange(7, dtype=np.uint8))
    assert struct.unpack(">2I", labels[:8]) == (2049, 7)
    assert labels[8:] == bytes(range(7))


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
)
def test_every_idx_type_round_trips_in_native_byte_order(tmp_path, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    back = read_idx(write_idx(tmp_path / "t.idx", array))
    assert back.dtype == np.dtype(dtype)
    assert back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_gzip_is_detected_by_content_not_suffix(tmp_path, images):
    # A gzip'd file without .gz, and a raw file named .gz: both read.
    disguised = tmp_path / "plain-name"
    disguised.write_bytes(gzip.compress(encode_idx(images)))
    raw_named_gz = tmp_path / "raw.gz"
    raw_named_gz.write_bytes(encode_idx(images))
    np.testing.assert_array_equal(read_idx(disguised), images)
    np.testing.assert_array_equal(read_idx(raw_named_gz), images)


def test_sha256_is_of_the_raw_bytes_whether_gzipped_or_not(tmp_path, images):
    expected = hashlib.sha256(encode_idx(images)).hexdigest()
    raw = read_idx_with_sha256(write_idx(tmp_path / "a", images))
    packed = read_idx_with_sha256(write_idx(tmp_path / "b.gz", images, gzip=True))
    assert raw.sha256 == packed.sha256 == expected
    assert raw.magic == packed.magic == 2051


def test_gzip_writer_is_reproducible(tmp_path, images):
    a = write_idx(tmp_path / "a.gz", images, gzip=True).read_bytes()
    b = write_idx(tmp_path / "b.gz", images, gzip=True).read_bytes()
    assert a == b


def test_writer_rejects_types_idx_cannot_hold():
    with pytest.raises(ValueError, match="no type for dtype"):
        idx_header(np.zeros(3, dtype=np.uint16), (3,))


def test_describe_magic():
    assert describe_magic(2051) == "MNIST images"
    assert describe_magic(2049) == "MNIST labels"
    assert describe_magic(0x0D02) == "IDX float32 with 2 dimensions"
    assert describe_magic(0x12345678) == "not an IDX magic number"


# --- damage: each kind its own clear message, naming the file ----------------------------------


def _damaged(images, kind: str) -> bytes:
    good = encode_idx(images)
    if kind == "labels-as-images":
        return encode_idx(np.zeros(5, dtype=np.uint8))
    if kind == "garbage-magic":
        return b"PK\x03\x04" + good[4:]
    if kind == "wrong-dims":
        return encode_idx(np.zeros((5, 32, 32), dtype=np.uint8))
    if kind == "truncated":
        return good[:-100]
    if kind == "header-cut":
        return good[:10]
    if kind == "empty":
        return b""
    if kind == "extra-bytes":
        return good + b"\x00" * 7
    if kind == "header-lies-big":
        return encode_idx(images, dims=(50_000_000, 28, 28))
    raise AssertionError(kind)


DAMAGE = {
    "labels-as-images": r"wrong magic number 2049 \(MNIST labels\), expected 2051 \(MNIST images\)",
    "garbage-magic": r"not an IDX file: wrong magic number \d+ = 0x504b0304",
    "wrong-dims": r"wrong dimensions 5 x 32 x 32, expected N x 28 x 28",
    "truncated": r"truncated: the header promises 5 x 28 x 28 = 3,920 bytes of data but the file "
    r"holds 3,820",
    "header-cut": r"truncated: the file ends inside its header",
    "empty": r"only 0 bytes, too short to be an IDX file",
    "extra-bytes": r"7 extra bytes after the 3,920 bytes of data",
    "header-lies-big": r"more than any MNIST-style file holds|truncated",
}


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damage_is_rejected_with_its_own_message(tmp_path, images, kind, compressed):
    data = _damaged(images, kind)
    path = tmp_path / ("bad.gz" if compressed else "bad")
    path.write_bytes(gzip.compress(data) if compressed else data)
    pattern = DAMAGE[kind]
    if compressed and kind == "empty":
        pattern = "only 0 bytes, too short to be a gzip'd IDX file"
    if compressed and kind == "extra-bytes":  # refused after one more read, not counted
        pattern = r"has trailing data after the 3,920 bytes of data its header promises"
    with pytest.raises(DataError, match=pattern) as info:
        read_idx(path, **MNIST_IMAGES)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message


def test_header_promising_gigabytes_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.gz"
    path.write_bytes(gzip.compress(idx_header(np.uint8, (1 << 20, 1 << 12))))  # 4 GiB promised
    with pytest.raises(DataError, match=r"more than any MNIST-style file holds \(at most "):
        read_idx(path)


def test_corrupt_gzip_is_rejected(tmp_path, images):
    data = bytearray(gzip.compress(encode_idx(images), mtime=0))
    data[len(data) // 2] ^= 0xFF  # flip a byte in the deflate stream
    path = tmp_path / "corrupt.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"corrupt gzip data") as info:
        read_idx(path)
    assert str(info.value).startswith(f"{path}: ")


def test_bad_gzip_crc_is_rejected(tmp_path, images):
    data = bytearray(gzip.compress(encode_idx(images), mtime=0))
    data[-8] ^= 0xFF  # the CRC32 in the trailer: only the end-of-stream check can catch this
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"corrupt gzip data \(CRC check failed"):
        read_idx(path)


def test_cut_off_gzip_is_rejected(tmp_path, images):
    data = gzip.compress(encode_idx(images), mtime=0)
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) - 30])
    with pytest.raises(DataError, match=r"the gzip stream is cut off; the file is damaged"):
        read_idx(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match=r"no such file"):
        read_idx(tmp_path / "absent")
    with pytest.raises(DataError, match=r"is a folder, not an IDX file"):
        read_idx(tmp_path)


def test_shape_check_allows_any_count_but_not_another_rank(tmp_path):
    labels = write_idx(tmp_path / "l", np.arange(10, dtype=np.uint8))
    assert read_idx(labels, magic=LABELS_MAGIC, shape=(None,)).shape == (10,)
    with pytest.raises(DataError, match=r"wrong magic number 2049 .* expected 2051"):
        read_idx(labels, **MNIST_IMAGES)
    # A 2-D file with the labels' magic type but not its rank
    flat = write_idx(tmp_path / "f", np.zeros((2, 784), np.uint8))
    with pytest.raises(DataError, match=r"wrong dimensions 2 x 784, expected N x 28 x 28"):
        read_idx(flat, shape=(None, 28, 28))


def test_header_overrides_make_lying_files(tmp_path, images):
    lying = write_idx(tmp_path / "lie", images, dims=(6, 28, 28))
    with pytest.raises(DataError, match="truncated"):
        read_idx(lying)
    relabelled = encode_idx(images, magic=LABELS_MAGIC)
    assert struct.unpack(">I", relabelled[:4]) == (2049,)


# --- headers are promises, not trusted: memory, time, the system's errors ----------------------


def gzip_of_zeros(path, header: bytes, n_zeros: int, tail: bytes = b"") -> None:
    """A gzip file of `header`, `n_zeros` zero bytes and `tail`, written in pieces (small on
    disk: deflate shrinks zeros about 1000:1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as f:
        f.write(compressor.compress(header))
        block = bytes(1 << 20)
        for start in range(0, n_zeros, len(block)):
            f.write(compressor.compress(block[: min(len(block), n_zeros - start)]))
        f.write(compressor.compress(tail))
        f.write(compressor.flush())


def test_gzip_data_is_read_in_chunks_without_a_temporary_as_big_as_the_file(tmp_path):
    """gzip's readinto of the whole data would inflate into a temporary of the data's size first:
    the peak was twice the array. Now it is the array and a chunk."""
    n = 40_000  # 31 MB of pixels
    path = tmp_path / "zeros.gz"
    gzip_of_zeros(path, idx_header(np.uint8, (n, 28, 28)), n * 784)
    tracemalloc.start()
    try:
        array = read_idx(path, **MNIST_IMAGES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert array.shape == (n, 28, 28)
    assert peak < n * 784 + 4 * idx._CHUNK, f"peak {peak:,} bytes"


def test_a_gzip_file_too_small_for_its_header_is_refused_before_allocating(tmp_path):
    path = tmp_path / "small.gz"
    path.write_bytes(gzip.compress(idx_header(np.uint8, (100_000, 28, 28))))  # 78 MB promised
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"truncated: .* a gzip file of \d+ bytes cannot hold"):
            read_idx(path, **MNIST_IMAGES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"peak {peak:,} bytes"


def test_trailing_data_is_refused_without_being_inflated(tmp_path, images, monkeypatch):
    """100 MB of zeros after the promised bytes (100 kB on disk) used to be inflated in full,
    just to be counted."""
    path = tmp_path / "trailing.gz"
    gzip_of_zeros(path, encode_idx(images), 0, tail=bytes(100 << 20))
    inflated = []
    real_read = gzip.GzipFile.read

    def counting_read(self, size=-1):
        data = real_read(self, size)
        inflated.append(len(data))
        return data

    monkeypatch.setattr(gzip.GzipFile, "read", counting_read)
    with pytest.raises(DataError, match=r"has trailing data after the 3,920 bytes") as info:
        read_idx(path, **MNIST_IMAGES)
    assert "\n" not in str(info.value)
    assert sum(inflated) < 2 * idx._CHUNK


class _FailingFile(io.FileIO):
    """A file whose reads fail with EIO (a failing disk) once `fail_after` bytes are read."""

    fail_after = 0

    def _check(self, size):
        if self.tell() + max(size, 1) > self.fail_after:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def read(self, size=-1):
        self._check(size)
        return super().read(size)

    def readinto(self, buffer):
        self._check(len(buffer))
        return super().readinto(buffer)


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("fail_after", [0, 20], ids=["at-once", "in-the-data"])
def test_an_io_error_is_one_line_naming_the_file(tmp_path, images, monkeypatch, compressed,
                                                 fail_after):
    path = write_idx(tmp_path / ("f.gz" if compressed else "f"), images, gzip=compressed)
    failing = type("Failing", (_FailingFile,), {"fail_after": fail_after})
    monkeypatch.setattr(idx, "open_regular", lambda p, what, kind: failing(p, "r"))
    with pytest.raises(DataError) as info:
        read_idx(path, **MNIST_IMAGES)
    assert str(info.value) == f"{path}: cannot read (Input/output error)"


@contextmanager
def alarm(seconds: float):
    """Interrupt a blocking call (open() of a FIFO) after `seconds`, failing instead of hanging."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_named_pipe_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "train-images-idx3-ubyte"
    os.mkfifo(fifo)
    with alarm(5), pytest.raises(DataError, match=r"not a regular file \(a named pipe\)"):
        read_idx(fifo, **MNIST_IMAGES)


def test_header_alone(tmp_path, images):
    path = write_idx(tmp_path / "i.gz", images, gzip=True)
    header = read_idx_header(path, **MNIST_IMAGES)
    assert (header.magic, header.dims, header.dtype, header.n_bytes) == (
        IMAGES_MAGIC, (5, 28, 28), np.dtype(np.uint8), 3920,
    )
    with pytest.raises(DataError, match="truncated"):
        read_idx_header(write_idx(tmp_path / "lie", images, dims=(6, 28, 28)))
