"""The training tool through `anynet.cli.main`: train, evaluate, resume, divergence, errors.

Runs on small synthetic MNIST-format data (tests/data_helpers.py) on the backend under test;
one test trains on genuine MNIST where it is available.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal

import numpy as np
import pytest
from data_helpers import make_mnist_dir

from anynet import training
from anynet.cli import main
from anynet.modelio import load_checkpoint, load_model, save_model
from anynet.network import TwoLayerNet


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_mnist_dir(tmp_path_factory.mktemp("synth"), n_train=1100, n_test=200, seed=0)


@pytest.fixture
def train_args(synth, backend):
    # --threads 1: the thread count is part of what a run computes (BLAS sums differ in their
    # last bits between counts), and the default follows how busy the machine is, so two runs
    # compared bit for bit must not leave it to the default
    def args(out, *extra):
        return ["train", "--data-dir", str(synth), "--no-verify", "--backend", backend.spec,
                "--hidden", "16", "--epochs", "5", "--batch-size", "32", "--lr", "0.2",
                "--val-size", "100", "--threads", "1", "--out", str(out), *extra]
    return args


def signal_during_step(monkeypatch, n: int, signum: int) -> None:
    """Send `signum` to this process, through the real handler, during the n-th training step
    (1-based, counted over the run): the moment a user's Ctrl-C lands, whatever the window of
    losses the loop has not read yet."""
    make, calls = training.make_train_step, []

    def make_signalled(*args, **kwargs):
        step = make(*args, **kwargs)

        class Signalled:
            def __call__(self, batch, lr):
                calls.append(batch)
                if len(calls) == n:
                    os.kill(os.getpid(), signum)
                return step(batch, lr)

            def __getattr__(self, name):
                return getattr(step, name)

        return Signalled()

    monkeypatch.setattr(training, "make_train_step", make_signalled)


def params_of(path):
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in ("W1", "b1", "W2", "b2")}


def test_train_then_evaluate(tmp_path, train_args, synth, backend, capsys):
    out = tmp_path / "model.npz"
    assert main(train_args(out, "--metrics", str(tmp_path / "m.json"))) == 0
    text = capsys.readouterr().out
    assert "784-16-10 network" in text and "learning rate 0.2" in text
    assert len(re.findall(r"^epoch +\d/5 +train loss [\d.]+ +val acc [\d.]+%", text, re.M)) == 5
    acc = float(re.search(r"test accuracy ([\d.]+)%", text).group(1))
    assert acc >= 90.0
    assert out.exists() and not (tmp_path / "model.checkpoint.npz").exists()

    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["format"] == "anynet-metrics" and len(metrics["epochs"]) == 5
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    assert metrics["test_accuracy"] == pytest.approx(acc / 100, abs=5e-5)

    net, record = load_model(out)
    assert net.sizes == (784, 16, 10) and record["format"] == "anynet-model"
    assert record["config"]["lr"] == 0.2 and record["backend"] == backend.spec
    assert record["data"]["genuine"] is False and len(record["data"]["sha256"]) == 4
    assert record["metrics"]["test_accuracy"] == metrics["test_accuracy"]

    assert main(["evaluate", str(out), "--data-dir", str(synth), "--no-verify", "--json",
                 "--backend", backend.spec]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-12)
    assert np.array(report["confusion"]).sum() == 200
    assert np.trace(np.array(report["confusion"])) == round(report["accuracy"] * 200)

    assert main(["evaluate", str(out), "--data-dir", str(synth), "--no-verify"]) == 0
    text = capsys.readouterr().out
    assert "confusion matrix" in text and "per-class accuracy" in text


def test_every_option_is_recorded(tmp_path, train_args, capsys):
    out = tmp_path / "model.npz"
    assert main(train_args(out, "--momentum", "0.9", "--nesterov", "--weight-decay", "1e-4",
                           "--schedule", "step", "--dtype", "float64", "--seed", "7")) == 0
    text = capsys.readouterr().out
    assert "Nesterov momentum 0.9, weight decay 0.0001" in text and "step schedule" in text
    net, record = load_model(out)
    assert net.dtype == "float64"
    cfg = record["config"]
    assert (cfg["momentum"], cfg["nesterov"], cfg["weight_decay"], cfg["schedule"], cfg["seed"],
            cfg["dtype"], cfg["val_size"]) == (0.9, True, 1e-4, "step", 7, "float64", 100)
    # the step schedule divides by 10 at half and three quarters of the steps
    lrs = [e["lr"] for e in record["history"]]
    assert lrs[0] == pytest.approx(0.2) and lrs[-1] == pytest.approx(0.002)


def test_a_recipe_is_the_base_and_options_override_it(tmp_path, train_args, capsys):
    """--recipe h800-affine with --hidden 16 --epochs 5 from train_args (given explicitly):
    the recipe's momentum, schedule and distortions, the options' size and length; the recipe
    named in the model file."""
    from anynet.recipes import RECIPES

    out = tmp_path / "model.npz"
    assert main(train_args(out, "--recipe", "h800-affine", "--rotate", "10")) == 0
    text = capsys.readouterr().out
    assert "distortions: affine (rotate +-10 deg" in text
    _, record = load_model(out)
    cfg, recipe = record["config"], RECIPES["h800-affine"]
    assert (cfg["hidden"], cfg["epochs"], cfg["rotate"]) == (16, 5, 10.0)
    assert (cfg["momentum"], cfg["nesterov"], cfg["augment"], cfg["weight_decay"]) == (
        recipe["momentum"], recipe["nesterov"], "affine", recipe["weight_decay"])
    assert record["recipe"] == "h800-affine"


def test_train_help_lists_the_recipes(capsys):
    from anynet.recipes import RECIPES

    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(f"{name}:" in text for name in RECIPES)


def test_same_seed_same_model(tmp_path, train_args):
    a, b, c = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
    assert main(train_args(a, "--quiet")) == 0
    assert main(train_args(b, "--quiet")) == 0
    assert main(train_args(c, "--quiet", "--seed", "1")) == 0
    pa, pb, pc = params_of(a), params_of(b), params_of(c)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])  # bit for bit
    assert not np.array_equal(pa["W1"], pc["W1"])


@pytest.mark.parametrize("signum, code, momentum", [(signal.SIGTERM, 143, "0.5"),
                                                   (signal.SIGINT, 130, "0")])
def test_interrupt_then_resume_equals_uninterrupted(tmp_path, train_args, monkeypatch, capsys,
                                                     signum, code, momentum):
    whole = tmp_path / "whole.npz"
    assert main(train_args(whole, "--quiet", "--momentum", momentum)) == 0

    signal_during_step(monkeypatch, 32 + 7, signum)  # epoch 2, batch 7 of 32
    out = tmp_path / "model.npz"
    assert main(train_args(out, "--momentum", momentum)) == code
    text = capsys.readouterr().out
    ckpt = tmp_path / "model.checkpoint.npz"
    assert f"interrupted ({signal.Signals(signum).name}) at epoch 2, batch 7/32" in text
    assert f"anynet train --resume {ckpt}" in text
    assert not out.exists()
    _, velocity, record = load_checkpoint(ckpt)
    assert (record["epoch"], record["batch"], record["step"]) == (1, 7, 39)
    assert len(record["history"]) == 1
    if momentum != "0":
        assert set(velocity) == {"W1", "b1", "W2", "b2"}

    monkeypatch.undo()
    assert main(["train", "--resume", str(ckpt), "--out", str(out), "--data-dir",
                 *train_args(out)[2:3], "--no-verify"]) == 0
    assert "resuming from" in capsys.readouterr().out
    resumed, uninterrupted = params_of(out), params_of(whole)
    for k in resumed:
        np.testing.assert_array_equal(resumed[k], uninterrupted[k])
    a, b = load_model(out)[1]["history"], load_model(whole)[1]["history"]
    assert [h["train_loss"] for h in a] == [h["train_loss"] for h in b]
    assert not ckpt.exists()


def test_resume_refuses_a_different_configuration(tmp_path, train_args, monkeypatch, capsys):
    signal_during_step(monkeypatch, 3, signal.SIGTERM)
    out = tmp_path / "model.npz"
    assert main(train_args(out, "--quiet")) == 143
    capsys.readouterr()
    ckpt = tmp_path / "model.checkpoint.npz"
    assert main(["train", "--resume", str(ckpt), "--lr", "0.5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.5 (checkpoint: 0.2)" in err and err.count("\n") == 1


def test_divergence_stops_keeps_checkpoint_and_model(tmp_path, train_args, monkeypatch, capsys):
    out = tmp_path / "model.npz"
    out.write_bytes(b"an earlier model, which must survive, even with --force")
    real = training.make_schedule
    # a sane rate through epoch 1 (32 batches), then an absurd one
    monkeypatch.setattr(training, "make_schedule",
                        lambda name, lr, total: lambda step: real(name, lr, total)(step)
                        if step < 32 else 1e6)
    assert main(train_args(out, "--force")) == 3
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "training diverged at epoch 2" in err
    assert "Lower the learning rate (try --lr 0.02)" in err
    assert "model.checkpoint.npz, is kept" in err
    assert out.read_bytes() == b"an earlier model, which must survive, even with --force"
    _, _, record = load_checkpoint(tmp_path / "model.checkpoint.npz")
    assert (record["epoch"], record["batch"]) == (1, 0)


def test_huge_learning_rate_diverges(tmp_path, train_args, capsys):
    assert main(train_args(tmp_path / "m.npz", "--lr", "1e4")) == 3
    err = capsys.readouterr().err
    assert "diverged at epoch 1" in err and "no checkpoint had been written yet" in err


def test_model_round_trip_across_backends(tmp_path, train_args, synth, backend):
    from anynet.backend import to_numpy
    from anynet.data import load_mnist

    out = tmp_path / "model.npz"
    assert main(train_args(out, "--quiet")) == 0
    images = load_mnist(synth, verify=False).test_images
    expected = None
    for name in ("numpy", "array-api-strict", backend.name):
        pytest.importorskip(name.replace("-", "_"))
        net, _ = load_model(out, backend=name)
        probs = to_numpy(net.predict_proba(images))
        if expected is None:
            expected = probs
        np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--lr", "-1"], "expected a positive finite number"),
    (["--lr", "fast"], "expected a positive finite number, got 'fast'"),
    (["--momentum", "1.5"], "momentum must be a number in [0, 1)"),
    (["--nesterov"], "nesterov needs momentum > 0"),
    (["--hidden", "0"], "expected a positive integer"),
    (["--schedule", "linear"], "invalid choice"),
    (["--plot", "curves.txt"], "must end in .png, .svg or .pdf"),
    (["--resume", "nowhere.npz"], "checkpoint nowhere.npz does not exist"),
    (["--val-size", "5000"], "less than the 1100 training examples"),
    (["--augment", "swirl"], "invalid choice: 'swirl'"),
    (["--recipe", "h1000"], "invalid choice: 'h1000'"),
    (["--augment", "affine", "--rotate", "200"], "<= 180, got '200'"),
    # each option's bound keeps time and memory bounded (before: 57 s and 18.9 GB at 1e8, a
    # MemoryError at 1e9, an OverflowError, an IndexError)
    (["--augment", "elastic", "--sigma", "1e8"], "--sigma: expected a finite number > 0"),
    (["--augment", "elastic", "--sigma", "1e300"], "> 0 and <= 100, got '1e300'"),
    (["--augment", "affine", "--shear", "1e308"], "--shear: expected a finite number >= 0"),
    (["--augment", "elastic", "--alpha", "1e308"], "--alpha: expected a finite number >= 0 and"),
    (["--epochs", "100000"], "--epochs: expected at most 10000"),
    (["--batch-size", "10000000", "--hidden", "30"], "batch_size x hidden must be at most"),
])
def test_bad_train_options_exit_2(tmp_path, train_args, capsys, argv, message):
    assert main(train_args(tmp_path / "m.npz", *argv)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_data_dir_exits_2(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path / "none"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("anynet: error:") and err.count("\n") == 1


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_bytes(b"not a zip at all"), "not an .npz archive (a zip file)"),
    (lambda p: p.write_bytes(b"PK\x03\x04 but cut short"), "not a readable anynet model file"),
    (lambda p: np.savez(p, W1=np.zeros((2, 2))), "has no 'metadata' entry"),
    (lambda p: save_model(p, TwoLayerNet(100, 5, 10)), "100-5-10 network"),
    (lambda p: save_model(p, _nan_net()), "non-finite values"),
    (lambda p: np.savez(p, metadata=np.array('{"format": "anynet-model", "format_version": 9}')),
     "newer than this anynet"),
    (lambda p: np.savez(p, metadata=np.array([{"a": 1}], dtype=object)),
     "not a readable anynet model file"),
])
def test_bad_model_files_exit_2(tmp_path, synth, capsys, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    assert main(["evaluate", str(path), "--data-dir", str(synth), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def _nan_net():
    net = TwoLayerNet(n_hidden=4)
    net.params["b1"] = net.params["b1"] + np.nan
    return net


def test_gradcheck_fails_with_exit_1_when_gradients_disagree(monkeypatch, capsys):
    import anynet.gradcheck

    monkeypatch.setattr(anynet.gradcheck, "TOLERANCE", 1e-15)
    assert main(["gradcheck", "--entries", "10"]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.realdata
def test_one_epoch_on_genuine_mnist_reaches_93_percent(mnist_dir, tmp_path, backend, capsys):
    out = tmp_path / "model.npz"
    assert main(["train", "--data-dir", str(mnist_dir), "--epochs", "1", "--backend",
                 backend.name, "--out", str(out), "--quiet"]) == 0
    acc = float(re.search(r"test accuracy ([\d.]+)%", capsys.readouterr().out).group(1))
    assert acc >= 93.0
    assert load_model(out)[1]["data"]["genuine"] is True


# ----------------------------------------------------------------------------- outputs


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_an_existing_model_is_kept_unless_forced(tmp_path, train_args, capsys):
    out = tmp_path / "model.npz"
    out.write_bytes(b"a 30-epoch model")
    # refused before the data is loaded: a missing data folder is not what stops it
    argv = train_args(out, "--quiet")
    argv[argv.index("--data-dir") + 1] = str(tmp_path / "no-data-here")
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == (f"anynet: error: --out {out} exists; use --force to replace it, "
                    "or --out another name")
    assert out.read_bytes() == b"a 30-epoch model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]  # no lock, no temporary

    assert main(train_args(out, "--quiet", "--force", "--epochs", "1")) == 0
    assert load_model(out)[1]["format"] == "anynet-model"


@pytest.mark.parametrize("make, out, message", [
    (lambda d: (d / "models").mkdir(), "models",
     "--out {d}/models is a folder; name a file, e.g. {d}/models/model.npz"),
    (lambda d: None, "", "argument --out: expected a file name, got ''"),
    (lambda d: None, "sub/", "argument --out: expected a file name, got the folder"),
    (lambda d: (d / "notes.txt").write_text("x"), "notes.txt/m.npz",
     "--out {d}/notes.txt/m.npz: {d}/notes.txt is a file, not a folder"),
])
def test_an_unwritable_out_stops_before_training(tmp_path, train_args, capsys, make, out,
                                                  message):
    make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    argv = train_args(tmp_path / "x.npz")
    argv[argv.index("--out") + 1] = f"{tmp_path}/{out}" if out else ""
    assert main(argv) == 2
    assert message.format(d=tmp_path) in _one_line(capsys.readouterr().err)
    assert capsys.readouterr().out == ""  # not even the configuration: nothing was started
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("option", ["--metrics", "--plot"])
def test_an_unwritable_metrics_or_plot_stops_before_training(tmp_path, train_args, capsys,
                                                              option):
    (tmp_path / "curves.png").mkdir()
    assert main(train_args(tmp_path / "m.npz", option, str(tmp_path / "curves.png"))) == 2
    assert f"{option} {tmp_path}/curves.png is a folder" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "m.npz").exists()


def test_metrics_and_model_cannot_share_a_name(tmp_path, train_args, capsys):
    out = tmp_path / "m.npz"
    assert main(train_args(out, "--metrics", str(out))) == 2
    assert "--metrics" in _one_line(capsys.readouterr().err)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into a mode 0o555 folder anyway; "
                    "test_read_only_file_system_is_one_line covers the refusal")
def test_a_read_only_folder_stops_before_training(tmp_path, train_args, capsys):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    try:
        assert main(train_args(folder / "m.npz")) == 2
        assert f"cannot write in {folder} (Permission denied)" in \
            _one_line(capsys.readouterr().err)
    finally:
        folder.chmod(0o755)


def test_read_only_file_system_is_one_line(tmp_path, train_args, capsys, monkeypatch):
    import errno
    import tempfile

    real = tempfile.mkstemp

    def read_only(*a, dir=None, **kw):
        if str(dir).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    (tmp_path / "ro").mkdir()
    assert main(train_args(tmp_path / "ro" / "m.npz")) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"cannot write in {tmp_path}/ro (Read-only file system)" in line


def test_missing_parent_folders_are_created_when_the_model_is_written(tmp_path, train_args):
    out = tmp_path / "runs" / "a" / "model.npz"
    assert main(train_args(out, "--quiet", "--epochs", "1")) == 0
    assert out.exists()


def _failing_replace(monkeypatch, target_name: str, code: int):
    """Make atomic_write's final rename onto `target_name` fail with OSError `code`."""
    import errno  # noqa: F401

    from anynet import fileio

    real = os.replace

    def replace(src, dst, *a, **kw):
        if os.path.basename(dst) == target_name:
            raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(fileio.os, "replace", replace)


