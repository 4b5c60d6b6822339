"""load_mnist: data dir, environment, cache; checks of whole splits; the validation split;
genuine MNIST from the shared folder."""

from __future__ import annotations

import gzip
import os
import shutil
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from data_helpers import isolate_cache, make_mnist_dir, pins_for, synthetic_mnist

from anynet.data import MNIST_FILES, catalog, default_cache_dir, load_mnist, split_validation
from anynet.data import mnist as mnist_module
from anynet.data.idx import encode_idx, idx_header, write_idx
from anynet.errors import DataError, UserError


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """A fresh, empty cache and no ANYNET_DATA_DIR; downloads impossible unless a test allows."""
    return isolate_cache(tmp_path, monkeypatch)


def cache_files(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.fixture
def synthetic(tmp_path):
    return make_mnist_dir(tmp_path / "synthetic", n_train=60, n_test=20, seed=3)


# --- where the data comes from -------------------------------------------------------------------


def test_cache_dir_honours_xdg_cache_home(isolated_cache, monkeypatch, tmp_path):
    assert default_cache_dir() == isolated_cache
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "anynet" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # the XDG spec: ignore it
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "anynet" / "mnist"


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "gz"])
def test_data_dir_loads_synthetic_files(tmp_path, compressed, isolated_cache):
    folder = make_mnist_dir(tmp_path / "d", n_train=50, n_test=30, seed=1, gzip=compressed)
    mnist = load_mnist(folder, verify=False)
    images, labels = synthetic_mnist(50, 1)
    assert mnist.train_images.dtype == np.uint8 and mnist.train_images.shape == (50, 784)
    assert mnist.train_labels.dtype == np.uint8 and mnist.train_labels.shape == (50,)
    assert mnist.test_images.shape == (30, 784) and mnist.test_labels.shape == (30,)
    np.testing.assert_array_equal(mnist.train_images, images.reshape(50, 784))
    np.testing.assert_array_equal(mnist.train_labels, labels)
    assert mnist.val_images.shape == (0, 784) and mnist.val_images.dtype == np.uint8
    assert mnist.val_labels.shape == (0,) and mnist.val_labels.dtype == np.uint8
    assert mnist.source == f"data dir {folder}"
    assert mnist.folder == folder
    suffix = ".gz" if compressed else ""
    assert mnist.files["train-images-idx3-ubyte"] == folder / f"train-images-idx3-ubyte{suffix}"
    assert set(mnist.sha256) == {spec.stem for spec in MNIST_FILES}
    assert mnist.genuine == {spec.stem: False for spec in MNIST_FILES}
    assert not mnist.all_genuine
    assert cache_files(isolated_cache) == []  # a data dir is never cached


def test_sha256_of_gz_and_raw_folders_agree(tmp_path):
    raw = load_mnist(make_mnist_dir(tmp_path / "r", 20, 10, seed=2), verify=False)
    packed = load_mnist(make_mnist_dir(tmp_path / "g", 20, 10, seed=2, gzip=True), verify=False)
    assert raw.sha256 == packed.sha256
    assert pins_for(tmp_path / "r")[0].raw_sha256 == raw.sha256["train-images-idx3-ubyte"]


def test_environment_variable_names_the_data_dir(synthetic, monkeypatch):
    monkeypatch.setenv("ANYNET_DATA_DIR", str(synthetic))
    mnist = load_mnist(verify=False)
    assert mnist.folder == synthetic
    assert mnist.source == f"data dir {synthetic} (from ANYNET_DATA_DIR)"
    # An explicit data_dir wins over the environment.
    other = make_mnist_dir(synthetic.parent / "other", 10, 10)
    assert load_mnist(other, verify=False).folder == other


def test_dotted_file_names_are_found(tmp_path):
    folder = make_mnist_dir(tmp_path / "d", 10, 10)
    for spec in MNIST_FILES:
        (folder / spec.stem).rename(folder / spec.stem.replace("-idx", ".idx"))
    assert load_mnist(folder, verify=False).train_images.shape == (10, 784)


def test_verify_rejects_files_that_are_not_genuine_mnist(synthetic, isolated_cache):
    with pytest.raises(DataError) as info:
        load_mnist(synthetic)
    message = str(info.value)
    assert message.startswith(f"{synthetic / 'train-images-idx3-ubyte'}: SHA-256 ")
    assert "is not that of genuine MNIST train-images-idx3-ubyte (ba891046e6505d7a...)" in message
    assert "pass --no-verify (verify=False)" in message
    assert cache_files(isolated_cache) == []


