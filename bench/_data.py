"""MNIST for the benchmark: the four IDX files read into uint8 NumPy arrays, nothing more.

The benchmark hands every implementation the same bytes: training and test images as uint8
arrays of shape (N, 784), labels as uint8 arrays of shape (N,). Each implementation then turns
them into what its own users would feed it (float32 tensors, float64 arrays, ...), once, before
any timing.

This is a small reader for the benchmark alone, not anynet's data loader (`anynet.data`): it
reads the files from a folder (gzip'd or raw), checks the IDX headers and sizes, and fails with
one line naming the file when something is wrong. It never downloads.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path("/work/shared/data/mnist")

# name -> (IDX magic number, expected dimensions)
FILES = {
    "train-images-idx3-ubyte": (2051, (60000, 28, 28)),
    "train-labels-idx1-ubyte": (2049, (60000,)),
    "t10k-images-idx3-ubyte": (2051, (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": (2049, (10000,)),
}


class BenchDataError(Exception):
    """The MNIST files are missing or damaged; the message is one line saying which and why."""


def default_data_dir() -> Path:
    """$ANYNET_DATA_DIR if set, else the shared copy of genuine MNIST."""
    env = os.environ.get("ANYNET_DATA_DIR")
    return Path(env) if env else DEFAULT_DIR


def _read_idx(folder: Path, name: str) -> np.ndarray:
    """One IDX file (raw or .gz) as a uint8 array with the dimensions its header gives."""
    magic, dims = FILES[name]
    raw_path, gz_path = folder / name, folder / f"{name}.gz"
    try:
        if raw_path.exists():
            data = raw_path.read_bytes()
        elif gz_path.exists():
            with gzip.open(gz_path, "rb") as f:
                data = f.read()
        else:
            raise BenchDataError(f"{gz_path} (or {raw_path.name}) not found")
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise BenchDataError(f"{name} in {folder} cannot be read: {e}") from None
    header_len = 4 + 4 * len(dims)
    if len(data) < header_len:
        raise BenchDataError(f"{name} in {folder} is truncated ({len(data)} bytes)")
    header = np.frombuffer(data, dtype=">u4", count=1 + len(dims))
    if int(header[0]) != magic:
        raise BenchDataError(f"{name} in {folder}: IDX magic {int(header[0])}, expected {magic}")
    if tuple(int(d) for d in header[1:]) != dims:
        raise BenchDataError(f"{name} in {folder}: dimensions {tuple(header[1:])}, expected {dims}")
    expected = header_len + int(np.prod(dims))
    if len(data) != expected:
        raise BenchDataError(f"{name} in {folder}: {len(data)} bytes, expected {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims).copy()


def load_mnist_u8(folder: str | os.PathLike | None = None):
    """Return (train_images, train_labels, test_images, test_labels), all uint8.

    Shapes: train_images (60000, 784), train_labels (60000,), test_images (10000, 784),
    test_labels (10000,). Raises BenchDataError with a one-line message on any problem.
    """
    folder = Path(folder) if folder is not None else default_data_dir()
    train_x = _read_idx(folder, "train-images-idx3-ubyte").reshape(60000, 784)
    train_y = _read_idx(folder, "train-labels-idx1-ubyte")
    test_x = _read_idx(folder, "t10k-images-idx3-ubyte").reshape(10000, 784)
    test_y = _read_idx(folder, "t10k-labels-idx1-ubyte")
    if train_y.max() > 9 or test_y.max() > 9:
        raise BenchDataError(f"labels in {folder} go above 9: not MNIST")
    return train_x, train_y, test_x, test_y
