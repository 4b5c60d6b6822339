"""The IDX file format of MNIST: read it with every check, write it (for tests and tools).

An IDX file is a 4-byte magic number, one 4-byte big-endian size per dimension, then the data,
row-major and big-endian:

    magic = 00 00 <type> <ndim>     type 0x08 = unsigned byte, 0x09 = signed byte, 0x0B = int16,
                                    0x0C = int32, 0x0D = float32, 0x0E = float64
    dims  = ndim x uint32           MNIST images: (N, 28, 28), magic 2051 = 0x00000803
                                    MNIST labels: (N,),        magic 2049 = 0x00000801

`read_idx` reads a raw or gzip'd file (told apart by the gzip magic bytes, not by the suffix) and
never returns bytes it has not checked: the magic number, the dimensions (when the caller says
what to expect), that the data is exactly as long as the header promises (no fewer bytes, no
extra), and that the gzip stream is intact (its CRC is checked at the end). Every failure is a
`DataError` that names the file, the problem, and what to do.

A header is a promise, not trusted: before anything is allocated, the promised size must stay
under `MAX_DATA_BYTES` and fit the file (a raw file's exact length; at most `MAX_DEFLATE_RATIO`
times a gzip file's size). The data is read in bounded chunks straight into the final array, and
bytes past the promised ones are refused after one more read, never inflated to be counted. Only
regular files are opened (a named pipe would block forever). `read_idx_header` reads just the
header, so a caller can compare files (images against labels) before loading any.

`write_idx` and `encode_idx` exist so tests can make small valid files, and, with `magic=` or
`dims=` overrides, files whose header lies on purpose.

This module knows the format only; what makes a file MNIST (labels 0..9, which split, the pinned
checksums) lives in `anynet.data.mnist`.
"""

from __future__ import annotations

import contextlib
import gzip as _gzip
import hashlib
import io
import math
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from anynet.errors import DataError
from anynet.fileio import atomic_write_bytes, input_error, open_regular
from anynet.npyzip import MAX_DEFLATE_RATIO

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (N, rows, cols)
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (N,)

GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> numpy dtype as stored (big-endian for multi-byte types).
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_TYPE_CODES: dict[np.dtype, int] = {dt.newbyteorder("="): code for code, dt in _DTYPES.items()}

# The largest IDX file `read_idx` will read, whatever its header says. Genuine MNIST's largest
# file holds 47 MB of data, EMNIST's biggest 10-class set (240,000 training digits) 188 MB, and
# `anynet.data.mnist.MAX_EXAMPLES` allows at most 784 MB: 1 GiB is above every real file and
# still well below the memory of any machine that trains on them.
MAX_DATA_BYTES = 1 << 30

# Deflate cannot expand data more than MAX_DEFLATE_RATIO = 1032:1 (a 258-byte match costs at
# least 2 bits; `anynet.npyzip`), so a gzip file of C bytes holds at most 1032 * C: a header
# promising more is refused before allocating.

_CHUNK = 1 << 20  # reads go straight into the final array, this much at a time: no big temporary
_GZIP_ERRORS = (EOFError, zlib.error, _gzip.BadGzipFile)


class IdxHeader(NamedTuple):
    """An IDX file's header, checked: magic number, dimensions, and the dtype as stored."""

    magic: int
    dims: tuple[int, ...]
    dtype: np.dtype

    @property
    def n_bytes(self) -> int:
        """Bytes of data the header promises."""
        return math.prod(self.dims) * self.dtype.itemsize


class IdxData(NamedTuple):
    """What `read_idx_with_sha256` returns: the array, its header's magic number, and the
    SHA-256 (hex) of the raw IDX bytes (decompressed, if the file was gzip'd)."""

    array: np.ndarray
    magic: int
    sha256: str