def test_missing_folder_and_missing_files(tmp_path, synthetic):
    with pytest.raises(DataError, match=r"data dir .*nowhere: no such folder; point --data-dir"):
        load_mnist(tmp_path / "nowhere")
    (synthetic / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r": no t10k-labels-idx1-ubyte \(looked for each as NAME"):
        load_mnist(synthetic, verify=False)


# --- damaged files: one clear error each, nothing cached ----------------------------------------


def _damage(folder, kind):
    """Damage one file of a valid synthetic folder; return the damaged path."""
    images = folder / "train-images-idx3-ubyte"
    labels = folder / "train-labels-idx1-ubyte"
    data = images.read_bytes()
    if kind == "wrong-magic":
        images.write_bytes(b"\x00\x00\x08\x01" + data[4:])
    elif kind == "wrong-dims":
        write_idx(images, np.zeros((60, 32, 32), np.uint8))
    elif kind == "truncated":
        images.write_bytes(data[:-1])
    elif kind == "extra-bytes":
        images.write_bytes(data + b"\xff")
    elif kind == "label-out-of-range":
        values = np.frombuffer(labels.read_bytes()[8:], np.uint8).copy()
        values[7] = 10
        write_idx(labels, values)
        return labels
    elif kind == "count-mismatch":
        write_idx(labels, np.zeros(59, np.uint8))
        return labels
    elif kind == "corrupt-gzip":
        packed = bytearray(gzip.compress(data, mtime=0))
        packed[len(packed) // 2] ^= 0x55
        images.unlink()
        images = folder / "train-images-idx3-ubyte.gz"
        images.write_bytes(bytes(packed))
    else:
        raise AssertionError(kind)
    return images


LOAD_DAMAGE = {
    "wrong-magic": r"wrong magic number 2049 \(MNIST labels\), expected 2051",
    "wrong-dims": r"wrong dimensions 60 x 32 x 32, expected N x 28 x 28",
    "truncated": r"truncated: the header promises 60 x 28 x 28",
    "extra-bytes": r"1 extra bytes after the 47,040 bytes",
    "label-out-of-range": r"label 10 at index 7 is out of range 0..9 \(1 bad labels\)",
    "count-mismatch": r"has 60 images but .*train-labels-idx1-ubyte has 59 labels; the two files "
    r"do not belong together",
    "corrupt-gzip": r"corrupt gzip data|the gzip stream is cut off",
}


@pytest.mark.parametrize("kind", sorted(LOAD_DAMAGE))
def test_damaged_data_dir_is_rejected_and_nothing_cached(synthetic, kind, isolated_cache):
    damaged = _damage(synthetic, kind)
    with pytest.raises(DataError, match=LOAD_DAMAGE[kind]) as info:
        load_mnist(synthetic, verify=False)
    assert str(damaged) in str(info.value)
    assert "\n" not in str(info.value)
    assert cache_files(isolated_cache) == []


@pytest.mark.parametrize("kind", ["truncated", "label-out-of-range", "extra-bytes"])
def test_damaged_file_in_the_cache_is_removed(synthetic, kind, isolated_cache, monkeypatch):
    # Make the synthetic files count as "genuine", put them in the cache, then damage one.
    monkeypatch.setattr(catalog, "MNIST_FILES", pins_for(synthetic))
    isolated_cache.mkdir(parents=True)
    for spec in MNIST_FILES:
        shutil.copy(synthetic / spec.stem, isolated_cache / spec.stem)
    assert load_mnist(download=False).source == f"cache {isolated_cache}"
    damaged = _damage(isolated_cache, kind)
    with pytest.raises(DataError, match=LOAD_DAMAGE[kind]) as info:
        load_mnist(download=False)
    assert "removed it from the cache" in str(info.value)
    assert "Run 'anynet data' to download it" in str(info.value)
    assert not damaged.exists()
    assert len(cache_files(isolated_cache)) == 3


def test_cache_file_with_wrong_checksum_is_removed(synthetic, isolated_cache, monkeypatch):
    monkeypatch.setattr(catalog, "MNIST_FILES", pins_for(synthetic))
    isolated_cache.mkdir(parents=True)
    for spec in MNIST_FILES:
        shutil.copy(synthetic / spec.stem, isolated_cache / spec.stem)
    other = make_mnist_dir(synthetic.parent / "other", n_train=60, n_test=20, seed=99)
    shutil.copy(other / "t10k-images-idx3-ubyte", isolated_cache / "t10k-images-idx3-ubyte")
    with pytest.raises(DataError, match=r"SHA-256 [0-9a-f]{16}\.\.\. is not the pinned"):
        load_mnist(download=False)
    assert not (isolated_cache / "t10k-images-idx3-ubyte").exists()


def test_hand_placed_gz_in_the_cache_becomes_raw(tmp_path, isolated_cache, monkeypatch):
    folder = make_mnist_dir(tmp_path / "g", 30, 10, seed=5, gzip=True)
    monkeypatch.setattr(catalog, "MNIST_FILES", pins_for(folder))
    shutil.copytree(folder, isolated_cache)
    mnist = load_mnist(download=False)
    assert mnist.files["train-images-idx3-ubyte"] == isolated_cache / "train-images-idx3-ubyte"
    assert cache_files(isolated_cache) == sorted(spec.stem for spec in MNIST_FILES)
    assert mnist.all_genuine
    again = load_mnist(download=False)
    np.testing.assert_array_equal(again.train_images, mnist.train_images)


def test_empty_cache_without_download_says_what_to_do(isolated_cache):
    with pytest.raises(DataError) as info:
        load_mnist(download=False)
    message = str(info.value)
    assert message.startswith(f"MNIST is not available offline: cache {isolated_cache}: no ")
    assert "Run 'anynet data' to download it, or pass --data-dir DIR" in message


# --- the validation split -----------------------------------------------------------------------


def test_validation_split_is_seeded_and_keeps_training_order(tmp_path):
    folder = make_mnist_dir(tmp_path / "v", n_train=100, n_test=10, seed=7)
    full = load_mnist(folder, verify=False)
    mnist = load_mnist(folder, verify=False, val_size=30, val_seed=4)
    order = np.random.default_rng(4).permutation(100)
    np.testing.assert_array_equal(mnist.val_images, full.train_images[order[:30]])
    np.testing.assert_array_equal(mnist.val_labels, full.train_labels[order[:30]])
    kept = np.sort(order[30:])
    np.testing.assert_array_equal(mnist.train_images, full.train_images[kept])
    np.testing.assert_array_equal(mnist.train_labels, full.train_labels[kept])
    assert mnist.train_images.shape == (70, 784) and mnist.val_images.shape == (30, 784)
    # Same seed, same split; another seed, another split.
    again = load_mnist(folder, verify=False, val_size=30, val_seed=4)
    np.testing.assert_array_equal(again.val_labels, mnist.val_labels)
    other = load_mnist(folder, verify=False, val_size=30, val_seed=5)
    assert not np.array_equal(other.val_images, mnist.val_images)
    np.testing.assert_array_equal(mnist.test_images, full.test_images)


def test_validation_size_must_leave_training_examples():
    images, labels = np.zeros((10, 784), np.uint8), np.zeros(10, np.uint8)
    with pytest.raises(UserError, match="validation size 10 must be at least 0 and less than"):
        split_validation(images, labels, 10, 0)
    with pytest.raises(UserError, match="validation size -1"):
        split_validation(images, labels, -1, 0)
    t_img, t_lab, v_img, v_lab = split_validation(images, labels, 9, 0)
    assert t_img.shape == (1, 784) and v_img.shape == (9, 784)
    assert t_lab.shape == (1,) and v_lab.shape == (9,)


# --- genuine MNIST ------------------------------------------------------------------------------


@pytest.mark.realdata
def test_genuine_mnist_from_the_shared_folder(mnist_dir, isolated_cache):
    start = time.perf_counter()
    mnist = load_mnist(mnist_dir, val_size=5000, val_seed=0)
    seconds = time.perf_counter() - start
    assert mnist.train_images.shape == (55000, 784) and mnist.train_images.dtype == np.uint8
    assert mnist.val_images.shape == (5000, 784)
    assert mnist.test_images.shape == (10000, 784) and mnist.test_labels.dtype == np.uint8
    assert len(mnist.train_labels) + len(mnist.val_labels) == 60000
    assert mnist.sha256 == {spec.stem: spec.raw_sha256 for spec in MNIST_FILES}
    assert mnist.all_genuine
    counts = np.bincount(np.concatenate([mnist.train_labels, mnist.val_labels]), minlength=10)
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(mnist.test_labels).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009
    ]
    assert mnist.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert int(mnist.train_images.max()) == 255 and int(mnist.train_images.min()) == 0
    assert seconds < 10  # measured ~0.4 s from the gzip'd folder on 2 cores
    assert cache_files(isolated_cache) == []


