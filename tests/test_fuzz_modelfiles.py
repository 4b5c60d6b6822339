"""Hostile model files and checkpoints, generated: each loads correctly or is refused cleanly.

Mutations of a valid model file and a valid checkpoint: the zip's bytes (flipped, cut, spliced),
its members (added, removed, renamed, replaced, compressed), the central directory's sizes and
methods (lying sizes, compression bombs), the .npy headers (shapes, dtypes, Fortran order, data
that is too short or too long), and the JSON record (every field replaced by values of the wrong
type, out of range, huge, or nested deep). Each case must either load, into something the
training loop can use, or raise a `ModelFileError`; within TIME_LIMIT_S and PEAK_LIMIT_MB of
traced memory. Most run in-process (fast); a handful go through the command line in a child
process limited in time and address space (`fuzz_helpers.run_cli_bounded`).

Depth: ANYNET_FUZZ=ci (default, seeded, ~25 examples a property) or deep (thousands, random).
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import time
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from data_helpers import make_mnist_dir, synthetic_mnist
from fuzz_helpers import assert_clean_ending, run_cli_bounded
from hypothesis import given
from hypothesis import strategies as st

from anynet.config import TrainConfig
from anynet.errors import ModelFileError
from anynet.modelio import load_checkpoint, load_model, save_checkpoint, save_model
from anynet.network import TwoLayerNet, init_params

PEAK_LIMIT_MB = 200  # traced memory for one in-process case; valid files here are < 1 MB
TIME_LIMIT_S = 10.0  # one in-process case; a valid load takes milliseconds
N_TRAIN, VAL_SIZE, BATCH = 100, 10, 10  # 90 training examples: 9 batches per epoch
N_BATCHES = (N_TRAIN - VAL_SIZE) // BATCH

# --------------------------------------------------------------------------- valid originals


def checkpoint_parts() -> tuple[dict, dict, dict]:
    """(params, velocity, record) as the training loop writes them, in epoch 2 of 3, batch 4."""
    params = init_params(784, 5, 10, seed=0)
    velocity = {k: np.full_like(v, 0.01) for k, v in params.items()}
    config = TrainConfig(hidden=5, epochs=3, batch_size=BATCH, lr=0.1, momentum=0.5,
                         val_size=VAL_SIZE)
    epoch_one = {"epoch": 1, "train_loss": 1.9, "train_accuracy": 0.4, "val_loss": 1.8,
                 "val_accuracy": 0.5, "lr": 0.07, "seconds": 0.01}
    record = {"out": "model.npz", "config": config.to_dict(), "epoch": 1, "batch": 4,
              "step": N_BATCHES + 4, "rng_state": np.random.default_rng([0, 1]).bit_generator.state,
              "loss_sum": 7.5, "history": [epoch_one], "data_sha256": {}}
    return params, velocity, record


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of a valid model file and a valid checkpoint."""
    folder = tmp_path_factory.mktemp("originals")
    save_model(folder / "model.npz", TwoLayerNet(n_hidden=5, seed=3),
               {"config": TrainConfig().to_dict()})
    save_checkpoint(folder / "checkpoint.npz", *checkpoint_parts())
    return {"model": (folder / "model.npz").read_bytes(),
            "checkpoint": (folder / "checkpoint.npz").read_bytes()}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One file that every case overwrites (hypothesis reuses function-scoped fixtures)."""
    return tmp_path_factory.mktemp("case") / "case.npz"


def members_of(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def zip_of(members: list[tuple[str, bytes, int]]) -> bytes:
    """An archive of (name, bytes, compression method) members, in order (duplicates kept)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": wanted here
        for name, data, method in members:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = method
            zf.writestr(info, data)
    return buffer.getvalue()


# --------------------------------------------------------------------------- the oracle


def check_case(path: Path, which: str) -> str:
    """Load `path` as a model ("model") or checkpoint; it loads usefully or is refused cleanly,
    in bounded time and memory. Returns "loaded" or "refused"."""
    load = load_model if which == "model" else load_checkpoint
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = load(path)
        outcome = "loaded"
    except ModelFileError as e:
        message = str(e)
        assert "\n" not in message and str(path) in message, message
        assert len(message) < 600, message
        outcome = "refused"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    assert peak < PEAK_LIMIT_MB << 20, f"peak {peak / 2**20:.0f} MB"
    assert elapsed < TIME_LIMIT_S, f"{elapsed:.1f} s"
    if outcome == "loaded":
        if which == "model":
            net, record = result
            assert isinstance(record, dict)
            net.forward(np.zeros((1, 784), dtype=np.uint8))
        else:
            usable_for_training(*result)
    return outcome


