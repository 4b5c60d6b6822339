"""The one bounded reader of `.npy` arrays, alone (a picture) or as members of a zip (`.npz`).

Model files, checkpoints (`anynet.modelio`) and `.npy` pictures (`anynet.images`) read their
arrays here, and trust nothing they read: the `.npy` header's length is checked before it is
read (a version 2.0 header may declare 4 GiB, which numpy would read before judging it), parsed
by numpy's own header parser with numpy's own size limit, and its shape must be non-negative
integers; data is read in chunks straight into the array's final memory. In a zip, the table of
contents is bounded from the end records alone before `zipfile` parses it, and a member must be
stored or deflated, unencrypted, and no larger than deflate could make it from its stored bytes.

Every problem is an `Unreadable` whose message names the member (or the `subject` given) and
what is wrong; each caller turns it into its own one-line error naming the file. What an array
must hold (its dtype, its shape, how many elements) is the caller's to check, from the header,
before it asks for the data.

Not for: pickled arrays (never read), or writing (`np.savez` and `np.save` do that).
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
import zipfile
from dataclasses import dataclass
from typing import IO

import numpy as np

from anynet.errors import one_line

# An .npy header is a short Python literal; numpy's own default limit.
MAX_NPY_HEADER = 10_000
# Deflate cannot expand data more than 1032:1; a member (or gzip file) that claims more lies
# about its size.
MAX_DEFLATE_RATIO = 1032
READ_CHUNK = 1 << 22  # bytes read at a time
# The zip's table of contents, which `zipfile` parses whole before anything else: anynet writes
# at most 9 members (metadata, 4 parameters, 4 velocities) in under 1 kB of directory. Millions
# of empty members would cost ~13 bytes of memory per byte of file.
MAX_MEMBERS = 1000
MAX_DIRECTORY_BYTES = 1 << 20

_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


class Unreadable(Exception):
    """A problem inside a file's structure; the caller turns it into its one-line error."""


@dataclass(frozen=True)
class NpyHeader:
    """What an .npy header declares, and how many bytes the header took (`size`)."""

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool
    size: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_npy_header(stream: IO[bytes], subject: str) -> NpyHeader:
    """The header at the start of `stream`, checked; `subject` ("member W1.npy") begins every
    message."""
    prefix = stream.read(10)  # magic string (6), version (2), header length (2 or 4)
    if len(prefix) < 10 or not prefix.startswith(np.lib.format.MAGIC_PREFIX):
        raise Unreadable(f"{subject} is not an .npy array (no .npy magic string)")
    major, minor = prefix[6], prefix[7]
    read_header = _HEADER_READERS.get((major, minor))
    if read_header is None:
        raise Unreadable(f"{subject} is .npy version {major}.{minor}; anynet reads versions 1.0 "
                         "and 2.0")
    if major == 2:
        prefix += stream.read(2)
    length = int.from_bytes(prefix[8:], "little")
    if length > MAX_NPY_HEADER:
        raise Unreadable(f"{subject} has an .npy header of {length:,} bytes, more than the "
                         f"{MAX_NPY_HEADER:,} anynet reads")
    header = io.BytesIO(prefix + stream.read(length))
    try:
        np.lib.format.read_magic(header)
        with warnings.catch_warnings():  # numpy warns about Python 2 headers
            warnings.simplefilter("ignore")
            shape, fortran, dtype = read_header(header, max_header_size=MAX_NPY_HEADER)
    except Exception as e:  # any failure to parse a literal of <= MAX_NPY_HEADER characters
        raise Unreadable(f"{subject} has a broken .npy header ({one_line(e, 80)})") from None
    if not all(type(n) is int and n >= 0 for n in shape):
        from anynet.config import short_repr

        raise Unreadable(f"{subject} declares the shape {short_repr(shape)}")
    return NpyHeader(dtype, tuple(shape), bool(fortran), len(header.getvalue()))