def read_idx(
    path: str | os.PathLike,
    *,
    magic: int | None = None,
    shape: Sequence[int | None] | None = None,
) -> np.ndarray:
    """Read an IDX file (raw or gzip'd) into a numpy array of the header's shape.

    `magic`: if given, the header's magic number must equal it (2051 for MNIST images, 2049 for
    labels). `shape`: if given, the dimensions must match it, with None for "any size"
    (MNIST images: (None, 28, 28)). Both are checked from the header, before the data is read.
    Multi-byte types come back in native byte order; the array is writable.
    Raises `DataError` naming the file and the problem.
    """
    return read_idx_with_sha256(path, magic=magic, shape=shape).array


def read_idx_header(
    path: str | os.PathLike,
    *,
    magic: int | None = None,
    shape: Sequence[int | None] | None = None,
) -> IdxHeader:
    """Read and check only the header of an IDX file (raw or gzip'd), as `read_idx` would:
    magic number, dimensions, and that the promised data fits the limits and the file's size.
    Cheap (a few bytes are read), so callers can compare files before loading any of them."""
    path = Path(path)
    with _open_idx(path) as (stream, compressed, size):
        return _read_header(stream, path, compressed, size, magic, shape, hashlib.sha256())


def read_idx_with_sha256(
    path: str | os.PathLike,
    *,
    magic: int | None = None,
    shape: Sequence[int | None] | None = None,
) -> IdxData:
    """`read_idx`, also returning the magic number and the SHA-256 of the raw IDX bytes."""
    path = Path(path)
    with _open_idx(path) as (stream, compressed, size):
        sha = hashlib.sha256()
        header = _read_header(stream, path, compressed, size, magic, shape, sha)
        n_bytes = header.n_bytes
        data = np.empty(n_bytes, dtype=np.uint8)
        got = _read_into(stream, path, compressed, data.data)
        if got < n_bytes:
            raise DataError(_length_problem(path, header.dims, n_bytes, got))
        # One more read: for gzip it also checks the CRC and length at the end of the stream.
        # Data past the promised bytes is refused without being inflated to be counted.
        with _reading(path, compressed):
            if stream.read(1):
                raise DataError(
                    f"{path}: has trailing data after the {n_bytes:,} bytes of data its header "
                    f"promises ({_fmt_shape(header.dims)}); the file is damaged or not what its "
                    "header says"
                )
        sha.update(data.data)
    array = data.view(header.dtype).reshape(header.dims)
    if header.dtype.itemsize > 1:
        array = array.astype(header.dtype.newbyteorder("="))
    return IdxData(array, header.magic, sha.hexdigest())


@contextlib.contextmanager
def _open_idx(path: Path) -> Iterator[tuple[io.BufferedIOBase, bool, int]]:
    """Open `path` for reading, through gzip if it starts with the gzip magic bytes; yield
    (stream, compressed, size of the file on disk). Only a regular file is opened: a named pipe
    or a device would block or never end."""
    f = open_regular(path, "an IDX file", DataError)  # closed below, after any gzip wrapper
    size = os.fstat(f.fileno()).st_size
    with f:
        with _reading(path, False):
            compressed = f.read(2) == GZIP_MAGIC
            f.seek(0)
        if compressed:
            with _gzip.GzipFile(fileobj=f, mode="rb") as stream:
                yield stream, True, size
        else:
            yield f, False, size


@contextlib.contextmanager
def _reading(path: Path, compressed: bool) -> Iterator[None]:
    """Turn the errors of reading `path` into one-line DataErrors: damaged gzip data, or the
    system's reason (an I/O error of the disk, say)."""
    try:
        yield
    except _GZIP_ERRORS as e:
        raise DataError(_gzip_problem(path, e)) from None
    except OSError as e:
        what = "a gzip'd IDX file" if compressed else "an IDX file"
        raise input_error(path, e, what, DataError) from None