def usable_for_training(params: dict, velocity: dict, record: dict) -> None:
    """What the training loop does with a loaded checkpoint works, or refuses a position that
    does not fit the data in one line (load_checkpoint cannot know the data's size)."""
    from anynet.training import Trainer

    config = TrainConfig.from_dict(record["config"])
    images = np.zeros((N_TRAIN - VAL_SIZE, 784), dtype=np.uint8)
    trainer = Trainer(config, images, np.zeros(N_TRAIN - VAL_SIZE, np.uint8))
    try:
        state = trainer.state_from_checkpoint(params, velocity, record)
    except ModelFileError as e:
        assert "does not fit this data" in str(e) and "\n" not in str(e)
        return
    assert 0 <= state.epoch <= config.epochs and state.batch >= 0 and state.step >= 0
    np.random.default_rng().bit_generator.state = state.rng_state
    assert all(isinstance(h, dict) for h in state.history)
    assert set(velocity) == (set(params) if config.momentum > 0 else set())


def write(scratch: Path, data: bytes) -> Path:
    scratch.write_bytes(data)
    return scratch


def test_the_originals_load(originals, scratch):
    assert check_case(write(scratch, originals["model"]), "model") == "loaded"
    assert check_case(write(scratch, originals["checkpoint"]), "checkpoint") == "loaded"


# --------------------------------------------------------------------------- the zip's bytes

WHICH = st.sampled_from(["model", "checkpoint"])


@given(which=WHICH, flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                             st.integers(0, 255)), min_size=1, max_size=8))
def test_flipped_bytes(originals, scratch, which, flips):
    data = bytearray(originals[which])
    for where, value in flips:
        data[int(where * len(data))] = value
    check_case(write(scratch, bytes(data)), which)


@given(which=WHICH, keep=st.floats(0, 1), tail=st.binary(max_size=64))
def test_truncated_or_extended(originals, scratch, which, keep, tail):
    data = originals[which]
    check_case(write(scratch, data[:int(keep * len(data))] + tail), which)


# --------------------------------------------------------------------------- members

NAMES = ["W1.npy", "b1.npy", "W2.npy", "b2.npy", "metadata.npy", "velocity.W1.npy",
         "velocity.b2.npy", "W1", "metadata", "../W1.npy", "x.npy"]
METHODS = st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])


@st.composite
def member_edits(draw, members: dict[str, bytes]):
    """A list of (name, bytes, method) from `members`, edited: removed, renamed, duplicated,
    replaced, or with new members added."""
    items = [(name, data, zipfile.ZIP_STORED) for name, data in members.items()]
    blobs = list(members.values())
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["remove", "rename", "duplicate", "replace", "add",
                                     "compress"]))
        if not items and kind != "add":
            continue
        i = draw(st.integers(0, max(len(items) - 1, 0)))
        if kind == "remove":
            items.pop(i)
        elif kind == "rename":
            items[i] = (draw(st.sampled_from(NAMES)), *items[i][1:])
        elif kind == "duplicate":
            items.append(items[i])
        elif kind == "replace":
            data = draw(st.one_of(st.binary(max_size=300), st.sampled_from(blobs)))
            items[i] = (items[i][0], data, items[i][2])
        elif kind == "add":
            items.append((draw(st.sampled_from(NAMES)),
                          draw(st.one_of(st.binary(max_size=300), st.sampled_from(blobs))),
                          draw(METHODS)))
        else:
            items[i] = (*items[i][:2], draw(METHODS))
    return items


@given(which=WHICH, data=st.data())
def test_members_added_removed_renamed_replaced(originals, scratch, which, data):
    items = data.draw(member_edits(members_of(originals[which])))
    check_case(write(scratch, zip_of(items)), which)


# --------------------------------------------------------------------------- .npy headers

DESCRS = ["<f4", ">f4", "<f8", ">f8", "<f2", "<i4", "|u1", "|b1", "<c8", "|O", "<U10", "|S8",
          "<M8[s]", "|V8", [("a", "<f8")], [("a", "<f4", (2,))], ("<f8", (1000000,)), "",
          "<f4x"]
SHAPES = st.one_of(
    st.tuples(st.integers(-2, 800), st.integers(-2, 12)),
    st.lists(st.one_of(st.integers(-(2**70), 2**70), st.booleans(), st.just(10**9)),
             max_size=4).map(tuple),
    st.sampled_from([(), (784, 5), (5,), (5, 10), (10,), (10**9, 30), (2**62, 2**62)]),
)


