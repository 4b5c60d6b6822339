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
declared shape, size and compression fit the limits (MAX_PARAM_ELEMENTS, MAX_METADATA_CHARS);
the record must be a JSON object of bounded size and depth, with the format name, a version this
anynet reads, and (for a checkpoint) every field of the right type and range. Any problem is a
`ModelFileError`: one line that names the file and what is wrong. Arrays are stored as host
NumPy arrays, so a file written from one backend loads on any other.

Not checked here, because it needs the training data: that a checkpoint's batch lies within an
epoch of that data, and that its step count equals epoch * batches per epoch + batch.

This package's own module is the model files' public functions (`save_model`, `load_model`); the
.npz archive is `anynet.modelio._npz`, what all formats share (the record, its format and
version, the limits, the parameters' checks) `anynet.modelio._record`;
`anynet.modelio.safetensors_file` reads and writes the same model as safetensors,
`anynet.modelio.checkpoints` the checkpoints. The .npy members are read by `anynet.npyzip`, the
one bounded .npy reader (pictures use it too). Every public name of these modules is importable
from `anynet.modelio`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anynet.config import short_repr
from anynet.errors import ModelFileError
from anynet.modelio._npz import read_npz, write_npz
from anynet.modelio._record import (
    AVERAGE_PREFIX,
    CHECKPOINT_FORMAT,
    FORMAT_VERSION,
    MAX_METADATA_CHARS,
    MAX_PARAM_ELEMENTS,
    MODEL_FORMAT,
    VELOCITY_PREFIX,
    check_params,
    model_record,
)
from anynet.modelio.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from anynet.modelio.safetensors_file import (
    SAFETENSORS_SUFFIX,
    read_safetensors,
    save_model_safetensors,
)
from anynet.network import PARAM_NAMES, TwoLayerNet
from anynet.preprocess import SIDE, Preprocessing

__all__ = [
    "AVERAGE_PREFIX", "CHECKPOINT_FORMAT", "FORMAT_VERSION", "MAX_METADATA_CHARS",
    "MAX_PARAM_ELEMENTS", "MODEL_FORMAT", "SAFETENSORS_SUFFIX", "VELOCITY_PREFIX", "Checkpoint",
    "ModelFileError", "load_checkpoint", "load_model", "model_record", "save_checkpoint",
    "save_model", "save_model_safetensors",
]


def save_model(path: str | Path, net: TwoLayerNet, metadata: dict | None = None) -> None:
    """Write `net` and a record (`model_record` plus `metadata`) to `path`, atomically."""
    write_npz(path, net.host_params(), model_record(net, **(metadata or {})))


def load_model(path: str | Path, *, backend: Any = "numpy") -> tuple[TwoLayerNet, dict]:
    """Read and check a model file, .npz or (by its suffix) .safetensors; return (the network on
    `backend`, its metadata record)."""
    if Path(path).suffix.lower() == SAFETENSORS_SUFFIX:
        arrays, record = read_safetensors(path)
    else:
        arrays, record = read_npz(path, MODEL_FORMAT, list(PARAM_NAMES))
    params = check_params(path, arrays)
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
    try:
        preprocessing = Preprocessing.parse(record.get("preprocessing", "none"))
    except ValueError as e:
        raise ModelFileError(f"{path}: its record's {e}; the file is damaged or from a newer "
                             "anynet") from None
    if not preprocessing.is_none and D != SIDE * SIDE:
        raise ModelFileError(f"{path}: the record preprocesses {SIDE}x{SIDE} images "
                             f"({preprocessing}) but the network takes {D} inputs; the file "
                             "is inconsistent")
    return TwoLayerNet.from_params(params, backend=backend, preprocessing=preprocessing), record
