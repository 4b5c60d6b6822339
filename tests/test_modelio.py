"""Model files, checkpoints and configs from untrusted files: what loads, and what is refused.

Each refused case is a `ModelFileError` (the CLI prints it as one line and exits 2) whose message
names the file and the field or member at fault; none may raise anything else, hang, or allocate
more than the file's known members need. The hostile variations, generated, are in
test_fuzz_modelfiles.py; these are the cases worked out by hand, most of them found broken once
(issue 9, "Nothing lost, nothing trusted"; issue 8 item 9).
"""

from __future__ import annotations

import copy
import io
import json
import os
import signal
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from anynet.config import TrainConfig
from anynet.errors import ModelFileError
from anynet.modelio import (
    MAX_METADATA_CHARS,
    MAX_PARAM_ELEMENTS,
    load_checkpoint,
    load_model,
    model_record,
    save_checkpoint,
    save_model,
)
from anynet.network import TwoLayerNet, init_params

H = 5
N_BATCHES = 9  # the batches per epoch that the checkpoints below pretend their data has


def checkpoint_parts(momentum: float = 0.5) -> tuple[dict, dict, dict]:
    """(params, velocity, record) as the training loop writes them, mid-way through epoch 2."""
    params = init_params(784, H, 10, seed=0)
    velocity = {k: np.full_like(v, 0.01) for k, v in params.items()} if momentum else {}
    config = TrainConfig(hidden=H, epochs=3, batch_size=10, momentum=momentum, val_size=10)
    epoch_one = {"epoch": 1, "train_loss": 1.9, "train_accuracy": 0.4, "val_loss": 1.8,
                 "val_accuracy": 0.5, "lr": 0.25, "seconds": 0.01}
    record = {"out": "model.npz", "config": config.to_dict(), "epoch": 1, "batch": 2,
              "step": N_BATCHES + 2, "rng_state": np.random.default_rng([0, 1]).bit_generator.state,
              "loss_sum": 3.5, "history": [epoch_one],
              "data_sha256": {"train-images-idx3-ubyte": "ab" * 32}}
    return params, velocity, record


def write_checkpoint(path: Path, change=None, momentum: float = 0.5) -> Path:
    params, velocity, record = checkpoint_parts(momentum)
    if change is not None:
        change(record)
    save_checkpoint(path, params, velocity, record)
    return path


def refused(load, path, pattern: str) -> str:
    """Loading `path` raises a one-line ModelFileError matching `pattern` that names the file."""
    with pytest.raises(ModelFileError, match=pattern) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


# ----------------------------------------------------------------------------- the config


def test_config_round_trips_and_accepts_ints_for_floats():
    config = TrainConfig(hidden=7, lr=0.5, momentum=0.9, nesterov=True, schedule="step")
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict({"lr": 1, "weight_decay": 0}).lr == 1.0
    assert TrainConfig.from_dict({"unknown": "ignored"}) == TrainConfig()


@pytest.mark.parametrize("field, value, pattern", [
    ("hidden", 0, "hidden must be an integer >= 1"),
    ("hidden", True, "hidden must be an integer >= 1, got True"),
    ("hidden", 3.0, "hidden must be an integer"),
    ("epochs", -1, "epochs must be an integer >= 1"),
    ("batch_size", 0, "batch_size must be an integer >= 1"),
    ("batch_size", "32", "batch_size must be an integer"),
    ("lr", 0, "lr must be a finite number > 0"),
    ("lr", float("inf"), "lr must be a finite number > 0"),
    ("lr", "0.1", "lr must be a finite number > 0"),
    ("momentum", 1.0, r"momentum must be a number in \[0, 1\)"),
    ("momentum", float("nan"), "momentum must be"),
    ("nesterov", 1, "nesterov must be true or false"),
    ("nesterov", True, "nesterov needs momentum > 0"),
    ("weight_decay", -1e-3, "weight_decay must be a finite number >= 0"),
    ("schedule", "bogus", "schedule must be one of constant, step, cosine, got 'bogus'"),
    ("schedule", ["cosine"], "schedule must be one of"),
    ("seed", -3, "seed must be an integer >= 0"),
    ("seed", 2**200, None),  # huge seeds are fine for numpy
    ("val_size", -1, "val_size must be an integer >= 0"),
    ("dtype", "float16", "dtype must be one of float32, float64"),
    ("backend", 3, "backend must be a backend's name"),
])
def test_config_from_dict_checks_every_field(field, value, pattern):
    if pattern is None:
        assert getattr(TrainConfig.from_dict({field: value}), field) == value
        return
    with pytest.raises(ValueError, match=pattern) as info:
        TrainConfig.from_dict({field: value})
    assert "\n" not in str(info.value)