@given(which=WHICH, member=st.sampled_from(["W1.npy", "b1.npy", "b2.npy", "metadata.npy",
                                            "velocity.W2.npy"]),
       descr=st.sampled_from(DESCRS), shape=SHAPES, fortran=st.sampled_from([False, True, 1]),
       version=st.sampled_from([(1, 0), (2, 0), (3, 0), (0, 9)]),
       data_bytes=st.one_of(st.just(-1), st.integers(0, 20_000)), method=METHODS,
       length=st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_npy_headers(originals, scratch, which, member, descr, shape, fortran, version,
                     data_bytes, method, length):
    """A member's .npy header replaced: any dtype, shape, order, version, declared length."""
    members = members_of(originals[which])
    header = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode() + b"\n"
    size_format = "<H" if version[0] == 1 else "<I"
    length = len(header) if length is None else length
    npy = (b"\x93NUMPY" + bytes(version)
           + struct.pack(size_format, length % (2**16 if version[0] == 1 else 2**32)) + header)
    if data_bytes < 0:  # exactly what the header declares, where that is small
        try:
            count = int(np.prod(shape, dtype=object)) * np.dtype(descr).itemsize
        except Exception:
            count = 0
        data_bytes = count if 0 <= count <= 100_000 else 0
    members[member] = npy + bytes(data_bytes)
    items = [(name, data, method) for name, data in members.items()]
    check_case(write(scratch, zip_of(items)), which)


# --------------------------------------------------------------------------- lying zip entries


def _central_entries(data: bytes) -> list[int]:
    """Offsets of the central directory's entries (signature PK\\1\\2)."""
    offsets, at = [], data.find(b"PK\x01\x02")
    while at >= 0:
        offsets.append(at)
        at = data.find(b"PK\x01\x02", at + 4)
    return offsets


@given(which=WHICH, entry=st.integers(0, 20), compressed=METHODS,
       field=st.sampled_from(["file_size", "compress_size", "method", "flags", "offset"]),
       value=st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31, 2**32 - 1,
                                                                   12, 14, 99, 8])))
def test_central_directory_lies(originals, scratch, which, entry, compressed, field, value):
    items = [(n, d, compressed) for n, d in members_of(originals[which]).items()]
    data = bytearray(zip_of(items))
    entries = _central_entries(bytes(data))
    at = entries[entry % len(entries)]
    where = {"flags": (8, 2), "method": (10, 2), "compress_size": (20, 4), "file_size": (24, 4),
             "offset": (42, 4)}[field]
    start, width = at + where[0], where[1]
    data[start:start + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    check_case(write(scratch, bytes(data)), which)


@given(which=WHICH, member=st.sampled_from(["W1.npy", "metadata.npy", "junk.npy"]),
       megabytes=st.sampled_from([1, 8, 320]), claimed_extra=st.sampled_from([0, 1, 1 << 20]),
       huge_header=st.booleans())
def test_compression_bombs(originals, scratch, which, member, megabytes, claimed_extra,
                           huge_header):
    """A deflated member of many zero bytes behind a small header (the original's, or one that
    declares a 4 GiB header); its size sometimes lies. (320 MiB: above PEAK_LIMIT_MB, so
    reading such a member at all fails the case.)"""
    members = members_of(originals[which])
    head = b"\x93NUMPY\x02\x00\xff\xff\xff\xff" if huge_header else members.get(member, b"")[:128]
    blob = head + bytes(megabytes << 20)
    members[member] = blob
    data = bytearray(zip_of([(n, d, zipfile.ZIP_DEFLATED) for n, d in members.items()]))
    if claimed_extra:
        for at in _central_entries(bytes(data)):
            size = int.from_bytes(data[at + 24:at + 28], "little")
            if size == len(blob):
                data[at + 24:at + 28] = min(size + claimed_extra, 2**32 - 1).to_bytes(4, "little")
    assert len(data) < 100_000 + (megabytes << 20) // 500  # a bomb: small on disk
    check_case(write(scratch, bytes(data)), which)


# --------------------------------------------------------------------------- the JSON record

# values of every JSON type, and the edges of each
HOSTILE = st.recursive(
    st.one_of(
        st.none(), st.booleans(),
        st.integers(), st.sampled_from([0, -1, 1, 2**31, 2**64, -(2**63), 10**4000, 2**128,
                                        2**128 - 1, 2**32]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20), st.sampled_from(["", "PCG64", "float32", "cosine", "a" * 10_000]),
    ),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12,
)
DEEP = st.integers(1, 3000).map(lambda n: json.loads("[" * min(n, 900) + "]" * min(n, 900)))


def record_paths(record: dict) -> list[tuple]:
    """Every path to a value in `record` (dict keys and list indices), parents included."""
    paths = []

    def walk(value, path):
        if path:
            paths.append(path)
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, (*path, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, (*path, i))

    walk(record, ())
    return paths


def _replace(record: dict, path: tuple, value) -> None:
    target = record
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def _record_of(which: str, data: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(data)) as zf, zf.open("metadata.npy") as f:
        return json.loads(str(np.lib.format.read_array(f, allow_pickle=False)))


def _with_record(data: bytes, record_text: str) -> bytes:
    members = members_of(data)
    buffer = io.BytesIO()
    np.save(buffer, np.array(record_text), allow_pickle=False)
    members["metadata.npy"] = buffer.getvalue()
    return zip_of([(n, d, zipfile.ZIP_STORED) for n, d in members.items()])


@given(which=WHICH, data=st.data())
def test_record_fields_replaced(originals, scratch, which, data):
    record = _record_of(which, originals[which])
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(record_paths(record)))
        value = data.draw(st.one_of(HOSTILE, DEEP) if path[0] != "format" else HOSTILE)
        _replace(record, path, value)
    text = json.dumps(record, allow_nan=True)
    check_case(write(scratch, _with_record(originals[which], text)), which)