@pytest.mark.realdata
def test_genuine_mnist_placed_in_the_cache_loads_without_network(mnist_dir, isolated_cache):
    isolated_cache.mkdir(parents=True)
    for spec in MNIST_FILES:
        shutil.copy(catalog.find_file(mnist_dir, spec.stem), isolated_cache)
    first = load_mnist(download=False)  # .gz placed by hand: verified, stored raw
    assert first.all_genuine
    assert cache_files(isolated_cache) == sorted(spec.stem for spec in MNIST_FILES)
    start = time.perf_counter()
    second = load_mnist(download=False)
    assert time.perf_counter() - start < 5  # measured ~0.1 s from the raw cache
    assert second.source == f"cache {isolated_cache}"
    np.testing.assert_array_equal(second.test_images, first.test_images)


def test_encode_idx_of_loaded_arrays_reproduces_the_file(synthetic):
    mnist = load_mnist(synthetic, verify=False)
    data = encode_idx(mnist.test_images.reshape(-1, 28, 28))
    assert data == (synthetic / "t10k-images-idx3-ubyte").read_bytes()


# --- headers are compared before any data is read ----------------------------------------------


def _gzip_of_zeros(path, header: bytes, n_zeros: int) -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as f:
        f.write(compressor.compress(header))
        block = bytes(1 << 20)
        for start in range(0, n_zeros, len(block)):
            f.write(compressor.compress(block[: min(len(block), n_zeros - start)]))
        f.write(compressor.flush())