def test_full_disk_when_writing_the_model_keeps_the_trained_checkpoint(
        tmp_path, train_args, monkeypatch, capsys, synth):
    import errno

    whole = tmp_path / "whole.npz"
    assert main(train_args(whole, "--quiet")) == 0
    out = tmp_path / "model.npz"
    _failing_replace(monkeypatch, "model.npz", errno.ENOSPC)
    assert main(train_args(out, "--quiet")) == 2
    ckpt = tmp_path / "model.checkpoint.npz"
    line = _one_line(capsys.readouterr().err)
    assert line == (f"anynet: error: cannot write the model to {out} (No space left on device); "
                    f"the checkpoint {ckpt} holds the trained model: free some space, then "
                    f"finish with: anynet train --resume {ckpt} --data-dir {synth} --no-verify")
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    assert load_checkpoint(ckpt)[2]["epoch"] == 5

    monkeypatch.undo()
    assert main(["train", "--resume", str(ckpt), "--data-dir", str(synth), "--no-verify"]) == 0
    for k, v in params_of(out).items():
        np.testing.assert_array_equal(v, params_of(whole)[k])
    assert not ckpt.exists()


def test_full_disk_when_writing_the_metrics_keeps_the_checkpoint(tmp_path, train_args,
                                                                  monkeypatch, capsys, synth):
    import errno

    out, metrics = tmp_path / "model.npz", tmp_path / "metrics.json"
    _failing_replace(monkeypatch, "metrics.json", errno.ENOSPC)
    assert main(train_args(out, "--quiet", "--epochs", "2", "--metrics", str(metrics))) == 2
    ckpt = tmp_path / "model.checkpoint.npz"
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"anynet: error: the model is written to {out}, but cannot write the "
                           f"metrics to {metrics} (No space left on device); the checkpoint "
                           f"{ckpt} is kept: free some space, then write it with: anynet train "
                           f"--resume {ckpt}")
    assert line.endswith("--metrics " + str(metrics) + " --force")
    assert out.exists() and ckpt.exists() and not metrics.exists()

    monkeypatch.undo()
    assert main(["train", "--resume", str(ckpt), "--data-dir", str(synth), "--no-verify",
                 "--metrics", str(metrics), "--force", "--quiet"]) == 0
    assert json.loads(metrics.read_text())["format"] == "anynet-metrics"
    assert not ckpt.exists()