def test_config_from_dict_needs_a_dict():
    with pytest.raises(ValueError, match="mapping"):
        TrainConfig.from_dict([1, 2])


def test_config_message_shows_huge_values_briefly():
    with pytest.raises(ValueError, match=r"got a \d+-bit integer") as info:
        TrainConfig.from_dict({"hidden": -(10**4000)})
    assert len(str(info.value)) < 100


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("momentum", [0.5, 0.0])
def test_checkpoint_round_trip(tmp_path, momentum):
    path = write_checkpoint(tmp_path / "c.npz", momentum=momentum)
    params, velocity, record = load_checkpoint(path)
    expected_params, expected_velocity, expected_record = checkpoint_parts(momentum)
    for k in params:
        np.testing.assert_array_equal(params[k], expected_params[k])
    assert set(velocity) == set(expected_velocity)
    for k in velocity:
        np.testing.assert_array_equal(velocity[k], expected_velocity[k])
    for k, v in expected_record.items():
        assert record[k] == v


@pytest.mark.parametrize("momentum", ["0", "0.5"])
def test_checkpoints_the_training_loop_writes_load(tmp_path, momentum):
    from anynet.training import Trainer

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, size=50, dtype=np.uint8)
    config = TrainConfig(hidden=4, epochs=2, batch_size=16, momentum=float(momentum), val_size=0)
    path = tmp_path / "c.npz"
    trainer = Trainer(config, images, labels, checkpoint_path=path, record_extra={"out": "m.npz"},
                      data_sha256={"train-images-idx3-ubyte": "0" * 64})
    trainer.fit()
    params, velocity, record = load_checkpoint(path)
    assert (record["epoch"], record["batch"], record["step"]) == (2, 0, 8)
    assert bool(velocity) == (momentum != "0")
    state = trainer.state_from_checkpoint(params, velocity, record)
    assert state.epoch == 2 and len(state.history) == 2


def _set(key, value):
    def change(record):
        record[key] = value
    return change


def _set_config(key, value):
    def change(record):
        record["config"][key] = value
    return change


def _drop_config(key):
    def change(record):
        del record["config"][key]
    return change


def _set_history(key, value):
    def change(record):
        record["history"][0][key] = value
    return change


def _set_rng(*path_and_value):
    *keys, value = path_and_value

    def change(record):
        target = record["rng_state"]
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return change


def _drop(key):
    def change(record):
        del record[key]
    return change


