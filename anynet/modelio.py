"""Model files and training checkpoints: `.npz` archives with a JSON record, never pickle.

A model file holds the arrays W1 (D, H), b1 (H,), W2 (H, K), b2 (K,) and an entry `metadata`: a
JSON document with the format name and version, the anynet version, the architecture, every
hyperparameter, the seed, backend and dtype, the SHA-256 of the data trained on, and the final
metrics. A checkpoint ("anynet-checkpoint") holds the same parameters plus the optimizer's
velocities (`velocity.W1`, ...) and, in its record, the position in training (epoch, batch, step),
the shuffling RNG's state, and the metrics so far: everything `anynet train --resume` needs.

Files are written atomically. Reading trusts nothing in the file: only a regular file is opened;
only the archive members anynet knows are read, each through its own checked `.npy` header
(float32/float64 parameters, a text scalar for the record; never pickle), and only after its
declared shape, size and compression fit the limits below; the record must be a JSON object of
bounded size and depth, with the format name, a version this anynet reads, and (for a
checkpoint) every field of the right type and range. Any problem is a `ModelFileError`: one line
that names the file and what is wrong. Arrays are stored as host NumPy arrays, so a file written
from one backend loads on any other.

Not checked here, because it needs the training data: that a checkpoint's batch lies within an
epoch of that data, and that its step count equals epoch * batches per epoch + batch.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import stat
import struct
import warnings
import zipfile
import zlib
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from anynet import __version__
from anynet.config import TrainConfig, short_repr
from anynet.errors import ModelFileError
from anynet.fileio import atomic_write_bytes
from anynet.network import PARAM_NAMES, TwoLayerNet, check_param_shapes

MODEL_FORMAT = "anynet-model"
CHECKPOINT_FORMAT = "anynet-checkpoint"
FORMAT_VERSION = 1
VELOCITY_PREFIX = "velocity."

# Limits on what a file may ask of the reader. Each is far above anything anynet writes, and
# low enough that a hostile or damaged file costs at most a few seconds and ~1 GB.
# All parameters together (a checkpoint's velocities as many again): 10**8 elements is a
# 784-H-10 network with H = 125,000 (anynet's default H is 30: 23,860 elements), 400 MB in
# float32 or 800 MB in float64.
MAX_PARAM_ELEMENTS = 10**8
# The JSON record: a 1000-epoch checkpoint's record is about 250 k characters. 4 Mi characters
# (16 MB as NumPy stores them) bound the parsed JSON to ~100 MB even when every 3 characters
# make a new object ("[{},{},...").
MAX_METADATA_CHARS = 4 * 2**20
# Nesting of the JSON record: anynet's records nest 3 deep; room for callers' entries.
MAX_JSON_DEPTH = 32
# An .npy header is a short Python literal; numpy's own default limit.
MAX_NPY_HEADER = 10_000
# Deflate cannot expand data more than 1032:1; a member that claims more lies about its size.
MAX_DEFLATE_RATIO = 1032
READ_CHUNK = 1 << 22  # bytes read from an archive member at a time
# The zip's table of contents, which `zipfile` parses whole before anything else: anynet writes
# at most 9 members (metadata, 4 parameters, 4 velocities) in under 1 kB of directory. Millions
# of empty members would cost ~13 bytes of memory per byte of file.
MAX_MEMBERS = 1000
MAX_DIRECTORY_BYTES = 1 << 20

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_HISTORY_FLOATS = ("train_loss", "train_accuracy", "lr", "seconds")
_HISTORY_OPTIONAL = ("val_loss", "val_accuracy")  # None when there is no validation set


def _write_npz(path: str | Path, arrays: dict[str, np.ndarray], record: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, metadata=np.array(json.dumps(record, sort_keys=True)), **arrays)
    atomic_write_bytes(path, buffer.getvalue())


# --- reading: the archive ----------------------------------------------------------------------


def _kind(expected_format: str) -> str:
    return "model file" if expected_format == MODEL_FORMAT else "checkpoint"


def _open_regular(path: Path, kind: str):
    """`path` opened for binary reading, if it is a regular file (never a FIFO or device, which
    could block or stream forever)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelFileError(f"{kind} {path} does not exist") from None
    except OSError as e:
        raise ModelFileError(f"{kind} {path} cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelFileError(f"{kind} {path} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(f"{kind} {path} is not a regular file (a pipe, device or socket); "
                             "give the path of a file anynet train wrote")
    try:
        # O_NONBLOCK: should the path become a FIFO after the check, opening it does not hang
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        f = os.fdopen(fd, "rb")
    except OSError as e:
        raise ModelFileError(f"{kind} {path} cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise ModelFileError(f"{kind} {path} is not a regular file; give the path of a file "
                             "anynet train wrote")
    return f


def _one_line(error: BaseException, limit: int = 160) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


class _Unreadable(Exception):
    """A problem inside the archive; `_read_npz` turns it into the file's ModelFileError."""


def _member_header(zf: zipfile.ZipFile, name: str) -> tuple:
    """Open member `name` and read its .npy header:
    (info, the open member, dtype, shape, fortran order, bytes of header).

    Checks that the member is an uncompressed or deflated .npy whose declared size is exactly
    its header plus its data, and that deflate could produce it from the stored bytes.
    """
    info = zf.getinfo(name)
    if info.flag_bits & 0x1:
        raise _Unreadable(f"member {name} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _Unreadable(f"member {name} uses compression method {info.compress_type}; "
                          "anynet reads stored or deflated members only")
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise _Unreadable(f"member {name} is stored but its sizes disagree")
    if (info.compress_type == zipfile.ZIP_DEFLATED
            and info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1)):
        raise _Unreadable(f"member {name} claims to expand {info.compress_size} bytes to "
                          f"{info.file_size}, more than deflate can (a zip bomb?)")
    member = zf.open(info)
    try:
        # The header is read into memory first, its length checked before numpy reads it: a
        # version 2.0 header may declare 4 GiB, which numpy would read before judging its size.
        prefix = member.read(10)  # magic string (6), version (2), header length (2 or 4)
        if len(prefix) < 10 or not prefix.startswith(np.lib.format.MAGIC_PREFIX):
            raise _Unreadable(f"member {name} is not an .npy array (no .npy magic string)")
        major, minor = prefix[6], prefix[7]
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get((major, minor))
        if read_header is None:
            raise _Unreadable(f"member {name} is .npy version {major}.{minor}; "
                              "anynet reads versions 1.0 and 2.0")
        if major == 2:
            prefix += member.read(2)
        header_length = int.from_bytes(prefix[8:], "little")
        if header_length > MAX_NPY_HEADER:
            raise _Unreadable(f"member {name} has an .npy header of {header_length:,} bytes, "
                              f"more than the {MAX_NPY_HEADER:,} anynet reads")
        header = io.BytesIO(prefix + member.read(header_length))
        header_bytes = len(header.getvalue())
        try:
            np.lib.format.read_magic(header)
            with warnings.catch_warnings():  # numpy warns about Python 2 headers
                warnings.simplefilter("ignore")
                shape, fortran, dtype = read_header(header, max_header_size=MAX_NPY_HEADER)
        except Exception as e:  # any failure to parse a literal of <= MAX_NPY_HEADER characters
            raise _Unreadable(f"member {name} has a broken .npy header ({_one_line(e, 80)})") \
                from None
        if not all(type(n) is int and n >= 0 for n in shape):
            raise _Unreadable(f"member {name} declares the shape {short_repr(shape)}")
    except BaseException:
        member.close()
        raise
    return info, member, dtype, tuple(shape), fortran, header_bytes


