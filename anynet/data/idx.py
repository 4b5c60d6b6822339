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

`write_idx` and `encode_idx` exist so tests can make small valid files, and, with `magic=` or
`dims=` overrides, files whose header lies on purpose.

This module knows the format only; what makes a file MNIST (labels 0..9, which split, the pinned
checksums) lives in `anynet.data.mnist`.
"""

from __future__ import annotations

import gzip as _gzip
import hashlib
import math
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from anynet.errors import DataError
from anynet.fileio import atomic_write_bytes, input_error

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

# No MNIST-style file comes near this; a header that promises more is damaged, and trusting it
# would try to allocate the promised size before finding out.
MAX_DATA_BYTES = 1 << 31

_CHUNK = 1 << 20
_GZIP_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError


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


def read_idx_with_sha256(
    path: str | os.PathLike,
    *,
    magic: int | None = None,
    shape: Sequence[int | None] | None = None,
) -> IdxData:
    """`read_idx`, also returning the magic number and the SHA-256 of the raw IDX bytes."""
    path = Path(path)
    try:
        f = open(path, "rb")  # closed by the `with f` below, after any gzip wrapper
    except OSError as e:
        raise input_error(path, e, "an IDX file", DataError) from None
    with f:
        compressed = f.read(2) == GZIP_MAGIC
        f.seek(0)
        if compressed:
            with _gzip.GzipFile(fileobj=f, mode="rb") as stream:
                return _read_stream(stream, path, compressed, magic, shape)
        return _read_stream(f, path, compressed, magic, shape)


def _read_stream(
    stream: BinaryIO,
    path: Path,
    compressed: bool,
    expect_magic: int | None,
    expect_shape: Sequence[int | None] | None,
) -> IdxData:
    what = "a gzip'd IDX file" if compressed else "an IDX file"

    def read_exact(buffer: memoryview) -> int:
        """Fill `buffer` from the stream; return how many bytes it got (less only at the end)."""
        got = 0
        try:
            while got < len(buffer):
                n = stream.readinto(buffer[got:])
                if not n:
                    break
                got += n
        except _GZIP_ERRORS as e:
            raise DataError(_gzip_problem(path, e)) from None
        return got

    sha = hashlib.sha256()
    head = bytearray(4)
    n = read_exact(memoryview(head))
    if n < 4:
        raise DataError(
            f"{path}: only {n} bytes, too short to be {what} (an empty or cut-off file); "
            "replace it with a complete copy"
        )
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
    sha.update(head)

    dims_raw = bytearray(4 * ndim)
    if read_exact(memoryview(dims_raw)) < len(dims_raw):
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

    dtype = _DTYPES[type_code]
    n_bytes = math.prod(dims) * dtype.itemsize
    if n_bytes > MAX_DATA_BYTES:
        raise DataError(
            f"{path}: the header promises {_fmt_shape(dims)} = {n_bytes:,} bytes of data, more "
            "than any MNIST-style file holds; the header is damaged"
        )

    if not compressed:  # a raw file's length is known up front: report the exact difference
        size = os.fstat(stream.fileno()).st_size
        expected_size = 4 + 4 * ndim + n_bytes
        if size != expected_size:
            raise DataError(_length_problem(path, dims, n_bytes, size - 4 - 4 * ndim))

    data = np.empty(n_bytes, dtype=np.uint8)
    got = read_exact(memoryview(data))
    if got < n_bytes:
        raise DataError(_length_problem(path, dims, n_bytes, got))
    extra = _count_rest(stream, path)  # for gzip, this read also checks the CRC and length
    if extra:
        raise DataError(_length_problem(path, dims, n_bytes, n_bytes + extra))
    sha.update(data)

    array = data.view(dtype).reshape(dims)
    if dtype.itemsize > 1:
        array = array.astype(dtype.newbyteorder("="))
    return IdxData(array, magic, sha.hexdigest())


def _count_rest(stream: BinaryIO, path: Path) -> int:
    extra = 0
    try:
        while chunk := stream.read(_CHUNK):
            extra += len(chunk)
    except _GZIP_ERRORS as e:
        raise DataError(_gzip_problem(path, e)) from None
    return extra


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
        why = f"corrupt gzip data ({error})"
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