@pytest.mark.parametrize("change, pattern", [
    # before: tracebacks at resume (int("abc"), None state, dict history, ...)
    (_set("epoch", "abc"), "'epoch' must be an integer from 0 to 3"),
    (_set("epoch", 1.0), "'epoch' must be an integer"),
    (_set("epoch", True), "'epoch' must be an integer"),
    (_set("rng_state", None), "'rng_state' must be"),
    (_set("rng_state", "garbage"), "'rng_state' must be"),
    (_set("rng_state", {}), "'rng_state' must be"),
    (_set_rng("bit_generator", "MT19937"), "'rng_state' must be"),
    (_set_rng("state", "state", -1), "'rng_state' must be"),
    (_set_rng("state", "inc", 2**128), "'rng_state' must be"),
    (_set_rng("state", "inc", 1.5), "'rng_state' must be"),
    (_set_rng("has_uint32", 2), "'rng_state' must be"),
    (_set_rng("uinteger", 2**32), "'rng_state' must be"),
    (_set_rng("extra", 1), "'rng_state' must be"),
    (_set("history", {"epoch": 1}), "'history' must be a list of the 1 finished"),
    (_set("history", [1]), r"history\[0\] must be a JSON object"),
    (_set_history("train_loss", "x"), r"history\[0\]\['train_loss'\] must be a finite number"),
    (_set_history("val_accuracy", 2.0), r"history\[0\]\['val_accuracy'\] must be a number in"),
    (_set_history("epoch", 7), r"history\[0\]\['epoch'\] must be 1"),
    (_set_history("seconds", float("nan")), r"\['seconds'\] must be a finite number"),
    (lambda r: r["history"][0].pop("lr"), r"history\[0\] lacks 'lr'"),
    (_set("config", [1, 2]), "its config is \\[1, 2\\], not a JSON object"),
    (_set("config", "x"), "not a JSON object"),
    (_set_config("batch_size", 0), "config is invalid: batch_size must be an integer >= 1"),
    (_set_config("schedule", "bogus"), "config is invalid: schedule must be one of"),
    (_set_config("lr", None), "config is invalid: lr must be"),
    (_set_config("nesterov", "yes"), "config is invalid: nesterov must be true or false"),
    (_drop_config("momentum"), "its config lacks momentum"),
    (_set("loss_sum", "NaN"), "'loss_sum' must be a finite number"),
    (_set("loss_sum", float("inf")), "'loss_sum' must be a finite number"),
    (_set("data_sha256", ["ab"]), "'data_sha256' must map file names"),
    (_set("data_sha256", {"train": "not hex"}), "'data_sha256' must map file names"),
    (_set("out", 3), "'out' must be a path"),
    (_drop("rng_state"), "the checkpoint record lacks 'rng_state'"),
    (_drop("loss_sum"), "the checkpoint record lacks 'loss_sum'"),
    # before: accepted, with nonsense results
    (_set("epoch", -3), "'epoch' must be an integer from 0 to 3"),       # trained 3 extra epochs
    (_set("epoch", 4), "'epoch' must be an integer from 0 to 3"),
    (_set_config("epochs", -1), "config is invalid: epochs must be an integer >= 1"),
    (_set("batch", -5), "'batch' must be an integer >= 0"),              # "diverged"
    (_set("batch", 10**9), "'step' .* does not fit epoch 1 and batch 1000000000"),
    (_set("step", -1), "'step' .* does not fit"),
    (_set("step", 3), "'step' .* does not fit"),  # epoch 1, batch 2: 1 batch per epoch?
    (_set_config("hidden", 6), "parameters are 784-5-10, not the 784-6-10 network"),
    (_set_config("dtype", "float64"), "parameters are float32, its config says float64"),
])
def test_damaged_checkpoint_records_are_refused(tmp_path, change, pattern):
    path = write_checkpoint(tmp_path / "c.npz", change)
    message = refused(load_checkpoint, path, pattern)
    assert "damaged" in message or "lacks" in message


def test_finished_checkpoint_must_be_at_batch_zero(tmp_path):
    def finished(record):
        record.update(epoch=3, batch=1, step=3 * N_BATCHES + 1)
        record["history"] = record["history"] * 3
        for i, h in enumerate(record["history"]):
            record["history"][i] = {**h, "epoch": i + 1}
    refused(load_checkpoint, write_checkpoint(tmp_path / "c.npz", finished),
            "'batch' must be an integer >= 0 \\(0 once every epoch is done\\)")


def test_velocity_must_match_momentum(tmp_path):
    params, velocity, record = checkpoint_parts(momentum=0.5)
    save_checkpoint(tmp_path / "none.npz", params, {}, record)  # before: KeyError at resume
    refused(load_checkpoint, tmp_path / "none.npz", "lacks the optimizer state velocity.W1")
    partial = {k: v for k, v in velocity.items() if k != "b2"}
    save_checkpoint(tmp_path / "partial.npz", params, partial, record)
    refused(load_checkpoint, tmp_path / "partial.npz", "lacks the optimizer state velocity.b2")
    wrong = {**velocity, "b1": velocity["b1"][:2]}
    save_checkpoint(tmp_path / "shape.npz", params, wrong, record)
    refused(load_checkpoint, tmp_path / "shape.npz", "optimizer state b1 .* does not match")
    wide = {**velocity, "W2": velocity["W2"].astype(np.float64)}
    save_checkpoint(tmp_path / "dtype.npz", params, wide, record)
    refused(load_checkpoint, tmp_path / "dtype.npz", "optimizer state W2 .* does not match")
    nan = {**velocity, "W1": velocity["W1"] * np.nan}
    save_checkpoint(tmp_path / "nan.npz", params, nan, record)
    refused(load_checkpoint, tmp_path / "nan.npz", "optimizer state W1 holds non-finite")
    plain = copy.deepcopy(record)
    plain["config"]["momentum"] = 0.0
    save_checkpoint(tmp_path / "extra.npz", params, velocity, plain)
    refused(load_checkpoint, tmp_path / "extra.npz", "holds optimizer state .* no momentum")


def test_a_model_is_not_a_checkpoint_and_back(tmp_path):
    save_model(tmp_path / "m.npz", TwoLayerNet(n_hidden=3))
    refused(load_checkpoint, tmp_path / "m.npz", "it is a finished model, not a checkpoint")
    write_checkpoint(tmp_path / "c.npz")
    refused(load_model, tmp_path / "c.npz", "continue it with anynet train --resume")


