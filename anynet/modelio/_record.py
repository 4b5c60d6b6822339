"""What every anynet model format shares: the format names and version, the limits on what a
file may ask of the reader, the JSON record (`model_record`, its parsing and its format check),
and the checks of the parameters: their headers before reading, their shapes, dtypes and values
after.

The .npz model files and checkpoints (`anynet.modelio`, `anynet.modelio.checkpoints`) and the
safetensors model files (`anynet.modelio.safetensors_file`) all read and check through these, so
a file is refused alike, in the same words, whatever its format. Not for: reading or writing any
one format.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from anynet import __version__
from anynet.config import short_repr
from anynet.errors import ModelFileError, one_line
from anynet.fileio import MODEL_FILE_WORDS, open_regular
from anynet.network import PARAM_NAMES, TwoLayerNet, check_param_shapes
from anynet.npyzip import READ_CHUNK, Unreadable

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


def kind_of(expected_format: str) -> str:
    """What a file of `expected_format` is called in a refusal: "model file" or "checkpoint"."""
    return "model file" if expected_format == MODEL_FORMAT else "checkpoint"


def open_model_file(path: Path, kind: str) -> io.BufferedReader:
    """`path` opened for binary reading, if it is a regular file (never a FIFO or device, which
    could block or stream forever)."""
    return open_regular(path, kind, ModelFileError, MODEL_FILE_WORDS)


# --- the record --------------------------------------------------------------------------------


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
        # only where there is one, so that a file without it reads as before
        **({"preprocessing": str(net.preprocessing)} if not net.preprocessing.is_none else {}),
        **extra,
    }


def parse_record(text: str) -> dict:
    """The JSON record of a model file: an object nesting at most MAX_JSON_DEPTH deep."""
    return json_object(text, "metadata")


def json_object(text: str, what: str) -> dict:
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


def check_format(path: Path, kind: str, expected_format: str, record: dict) -> None:
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


# --- the parameters ----------------------------------------------------------------------------


def check_param_header(name: str, dtype: np.dtype, shape: tuple) -> None:
    """Refuse a parameter that is not float32 or float64, or larger than MAX_PARAM_ELEMENTS."""
    if dtype.kind != "f" or dtype.itemsize not in (4, 8) or dtype.fields is not None:
        raise Unreadable(f"parameter {name} is {dtype}, not float32 or float64")
    check_elements(name, shape)


def check_elements(name: str, shape: tuple | list) -> None:
    if math.prod(shape) > MAX_PARAM_ELEMENTS:
        raise Unreadable(f"parameter {name} declares the shape {short_repr(shape)}, more than "
                         f"the {MAX_PARAM_ELEMENTS:,} elements anynet reads")


def check_total(total: int) -> None:
    if total > MAX_PARAM_ELEMENTS:
        raise Unreadable(f"its parameters declare {total:,} elements, more than the "
                         f"{MAX_PARAM_ELEMENTS:,} anynet reads")


def check_params(path: str | Path, arrays: dict[str, np.ndarray],
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
        bad = count_non_finite(v)
        if bad:
            raise ModelFileError(f"{path}: parameter {k} holds {bad} non-finite values (nan/inf); "
                                 "the file is damaged or came from a diverged run")
    return params


def count_non_finite(array: np.ndarray) -> int:
    flat, step = array.reshape(-1), READ_CHUNK // 8  # in chunks: no mask as large as the array
    return sum(int(np.count_nonzero(~np.isfinite(flat[i:i + step])))
               for i in range(0, flat.size, step))
