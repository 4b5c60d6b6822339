"""Training's levers in the training loop and on the command line: runs resumed from any
checkpoint equal the uninterrupted ones bit for bit with each lever on, the averaged weights are
what the epochs report and the model file holds, the levers are recorded, and bad values are
refused in one line (exit 2)."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import make_mnist_dir

from anynet.backend import get_backend, to_numpy
from anynet.cli import main
from anynet.config import TrainConfig
from anynet.errors import ModelFileError
from anynet.levers import ema_weights
from anynet.modelio import load_checkpoint, load_model, save_checkpoint
from anynet.network import TwoLayerNet
from anynet.training import Callback, Trainer
from tests.test_training import StopAtEpochEnd, host, learnable, stop_during_step


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_mnist_dir(tmp_path_factory.mktemp("synth"), n_train=1100, n_test=200, seed=0)


@pytest.fixture(scope="module")
def synth_data(synth):
    from anynet.data import load_mnist

    return load_mnist(synth, val_size=100, verify=False)


LEVER_CONFIGS = {
    "dropout": dict(dropout=0.5),
    "input dropout + smoothing": dict(input_dropout=0.2, label_smoothing=0.1, momentum=0.5),
    "ema": dict(average="ema:0.9", momentum=0.5),
    "swa": dict(average="swa:2", dropout=0.2),
}


def config(**levers):
    return TrainConfig(hidden=8, epochs=3, batch_size=32, lr=0.1, val_size=0, **levers)


@pytest.mark.parametrize("lever", LEVER_CONFIGS)
@pytest.mark.parametrize("stop_epoch, stop_batch", [(0, 0), (1, 0), (1, 7)])
def test_resume_equals_the_uninterrupted_run_with_each_lever(tmp_path, backend, monkeypatch,
                                                             lever, stop_epoch, stop_batch):
    images, labels = learnable()
    cfg = config(**LEVER_CONFIGS[lever])
    whole = Trainer(cfg, images, labels, backend=backend).fit()
    ckpt = tmp_path / "run.checkpoint.npz"
    callbacks = []
    if stop_batch:  # mid-epoch, 19 batches an epoch
        stop_during_step(monkeypatch, lambda: first_trainer, stop_epoch * 19 + stop_batch)
    else:
        callbacks = [StopAtEpochEnd(stop_epoch)]
    first_trainer = Trainer(cfg, images, labels, backend=backend, checkpoint_path=ckpt,
                            callbacks=callbacks)
    assert first_trainer.fit().status == "stopped"
    monkeypatch.undo()
    loaded = load_checkpoint(ckpt)
    averaging = cfg.averaging()[0] == "ema" or (cfg.averaging()[0] == "swa"
                                                and loaded[2]["epoch"] >= 2)
    assert bool(loaded.average) == averaging  # the checkpoint holds the average where there is one
    trainer = Trainer(cfg, images, labels, backend=backend, checkpoint_path=ckpt)
    resumed = trainer.fit(trainer.state_from_checkpoint(*loaded, average=loaded.average))
    assert resumed.status == "finished"
    for a, b in ((whole.state.params, resumed.state.params),
                 (whole.state.average, resumed.state.average),
                 (whole.net.params, resumed.net.params)):
        a, b = host(a), host(b)
        assert set(a) == set(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bit for bit
    assert whole.state.history == [{**h, "seconds": w["seconds"]} for h, w in
                                   zip(resumed.state.history, whole.state.history, strict=True)]


def test_a_lever_at_zero_is_the_run_without_it(backend):
    """dropout 0, input dropout 0, label smoothing 0: the default run, bit for bit."""
    images, labels = learnable()
    plain = Trainer(config(), images, labels, backend=backend).fit()
    zero = Trainer(config(dropout=0.0, input_dropout=0.0, label_smoothing=0.0, average="none"),
                   images, labels, backend=backend).fit()
    for k, v in host(plain.state.params).items():
        np.testing.assert_array_equal(host(zero.state.params)[k], v)
    assert [h["train_loss"] for h in plain.state.history] == \
        [h["train_loss"] for h in zero.state.history]


class Snapshots(Callback):
    """The trained weights at each epoch's end (from the epoch's checkpoint)."""

    def __init__(self):
        self.params = []

    def on_checkpoint(self, path, state):
        if state.batch == 0:  # copies: NumPy's fused step updates its arrays in place
            self.params.append({k: np.array(v, copy=True) for k, v in host(state.params).items()})


def test_swa_reports_and_returns_the_mean_of_the_epochs_weights(tmp_path, backend):
    images, labels = learnable()
    val_images, val_labels = learnable(n=200, seed=5)
    cfg = TrainConfig(hidden=8, epochs=4, batch_size=32, lr=0.1, val_size=0, average="swa:2")
    snapshots = Snapshots()
    result = Trainer(cfg, images, labels, val_images, val_labels, backend=backend,
                     checkpoint_path=tmp_path / "c.npz", callbacks=[snapshots]).fit()
    assert len(snapshots.params) == 4
    for k in ("W1", "b1", "W2", "b2"):
        mean = np.mean([s[k] for s in snapshots.params[1:]], axis=0)  # epochs 2, 3, 4
        np.testing.assert_allclose(to_numpy(result.net.params[k]), mean, rtol=1e-5, atol=1e-7)
    assert not np.array_equal(to_numpy(result.net.params["W1"]), snapshots.params[-1]["W1"])
    from anynet.training import loss_and_accuracy

    # epoch 1 reports the trained weights (no average yet); the last, the SWA's
    _, acc = loss_and_accuracy(result.net, val_images, val_labels)
    assert result.state.history[-1]["val_accuracy"] == acc


def test_ema_reports_and_returns_the_bias_corrected_average(backend, synth_data):
    mnist = synth_data
    cfg = TrainConfig(hidden=16, epochs=5, batch_size=32, lr=0.2, val_size=100,
                      average="ema:0.95")
    result = Trainer(cfg, mnist.train_images, mnist.train_labels, mnist.val_images,
                     mnist.val_labels, backend=backend).fit()
    expected = ema_weights(result.state.average, 0.95, result.state.step)
    for k, v in expected.items():
        np.testing.assert_array_equal(to_numpy(result.net.params[k]), to_numpy(v))
    assert not np.array_equal(to_numpy(result.net.params["W1"]),
                              to_numpy(result.state.params["W1"]))
    from anynet.training import loss_and_accuracy

    loss, acc = loss_and_accuracy(result.net, mnist.val_images, mnist.val_labels)
    assert (result.state.history[-1]["val_loss"], result.state.history[-1]["val_accuracy"]) == \
        (loss, acc)
    assert acc > 0.9  # the average learned too
    trained, _ = loss_and_accuracy(TwoLayerNet.from_params(result.state.params, backend=backend),
                                   mnist.val_images, mnist.val_labels)
    assert trained != loss  # and the reported figures are the average's, not the weights'


def test_the_backends_agree_with_every_lever(backend):
    images, labels = learnable()
    cfg = TrainConfig(hidden=8, epochs=2, batch_size=32, lr=0.1, val_size=0, dtype="float64",
                      momentum=0.5, dropout=0.3, input_dropout=0.1, label_smoothing=0.1,
                      average="ema:0.95")
    here = Trainer(cfg, images, labels, backend=backend).fit()
    ref = Trainer(cfg, images, labels, backend=get_backend("numpy"), fast=False).fit()
    for a, b in ((here.net.params, ref.net.params), (here.state.params, ref.state.params)):
        for k, v in host(b).items():
            np.testing.assert_allclose(host(a)[k], v, rtol=1e-9, atol=1e-12, err_msg=k)
    np.testing.assert_allclose([h["train_loss"] for h in here.state.history],
                               [h["train_loss"] for h in ref.state.history], rtol=1e-10)


# --- checkpoints -------------------------------------------------------------------------------


def _checkpoint(tmp_path, cfg, average):
    images, labels = learnable(n=64)
    trainer = Trainer(cfg, images, labels)
    state = trainer.initial_state()
    path = tmp_path / "c.npz"
    state.rng_state = np.random.default_rng(0).bit_generator.state
    save_checkpoint(path, host(state.params), host(state.velocity), state.record(cfg, {}),
                    average=average)
    return path, trainer


def test_a_checkpoint_without_its_average_is_refused(tmp_path):
    cfg = TrainConfig(hidden=4, epochs=2, batch_size=16, val_size=0, average="ema:0.9")
    path, trainer = _checkpoint(tmp_path, cfg, None)
    with pytest.raises(ModelFileError, match=r"lacks the averaged weights average\.W1"):
        load_checkpoint(path)
    path, trainer = _checkpoint(tmp_path, cfg, {k: np.zeros_like(v) for k, v in
                                                host(trainer.initial_state().params).items()})
    params, velocity, record = load_checkpoint(path)  # unpacks as before
    with pytest.raises(ModelFileError, match="averages its weights"):
        trainer.state_from_checkpoint(params, velocity, record)
    plain = TrainConfig(hidden=4, epochs=2, batch_size=16, val_size=0)
    path, _ = _checkpoint(tmp_path, plain, host(trainer.initial_state().params))
    with pytest.raises(ModelFileError, match="holds averaged weights that its config does not"):
        load_checkpoint(path)


def test_a_checkpoint_from_before_the_levers_loads(tmp_path):
    cfg = TrainConfig(hidden=4, epochs=2, batch_size=16, val_size=0)
    images, labels = learnable(n=64)
    state = Trainer(cfg, images, labels).initial_state()
    state.rng_state = np.random.default_rng(0).bit_generator.state
    record = state.record(cfg, {})
    for name in ("dropout", "input_dropout", "label_smoothing", "average"):
        del record["config"][name]
    save_checkpoint(tmp_path / "old.npz", host(state.params), {}, record)
    _, _, loaded = load_checkpoint(tmp_path / "old.npz")
    assert TrainConfig.from_dict(loaded["config"]) == cfg


# --- the command line --------------------------------------------------------------------------


def train_args(synth, out, *extra):
    # --threads 1: runs compared bit for bit must not take a thread count from the machine's load
    return ["train", "--data-dir", str(synth), "--no-verify", "--hidden", "16", "--epochs", "3",
            "--batch-size", "32", "--lr", "0.2", "--val-size", "100", "--threads", "1",
            "--out", str(out), *extra]


def test_the_levers_are_shown_recorded_and_saved(tmp_path, synth, capsys):
    out = tmp_path / "m.npz"
    assert main(train_args(synth, out, "--dropout", "0.25", "--input-dropout", "0.1",
                           "--label-smoothing", "0.05", "--average", "ema:.95")) == 0
    text = capsys.readouterr().out
    assert ("  levers: dropout 0.25, input dropout 0.1, label smoothing 0.05, weights averaged "
            "by an EMA of decay 0.95\n") in text
    _, record = load_model(out)
    cfg = record["config"]
    assert (cfg["dropout"], cfg["input_dropout"], cfg["label_smoothing"], cfg["average"]) == (
        0.25, 0.1, 0.05, "ema:0.95")
    assert record["metrics"]["test_accuracy"] > 0.5


def test_an_interrupted_run_with_levers_resumes_to_the_same_model(tmp_path, synth, capsys,
                                                                   monkeypatch):
    from tests.test_train_cli import params_of, signal_during_step

    levers = ["--dropout", "0.3", "--average", "swa:2", "--momentum", "0.5"]
    whole = tmp_path / "whole.npz"
    assert main(train_args(synth, whole, "--quiet", *levers)) == 0
    import signal

    signal_during_step(monkeypatch, 32 + 5, signal.SIGTERM)  # epoch 2 (32 batches), batch 5
    out = tmp_path / "m.npz"
    assert main(train_args(synth, out, *levers)) == 143
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "m.checkpoint.npz"), "--data-dir",
                 str(synth), "--no-verify"]) == 0
    capsys.readouterr()
    for k, v in params_of(whole).items():
        np.testing.assert_array_equal(params_of(out)[k], v)


@pytest.mark.parametrize("argv, message", [
    (["--dropout", "1"], "--dropout: expected a number in [0, 0.95], got '1'"),
    (["--dropout", "-0.1"], "--dropout: expected a number in [0, 0.95], got '-0.1'"),
    (["--dropout", "nan"], "--dropout: expected a number in [0, 0.95], got 'nan'"),
    (["--input-dropout", "0.99"], "--input-dropout: expected a number in [0, 0.95]"),
    (["--label-smoothing", "0.6"], "--label-smoothing: expected a number in [0, 0.5]"),
    (["--average", "ema:1"], "--average: expected none, ema:DECAY (0 < DECAY <= 0.999999)"),
    (["--average", "ema:0"], "got 'ema:0'"),
    (["--average", "swa:0"], "got 'swa:0'"),
    (["--average", "swa:2.5"], "got 'swa:2.5'"),
    (["--average", "mean"], "got 'mean'"),
    (["--average", "swa:4"], "average swa:4 starts after the last epoch (3); start it at an "
                             "epoch from 1 to 3"),
])
def test_bad_lever_values_exit_2_in_one_line(tmp_path, synth, capsys, argv, message):
    assert main(train_args(synth, tmp_path / "m.npz", *argv)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "m.npz").exists()


def test_config_checks_the_levers():
    assert TrainConfig(average="ema:.999").average == "ema:0.999"
    assert TrainConfig(average=" swa:3 ").average == "swa:3"
    assert TrainConfig.from_dict({"dropout": np.float64(0.5)}).dropout == 0.5
    for bad, words in [({"dropout": 0.96}, r"dropout must be a number in \[0, 0.95\]"),
                       ({"dropout": True}, "dropout must be a number"),
                       ({"label_smoothing": 0.51}, r"label_smoothing must be a number in \[0, "
                                                   r"0.5\]"),
                       ({"average": "ema:1e-400"}, "average must be none, ema:DECAY"),
                       ({"average": None}, "average must be"),
                       ({"average": "swa:31"}, "starts after the last epoch")]:
        with pytest.raises(ValueError, match=words):
            TrainConfig.from_dict(bad)


def test_train_help_shows_the_levers(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--dropout P", "--input-dropout P", "--label-smoothing EPS",
                  "--average KIND", "ema:DECAY", "swa:START"):
        assert words in text


def test_the_levers_can_be_swept_and_keep_old_run_ids():
    from anynet.sweep import Run, parse_values, run_id

    assert parse_values("dropout", "0,0.5") == [0.0, 0.5]
    assert parse_values("average", "none,ema:0.999") == ["none", "ema:0.999"]
    plain = Run(TrainConfig(), train_size=None, threads=1)
    off = Run(TrainConfig(dropout=0.0, average="none"), train_size=None, threads=1)
    assert run_id(plain) == run_id(off)  # a sweep made before the levers finds its runs
    ids = {run_id(Run(TrainConfig(**kw), train_size=None, threads=1)) for kw in (
        {}, {"dropout": 0.5}, {"input_dropout": 0.5}, {"label_smoothing": 0.1},
        {"average": "ema:0.99"}, {"average": "swa:3"})}
    assert len(ids) == 6