def read_npy_data(stream: IO[bytes], header: NpyHeader, subject: str) -> np.ndarray:
    """The array after `header`, read in chunks of READ_CHUNK straight into its final memory
    (the caller has checked that its size is acceptable)."""
    nbytes = header.nbytes
    shape = header.shape[::-1] if header.fortran else header.shape
    array = np.empty(shape, dtype=header.dtype)
    view = array.reshape(-1).view(np.uint8).data if array.size else memoryview(b"")
    done = 0
    while done < nbytes:
        chunk = stream.read(min(READ_CHUNK, nbytes - done))
        if not chunk:
            raise Unreadable(f"{subject} ends after {done} of its {nbytes} data bytes")
        view[done:done + len(chunk)] = chunk
        done += len(chunk)
    return array.T if header.fortran else array


# --- zip archives ------------------------------------------------------------------------------


def check_zip_directory(f: IO[bytes]) -> None:
    """Refuse a zip whose table of contents is larger than MAX_MEMBERS entries or
    MAX_DIRECTORY_BYTES, from its end records alone (zip64 too), before `zipfile` parses it.
    A file without an end record is left for `zipfile` to refuse."""
    size = f.seek(0, os.SEEK_END)
    tail_start = max(0, size - (22 + 65535 + 20))  # the end record, its comment, zip64 locator
    f.seek(tail_start)
    tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return
    entries, directory = struct.unpack("<HI", tail[at + 10:at + 16])
    if (entries == 0xFFFF or directory == 0xFFFFFFFF) and at >= 20 \
            and tail[at - 20:at - 16] == b"PK\x06\x07":
        (zip64_end,) = struct.unpack("<Q", tail[at - 12:at - 4])
        if zip64_end + 56 <= size:
            f.seek(zip64_end)
            record = f.read(56)
            if record[:4] == b"PK\x06\x06":
                entries, directory = struct.unpack("<QQ", record[32:48])
    if entries > MAX_MEMBERS or directory > MAX_DIRECTORY_BYTES:
        raise Unreadable(f"its table of contents lists {entries} members in {directory} bytes "
                         f"(anynet reads archives of at most {MAX_MEMBERS} members and "
                         f"{MAX_DIRECTORY_BYTES >> 20} MB of directory)")


@dataclass
class NpyMember:
    """An open .npy member of a zip, its header read: `read()` returns its array."""

    name: str
    info: zipfile.ZipInfo
    stream: IO[bytes]
    header: NpyHeader

    def read(self, label: str | None = None) -> np.ndarray:
        """The member's array, after checking that its declared size is exactly its header
        plus its data; `label` ("W1") names it in messages (default: the member's name)."""
        label = label or self.name
        h = self.header
        if self.info.file_size != h.size + h.nbytes:
            raise Unreadable(f"member {label} holds {self.info.file_size - h.size} bytes of "
                             f"data but its header declares {h.shape} {h.dtype} ({h.nbytes} "
                             "bytes)")
        return read_npy_data(self.stream, h, f"member {label}")

    def close(self) -> None:
        self.stream.close()


def open_npy_member(zf: zipfile.ZipFile, name: str) -> NpyMember:
    """Open member `name` and read its .npy header. Checks that the member is an unencrypted,
    uncompressed or deflated member, and that deflate could produce its declared size from the
    stored bytes."""
    info = zf.getinfo(name)
    if info.flag_bits & 0x1:
        raise Unreadable(f"member {name} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise Unreadable(f"member {name} uses compression method {info.compress_type}; "
                         "anynet reads stored or deflated members only")
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise Unreadable(f"member {name} is stored but its sizes disagree")
    if (info.compress_type == zipfile.ZIP_DEFLATED
            and info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1)):
        raise Unreadable(f"member {name} claims to expand {info.compress_size} bytes to "
                         f"{info.file_size}, more than deflate can (a zip bomb?)")
    stream = zf.open(info)
    try:
        return NpyMember(name, info, stream, read_npy_header(stream, f"member {name}"))
    except BaseException:
        stream.close()
        raise