def test_images_promising_more_than_their_labels_cost_no_memory(synthetic):
    """The bomb of issue 9: a 2 MB .gz of zeros promising 2.7 million images (2.1 GB) used to
    be loaded. One under the limits (900,000 images, 706 MB) is still refused: the pair's
    headers disagree, and nothing is allocated."""
    images = synthetic / "train-images-idx3-ubyte"
    images.unlink()
    _gzip_of_zeros(images.with_suffix(".gz"), idx_header(np.uint8, (900_000, 28, 28)),
                   900_000 * 784)  # 706 MB of zeros, 690 kB on disk: a valid file
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"has 900000 images but .* has 60 labels"):
            load_mnist(synthetic, verify=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak:,} bytes"


def test_a_split_promising_more_than_max_examples_is_refused_unread(synthetic, monkeypatch):
    monkeypatch.setattr(mnist_module, "MAX_EXAMPLES", 50)  # the real limit, 1e6, scaled down
    with pytest.raises(DataError, match=r"promises 60 images, more than the 50 any MNIST-style"):
        load_mnist(synthetic, verify=False)


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_an_empty_split_is_refused(synthetic, split):
    write_idx(synthetic / f"{split}-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(synthetic / f"{split}-labels-idx1-ubyte", np.zeros(0, np.uint8))
    name = "training" if split == "train" else "test"
    with pytest.raises(DataError, match=rf"hold no examples: the {name} set is empty") as info:
        load_mnist(synthetic, verify=False)
    assert "\n" not in str(info.value)


def test_a_named_pipe_in_the_data_dir_is_refused_by_name(synthetic):
    labels = synthetic / "t10k-labels-idx1-ubyte"
    labels.unlink()
    os.mkfifo(labels)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: not a regular file \(a named"):
        load_mnist(synthetic, verify=False)


def test_a_cache_file_with_another_count_is_refused_from_its_header(synthetic, isolated_cache,
                                                                      monkeypatch):
    monkeypatch.setattr(catalog, "MNIST_FILES", pins_for(synthetic))
    shutil.copytree(synthetic, isolated_cache)
    write_idx(isolated_cache / "t10k-labels-idx1-ubyte", np.zeros(21, np.uint8))
    with pytest.raises(DataError, match=r"wrong dimensions 21, expected 20; .* removed it"):
        load_mnist(download=False)
    assert "t10k-labels-idx1-ubyte" not in cache_files(isolated_cache)
