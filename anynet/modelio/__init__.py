"""Model files and training checkpoints: `.npz` archives with a JSON record, never pickle.

A model file holds the arrays W1 (D, H), b1 (H,), W2 (H, K), b2 (K,) and an entry `metadata`: a
JSON document with the format name and version, the anynet version, the architecture, every
hyperparameter, the seed, backend and dtype, the SHA-256 of the data trained on, and the final
metrics. A checkpoint ("anynet-checkpoint") holds the same parameters plus the optimizer's
velocities (`velocity.W1`, ...), the averaged weights where the run averages them
(`average.W1`, ...) and, in its record, the position in training (epoch, batch, step),
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

This package is the model files (.npz) and what all formats share (the record, its format and
version, the parameters' checks); `anynet.modelio.safetensors_file` reads and writes the same
model as safetensors, `anynet.modelio.checkpoints` the checkpoints. The .npy members are read by
`anynet.npyzip`, the one bounded .npy reader (pictures use it too). Every public name of these
modules is importable from `anynet.modelio`.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from anynet import __version__
from anynet.config import short_repr
from anynet.errors import ModelFileError, one_line
from anynet.fileio import MODEL_FILE_WORDS, atomic_write_bytes, open_regular
from anynet.network import PARAM_NAMES, TwoLayerNet, check_param_shapes
from anynet.npyzip import READ_CHUNK, Unreadable, check_zip_directory, open_npy_member

MODEL_FORMAT = "anynet-model"
CHECKPOINT_FORMAT = "anynet-checkpoint"
FORMAT_VERSION = 1
VELOCITY_PREFIX = "velocity."
AVERAGE_PREFIX = "average."  # a checkpoint's averaged weights (anynet.levers), where it has them

# Limits on what a file may ask of the reader. Each is far above anything anynet writes, and
# low enough that a hostile or damaged file costs at most a few seconds and ~1 GB. (The limits
# of the .npy headers and the zip archive are `anynet.npyzip`'s.)
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


def _write_npz(path: str | Path, arrays: dict[str, np.ndarray], record: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, metadata=np.array(json.dumps(record, sort_keys=True)), **arrays)
    atomic_write_bytes(path, buffer.getvalue())


# --- reading: the archive ----------------------------------------------------------------------


def _kind(expected_format: str) -> str:
    return "model file" if expected_format == MODEL_FORMAT else "checkpoint"


def _open_model_file(path: Path, kind: str):
    """`path` opened for binary reading, if it is a regular file (never a FIFO or device, which
    could block or stream forever)."""
    return open_regular(path, kind, ModelFileError, MODEL_FILE_WORDS)


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
        raise Unreadable(f"its {what} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:  # JSONDecodeError, an integer of more than 4300 digits
        raise Unreadable(f"its {what} is not valid JSON ({one_line(e, 80)})") from None
    if not isinstance(value, dict):
        raise Unreadable(f"its {what} is a JSON {type(value).__name__}, not an object")
    if _json_depth(value) > MAX_JSON_DEPTH:
        raise Unreadable(f"its {what} nests deeper than {MAX_JSON_DEPTH} levels")
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
    members = {}
    try:
        for name in present:
            members[name] = open_npy_member(zf, name + ".npy")
            _check_param_header(name, members[name].header.dtype, members[name].header.shape)
        groups: dict[str, list[str]] = {}  # the parameters, velocities, averages: each its own
        for name in present:
            groups.setdefault(name.rpartition(".")[0], []).append(name)
        for group in groups.values():
            _check_total(sum(math.prod(members[n].header.shape) for n in group))
        arrays = {}
        for name, member in members.items():
            array = member.read(name)
            arrays[name] = array.astype(array.dtype.newbyteorder("="), copy=False)
        return arrays
    finally:
        for member in members.values():
            member.close()


def _check_param_header(name: str, dtype: np.dtype, shape: tuple) -> None:
    """Refuse a parameter that is not float32 or float64, or larger than MAX_PARAM_ELEMENTS."""
    if dtype.kind != "f" or dtype.itemsize not in (4, 8) or dtype.fields is not None:
        raise Unreadable(f"parameter {name} is {dtype}, not float32 or float64")
    _check_elements(name, shape)


def _check_elements(name: str, shape: tuple | list) -> None:
    if math.prod(shape) > MAX_PARAM_ELEMENTS:
        raise Unreadable(f"parameter {name} declares the shape {short_repr(shape)}, more than "
                         f"the {MAX_PARAM_ELEMENTS:,} elements anynet reads")


def _check_total(total: int) -> None:
    if total > MAX_PARAM_ELEMENTS:
        raise Unreadable(f"its parameters declare {total:,} elements, more than the "
                         f"{MAX_PARAM_ELEMENTS:,} anynet reads")


def _read_npz(path: str | Path, expected_format: str,
              array_names: list[str]) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays `array_names` (those present) and the record of an anynet .npz, after checking
    its format name and version. Other members are never read."""
    path, kind = Path(path), _kind(expected_format)
    with _open_model_file(path, kind) as f:
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
                _check_format(path, kind, expected_format, record)
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




from anynet.modelio.checkpoints import Checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from anynet.modelio.safetensors_file import (  # noqa: E402
    SAFETENSORS_SUFFIX,
    _read_safetensors,
    save_model_safetensors,
)

__all__ = [
    "AVERAGE_PREFIX", "CHECKPOINT_FORMAT", "FORMAT_VERSION", "MAX_METADATA_CHARS",
    "MAX_PARAM_ELEMENTS", "MODEL_FORMAT", "SAFETENSORS_SUFFIX", "VELOCITY_PREFIX", "Checkpoint",
    "ModelFileError", "load_checkpoint",
    "load_model", "model_record", "save_checkpoint", "save_model", "save_model_safetensors",
]