def _read_member_data(name: str, member, info: zipfile.ZipInfo, dtype: np.dtype, shape: tuple,
                      fortran: bool, header_bytes: int) -> np.ndarray:
    """The array after a member's header, read in chunks straight into its final memory."""
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if info.file_size != header_bytes + nbytes:
        raise _Unreadable(f"member {name} holds {info.file_size - header_bytes} bytes of data "
                          f"but its header declares {shape} {dtype} ({nbytes} bytes)")
    array = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
    view = memoryview(array.reshape(-1).view(np.uint8)) if count else memoryview(b"")
    done = 0
    while done < nbytes:
        chunk = member.read(min(READ_CHUNK, nbytes - done))
        if not chunk:
            raise _Unreadable(f"member {name} ends after {done} of its {nbytes} data bytes")
        view[done:done + len(chunk)] = chunk
        done += len(chunk)
    return array.T if fortran else array


def _read_metadata(zf: zipfile.ZipFile, kind: str) -> dict:
    info, member, dtype, shape, fortran, header_bytes = _member_header(zf, "metadata.npy")
    with member:
        if dtype.kind != "U" or shape != ():
            raise _Unreadable(f"its 'metadata' entry is {shape} {dtype}, not a text (the JSON "
                              "record)")
        if dtype.itemsize > 4 * MAX_METADATA_CHARS:
            raise _Unreadable(f"its metadata has {dtype.itemsize // 4:,} characters, more than "
                              f"the {MAX_METADATA_CHARS:,} an anynet record may have")
        text = _read_member_data("metadata.npy", member, info, dtype, shape, fortran,
                                 header_bytes).item()
    return _parse_record(text)