@given(which=WHICH, field=st.sampled_from(["epoch", "batch", "step", "loss_sum"]),
       value=st.integers(-5, 40) | st.floats(-2, 40))
def test_position_numbers_in_and_out_of_range(originals, scratch, which, field, value):
    record = _record_of(which, originals[which])
    record[field] = value
    check_case(write(scratch, _with_record(originals[which], json.dumps(record))), which)


@given(which=WHICH, text=st.one_of(
    st.text(max_size=200),
    st.sampled_from(["", "null", "[]", "{}", "1e999", "NaN", '{"format": 1}', "[" * 50_000,
                     '{"a": ' * 5000 + "1" + "}" * 5000, "9" * 5000, '"\\ud800"']),
    st.lists(st.sampled_from(["{", "}", "[", "]", ",", ":", '"', "1", "x"]),
             max_size=200).map("".join)))
def test_record_text(originals, scratch, which, text):
    check_case(write(scratch, _with_record(originals[which], text)), which)


# --------------------------------------------------------------------------- through the CLI


@pytest.fixture(scope="module")
def cli_world(tmp_path_factory, originals) -> dict[str, Path]:
    """Data, a picture, and files for the command line: a valid model and checkpoint, and
    hostile ones."""
    folder = tmp_path_factory.mktemp("cli")
    data_dir = make_mnist_dir(folder / "data", n_train=N_TRAIN, n_test=20, seed=0)
    picture = folder / "seven.npy"
    np.save(picture, synthetic_mnist(10, 0)[0][list(synthetic_mnist(10, 0)[1]).index(7)])
    files = {"data": data_dir, "picture": picture}
    files["model"] = write(folder / "model.npz", originals["model"])
    files["checkpoint"] = write(folder / "checkpoint.npz", originals["checkpoint"])
    # 1 GiB of zeros, deflated to 1 MB, in a member anynet does not know
    bomb = folder / "bomb.npz"
    bomb.write_bytes(originals["model"])
    with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED) as zf, \
            zf.open("unused.npy", "w", force_zip64=True) as f:
        block = bytes(1 << 20)
        for _ in range(1024):
            f.write(block)
    files["bomb"] = bomb
    members = members_of(originals["model"])
    header = repr({"descr": "<f4", "fortran_order": False, "shape": (10**9, 30)}).encode()
    members["W1.npy"] = (b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header) + 1) + header
                         + b"\n" + bytes(64))
    files["huge_header"] = write(folder / "huge.npz", zip_of(
        [(n, d, zipfile.ZIP_STORED) for n, d in members.items()]))
    files["list_record"] = write(folder / "list.npz", _with_record(originals["model"], "[1]"))
    fifo = folder / "fifo.npz"
    os.mkfifo(fifo)
    files["fifo"] = fifo
    for name, change in [("epoch_minus", {"epoch": -3}), ("batch_zero", {"config": 0}),
                         ("no_rng", {"rng_state": None})]:
        record = _record_of("checkpoint", originals["checkpoint"])
        if name == "batch_zero":
            record["config"] = {**record["config"], "batch_size": 0}
        else:
            record.update(change)
        files[name] = write(folder / f"{name}.npz",
                            _with_record(originals["checkpoint"], json.dumps(record)))
    return files