# ----------------------------------------------------------------------------- model files


def write_npz(path: Path, members: dict[str, bytes], *, deflate: bool = False) -> Path:
    """A zip archive holding exactly `members` (name -> raw bytes)."""
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def model_members(net: TwoLayerNet | None = None, record_change=None) -> dict[str, bytes]:
    """The members of a valid model file, as bytes; `record_change(record)` edits its record."""
    buffer = io.BytesIO()
    net = net or TwoLayerNet(n_hidden=3, seed=1)
    record = model_record(net)
    if record_change is not None:
        record_change(record)
    np.savez(buffer, metadata=np.array(json.dumps(record)), **net.host_params())
    with zipfile.ZipFile(buffer) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def metadata_npy(text: str) -> bytes:
    return npy_bytes(np.array(text))


def npy_header(shape, descr="<f4", fortran=False, pad_to=128) -> bytes:
    """The bytes of a version 1.0 .npy header declaring `shape` and `descr`."""
    text = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode()
    text += b" " * (pad_to - 10 - len(text) - 1) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def test_a_valid_model_written_by_hand_loads(tmp_path):
    net = TwoLayerNet(n_hidden=3, seed=1)
    path = write_npz(tmp_path / "m.npz", model_members(net))
    loaded, record = load_model(path)
    for k, v in net.host_params().items():
        np.testing.assert_array_equal(loaded.host_params()[k], v)
    assert record["architecture"]["hidden"] == 3


def test_fortran_order_big_endian_and_deflated_members_load(tmp_path):
    net = TwoLayerNet(n_hidden=3, seed=1)
    members = model_members(net)
    W1 = net.host_params()["W1"]
    members["W1.npy"] = npy_bytes(np.asfortranarray(W1.astype(">f4")))
    path = write_npz(tmp_path / "m.npz", members, deflate=True)
    loaded, _ = load_model(path)
    np.testing.assert_array_equal(loaded.host_params()["W1"], W1)
    assert loaded.host_params()["W1"].dtype == np.float32


def _record_set(key, value):
    def change(record):
        record[key] = value
    return change


