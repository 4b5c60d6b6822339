"""Hostile MNIST files: every mutation is either loaded correctly or refused with one DataError
line, quickly and in bounded memory. Nothing lost, nothing trusted.

The mutations (bit flips, truncation, a header field set to an awkward value, the count inflated,
bytes appended, the gzip stream damaged) are applied to one file of a small synthetic data set
(`data_helpers.make_mnist_dir`), and, when genuine MNIST is at hand (`mnist_dir`), to its test
files. Most cases run in-process through `load_mnist` under tracemalloc (fast); a handful run the
command line `anynet data --check --no-verify` in a child process limited in time and memory.

Depth: the hypothesis profile of `fuzz_helpers` (ANYNET_FUZZ=ci by default, =deep by hand).
"""

from __future__ import annotations

import functools
import gzip
import shutil
import struct
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from data_helpers import make_mnist_dir
from fuzz_helpers import assert_clean_ending, run_cli_bounded
from hypothesis import given
from hypothesis import strategies as st

from anynet.data import MNIST_FILES, load_mnist
from anynet.data.catalog import find_file
from anynet.errors import DataError

STEMS = [spec.stem for spec in MNIST_FILES]
MEMORY_LIMIT = 200 << 20  # bytes traced by tracemalloc while one case loads
TIME_LIMIT_S = 10.0  # per case; a clean one takes milliseconds
AWKWARD = [0, 1, 2, 9, 10, 11, 27, 28, 29, 255, 256, 2049, 2051, 1_000_000, 1_000_001, 2_700_000,
           1 << 24, (1 << 31) - 1, 1 << 31, (1 << 32) - 1]


@functools.cache
def synthetic_raw() -> dict[str, bytes]:
    """The raw bytes of a small synthetic data set (30 training, 10 test examples). A function,
    not a fixture, so hypothesis does not print 30 kB of bytes with each failing case."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_mnist_dir(Path(tmp), n_train=30, n_test=10, seed=5)
        return {stem: (folder / stem).read_bytes() for stem in STEMS}


# A mutation is a function of the raw IDX bytes; `gz` says whether the file is written gzip'd
# (and whether the damage is to the gzip stream instead).
mutations = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 7)),
                                        min_size=1, max_size=8)),
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("field"), st.integers(0, 3),
              st.sampled_from(AWKWARD) | st.integers(0, 2**32 - 1)),
    st.tuples(st.just("inflate"), st.integers(2, 1 << 16)),
    st.tuples(st.just("trailing"), st.binary(min_size=1, max_size=64) | st.integers(1, 1 << 22)),
    st.tuples(st.just("gzip-flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("gzip-truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("gzip-append"), st.binary(min_size=1, max_size=32)),
)


def mutate(raw: bytes, mutation: tuple, compressed: bool) -> bytes:
    """The file's bytes on disk after `mutation` (gzip'd when `compressed` or the mutation
    damages the gzip stream)."""
    kind = mutation[0]
    data = bytearray(raw)
    if kind == "flip":
        for position, bit in mutation[1]:
            data[position % len(data)] ^= 1 << bit
    elif kind == "truncate":
        data = data[: int(mutation[1] * len(data))]
    elif kind == "field":  # magic (0) or one of the dimensions
        ndim = data[3]
        index = mutation[1] % (ndim + 1)
        data[4 * index : 4 * index + 4] = struct.pack(">I", mutation[2])
    elif kind == "inflate":
        count = struct.unpack(">I", data[4:8])[0]
        data[4:8] = struct.pack(">I", min(count * mutation[1], 2**32 - 1))
    elif kind == "trailing":
        tail = mutation[1]
        data += tail if isinstance(tail, bytes) else bytes(tail)
    if kind.startswith("gzip-") or compressed:
        packed = bytearray(gzip.compress(bytes(data), compresslevel=1, mtime=0))
        if kind == "gzip-flip":
            packed[mutation[1] % len(packed)] ^= 1 << mutation[2]
        elif kind == "gzip-truncate":
            packed = packed[: int(mutation[1] * len(packed))]
        elif kind == "gzip-append":
            packed += mutation[1]
        return bytes(packed)
    return bytes(data)


def write_case(folder: Path, base: dict[str, bytes], stem: str, on_disk: bytes,
               compressed: bool) -> Path:
    """The four files of `base` in `folder`, `stem`'s replaced by `on_disk`; its path."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, raw in base.items():
        if name != stem:
            (folder / name).write_bytes(raw)
    target = folder / (f"{stem}.gz" if compressed else stem)
    target.write_bytes(on_disk)
    return target


