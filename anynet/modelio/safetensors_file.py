"""Model files as safetensors (https://huggingface.co/docs/safetensors), for tools outside anynet.

The layout: an 8-byte little-endian header length, a JSON header, then the raw little-endian
data of W1, b1, W2, b2. The header's "__metadata__" (a map of strings) holds the same record as an
.npz model file (`anynet.modelio`), as one JSON string under the key "anynet". Reading trusts
nothing: the length is bounded and must fit the file, the header's shape (how many strings and
brackets, how much outside strings) is bounded before it is parsed, it must be a JSON object,
every offset must lie in the data and match its tensor's dtype and shape, and the record and
parameters get every check of an .npz's.

Written and read here without the `safetensors` package, by measurement (safetensors 0.8.0,
`safe_open` on the hostile headers of tests/test_fuzz_modelfiles.py): a 25 MB header of
`{"a":[{},{},...]}` cost 0.7 s and 280 MB above the process's baseline before it was refused,
`[1,1,...]` 1.5 s and 410 MB (the CLI must stay under 300 MB in all); a `__metadata__` of 3.5
million keys was accepted; an I32 tensor was accepted (anynet reads F32/F64 only), and its
refusals are messages about serde types, not about the file. It checks offsets, overlaps and
sizes as well as this reader does, but this reader needs the checks above anyway, and reading a
.safetensors model would otherwise need a package anynet does not depend on (the runtime is
NumPy and array-api-compat). The package remains the test oracle (tests/test_export.py).

Not for: other tensors, dtypes or layouts than anynet's four parameters.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from anynet.config import short_repr
from anynet.errors import ModelFileError, one_line
from anynet.fileio import atomic_write_bytes
from anynet.modelio._record import (
    MAX_METADATA_CHARS,
    MODEL_FORMAT,
    check_elements,
    check_format,
    check_total,
    json_object,
    kind_of,
    model_record,
    open_model_file,
    parse_record,
)
from anynet.network import PARAM_NAMES, TwoLayerNet
from anynet.npyzip import Unreadable

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
_SAFETENSORS_DTYPES: dict[str, np.dtype] = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8")}


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


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The parameters (those present) and the record of an anynet safetensors model file, after
    checking the header's bounds, the format name and version, and every tensor's entry."""
    path, kind = Path(path), kind_of(MODEL_FORMAT)
    with open_model_file(path, kind) as f:
        try:
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            prefix = f.read(8)
            if prefix[:4] == b"PK\x03\x04":
                raise ModelFileError(f"{path} is an .npz archive, not a safetensors file: give "
                                     "it the suffix .npz")
            if len(prefix) < 8:
                raise Unreadable(f"it has {size} bytes, too few for a safetensors header")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_SAFETENSORS_HEADER:
                raise Unreadable(f"its header declares {n:,} bytes, more than the "
                                  f"{MAX_SAFETENSORS_HEADER:,} anynet reads")
            if n > size - 8:
                raise Unreadable(f"its header declares {n:,} bytes but only {size - 8:,} follow")
            header = _safetensors_header(f.read(n))
            meta = header.get("__metadata__")
            text = meta.get(SAFETENSORS_RECORD_KEY) if isinstance(meta, dict) else None
            if not isinstance(text, str):
                raise ModelFileError(f"{path} is not an anynet {kind}: its safetensors header has "
                                     f"no __metadata__ entry '{SAFETENSORS_RECORD_KEY}' (the "
                                     "record); anynet export writes one")
            if len(text) > MAX_METADATA_CHARS:
                raise Unreadable(f"its metadata has {len(text):,} characters, more than the "
                                  f"{MAX_METADATA_CHARS:,} an anynet record may have")
            record = parse_record(text)
            check_format(path, kind, MODEL_FORMAT, record)
            entries = _safetensors_entries(header, size - 8 - n)
            arrays = {}
            for name, (dtype, shape, begin, end) in entries.items():
                array = np.empty(math.prod(shape), dtype=dtype)
                f.seek(8 + n + begin)
                if f.readinto(array.view(np.uint8).data) != end - begin:
                    raise Unreadable(f"tensor {name} ends early")
                arrays[name] = array.reshape(shape).astype(dtype.newbyteorder("="), copy=False)
        except Unreadable as e:
            raise ModelFileError(f"{path} is not a readable anynet {kind} (safetensors): {e}") \
                from None
        except OSError as e:
            raise ModelFileError(f"{path} is not a readable anynet {kind} (reading it failed: "
                                 f"{e.strerror or one_line(e, 100)})") from None
    return arrays, record


def _safetensors_header(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Unreadable(f"its header is not valid JSON ({one_line(e, 80)})") from None
    _check_header_shape(text)
    return json_object(text, "header")


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
            raise Unreadable(f"its header has more than {MAX_HEADER_OTHER:,} characters outside "
                              "strings, more than a model's tensors need")
        if match is None:
            return
        tokens += 1
        if tokens > MAX_HEADER_TOKENS:
            raise Unreadable(f"its header has more than {MAX_HEADER_TOKENS:,} strings and "
                              "brackets, more than a model's tensors need")
        if match.group() == '"':
            try:
                _text, position = json.decoder.scanstring(  # type: ignore[attr-defined]
                    text, match.end())
            except ValueError as e:
                raise Unreadable(f"its header is not valid JSON ({one_line(e, 80)})") from None
        else:
            position = match.end()


def _safetensors_entries(header: dict, data_bytes: int) -> dict[str, tuple]:
    """name -> (dtype, shape, begin, end) for the parameters present, each checked against the
    data's size (data_bytes), its dtype and shape, and MAX_PARAM_ELEMENTS in all."""
    entries, total = {}, 0
    for name in PARAM_NAMES:
        if name not in header:
            continue  # check_params names what is missing
        entry = header[name]
        if not isinstance(entry, dict):
            raise Unreadable(f"tensor {name}'s entry is {short_repr(entry)}, not an object")
        dtype = _SAFETENSORS_DTYPES.get(str(entry.get("dtype")))
        if dtype is None:
            raise Unreadable(f"parameter {name} is {short_repr(entry.get('dtype'))}, not F32 "
                              "or F64")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(shape, list) and len(shape) <= 2
                and all(type(d) is int and d >= 0 for d in shape)):
            raise Unreadable(f"tensor {name} declares the shape {short_repr(shape)}")
        check_elements(name, shape)
        count = math.prod(shape)
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise Unreadable(f"tensor {name}'s data_offsets {short_repr(offsets)} do not lie "
                              f"within its {data_bytes:,} bytes of data")
        begin, end = offsets
        if end - begin != count * dtype.itemsize:
            raise Unreadable(f"tensor {name} has {end - begin} bytes of data but declares "
                              f"{tuple(shape)} {entry['dtype']} ({count * dtype.itemsize} bytes)")
        total += count
        entries[name] = (dtype, tuple(shape), begin, end)
    check_total(total)
    return entries


