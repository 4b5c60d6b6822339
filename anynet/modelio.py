"""Model files and training checkpoints: `.npz` archives with a JSON record, never pickle.

A model file holds the arrays W1 (D, H), b1 (H,), W2 (H, K), b2 (K,) and an entry `metadata`: a
JSON document with the format name and version, the anynet version, the architecture, every
hyperparameter, the seed, backend and dtype, the SHA-256 of the data trained on, and the final
metrics. A checkpoint ("anynet-checkpoint") holds the same parameters plus the optimizer's
velocities (`velocity.W1`, ...) and, in its record, the position in training (epoch, batch, step),
the shuffling RNG's state, and the metrics so far: everything `anynet train --resume` needs.

Files are written atomically, read with `allow_pickle=False`, and checked on loading: format name
and version, names, shapes, dtypes, and that every value is finite. Any problem is a
`ModelFileError` that says what is wrong. Arrays are stored as host NumPy arrays, so a file
written from one backend loads on any other.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from anynet import __version__
from anynet.errors import ModelFileError
from anynet.fileio import atomic_write_bytes
from anynet.network import PARAM_NAMES, TwoLayerNet, check_param_shapes

MODEL_FORMAT = "anynet-model"
CHECKPOINT_FORMAT = "anynet-checkpoint"
FORMAT_VERSION = 1
VELOCITY_PREFIX = "velocity."


def _write_npz(path: str | Path, arrays: dict[str, np.ndarray], record: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, metadata=np.array(json.dumps(record, sort_keys=True)), **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _read_npz(path: str | Path, expected_format: str) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and record of an anynet .npz, after checking its format name and version."""
    path = Path(path)
    kind = "model file" if expected_format == MODEL_FORMAT else "checkpoint"
    if not path.exists():
        raise ModelFileError(f"{kind} {path} does not exist")
    if path.is_dir():
        raise ModelFileError(f"{kind} {path} is a folder, not a file")
    with open(path, "rb") as f:
        # checked here: for a non-zip file, np.load's own error talks of pickles
        if f.read(4) != b"PK\x03\x04":
            raise ModelFileError(f"{path} is not an anynet {kind}: not an .npz archive "
                                 "(a zip file); anynet train writes them")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise ModelFileError(
            f"{path} is not a readable anynet {kind} (not a valid .npz archive: {e})"
        ) from None
    if "metadata" not in arrays:
        raise ModelFileError(f"{path} is an .npz archive but not an anynet {kind}: "
                             "it has no 'metadata' entry")
    try:
        record = json.loads(str(arrays.pop("metadata")))
    except (json.JSONDecodeError, TypeError) as e:
        raise ModelFileError(f"{path}: its metadata is not valid JSON ({e})") from None
    fmt, version = record.get("format"), record.get("format_version")
    if fmt != expected_format:
        hint = ""
        if fmt == CHECKPOINT_FORMAT:
            hint = "; it is a checkpoint: continue it with anynet train --resume"
        elif fmt == MODEL_FORMAT:
            hint = "; it is a finished model, not a checkpoint"
        raise ModelFileError(f"{path} is not an anynet {kind} (format {fmt!r}){hint}")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has format version {version!r}, newer than this anynet "
            f"({__version__}) reads (version {FORMAT_VERSION}): upgrade anynet"
        )
    return arrays, record


def _check_params(path: str | Path, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [k for k in PARAM_NAMES if k not in arrays]
    if missing:
        raise ModelFileError(f"{path} lacks the parameters {', '.join(missing)}")
    params = {k: arrays[k] for k in PARAM_NAMES}
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
        if not np.all(np.isfinite(v)):
            bad = int(np.size(v) - np.count_nonzero(np.isfinite(v)))
            raise ModelFileError(f"{path}: parameter {k} holds {bad} non-finite values (nan/inf); "
                                 "the file is damaged or came from a diverged run")
    return params


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
    """Read and check a model file; return (the network on `backend`, its metadata record)."""
    arrays, record = _read_npz(path, MODEL_FORMAT)
    params = _check_params(path, arrays)
    arch = record.get("architecture", {})
    D, H = params["W1"].shape
    K = params["W2"].shape[1]
    declared = (arch.get("inputs"), arch.get("hidden"), arch.get("classes"))
    if declared != (D, H, K):
        raise ModelFileError(f"{path}: the record says {declared[0]}-{declared[1]}-{declared[2]} "
                             f"but the arrays are {D}-{H}-{K}; the file is inconsistent")
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
    """Read and check a checkpoint; return (host params, host velocities, record)."""
    arrays, record = _read_npz(path, CHECKPOINT_FORMAT)
    params = _check_params(path, arrays)
    velocity = {k[len(VELOCITY_PREFIX):]: v for k, v in arrays.items()
                if k.startswith(VELOCITY_PREFIX)}
    for k, v in velocity.items():
        if k not in params or v.shape != params[k].shape:
            raise ModelFileError(f"{path}: optimizer state {k} does not match the parameters")
    for key in ("config", "epoch", "batch", "step", "rng_state", "history"):
        if key not in record:
            raise ModelFileError(f"{path}: the checkpoint record lacks '{key}'")
    return params, velocity, record