def test_full_disk_when_writing_a_checkpoint_stops_with_one_line(tmp_path, train_args,
                                                                  monkeypatch, capsys):
    import errno

    from anynet.modelio import _npz  # where checkpoints (and .npz model files) are written

    real, calls = _npz.atomic_write_bytes, []

    def second_fails(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    monkeypatch.setattr(_npz, "atomic_write_bytes", second_fails)
    out = tmp_path / "model.npz"
    assert main(train_args(out, "--quiet")) == 2
    ckpt = tmp_path / "model.checkpoint.npz"
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"anynet: error: training stopped: cannot write the checkpoint {ckpt} "
                           "(No space left on device); the previous checkpoint is kept: free "
                           f"some space, then resume with: anynet train --resume {ckpt}")
    assert load_checkpoint(ckpt)[2]["epoch"] == 1 and not out.exists()


# ----------------------------------------------------------------------------- one run per output


def test_a_second_run_on_the_same_out_is_refused(tmp_path, train_args, capsys):
    from anynet.fileio import exclusive_lock, lock_path_for

    out = tmp_path / "model.npz"
    with exclusive_lock(out):  # as another run would hold it (flock: per open file)
        assert lock_path_for(out).read_text().strip() == str(os.getpid())
        assert main(train_args(out)) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == (f"anynet: error: another anynet train (pid {os.getpid()}) is writing {out}; "
                    "wait for it to end, or choose another --out")
    assert not out.exists() and not lock_path_for(out).exists()