def _predict(w, model):
    return ["predict", str(w[model]), str(w["picture"])]


def _evaluate(w, model):
    return ["evaluate", str(w[model]), "--data-dir", str(w["data"]), "--no-verify"]


def _resume(w, checkpoint):
    return ["train", "--resume", str(w[checkpoint]), "--data-dir", str(w["data"]),
            "--no-verify", "--quiet", "--out", str(w[checkpoint].with_name("out.npz"))]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("argv, model, expected", [
    (_predict, "model", 0),
    (_predict, "bomb", 0),          # before: np.load inflated the 1 GiB member: MemoryError
    (_predict, "huge_header", 2),   # before: MemoryError allocating 112 GiB
    (_evaluate, "list_record", 2),  # before: AttributeError
    (_predict, "fifo", 2),          # before: hung
    (_resume, "epoch_minus", 2),    # before: trained 3 extra epochs
    (_resume, "batch_zero", 2),     # before: ZeroDivisionError
    (_resume, "no_rng", 2),         # before: TypeError
    (_resume, "checkpoint", 0),
])
def test_command_line_ends_cleanly(cli_world, argv, model, expected):
    result = run_cli_bounded(argv(cli_world, model))
    assert_clean_ending(result)
    assert result.returncode == expected, result.stderr


# --- safetensors headers that cost more than their length says ---------------------------------


def _safetensors_with_header(path: Path, header: bytes) -> Path:
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


@pytest.mark.parametrize("shape, header", [
    # 25 MB, under the header length limit: 8 million objects (11.7 s and 1.28 GB in evaluate)
    ("objects", b'{"a":[' + b"{}," * 8_333_000 + b"{}]}"),
    ("lists", b'{"a":[' + b"[]," * 8_333_000 + b"[]]}"),
    ("numbers", b'{"a":[' + b"1," * 12_500_000 + b"1]}"),
    ("keys", b'{"__metadata__":{' + b'"k":"",' * 3_500_000 + b'"k":""}}'),
])
def test_a_header_full_of_structure_is_refused_before_it_is_parsed(tmp_path, shape, header):
    path = _safetensors_with_header(tmp_path / "model.safetensors", header)
    result = run_cli_bounded(["evaluate", str(path), "--data-dir", str(tmp_path / "none")])
    assert_clean_ending(result)
    assert result.returncode == 2 and "a model's tensors need" in result.stderr, result.stderr
    assert result.peak_mb < 300, f"{result.peak_mb:.0f} MB for a {len(header):,}-byte header"


# --- a wide model (valid, within MAX_PARAM_ELEMENTS) is evaluated in bounded memory -----------


def test_wide_models_are_evaluated_in_smaller_chunks_with_the_same_result(monkeypatch):
    # a 784-100000-10 model took 12.2 GB and 79 s in `anynet evaluate` (chunks of 10,000 rows of
    # 100,000 hidden units); now each (chunk, H) array holds at most EVAL_UNITS elements
    from anynet import evaluation

    assert evaluation.chunk_size(30) == evaluation.EVAL_CHUNK
    assert evaluation.chunk_size(800) == 1310  # 4 MB arrays: they stay in the allocator's heap
    assert evaluation.chunk_size(100_000) * 100_000 <= evaluation.EVAL_UNITS == 2**20
    assert evaluation.chunk_size(10**9) == 1
    images, labels = synthetic_mnist(50, seed=5)
    images = images.reshape(50, 784)
    net = TwoLayerNet(n_hidden=40, seed=2)
    whole = evaluation.evaluate(net, images, labels, confusion=True, n_wrong=5)
    monkeypatch.setattr(evaluation, "EVAL_UNITS", 7 * 40)  # chunks of 7 rows
    assert evaluation.chunk_size(40) == 7
    chunked = evaluation.evaluate(net, images, labels, confusion=True, n_wrong=5)
    assert chunked.accuracy == whole.accuracy
    assert math.isclose(chunked.loss, whole.loss, rel_tol=1e-6)
    assert (chunked.confusion == whole.confusion).all()
    assert [w["index"] for w in chunked.wrong] == [w["index"] for w in whole.wrong]