@pytest.mark.parametrize("members, pattern", [
    # before: AttributeError / ValueError tracebacks, or silently accepted
    (lambda m: {**m, "metadata.npy": metadata_npy("[1, 2]")}, "metadata is a JSON list, not an"),
    (lambda m: {**m, "metadata.npy": metadata_npy('"text"')}, "metadata is a JSON str"),
    (lambda m: {**m, "metadata.npy": metadata_npy('{"format": "anynet-model", "n": '
                                                  + "9" * 5000 + "}")},
     "metadata is not valid JSON .*4300"),
    (lambda m: {**m, "metadata.npy": metadata_npy("[" * 100_000 + "]" * 100_000)},
     "metadata nests deeper than 32 levels"),
    (lambda m: {**m, "metadata.npy": metadata_npy('{"format": "anynet-model", "x": '
                                                  + "[" * 40 + "]" * 40 + "}")},
     "metadata nests deeper than 32 levels"),
    (lambda m: {**m, "metadata.npy": npy_bytes(np.array([1.0, 2.0]))},
     "'metadata' entry is \\(2,\\) float64, not a text"),
    (lambda m: {**m, "metadata.npy": b"not npy at all"}, "not a readable anynet model file"),
    (lambda m: model_members(record_change=_record_set("architecture", [784, 3, 10])),
     "architecture is \\[784, 3, 10\\], not a JSON object"),
    (lambda m: model_members(record_change=_record_set("architecture", "784-3-10")),
     "not a JSON object"),
    (lambda m: model_members(record_change=lambda r: r["architecture"].update(hidden=3.0)),
     "the record says 784-3.0-10 but the arrays are 784-3-10"),
    (lambda m: model_members(record_change=_record_set("format_version", True)),
     "format version True, which no anynet writes"),
    (lambda m: model_members(record_change=_record_set("format_version", -5)),
     "format version -5, which no anynet writes"),
    (lambda m: model_members(record_change=_record_set("format_version", 0)),
     "format version 0, which no anynet writes"),
    (lambda m: model_members(record_change=_record_set("format_version", "1")),
     "format version '1', which no anynet writes"),
    (lambda m: model_members(record_change=_record_set("format_version", 2)),
     "format version 2, newer than this anynet"),
    (lambda m: model_members(record_change=_record_set("format", ["x"] * 1000)),
     r"format \['x', 'x'.*\.\.\.\)$"),
    # the parameters' members
    (lambda m: {**m, "W1.npy": b"\x00" * 200}, "member W1.npy is not an .npy array"),
    (lambda m: {**m, "W1.npy": b"PK\x03\x04 a zip"}, "member W1.npy is not an .npy array"),
    (lambda m: {**m, "W1.npy": npy_header((10**9, 30)) + b"\x00" * 64},  # before: MemoryError
     "parameter W1 declares the shape \\(1000000000, 30\\), more than"),
    (lambda m: {**m, "W1.npy": npy_header((784, 3)) + b"\x00" * 64},
     "member W1 holds 64 bytes of data but its header declares \\(784, 3\\) float32"),
    (lambda m: {**m, "W1.npy": npy_header((784, 3), descr="|O") + b"\x00" * (784 * 3 * 8)},
     "parameter W1 is object, not float32 or float64"),
    (lambda m: {**m, "W1.npy": npy_header((784, 3), descr="<i4") + b"\x00" * (784 * 3 * 4)},
     "parameter W1 is int32"),
    (lambda m: {**m, "W1.npy": npy_header((784, -3)) + b"\x00" * 64},
     "member W1.npy declares the shape \\(784, -3\\)"),
    (lambda m: {**m, "W1.npy": npy_header((784, True))}, "declares the shape \\(784, True\\)"),
    (lambda m: {**m, "W1.npy": npy_header((784, 3), descr="<f4" + "x" * 20000, pad_to=20100)},
     "member W1.npy has an .npy header of [\\d,]+ bytes, more than the 10,000"),
    (lambda m: {**m, "W1.npy": npy_header(("(" * 300 + ")" * 300,))},
     "W1.npy (has a broken .npy header|declares the shape)"),
    (lambda m: {**m, "W1.npy": b"\x93NUMPY\x03\x00" + b"\x00" * 100},
     "member W1.npy is .npy version 3.0"),
    (lambda m: {**m, "W1.npy": b"\x93NUMPY\x02\x00\xff\xff\xff\xff" + b" " * 100_000},
     "member W1.npy has an .npy header of 4,294,967,295 bytes, more than the 10,000"),
    (lambda m: {**m, "W1.npy": b"\x93NUMPY\x01\x00\xff\xff" + b" " * 100_000},
     "member W1.npy has an .npy header of 65,535 bytes"),
    (lambda m: {**m, "b2.npy": npy_bytes(np.zeros((10, 1), np.float32))},
     r"expected W1 \(D, H\), b1 \(H,\), W2 \(H, K\), b2 \(K,\)"),
    (lambda m: {**m, "b2.npy": npy_bytes(np.zeros(9, np.float32))}, "shapes do not fit"),
    (lambda m: {k: v for k, v in m.items() if k != "b2.npy"}, "lacks the parameters b2"),
    (lambda m: {**m, "W1.npy": npy_bytes(np.zeros((784, 3), np.float16))},
     "parameter W1 is float16"),
])
def test_damaged_model_files_are_refused(tmp_path, members, pattern):
    path = write_npz(tmp_path / "m.npz", members(model_members()))
    refused(load_model, path, pattern)


def _assert_loads_as_written(path):
    net, record = load_model(path)
    written = TwoLayerNet(n_hidden=3, seed=1).host_params()    # what model_members() wrote
    for name, value in net.host_params().items():
        np.testing.assert_array_equal(value, written[name])
    return record


def test_format_version_one_still_loads(tmp_path):
    path = write_npz(tmp_path / "m.npz", model_members(record_change=_record_set(
        "format_version", 1)))
    assert _assert_loads_as_written(path)["format_version"] == 1


def test_metadata_longer_than_the_limit_is_refused_unread(tmp_path):
    # a header that declares a record of 2 * MAX_METADATA_CHARS characters, and no data
    header = npy_header((), descr=f"<U{2 * MAX_METADATA_CHARS}")
    path = write_npz(tmp_path / "m.npz", {**model_members(), "metadata.npy": header})
    refused(load_model, path, "its metadata has 8,388,608 characters, more than the 4,194,304")


def test_parameters_over_the_limit_together_are_refused(tmp_path):
    # each member alone is within MAX_PARAM_ELEMENTS; together they are not
    H_big = MAX_PARAM_ELEMENTS // 784 - 10
    members = {**model_members(), "W1.npy": npy_header((784, H_big)),
               "b1.npy": npy_header((H_big,)), "W2.npy": npy_header((H_big, 10)),
               "b2.npy": npy_header((10,))}
    refused(load_model, write_npz(tmp_path / "m.npz", members),
            r"its parameters declare [\d,]+ elements, more than the 100,000,000")