def test_a_stale_lock_file_does_not_block(tmp_path, train_args):
    from anynet.fileio import lock_path_for

    out = tmp_path / "model.npz"
    lock_path_for(out).write_text("999999999\n")  # a run killed with -9 left it, unlocked
    assert main(train_args(out, "--quiet", "--epochs", "1")) == 0
    assert out.exists() and not lock_path_for(out).exists()


# ----------------------------------------------------------------------------- resume


def test_resume_writes_where_the_run_was_going_and_the_hint_says_all(tmp_path, train_args,
                                                                      monkeypatch, capsys, synth):
    signal_during_step(monkeypatch, 32 + 3, signal.SIGINT)
    out = tmp_path / "sub" / "named.npz"
    assert main(train_args(out, "--quiet")) == 130
    ckpt = tmp_path / "sub" / "named.checkpoint.npz"
    text = capsys.readouterr().out
    assert f"resume with: anynet train --resume {ckpt} --data-dir {synth} --no-verify\n" in text
    assert load_checkpoint(ckpt)[2]["out"] == str(out)

    monkeypatch.undo()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the recorded path is absolute: any folder will do
    assert main(["train", "--resume", str(ckpt), "--data-dir", str(synth), "--no-verify",
                 "--quiet"]) == 0
    assert out.exists() and not ckpt.exists() and not list(elsewhere.iterdir())


