"""The library path from a TrainConfig and data to a model file (anynet.fit), and the config's
own validation (every way of making a TrainConfig checks it)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from anynet.config import TrainConfig
from anynet.fit import metrics_document, train_model, utc_timestamp, write_model
from anynet.modelio import load_model
from anynet.optim import SGD
from anynet.training import Trainer


def _blobs(n: int, d: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """n points of k well-separated Gaussian blobs in d dimensions, as floats (the reference
    step takes features; the fast one, pixels)."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % k
    centres = rng.normal(0, 4, (k, d))
    return (centres[labels] + rng.normal(0, 0.5, (n, d))).astype(np.float32), labels


def test_the_network_is_sized_by_the_data_and_the_record_says_what_it_learned(tmp_path):
    X, y = _blobs(300, 5, 3)
    config = TrainConfig(hidden=8, epochs=4, batch_size=16, lr=0.1, val_size=0)
    trained = train_model(config, X[:240], y[:240], test=(X[240:], y[240:]), fast=False,
                          data={"source": "blobs", "sha256": {}, "genuine": False})
    assert trained.status == "finished" and trained.net.sizes == (5, 8, 3)
    record = trained.record
    assert record["config"] == config.to_dict() and record["seed"] == 0
    assert record["data"] == {"source": "blobs", "sha256": {}, "genuine": False,
                              "train_examples": 240, "val_examples": 0}
    assert record["metrics"]["epochs"] == 4 == len(record["history"])
    assert record["metrics"]["test_accuracy"] == 1.0  # the blobs are far apart
    assert record["trained_at"].endswith("Z") and len(record["trained_at"]) == 20

    path = tmp_path / "blobs.npz"
    write_model(path, trained.net, record, threads=1)
    net, saved = load_model(path)
    assert net.sizes == (5, 8, 3) and saved["threads"] == 1
    assert saved["metrics"] == record["metrics"] and saved["architecture"]["classes"] == 3
    assert metrics_document(record)["test_accuracy"] == 1.0


def test_n_classes_given_wins_over_the_labels_seen():
    X, y = _blobs(40, 4, 2)
    trained = train_model(TrainConfig(hidden=3, epochs=1, val_size=0), X, y, n_classes=10,
                          fast=False)
    assert trained.net.sizes == (4, 3, 10) and trained.record["metrics"]["test_accuracy"] is None


def test_utc_timestamp_is_one_format():
    from datetime import datetime, timedelta, timezone

    when = datetime(2026, 1, 31, 13, 0, 5, tzinfo=timezone(timedelta(hours=1)))
    assert utc_timestamp(when) == "2026-01-31T12:00:05Z"


@pytest.mark.parametrize("make", [
    lambda: TrainConfig(momentum=1.0),
    lambda: dataclasses.replace(TrainConfig(), lr=0.0),
    lambda: dataclasses.replace(TrainConfig(), nesterov=True),
    lambda: TrainConfig(hidden=True),
    lambda: TrainConfig(epochs=10**6),
])
def test_every_way_of_making_a_config_checks_it(make):
    with pytest.raises(ValueError):
        make()


def test_sgd_and_the_config_share_one_rule():
    for make in (lambda: SGD(lr=0.1, nesterov=True), lambda: TrainConfig(nesterov=True)):
        with pytest.raises(ValueError, match="nesterov needs momentum > 0"):
            make()
    assert TrainConfig(lr=np.float64(0.5), hidden=np.int64(7)).to_dict()["hidden"] == 7
    assert type(TrainConfig(lr=1).lr) is float


def test_the_trainer_takes_only_a_config():
    X, y = _blobs(10, 3, 2)
    with pytest.raises(TypeError, match="TrainConfig"):
        Trainer(TrainConfig().to_dict(), X, y)


def test_checkpoints_of_any_data_resume_and_refuse_other_data(tmp_path):
    # before: the Trainer sized 5-8-3 from the data, but load_checkpoint called it damaged for
    # not being 784-8-10
    from anynet.errors import ModelFileError
    from anynet.modelio import load_checkpoint

    X, y = _blobs(300, 5, 3)
    config = TrainConfig(hidden=8, epochs=2, batch_size=16, lr=0.1, val_size=0)
    ckpt = tmp_path / "blobs.checkpoint.npz"
    whole = train_model(config, X, y, checkpoint_path=ckpt)
    params, velocity, record = load_checkpoint(ckpt)
    assert params["W1"].shape == (5, 8) and params["W2"].shape == (8, 3)
    resumed = train_model(config, X, y, resume=(params, velocity, record))
    np.testing.assert_array_equal(resumed.net.host_params()["W1"], whole.net.host_params()["W1"])
    wider = np.hstack([X, X[:, :1]])
    with pytest.raises(ModelFileError, match="takes 5 inputs to 3 classes; this data has 6 "
                                             "inputs and 3 classes"):
        train_model(config, wider, y, resume=(params, velocity, record))
