"""The .npz archive of anynet's model files and checkpoints: writing it (the record as a text
member `metadata`, the arrays as .npy members) and reading it back without trusting it (only a
regular file, only a zip archive whose directory `anynet.npyzip` accepts, only the members asked
for, each header checked before its data is read).

`anynet.modelio` (model files) and `anynet.modelio.checkpoints` use it; what the arrays and the
record must hold is checked there and in `anynet.modelio._record`. Every file goes through
`atomic_write_bytes`.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from anynet.errors import ModelFileError, one_line
from anynet.fileio import atomic_write_bytes
from anynet.modelio._record import (
    MAX_METADATA_CHARS,
    check_format,
    check_param_header,
    check_total,
    kind_of,
    open_model_file,
    parse_record,
)
from anynet.npyzip import Unreadable, check_zip_directory, open_npy_member


def write_npz(path: str | Path, arrays: dict[str, np.ndarray], record: dict) -> None:
    """Write `arrays` and the JSON `record` (the member `metadata`) to `path`, atomically."""
    buffer = io.BytesIO()
    # mypy checks **arrays against savez's `allow_pickle: bool`; the keys are parameter names
    np.savez(buffer, metadata=np.array(json.dumps(record, sort_keys=True)),
             **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(path, buffer.getvalue())


def read_npz(path: str | Path, expected_format: str,
             array_names: list[str]) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays `array_names` (those present) and the record of an anynet .npz, after checking
    its format name and version. Other members are never read."""
    path, kind = Path(path), kind_of(expected_format)
    with open_model_file(path, kind) as f:
        try:
            # checked here: for a non-zip file, zipfile's and numpy's errors are obscure
            if f.read(4) != b"PK\x03\x04":
                raise ModelFileError(f"{path} is not an anynet {kind}: not an .npz archive "
                                     "(a zip file); anynet train writes them")
            check_zip_directory(f)
            f.seek(0)
            with zipfile.ZipFile(f) as zf:
                if "metadata.npy" not in zf.NameToInfo:
                    raise ModelFileError(f"{path} is an .npz archive but not an anynet {kind}: "
                                         "it has no 'metadata' entry")
                record = _read_metadata(zf)
                check_format(path, kind, expected_format, record)
                arrays = _read_arrays(zf, array_names)
        except Unreadable as e:
            raise ModelFileError(f"{path} is not a readable anynet {kind}: {e}") from None
        except OSError as e:  # a device or /proc file that refuses to be read, a disk error
            raise ModelFileError(f"{path} is not a readable anynet {kind} (reading it failed: "
                                 f"{e.strerror or one_line(e, 100)})") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, zlib.error,
                KeyError, NotImplementedError, RuntimeError, OverflowError) as e:
            raise ModelFileError(f"{path} is not a readable anynet {kind} (not a valid .npz "
                                 f"archive: {one_line(e, 100)})") from None
    return arrays, record


def _read_metadata(zf: zipfile.ZipFile) -> dict:
    member = open_npy_member(zf, "metadata.npy")
    with member.stream:
        dtype, shape = member.header.dtype, member.header.shape
        if dtype.kind != "U" or shape != ():
            raise Unreadable(f"its 'metadata' entry is {shape} {dtype}, not a text (the JSON "
                             "record)")
        if dtype.itemsize > 4 * MAX_METADATA_CHARS:
            raise Unreadable(f"its metadata has {dtype.itemsize // 4:,} characters, more than "
                             f"the {MAX_METADATA_CHARS:,} an anynet record may have")
        text = member.read().item()
    return parse_record(text)


def _read_arrays(zf: zipfile.ZipFile, names: list[str]) -> dict[str, np.ndarray]:
    """The float arrays `names` (those present), after checking every header first: dtypes,
    the shapes of one hidden layer, and MAX_PARAM_ELEMENTS for each group of four."""
    present = [n for n in names if n + ".npy" in zf.NameToInfo]
    members = {}
    try:
        for name in present:
            members[name] = open_npy_member(zf, name + ".npy")
            check_param_header(name, members[name].header.dtype, members[name].header.shape)
        groups: dict[str, list[str]] = {}  # the parameters, velocities, averages: each its own
        for name in present:
            groups.setdefault(name.rpartition(".")[0], []).append(name)
        for group in groups.values():
            check_total(sum(math.prod(members[n].header.shape) for n in group))
        arrays = {}
        for name, member in members.items():
            array = member.read(name)
            arrays[name] = array.astype(array.dtype.newbyteorder("="), copy=False)
        return arrays
    finally:
        for member in members.values():
            member.close()