def _read_into(stream: io.BufferedIOBase, path: Path, compressed: bool, buffer: memoryview) -> int:
    """Fill `buffer` from the stream, at most `_CHUNK` bytes per read (gzip's readinto would
    otherwise inflate into a temporary as big as the request); return how many bytes it got
    (fewer only at the end of the stream)."""
    got = 0
    with _reading(path, compressed):
        while got < len(buffer):
            n = stream.readinto(buffer[got : got + _CHUNK])
            if not n:
                break
            got += n
    return got


def _read_header(
    stream: io.BufferedIOBase,
    path: Path,
    compressed: bool,
    size: int,
    expect_magic: int | None,
    expect_shape: Sequence[int | None] | None,
    sha,
) -> IdxHeader:
    what = "a gzip'd IDX file" if compressed else "an IDX file"
    head = bytearray(4)
    n = _read_into(stream, path, compressed, memoryview(head))
    if n < 4:
        raise DataError(
            f"{path}: only {n} bytes, too short to be {what} (an empty or cut-off file); "
            "replace it with a complete copy"
        )
    magic, type_code, ndim = _check_magic(path, head, expect_magic)
    sha.update(head)

    dims_raw = bytearray(4 * ndim)
    if _read_into(stream, path, compressed, memoryview(dims_raw)) < len(dims_raw):
        raise DataError(
            f"{path}: truncated: the file ends inside its header ({ndim} dimensions promised); "
            "the file is incomplete, replace it with a complete copy"
        )
    sha.update(dims_raw)
    dims = struct.unpack(f">{ndim}I", dims_raw)
    if expect_shape is not None and not _shape_matches(dims, expect_shape):
        raise DataError(
            f"{path}: wrong dimensions {_fmt_shape(dims)}, expected {_fmt_shape(expect_shape)}; "
            "the file does not hold what its name says"
        )

    header = IdxHeader(magic, dims, _DTYPES[type_code])
    n_bytes = header.n_bytes
    if n_bytes > MAX_DATA_BYTES:
        raise DataError(
            f"{path}: the header promises {_fmt_shape(dims)} = {n_bytes:,} bytes of data, more "
            f"than any MNIST-style file holds (at most {MAX_DATA_BYTES:,}); the header is damaged"
        )
    _check_size(path, dims, n_bytes, 4 + 4 * ndim, compressed, size)
    return header


def _check_magic(path: Path, head: bytearray, expect_magic: int | None) -> tuple[int, int, int]:
    """(magic number, type code, number of dimensions) of an IDX file's first 4 bytes, after
    checking them (and that the magic is `expect_magic`, if given)."""
    magic = int.from_bytes(head, "big")
    type_code, ndim = head[2], head[3]
    if head[:2] != b"\0\0" or type_code not in _DTYPES or ndim == 0:
        expected = ""
        if expect_magic is not None:
            expected = f" (expected {expect_magic}, {describe_magic(expect_magic)})"
        raise DataError(
            f"{path}: not an IDX file: wrong magic number {magic} = 0x{magic:08x}{expected}; "
            "an IDX file starts with 00 00 <type> <ndim>"
        )
    if expect_magic is not None and magic != expect_magic:
        raise DataError(
            f"{path}: wrong magic number {magic} ({describe_magic(magic)}), expected "
            f"{expect_magic} ({describe_magic(expect_magic)}); is it the wrong file?"
        )
    return magic, type_code, ndim


def _check_size(path: Path, dims: Sequence[int], n_bytes: int, header_bytes: int,
                compressed: bool, size: int) -> None:
    """Refuse a file whose length cannot hold the `n_bytes` of data its header promises: a raw
    file must be exactly that long; a gzip file of `size` bytes holds at most
    MAX_DEFLATE_RATIO * size."""
    if not compressed and size != header_bytes + n_bytes:
        # A raw file's length is known up front: report the exact difference.
        raise DataError(_length_problem(path, dims, n_bytes, size - header_bytes))
    if compressed and header_bytes + n_bytes > MAX_DEFLATE_RATIO * size:
        raise DataError(
            f"{path}: truncated: the header promises {_fmt_shape(dims)} = {n_bytes:,} bytes of "
            f"data but a gzip file of {size:,} bytes cannot hold more than "
            f"{MAX_DEFLATE_RATIO * size:,}; the file is incomplete or its header is damaged, "
            "replace it with a complete copy"
        )