def _zip_with_lying_size(path: Path, members: dict[str, bytes], liar: str, file_size: int):
    """A stored archive whose central directory says member `liar` is `file_size` bytes."""
    write_npz(path, members)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(liar)
    # the central directory entry: signature, then sizes at offsets 20 (compressed) and 24
    name = liar.encode()
    at = data.rfind(b"PK\x01\x02", 0, data.rfind(name))
    assert data[at + 46:at + 46 + len(name)] == name
    data[at + 24:at + 28] = file_size.to_bytes(4, "little")
    data[at + 20:at + 24] = (file_size if info.compress_type == zipfile.ZIP_STORED
                             else info.compress_size).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


def test_member_sizes_that_lie_are_refused(tmp_path):
    members = model_members()
    size = len(members["W1.npy"])
    for i, claimed in enumerate([size - 8, size + 8, 2**32 - 1]):
        path = _zip_with_lying_size(tmp_path / f"m{i}.npz", members, "W1.npy", claimed)
        refused(load_model, path, "not a readable anynet model file")


def test_deflated_member_claiming_more_than_deflate_can_is_refused(tmp_path):
    path = tmp_path / "bomb.npz"
    members = model_members()
    write_npz(path, members, deflate=True)
    data = bytearray(path.read_bytes())
    name = b"W1.npy"
    at = data.rfind(b"PK\x01\x02", 0, data.rfind(name))
    data[at + 24:at + 28] = (2**32 - 1).to_bytes(4, "little")  # 4 GiB from a few kB
    path.write_bytes(bytes(data))
    refused(load_model, path, "member W1.npy claims to expand .* more than deflate can")


def _deflated_zeros_member(path: Path, members: dict[str, bytes], name: str, nbytes: int):
    """A model archive plus a deflated member `name` of `nbytes` zero bytes (mostly)."""
    write_npz(path, members)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf, zf.open(name, "w",
                                                                         force_zip64=True) as f:
        block = bytes(1 << 20)
        for _ in range(nbytes >> 20):
            f.write(block)
    return path


def test_unused_members_are_not_read(tmp_path):
    # before: np.load read every member; a 128 MiB one of zeros, 130 kB on disk, cost 128 MiB
    path = _deflated_zeros_member(tmp_path / "m.npz", model_members(), "junk.npy", 128 << 20)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"


def test_unknown_members_are_harmless(tmp_path):
    members = {**model_members(), "velocity.W1.npy": b"garbage", "notes.txt": b"hello"}
    record = _assert_loads_as_written(write_npz(tmp_path / "m.npz", members))
    assert "notes" not in record and "velocity" not in record


# ----------------------------------------------------------------------------- not files


def test_folder_and_missing_file(tmp_path):
    refused(load_model, tmp_path, "is a folder, not a file")
    refused(load_model, tmp_path / "nope.npz", "does not exist")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "model.npz"
    os.mkfifo(fifo)

    def hung(signum, frame):
        raise AssertionError("loading a FIFO hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        refused(load_model, fifo, "is not a regular file")  # before: waited forever
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="no /proc here")
def test_a_file_that_cannot_be_read_is_one_line():
    refused(load_model, Path("/proc/self/mem"), "/proc/self/mem")  # before: OSError 5


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    path = write_npz(tmp_path / "m.npz", model_members())
    path.chmod(0)
    refused(load_model, path, "cannot be read")


@pytest.mark.parametrize("members", [2000, 60_000])
def test_a_huge_table_of_contents_is_refused_before_it_is_parsed(tmp_path, members):
    path = tmp_path / "m.npz"
    save_model(path, TwoLayerNet(n_hidden=3))
    with zipfile.ZipFile(path, "a") as zf:  # unused, empty members: each costs zipfile memory
        for i in range(members):
            zf.writestr(f"x{i}", b"")
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=r"table of contents lists \d+ members"):
            load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20  # the end record alone was read


def test_a_few_extra_members_are_still_fine(tmp_path):
    path = tmp_path / "m.npz"
    save_model(path, TwoLayerNet(n_hidden=3))
    with zipfile.ZipFile(path, "a") as zf:
        for i in range(50):
            zf.writestr(f"notes/{i}.txt", b"hello")
    assert load_model(path)[0].sizes == (784, 3, 10)