def load_bounded(folder: Path, stem: str, mutated_raw: bytes) -> None:
    """Load `folder`: either it loads, holding what its files hold, or one DataError line that
    names a file, within the time and memory bounds."""
    tracemalloc.start()
    start = time.monotonic()
    try:
        try:
            mnist = load_mnist(folder, verify=False, download=False)
        except DataError as e:
            message = str(e)
            assert "\n" not in message, message
            assert str(folder) in message, message
            mnist = None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - start
    assert peak < MEMORY_LIMIT, f"{peak:,} bytes traced"
    assert elapsed < TIME_LIMIT_S, f"{elapsed:.1f} s"
    if mnist is None:
        return
    # It loaded: then the mutated file must be a well-formed file of what the header says,
    # and the arrays exactly its bytes.
    field = {"train-images-idx3-ubyte": mnist.train_images, "train-labels-idx1-ubyte":
             mnist.train_labels, "t10k-images-idx3-ubyte": mnist.test_images,
             "t10k-labels-idx1-ubyte": mnist.test_labels}[stem]
    header = 16 if "images" in stem else 8
    assert len(mutated_raw) == header + field.size
    np.testing.assert_array_equal(field.reshape(-1), np.frombuffer(mutated_raw[header:], np.uint8))
    assert len(mnist.train_images) == len(mnist.train_labels) > 0
    assert len(mnist.test_images) == len(mnist.test_labels) > 0
    assert int(mnist.train_labels.max()) <= 9 and int(mnist.test_labels.max()) <= 9


def _raw_after(raw: bytes, mutation: tuple) -> bytes | None:
    """The raw IDX bytes a mutation leaves (what a load that succeeds must hold)."""
    if mutation[0].startswith("gzip-"):  # gzip's CRC guards the data: intact, or refused
        return raw
    return mutate(raw, mutation, compressed=False)


@given(stem=st.sampled_from(STEMS), mutation=mutations, compressed=st.booleans())
def test_mutated_synthetic_files_load_or_are_refused(tmp_path, stem, mutation, compressed):
    base = synthetic_raw()
    raw = base[stem]
    on_disk = mutate(raw, mutation, compressed)
    folder = tmp_path / "case"
    write_case(folder, base, stem, on_disk, compressed)
    load_bounded(folder, stem, _raw_after(raw, mutation))


@pytest.fixture(scope="module")
def genuine_test_split(mnist_dir):
    """Genuine MNIST's two test files (raw bytes, 7.9 MB in all), behind a function so that
    hypothesis does not print them."""
    files = {}
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        path = find_file(mnist_dir, stem)
        data = path.read_bytes()
        files[stem] = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    return lambda: files


@pytest.mark.realdata
@given(stem=st.sampled_from(["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
       mutation=mutations.filter(lambda m: m[0] not in ("gzip-flip", "gzip-truncate")),
       compressed=st.booleans())
def test_mutated_genuine_files_load_or_are_refused(tmp_path, genuine_test_split, stem, mutation,
                                                   compressed):
    """The genuine test split beside small synthetic training files: the pair of the genuine
    files is the one the mutation must not fool."""
    base = {**synthetic_raw(), **genuine_test_split()}
    raw = base[stem]
    on_disk = mutate(raw, mutation, compressed)
    folder = tmp_path / "case"
    write_case(folder, base, stem, on_disk, compressed)
    load_bounded(folder, stem, _raw_after(raw, mutation))


# --- a handful through the command line, in a child process limited in time and memory ---------


def _lying_header(raw: bytes, count: int) -> bytes:
    return raw[:4] + struct.pack(">I", count) + raw[8:]


CLI_CASES = {
    "bomb-header": lambda raw: gzip.compress(_lying_header(raw["train-images-idx3-ubyte"],
                                                           2_700_000)),
    "empty-split": lambda raw: _lying_header(raw["train-images-idx3-ubyte"], 0)[:16],
    "trailing": lambda raw: gzip.compress(raw["train-images-idx3-ubyte"] + bytes(1 << 24)),
    "gzip-cut": lambda raw: gzip.compress(raw["train-images-idx3-ubyte"])[:-9],
    "intact": lambda raw: raw["train-images-idx3-ubyte"],
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_data_check_ends_cleanly_in_bounded_time_and_memory(tmp_path, case):
    base = dict(synthetic_raw())
    on_disk = CLI_CASES[case](base)
    compressed = on_disk[:2] == b"\x1f\x8b"
    if case == "empty-split":
        base["train-labels-idx1-ubyte"] = base["train-labels-idx1-ubyte"][:4] + bytes(4)
    folder = tmp_path / "case"
    write_case(folder, base, "train-images-idx3-ubyte", on_disk, compressed)
    result = run_cli_bounded(["data", "--check", str(folder), "--no-verify"])
    assert_clean_ending(result)
    assert (result.returncode == 0) == (case == "intact"), result.stderr