def _length_problem(path: Path, dims: Sequence[int], promised: int, actual: int) -> str:
    if actual < promised:
        return (
            f"{path}: truncated: the header promises {_fmt_shape(dims)} = {promised:,} bytes of "
            f"data but the file holds {actual:,}; the file is incomplete (an interrupted "
            "download?), replace it with a complete copy"
        )
    return (
        f"{path}: {actual - promised:,} extra bytes after the {promised:,} bytes of data its "
        f"header promises ({_fmt_shape(dims)}); the file is damaged or not what its header says"
    )


def _gzip_problem(path: Path, error: BaseException) -> str:
    if isinstance(error, EOFError):
        why = "the gzip stream is cut off"
    else:
        why = f"corrupt gzip data ({' '.join(str(error).split())})"
    return (
        f"{path}: {why}; the file is damaged (an interrupted download?), replace it with a "
        "complete copy"
    )


def describe_magic(magic: int) -> str:
    """A few words on what an IDX magic number means, e.g. 2051 -> 'MNIST images'."""
    if magic == IMAGES_MAGIC:
        return "MNIST images"
    if magic == LABELS_MAGIC:
        return "MNIST labels"
    type_code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if magic >> 16 == 0 and type_code in _DTYPES:
        return f"IDX {_DTYPES[type_code].name} with {ndim} dimensions"
    return "not an IDX magic number"


def _shape_matches(dims: Sequence[int], expected: Sequence[int | None]) -> bool:
    if len(dims) != len(expected):
        return False
    return all(e is None or d == e for d, e in zip(dims, expected, strict=True))


def _fmt_shape(dims: Sequence[int | None]) -> str:
    return " x ".join("N" if d is None else str(d) for d in dims)


def idx_header(array_or_dtype: np.ndarray | np.dtype, dims: Sequence[int]) -> bytes:
    """The IDX header (magic + dimensions) for data of this dtype and these dimensions."""
    dtype = array_or_dtype.dtype if isinstance(array_or_dtype, np.ndarray) else array_or_dtype
    code = _TYPE_CODES.get(np.dtype(dtype).newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX has no type for dtype {np.dtype(dtype)}")
    magic = (code << 8) | len(dims)
    return struct.pack(f">I{len(dims)}I", magic, *dims)


def encode_idx(
    array: np.ndarray,
    *,
    magic: int | None = None,
    dims: Sequence[int] | None = None,
) -> bytes:
    """The IDX bytes of `array` (uint8 MNIST images (N, 28, 28) -> magic 2051, ...).

    `magic` and `dims` override the header (only the header: the data stays `array`'s), to make
    deliberately broken files for tests.
    """
    array = np.asarray(array)
    header = bytearray(idx_header(array, array.shape))
    if magic is not None:
        header[:4] = struct.pack(">I", magic)
    if dims is not None:
        header[4:] = struct.pack(f">{len(dims)}I", *dims)
    big_endian = array.astype(array.dtype.newbyteorder(">"), copy=False)
    return bytes(header) + np.ascontiguousarray(big_endian).tobytes()


def write_idx(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    gzip: bool = False,
    magic: int | None = None,
    dims: Sequence[int] | None = None,
) -> Path:
    """Write `array` to `path` as an IDX file (gzip'd if `gzip`), atomically; return the path.

    `magic`/`dims` override the header, as in `encode_idx`. A gzip'd file is reproducible
    (no timestamp inside).
    """
    data = encode_idx(array, magic=magic, dims=dims)
    if gzip:
        data = _gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write_bytes(path, data)
    return Path(path)