def test_a_run_told_to_replace_its_metrics_resumes_with_force(tmp_path, train_args, monkeypatch,
                                                               capsys, synth):
    # the metrics file exists and --force said to replace it: the resume command says so too
    metrics = tmp_path / "metrics.json"
    metrics.write_text("an old run's metrics")
    signal_during_step(monkeypatch, 32 + 3, signal.SIGINT)
    out = tmp_path / "m.npz"
    assert main(train_args(out, "--quiet", "--metrics", str(metrics), "--force")) == 130
    hint = capsys.readouterr().out.split("resume with: ")[1].strip()
    assert hint.endswith("--force") and f"--metrics {metrics}" in hint
    monkeypatch.undo()
    assert main([*shlex.split(hint)[1:], "--quiet"]) == 0
    assert json.loads(metrics.read_text())["format"] == "anynet-metrics"


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
    (["--lr", "1e308"], "argument --lr: expected at most 1e+06, got 1e308"),
    (["--weight-decay", "1e308"], "argument --weight-decay: expected at most 1, got 1e308"),
    (["--lr", "-1"], "argument --lr: expected a positive finite number, got -1"),
])
def test_option_errors_are_one_line(tmp_path, train_args, capsys, argv, message):
    assert main(train_args(tmp_path / "m.npz", *argv)) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == f"anynet train: error: {message} (see anynet train --help)"