def _parse_record(text: str) -> dict:
    """The JSON record of a model file: an object nesting at most MAX_JSON_DEPTH deep."""
    return _json_object(text, "metadata")


def _json_object(text: str, what: str) -> dict:
    """`text` parsed as a JSON object nesting at most MAX_JSON_DEPTH deep; `what` ("metadata",
    "header") names it in the one-line refusal."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise _Unreadable(f"its {what} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:  # JSONDecodeError, an integer of more than 4300 digits
        raise _Unreadable(f"its {what} is not valid JSON ({_one_line(e, 80)})") from None
    if not isinstance(value, dict):
        raise _Unreadable(f"its {what} is a JSON {type(value).__name__}, not an object")
    if _json_depth(value) > MAX_JSON_DEPTH:
        raise _Unreadable(f"its {what} nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def _json_depth(value: Any) -> int:
    """How deep lists and dicts nest in a parsed JSON value (walked without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            break
        stack.extend((c, depth + 1) for c in children)
    return deepest


def _read_arrays(zf: zipfile.ZipFile, names: list[str]) -> dict[str, np.ndarray]:
    """The float arrays `names` (those present), after checking every header first: dtypes,
    the shapes of one hidden layer, and MAX_PARAM_ELEMENTS for each group of four."""
    present = [n for n in names if n + ".npy" in zf.NameToInfo]
    headers = {}
    try:
        for name in present:
            headers[name] = _member_header(zf, name + ".npy")
            dtype, shape = headers[name][2], headers[name][3]
            if dtype.kind != "f" or dtype.itemsize not in (4, 8) or dtype.fields is not None:
                raise _Unreadable(f"parameter {name} is {dtype}, not float32 or float64")
            if math.prod(shape) > MAX_PARAM_ELEMENTS:
                raise _Unreadable(f"parameter {name} declares the shape {short_repr(shape)}, "
                                  f"more than the {MAX_PARAM_ELEMENTS:,} elements anynet reads")
        groups = {}
        for name in present:
            groups.setdefault(name.startswith(VELOCITY_PREFIX), []).append(name)
        for group in groups.values():
            total = sum(math.prod(headers[n][3]) for n in group)
            if total > MAX_PARAM_ELEMENTS:
                raise _Unreadable(f"its parameters declare {total:,} elements, more than the "
                                  f"{MAX_PARAM_ELEMENTS:,} anynet reads")
        arrays = {}
        for name in present:
            info, member, dtype, shape, fortran, header_bytes = headers[name]
            array = _read_member_data(name, member, info, dtype, shape, fortran, header_bytes)
            arrays[name] = array.astype(dtype.newbyteorder("="), copy=False)
        return arrays
    finally:
        for header in headers.values():
            header[1].close()


def _read_npz(path: str | Path, expected_format: str,
              array_names: list[str]) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays `array_names` (those present) and the record of an anynet .npz, after checking
    its format name and version. Other members are never read."""
    path, kind = Path(path), _kind(expected_format)
    with _open_regular(path, kind) as f:
        try:
            # checked here: for a non-zip file, zipfile's and numpy's errors are obscure
            if f.read(4) != b"PK\x03\x04":
                raise ModelFileError(f"{path} is not an anynet {kind}: not an .npz archive "
                                     "(a zip file); anynet train writes them")
            _check_directory(f)
            f.seek(0)
            with zipfile.ZipFile(f) as zf:
                if "metadata.npy" not in zf.NameToInfo:
                    raise ModelFileError(f"{path} is an .npz archive but not an anynet {kind}: "
                                         "it has no 'metadata' entry")
                record = _read_metadata(zf, kind)
                _check_format(path, kind, expected_format, record)
                arrays = _read_arrays(zf, array_names)
        except _Unreadable as e:
            raise ModelFileError(f"{path} is not a readable anynet {kind}: {e}") from None
        except OSError as e:  # a device or /proc file that refuses to be read, a disk error
            raise ModelFileError(f"{path} is not a readable anynet {kind} (reading it failed: "
                                 f"{e.strerror or _one_line(e, 100)})") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, zlib.error,
                KeyError, NotImplementedError, RuntimeError, OverflowError) as e:
            raise ModelFileError(f"{path} is not a readable anynet {kind} (not a valid .npz "
                                 f"archive: {_one_line(e, 100)})") from None
    return arrays, record


def _check_directory(f) -> None:
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
        raise _Unreadable(f"its table of contents lists {entries} members in {directory} bytes "
                          f"(anynet reads archives of at most {MAX_MEMBERS} members and "
                          f"{MAX_DIRECTORY_BYTES >> 20} MB of directory)")


def _check_format(path: Path, kind: str, expected_format: str, record: dict) -> None:
    fmt, version = record.get("format"), record.get("format_version")
    if fmt != expected_format:
        hint = ""
        if fmt == CHECKPOINT_FORMAT:
            hint = "; it is a checkpoint: continue it with anynet train --resume"
        elif fmt == MODEL_FORMAT:
            hint = "; it is a finished model, not a checkpoint"
        raise ModelFileError(f"{path} is not an anynet {kind} (format {short_repr(fmt)}){hint}")
    if type(version) is int and version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has format version {short_repr(version)}, newer than this anynet "
            f"({__version__}) reads (version {FORMAT_VERSION}): upgrade anynet"
        )
    if type(version) is not int or version < 1:
        raise ModelFileError(f"{path} has format version {short_repr(version)}, which no anynet "
                             f"writes (versions are integers from 1 to {FORMAT_VERSION}); "
                             "the file is damaged")


# --- safetensors -------------------------------------------------------------------------------
#
# A model file may also be a safetensors file (https://huggingface.co/docs/safetensors), for
# tools outside anynet: an 8-byte little-endian header length, a JSON header, then the raw
# little-endian data of W1, b1, W2, b2. The header's "__metadata__" (a map of strings) holds the
# same record as an .npz model file, as one JSON string under the key "anynet". Written and read
# here without the safetensors package; reading trusts nothing: the length is bounded and must
# fit the file, the header must be a JSON object, every offset must lie in the data and match
# its tensor's dtype and shape, and the record and parameters get every check of an .npz's.

SAFETENSORS_SUFFIX = ".safetensors"
SAFETENSORS_RECORD_KEY = "anynet"
# The header: the record (escaped inside a JSON string: at most 6 bytes per character) and four
# short tensor entries.
MAX_SAFETENSORS_HEADER = 6 * MAX_METADATA_CHARS + 65536
# The header's shape: anynet writes about 50 strings and brackets (a name, an entry of three
# keys, a dtype and two lists per tensor; __metadata__ and its one record) and 100 characters
# outside strings. Within the length above, a header of `[{},{},...]` would be 8 million
# objects; these bounds leave room for other writers' keys and refuse that before parsing.
MAX_HEADER_TOKENS = 1000
MAX_HEADER_OTHER = 65536
_SAFETENSORS_DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8")}


def save_model_safetensors(path: str | Path, net: TwoLayerNet,
                           metadata: dict | None = None) -> None:
    """Write `net` as a safetensors file, atomically: W1, b1, W2, b2 and the record of
    `model_record` plus `metadata`, as one JSON string under the header's __metadata__."""
    params = net.host_params()
    record = model_record(net, **(metadata or {}))
    header: dict[str, Any] = {
        "__metadata__": {SAFETENSORS_RECORD_KEY: json.dumps(record, sort_keys=True)}}
    chunks, offset = [], 0
    for name in PARAM_NAMES:
        array = np.ascontiguousarray(params[name], dtype=params[name].dtype.newbyteorder("<"))
        data = array.tobytes()
        header[name] = {"dtype": "F32" if array.dtype.itemsize == 4 else "F64",
                        "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    atomic_write_bytes(path, struct.pack("<Q", len(text)) + text + b"".join(chunks))


def _read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The parameters (those present) and the record of an anynet safetensors model file, after
    checking the header's bounds, the format name and version, and every tensor's entry."""
    path, kind = Path(path), _kind(MODEL_FORMAT)
    with _open_regular(path, kind) as f:
        try:
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            prefix = f.read(8)
            if prefix[:4] == b"PK\x03\x04":
                raise ModelFileError(f"{path} is an .npz archive, not a safetensors file: give "
                                     "it the suffix .npz")
            if len(prefix) < 8:
                raise _Unreadable(f"it has {size} bytes, too few for a safetensors header")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_SAFETENSORS_HEADER:
                raise _Unreadable(f"its header declares {n:,} bytes, more than the "
                                  f"{MAX_SAFETENSORS_HEADER:,} anynet reads")
            if n > size - 8:
                raise _Unreadable(f"its header declares {n:,} bytes but only {size - 8:,} follow")
            header = _safetensors_header(f.read(n))
            meta = header.get("__metadata__")
            text = meta.get(SAFETENSORS_RECORD_KEY) if isinstance(meta, dict) else None
            if not isinstance(text, str):
                raise ModelFileError(f"{path} is not an anynet {kind}: its safetensors header has "
                                     f"no __metadata__ entry '{SAFETENSORS_RECORD_KEY}' (the "
                                     "record); anynet export writes one")
            if len(text) > MAX_METADATA_CHARS:
                raise _Unreadable(f"its metadata has {len(text):,} characters, more than the "
                                  f"{MAX_METADATA_CHARS:,} an anynet record may have")
            record = _parse_record(text)
            _check_format(path, kind, MODEL_FORMAT, record)
            entries = _safetensors_entries(header, size - 8 - n)
            arrays = {}
            for name, (dtype, shape, begin, end) in entries.items():
                array = np.empty(math.prod(shape), dtype=dtype)
                f.seek(8 + n + begin)
                if f.readinto(memoryview(array.view(np.uint8))) != end - begin:
                    raise _Unreadable(f"tensor {name} ends early")
                arrays[name] = array.reshape(shape).astype(dtype.newbyteorder("="), copy=False)
        except _Unreadable as e:
            raise ModelFileError(f"{path} is not a readable anynet {kind} (safetensors): {e}") \
                from None
        except OSError as e:
            raise ModelFileError(f"{path} is not a readable anynet {kind} (reading it failed: "
                                 f"{e.strerror or _one_line(e, 100)})") from None
    return arrays, record


def _safetensors_header(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Unreadable(f"its header is not valid JSON ({_one_line(e, 80)})") from None
    _check_header_shape(text)
    return _json_object(text, "header")


_HEADER_TOKEN = re.compile(r'["{}\[\]]')


def _check_header_shape(text: str) -> None:
    """Refuse, before json.loads, a header that holds more than a model needs: more than
    MAX_HEADER_TOKENS strings and brackets, or more than MAX_HEADER_OTHER characters outside
    strings (numbers, commas, spaces). The record is one long string, which costs one str; a
    25 MB header of `[{},{},...]` is eight million objects (1.3 GB and 12 s in json.loads).

    Walks the text at C speed: a regex finds the next quote or bracket, and json's own string
    scanner skips each string; the Python loop runs at most MAX_HEADER_TOKENS times.
    """
    tokens, other, position = 0, 0, 0
    while True:
        match = _HEADER_TOKEN.search(text, position)
        other += (len(text) if match is None else match.start()) - position
        if other > MAX_HEADER_OTHER:
            raise _Unreadable(f"its header has more than {MAX_HEADER_OTHER:,} characters outside "
                              "strings, more than a model's tensors need")
        if match is None:
            return
        tokens += 1
        if tokens > MAX_HEADER_TOKENS:
            raise _Unreadable(f"its header has more than {MAX_HEADER_TOKENS:,} strings and "
                              "brackets, more than a model's tensors need")
        if match.group() == '"':
            try:
                _text, position = json.decoder.scanstring(text, match.end())
            except ValueError as e:
                raise _Unreadable(f"its header is not valid JSON ({_one_line(e, 80)})") from None
        else:
            position = match.end()


def _safetensors_entries(header: dict, data_bytes: int) -> dict[str, tuple]:
    """name -> (dtype, shape, begin, end) for the parameters present, each checked against the
    data's size (data_bytes), its dtype and shape, and MAX_PARAM_ELEMENTS in all."""
    entries, total = {}, 0
    for name in PARAM_NAMES:
        if name not in header:
            continue  # _check_params names what is missing
        entry = header[name]
        if not isinstance(entry, dict):
            raise _Unreadable(f"tensor {name}'s entry is {short_repr(entry)}, not an object")
        dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise _Unreadable(f"parameter {name} is {short_repr(entry.get('dtype'))}, not F32 "
                              "or F64")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(shape, list) and len(shape) <= 2
                and all(type(d) is int and d >= 0 for d in shape)):
            raise _Unreadable(f"tensor {name} declares the shape {short_repr(shape)}")
        count = math.prod(shape)
        if count > MAX_PARAM_ELEMENTS:
            raise _Unreadable(f"parameter {name} declares the shape {short_repr(shape)}, more "
                              f"than the {MAX_PARAM_ELEMENTS:,} elements anynet reads")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise _Unreadable(f"tensor {name}'s data_offsets {short_repr(offsets)} do not lie "
                              f"within its {data_bytes:,} bytes of data")
        begin, end = offsets
        if end - begin != count * dtype.itemsize:
            raise _Unreadable(f"tensor {name} has {end - begin} bytes of data but declares "
                              f"{tuple(shape)} {entry['dtype']} ({count * dtype.itemsize} bytes)")
        total += count
        entries[name] = (dtype, tuple(shape), begin, end)
    if total > MAX_PARAM_ELEMENTS:
        raise _Unreadable(f"its parameters declare {total:,} elements, more than the "
                          f"{MAX_PARAM_ELEMENTS:,} anynet reads")
    return entries


# --- reading: the contents ---------------------------------------------------------------------


def _check_params(path: str | Path, arrays: dict[str, np.ndarray],
                  prefix: str = "") -> dict[str, np.ndarray]:
    missing = [k for k in PARAM_NAMES if prefix + k not in arrays]
    if missing:
        raise ModelFileError(f"{path} lacks the parameters {', '.join(missing)}")
    params = {k: arrays[prefix + k] for k in PARAM_NAMES}
    try:
        check_param_shapes({k: v.shape for k, v in params.items()})
    except ValueError as e:
        raise ModelFileError(f"{path}: {e}") from None
    dtypes = {str(v.dtype) for v in params.values()}
    if len(dtypes) != 1 or not dtypes <= {"float32", "float64"}:
        raise ModelFileError(
            f"{path}: parameters must all be float32 or all float64, found {sorted(dtypes)}"
        )
    for k, v in params.items():
        bad = _count_non_finite(v)
        if bad:
            raise ModelFileError(f"{path}: parameter {k} holds {bad} non-finite values (nan/inf); "
                                 "the file is damaged or came from a diverged run")
    return params


def _count_non_finite(array: np.ndarray) -> int:
    flat, step = array.reshape(-1), READ_CHUNK // 8  # in chunks: no mask as large as the array
    return sum(int(np.count_nonzero(~np.isfinite(flat[i:i + step])))
               for i in range(0, flat.size, step))


def model_record(net: TwoLayerNet, **extra: Any) -> dict:
    """The JSON record of a model file: format, versions, architecture, plus `extra` entries."""
    D, H, K = net.sizes
    return {
        "format": MODEL_FORMAT,
        "format_version": FORMAT_VERSION,
        "anynet_version": __version__,
        "architecture": {"inputs": D, "hidden": H, "classes": K, "hidden_activation": "relu",
                         "output": "softmax", "loss": "mean cross-entropy"},
        "dtype": net.dtype,
        **extra,
    }


def save_model(path: str | Path, net: TwoLayerNet, metadata: dict | None = None) -> None:
    """Write `net` and a record (`model_record` plus `metadata`) to `path`, atomically."""
    _write_npz(path, net.host_params(), model_record(net, **(metadata or {})))


def load_model(path: str | Path, *, backend: Any = "numpy") -> tuple[TwoLayerNet, dict]:
    """Read and check a model file, .npz or (by its suffix) .safetensors; return (the network on
    `backend`, its metadata record)."""
    if Path(path).suffix.lower() == SAFETENSORS_SUFFIX:
        arrays, record = _read_safetensors(path)
    else:
        arrays, record = _read_npz(path, MODEL_FORMAT, list(PARAM_NAMES))
    params = _check_params(path, arrays)
    arch = record.get("architecture", {})
    if not isinstance(arch, dict):
        raise ModelFileError(f"{path}: its record's architecture is {short_repr(arch)}, not a "
                             "JSON object; the file is damaged")
    D, H = params["W1"].shape
    K = params["W2"].shape[1]
    declared = (arch.get("inputs"), arch.get("hidden"), arch.get("classes"))
    if declared != (D, H, K) or not all(type(n) is int for n in declared):
        shown = "-".join(short_repr(n, 12) for n in declared)
        raise ModelFileError(f"{path}: the record says {shown} but the arrays are {D}-{H}-{K}; "
                             "the file is inconsistent")
    return TwoLayerNet.from_params(params, backend=backend), record


def save_checkpoint(path: str | Path, params: dict[str, np.ndarray],
                    velocity: dict[str, np.ndarray], record: dict) -> None:
    """Write a training checkpoint: host parameters, optimizer velocities, and `record`."""
    arrays = dict(params)
    arrays.update({VELOCITY_PREFIX + k: v for k, v in velocity.items()})
    full = {"format": CHECKPOINT_FORMAT, "format_version": FORMAT_VERSION,
            "anynet_version": __version__, **record}
    _write_npz(path, arrays, full)


def load_checkpoint(path: str | Path) -> tuple[dict, dict, dict]:
    """Read and check a checkpoint; return (host params, host velocities, record).

    Every field the training loop reads is checked for type and range (see `_check_record`);
    the record returned is well-typed. The checks that need the training data (batch within
    an epoch, step == epoch * batches per epoch + batch) are the loop's.
    """
    velocity_names = [VELOCITY_PREFIX + k for k in PARAM_NAMES]
    arrays, record = _read_npz(path, CHECKPOINT_FORMAT, [*PARAM_NAMES, *velocity_names])
    params = _check_params(path, arrays)
    config = _check_record(path, record, params)
    velocity = {}
    if config.momentum > 0:
        missing = [n for n in velocity_names if n not in arrays]
        if missing:
            raise ModelFileError(f"{path}: the checkpoint lacks the optimizer state "
                                 f"{', '.join(missing)} that momentum {config.momentum:g} needs; "
                                 "the file is damaged")
        for k in PARAM_NAMES:
            v = velocity[k] = arrays[VELOCITY_PREFIX + k]
            if v.shape != params[k].shape or v.dtype != params[k].dtype:
                raise ModelFileError(f"{path}: optimizer state {k} ({v.shape} {v.dtype}) does "
                                     f"not match the parameter ({params[k].shape} "
                                     f"{params[k].dtype}); the file is damaged")
            if _count_non_finite(v):
                raise ModelFileError(f"{path}: optimizer state {k} holds non-finite values "
                                     "(nan/inf); the file is damaged")
    elif any(n in arrays for n in velocity_names):
        raise ModelFileError(f"{path}: the checkpoint holds optimizer state (velocity) but its "
                             "config has no momentum; the file is damaged")
    return params, velocity, record


_RECORD_FIELDS = ("config", "epoch", "batch", "step", "rng_state", "loss_sum", "history",
                  "data_sha256")


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is a subclass of int: not accepted


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _check_record(path: Path, record: dict, params: dict[str, np.ndarray]) -> TrainConfig:
    """The checkpoint record's config, after checking every field the training loop reads."""
    from anynet.data.mnist import D, K

    def damaged(what: str) -> ModelFileError:
        return ModelFileError(f"{path}: {what}; the checkpoint is damaged (resume from another "
                              "checkpoint, or start the run again)")

    for key in _RECORD_FIELDS:
        if key not in record:
            raise ModelFileError(f"{path}: the checkpoint record lacks '{key}'")
    config_values = record["config"]
    if not isinstance(config_values, dict):
        raise damaged(f"its config is {short_repr(config_values)}, not a JSON object")
    lacking = [f.name for f in fields(TrainConfig) if f.name not in config_values]
    if lacking:
        raise damaged(f"its config lacks {', '.join(lacking)}")
    try:
        config = TrainConfig.from_dict(config_values)
    except ValueError as e:
        raise damaged(f"its config is invalid: {e}") from None
    n_in, n_hidden = params["W1"].shape
    n_out = params["W2"].shape[1]
    if (n_in, n_out) != (D, K) or n_hidden != config.hidden:
        raise damaged(f"its parameters are {n_in}-{n_hidden}-{n_out}, not the 784-"
                      f"{config.hidden}-10 network of its config")
    if str(params["W1"].dtype) != config.dtype:
        raise damaged(f"its parameters are {params['W1'].dtype}, its config says {config.dtype}")

    epoch, batch, step = record["epoch"], record["batch"], record["step"]
    if not (_is_int(epoch) and 0 <= epoch <= config.epochs):
        raise damaged(f"field 'epoch' must be an integer from 0 to {config.epochs} (the "
                      f"config's epochs), got {short_repr(epoch)}")
    if not (_is_int(batch) and batch >= 0) or (epoch == config.epochs and batch != 0):
        raise damaged(f"field 'batch' must be an integer >= 0 (0 once every epoch is done), "
                      f"got {short_repr(batch)}")
    # step = epoch * batches per epoch + batch, with batch < batches per epoch
    fits = _is_int(step) and (step == batch if epoch == 0 else
                              step > batch and (step - batch) % epoch == 0
                              and (step - batch) // epoch > batch)
    if not fits:
        raise damaged(f"field 'step' ({short_repr(step)}) does not fit epoch {epoch} and batch "
                      f"{batch} (step = epoch x batches per epoch + batch)")
    if not (_is_number(record["loss_sum"]) and record["loss_sum"] >= 0):
        raise damaged(f"field 'loss_sum' must be a finite number >= 0, got "
                      f"{short_repr(record['loss_sum'])}")
    if "out" in record and not isinstance(record["out"], str):
        raise damaged(f"field 'out' must be a path (a string), got {short_repr(record['out'])}")
    problem = (_history_problem(record["history"], epoch)
               or _rng_state_problem(record["rng_state"])
               or _sha256_problem(record["data_sha256"]))
    if problem:
        raise damaged(problem)
    return config


def _history_problem(history: Any, epochs_done: int) -> str:
    """What is wrong with a checkpoint's `history` (one dict per finished epoch), or ""."""
    if not isinstance(history, list) or len(history) != epochs_done:
        return (f"field 'history' must be a list of the {epochs_done} finished epochs' "
                f"metrics, got {short_repr(history)}")
    for i, entry in enumerate(history):
        where = f"history[{i}]"
        if not isinstance(entry, dict):
            return f"{where} must be a JSON object, got {short_repr(entry)}"
        if entry.get("epoch") != i + 1 or not _is_int(entry.get("epoch")):
            return f"{where}['epoch'] must be {i + 1}, got {short_repr(entry.get('epoch'))}"
        for key in (*_HISTORY_FLOATS, *_HISTORY_OPTIONAL):
            if key not in entry:
                return f"{where} lacks '{key}'"
            value = entry[key]
            if value is None and key in _HISTORY_OPTIONAL:
                continue
            if not (_is_number(value) and value >= 0) or (key.endswith("accuracy") and value > 1):
                wording = "a number in [0, 1]" if key.endswith("accuracy") else \
                    "a finite number >= 0"
                return f"{where}['{key}'] must be {wording}, got {short_repr(value)}"
    return ""


def _rng_state_problem(state: Any) -> str:
    """What is wrong with a saved PCG64 state (numpy's `bit_generator.state`), or ""."""
    expected = ('{"bit_generator": "PCG64", "state": {"state": int, "inc": int}, '
                '"has_uint32": 0 or 1, "uinteger": int}')
    ok = (isinstance(state, dict) and set(state) == {"bit_generator", "state", "has_uint32",
                                                      "uinteger"}
          and state["bit_generator"] == "PCG64"
          and isinstance(state["state"], dict) and set(state["state"]) == {"state", "inc"}
          and all(_is_int(v) and 0 <= v < 2**128 for v in state["state"].values())
          and state["has_uint32"] in (0, 1) and _is_int(state["has_uint32"])
          and _is_int(state["uinteger"]) and 0 <= state["uinteger"] < 2**32)
    if ok:
        try:  # the last word is numpy's
            np.random.PCG64().state = state
        except (TypeError, ValueError, OverflowError):
            ok = False
    return "" if ok else f"field 'rng_state' must be {expected}, got {short_repr(state)}"


def _sha256_problem(sha256: Any) -> str:
    """What is wrong with a record's `data_sha256` (file name -> SHA-256 in hex), or ""."""
    ok = isinstance(sha256, dict) and all(
        isinstance(k, str) and isinstance(v, str) and _HEX_SHA256.fullmatch(v)
        for k, v in sha256.items())
    return "" if ok else ("field 'data_sha256' must map file names to SHA-256 digests "
                          f"(64 hex digits), got {short_repr(sha256)}")