@pytest.mark.parametrize("argv", [["--lr", "1e6"], ["--lr", "50", "--weight-decay", "1"]])
def test_absurd_rates_diverge_without_warnings(tmp_path, train_args, capsys, argv):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(train_args(tmp_path / "m.npz", *argv)) == 3
    assert [str(w.message) for w in caught] == []
    assert "training diverged" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "m.npz").exists()


def test_an_empty_test_set_is_an_error(tmp_path, train_args, capsys, monkeypatch):
    import dataclasses

    import anynet.data

    real = anynet.data.load_mnist

    def no_test_examples(*a, **kw):
        m = real(*a, **kw)
        return dataclasses.replace(m, test_images=m.test_images[:0], test_labels=m.test_labels[:0])

    monkeypatch.setattr(anynet.data, "load_mnist", no_test_examples)
    assert main(train_args(tmp_path / "m.npz")) == 2
    assert "has no test examples" in _one_line(capsys.readouterr().err)


def test_gradcheck_refuses_a_senseless_eps(capsys):
    for eps in ("1e308", "1", "1e-17"):
        assert main(["gradcheck", "--eps", eps, "--entries", "5"]) == 2
        assert "argument --eps: expected a step below 1" in _one_line(capsys.readouterr().err)
    assert main(["gradcheck", "--seed", "-1"]) == 2
    assert "expected an integer >= 0" in _one_line(capsys.readouterr().err)


def test_gradcheck_fails_on_nan(monkeypatch, capsys):
    import anynet.gradcheck

    real = anynet.gradcheck.check_gradients
    monkeypatch.setattr(anynet.gradcheck, "check_gradients",
                        lambda *a, **kw: {**real(*a, **kw), "b1": float("nan")})
    assert main(["gradcheck", "--entries", "5"]) == 1
    out = capsys.readouterr().out
    assert "largest relative error nan  FAIL" in out
    assert "FAILED: the relative error of b1 is not finite" in out and "passed" not in out


def test_the_thread_count_is_recorded_and_a_resumed_run_keeps_it(tmp_path, train_args,
                                                                  monkeypatch, capsys):
    # BLAS sums differ in their last bits between thread counts: a resumed run must use the
    # count the run began with to end bit for bit where an uninterrupted one would
    signal_during_step(monkeypatch, 5, signal.SIGINT)
    out = tmp_path / "m.npz"
    assert main(train_args(out, "--threads", "1")) == 130
    # the count in effect: 1, except on a JAX whose CPU pool this process already made
    used = int(re.search(r", (\d+) CPU threads?\n", capsys.readouterr().out).group(1))
    ckpt = tmp_path / "m.checkpoint.npz"
    assert load_checkpoint(ckpt)[2]["threads"] == used
    monkeypatch.undo()
    assert main(["train", "--resume", str(ckpt), *train_args(out)[1:4]]) == 0
    assert f", {used} CPU thread" in capsys.readouterr().out
    assert load_model(out)[1]["threads"] == used


def test_evaluate_refuses_a_model_whose_outputs_overflow(tmp_path, synth, backend, capsys):
    net = TwoLayerNet(n_hidden=5, seed=0)
    params = net.host_params()
    params["W1"][:] = np.float32(3e38)  # finite, but every product overflows
    save_model(tmp_path / "huge.npz", TwoLayerNet.from_params(params))
    code = main(["evaluate", str(tmp_path / "huge.npz"), "--data-dir", str(synth), "--no-verify",
                 "--backend", backend.spec])
    err = capsys.readouterr().err
    assert code == 2 and "non-finite outputs" in err and err.count("\n") == 1, err


def test_the_model_records_when_it_was_trained(tmp_path, train_args):
    from datetime import datetime, timedelta, timezone

    out = tmp_path / "m.npz"
    before = datetime.now(timezone.utc).replace(microsecond=0)
    assert main(train_args(out, "--quiet", "--epochs", "1")) == 0
    trained = datetime.fromisoformat(load_model(out)[1]["trained_at"].replace("Z", "+00:00"))
    assert before <= trained <= datetime.now(timezone.utc) + timedelta(seconds=1)


def test_a_new_run_keeps_an_interrupted_run_s_checkpoint(tmp_path, train_args, monkeypatch,
                                                         capsys):
    # before: the new run wrote over the checkpoint and deleted it when it finished
    signal_during_step(monkeypatch, 3, signal.SIGTERM)
    out = tmp_path / "model.npz"
    assert main(train_args(out, "--quiet")) == 143
    capsys.readouterr()
    monkeypatch.undo()
    ckpt = tmp_path / "model.checkpoint.npz"
    kept = ckpt.read_bytes()
    assert main(train_args(out, "--quiet")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"resume it with --resume {ckpt}" in err
    assert ckpt.read_bytes() == kept and not out.exists()
    assert main(train_args(out, "--quiet", "--force")) == 0  # asked for: a new run
    assert out.exists() and not ckpt.exists()


def test_a_checkpoint_never_makes_anynet_import_its_backend(tmp_path, train_args, monkeypatch,
                                                           capsys):
    # before: the checkpoint's backend was imported by name, running that module's code
    from anynet.modelio import load_checkpoint, save_checkpoint

    marker = tmp_path / "imported"
    (tmp_path / "anynet_hostile_backend.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    signal_during_step(monkeypatch, 3, signal.SIGTERM)
    out = tmp_path / "model.npz"
    assert main(train_args(out, "--quiet")) == 143
    capsys.readouterr()
    ckpt = tmp_path / "model.checkpoint.npz"
    params, velocity, record = load_checkpoint(ckpt)
    record["config"]["backend"] = "anynet_hostile_backend"
    save_checkpoint(ckpt, params, velocity, record)
    assert main(["train", "--resume", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --backend 'anynet_hostile_backend'" in err, err
    assert not marker.exists()
