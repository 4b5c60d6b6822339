"""Distillation (anynet.distill): a teacher's targets against NumPy written out here, the
gradient against central differences, every fast step equal to the reference step with a
teacher (with dropout and smoothing too) on the backend under test, the Trainer's checks, and
the command line's --teacher: recorded, resumed bit for bit, a changed teacher refused."""

from __future__ import annotations

import signal

import numpy as np
import pytest
from data_helpers import make_mnist_dir

from anynet.cli import main
from anynet.committee import Committee
from anynet.config import TrainConfig, check_temperature
from anynet.distill import Teacher
from anynet.gradcheck import check_gradients, eps_and_tolerance
from anynet.levers import Levers
from anynet.modelio import load_checkpoint, load_model
from anynet.network import TwoLayerNet
from anynet.steps import ArrayAPIStep, FusedStep
from anynet.training import Trainer
from tests.test_levers import assert_same_run, run_steps
from tests.test_steps import fast_step_of


def _softmax(Z):
    E = np.exp(Z - Z.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


def teacher_of(backend, hidden=(7, 12), dtype="float64", weight=0.4, temperature=2.0):
    nets = [TwoLayerNet(n_hidden=h, seed=10 + i, dtype=dtype, backend=backend)
            for i, h in enumerate(hidden)]
    for net in nets:  # weights large enough that the teacher's outputs are far from uniform
        net.params = {k: v * 4 for k, v in net.params.items()}
    return Teacher(Committee(nets), weight, temperature), nets


def test_targets_are_the_mixture_written_out_in_numpy(backend, tol):
    teacher, nets = teacher_of(backend)
    rng = np.random.default_rng(0)
    X, t = rng.random((9, 784)), rng.integers(0, 10, 9)
    Xb = backend.asarray(X, "float64")
    T = backend.to_numpy(teacher.targets(Xb, backend.asarray(t, "int64"), smoothing=0.1))
    Q = np.zeros((9, 10))
    for net in nets:
        p = net.host_params()
        Z = np.maximum(X @ p["W1"] + p["b1"], 0) @ p["W2"] + p["b2"]
        Q += _softmax(Z / 2.0) / 2
    Y = np.full((9, 10), 0.1 / 10)
    Y[np.arange(9), t] += 0.9
    np.testing.assert_allclose(T, 0.6 * Y + 0.4 * Q, rtol=tol(1e-12), atol=1e-15)
    np.testing.assert_allclose(T.sum(axis=1), 1, rtol=1e-12)
    assert np.abs(Q - 0.1).max() > 0.05  # the teacher says something beyond "uniform"


def test_a_hotter_teacher_is_softer(backend):
    rng = np.random.default_rng(1)
    X = backend.asarray(rng.random((20, 784)), "float64")
    entropy = []
    for tau in (0.5, 1.0, 4.0):
        Q = backend.to_numpy(teacher_of(backend, temperature=tau)[0].probabilities(
            X, X.dtype))
        entropy.append(float(-(Q * np.log(Q)).sum(axis=1).mean()))
    assert entropy[0] < entropy[1] < entropy[2] < np.log(10)


def test_the_gradient_with_soft_targets_against_central_differences(backend, tol):
    teacher, _ = teacher_of(backend)
    rng = np.random.default_rng(2)
    net = TwoLayerNet(n_hidden=6, seed=3, dtype="float64", backend=backend)
    X = backend.asarray(rng.random((5, 784)), "float64")
    t = backend.asarray(rng.integers(0, 10, 5), "int64")
    eps, tolerance = eps_and_tolerance(backend)
    errors = check_gradients(net, X, t, eps=eps, max_entries=12,
                             targets=teacher.targets(X, t, 0.05))
    assert max(errors.values()) <= tol(tolerance), errors


@pytest.mark.parametrize("extra", ["teacher", "teacher, dropout and smoothing"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fast_step_equals_reference_with_a_teacher(backend, extra, momentum):
    teacher, _ = teacher_of(backend)
    levers = Levers(teacher=teacher) if extra == "teacher" else Levers(
        dropout=0.3, input_dropout=0.1, label_smoothing=0.1, seed=4, teacher=teacher)
    kw = dict(batch=333, momentum=momentum, epochs=1)  # 3 batches, the last one short
    fast = run_steps(fast_step_of(backend), backend, levers, **kw)
    ref = run_steps(ArrayAPIStep, backend, levers, **kw)
    assert_same_run(fast, ref, 1e-10)
    plain = run_steps(ArrayAPIStep, backend, Levers(), **kw)
    assert np.abs(ref[0] - plain[0]).max() > 1e-3  # the teacher changed the run


def test_fused_float32_with_a_teacher(backend):
    if backend.fused_ops() is None:
        pytest.skip(f"{backend.name} has no fused step")
    teacher, _ = teacher_of(backend, dtype="float32")
    fast = run_steps(FusedStep, backend, Levers(teacher=teacher), dtype="float32", momentum=0.9)
    ref = run_steps(ArrayAPIStep, backend, Levers(teacher=teacher), dtype="float32",
                    momentum=0.9)
    assert_same_run(fast, ref, 2e-3)


def test_a_teacher_of_weight_1_equal_to_the_labels_is_plain_training(backend):
    """Soft targets that are the one-hot labels themselves train exactly as no teacher."""
    class Oracle:  # a teacher whose targets are the labels' (smoothed) one-hot rows
        committee = Committee([TwoLayerNet(n_hidden=2, backend=backend)])

        def table(self, images, dtype):        # Q, unused by `mix`
            return backend.xp.zeros((images.shape[0], 10), dtype=dtype, device=backend.device)

        def mix(self, Q, labels, smoothing=0.0):
            from anynet import functional as F
            return F.smoothed_targets(labels, 10, smoothing, Q.dtype)

    levers = Levers(label_smoothing=0.1, teacher=Oracle())  # type: ignore[arg-type]
    taught = run_steps(ArrayAPIStep, backend, levers, batch=333, epochs=1)
    plain = run_steps(ArrayAPIStep, backend, Levers(label_smoothing=0.1), batch=333, epochs=1)
    assert_same_run(taught, plain, 1e-13)


def test_undistorted_chunks_read_the_teachers_table_made_once(backend, monkeypatch):
    """Without distortions the teacher's probabilities are computed once for every training
    image (a table, CHUNK_ROWS at a time) and each chunk reads its rows: the targets equal the
    ones computed from the chunk itself, and the teacher runs once, not once per epoch."""
    from anynet.batches import CHUNK_ROWS
    from anynet.distill import ChunkTargets
    from anynet.network import pixels_to_inputs

    teacher, _ = teacher_of(backend)
    rng = np.random.default_rng(3)
    n = CHUNK_ROWS + 300                                 # two table chunks, one short
    images = backend.asarray(rng.integers(0, 256, (n, 784), dtype=np.uint8))
    labels = backend.asarray(rng.integers(0, 10, n), "int64")
    calls = []
    real = Teacher.probabilities
    monkeypatch.setattr(Teacher, "probabilities",
                        lambda self, X, dtype: calls.append(X.shape[0]) or real(self, X, dtype))
    from_table = ChunkTargets(teacher, 0.1, images)
    from_chunk = ChunkTargets(teacher, 0.1)
    xp, f64 = backend.xp, backend.dtype("float64")
    for _epoch in range(2):
        rows = backend.asarray(rng.permutation(n)[:500], "int64")
        X = pixels_to_inputs(xp.take(images, rows, axis=0), f64)
        t = xp.take(labels, rows, axis=0)
        np.testing.assert_allclose(backend.to_numpy(from_table(X, t, rows)),
                                   backend.to_numpy(from_chunk(X, t, rows)), rtol=0, atol=1e-12)
    assert calls == [CHUNK_ROWS, 300, 500, 500]          # the table once; the chunks each time


def test_trainer_checks_its_teacher(backend):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (50, 784), dtype=np.uint8), np.arange(50) % 10
    _, nets = teacher_of(backend)
    cfg = TrainConfig(hidden=5, epochs=1, val_size=0, backend=backend.spec, distill=0.5)
    with pytest.raises(ValueError, match=r"distill 0\.5 needs a teacher"):
        Trainer(cfg, images, labels, backend=backend)
    with pytest.raises(ValueError, match="a teacher was given but distill is 0"):
        Trainer(TrainConfig(hidden=5, backend=backend.spec), images, labels, backend=backend,
                teacher=nets)
    with pytest.raises(ValueError, match="takes 784 inputs to 10 classes; this data has 784 "
                                         "inputs and 3 classes"):
        Trainer(cfg, images, labels % 3, backend=backend, teacher=nets)
    trainer = Trainer(cfg, images, labels, backend=backend, teacher=nets[0])
    assert trainer.levers.teacher is not None and len(trainer.levers.teacher.committee) == 1


def test_config_checks_distill_and_temperature():
    assert TrainConfig(distill=1, temperature=3).temperature == 3.0
    for bad, match in (({"distill": 1.5}, r"distill must be a number in \[0, 1\]"),
                       ({"temperature": 0}, r"temperature must be a number in \(0, 100\]"),
                       ({"temperature": float("inf")}, "temperature must be"),
                       ({"temperature": True}, "temperature must be")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)
    assert check_temperature(100) == 100.0


# --- the command line --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """A synthetic MNIST folder and two teachers trained on it (784-16-10 and 784-24-10)."""
    root = tmp_path_factory.mktemp("taught")
    data = make_mnist_dir(root / "data", n_train=1100, n_test=200, seed=0)
    teachers = []
    for seed, hidden in ((1, "16"), (2, "24")):
        teachers.append(root / f"teacher{seed}.npz")
        assert main(["train", "--data-dir", str(data), "--no-verify", "--hidden", hidden,
                     "--epochs", "3", "--seed", str(seed), "--val-size", "100", "--threads",
                     "1", "--quiet", "--out", str(teachers[-1])]) == 0
    return data, teachers


def student_args(data, out, *extra):
    return ["train", "--data-dir", str(data), "--no-verify", "--hidden", "16", "--epochs", "3",
            "--batch-size", "32", "--lr", "0.2", "--momentum", "0.5", "--val-size", "100",
            "--threads", "1", "--out", str(out), *extra]


@pytest.mark.parametrize("augment", [["--augment", "affine"], []],
                         ids=["distorted: per chunk", "undistorted: the table"])
def test_a_taught_run_records_its_teacher_and_resumes_to_the_same_model(tmp_path, taught,
                                                                         capsys, monkeypatch,
                                                                         augment):
    import hashlib

    from tests.test_train_cli import params_of, signal_during_step

    data, teachers = taught
    teach = ["--teacher", *map(str, teachers), "--temperature", "2", *augment]
    whole = tmp_path / "whole.npz"
    assert main(student_args(data, whole, *teach)) == 0
    assert ("  levers: distilled from a teacher (weight 0.5, temperature 2)\n"
            in capsys.readouterr().out)
    _, record = load_model(whole)
    assert (record["config"]["distill"], record["config"]["temperature"]) == (0.5, 2.0)
    assert record["teacher"] == [{"path": str(p.resolve()),
                                  "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                                 for p in teachers]
    plain = tmp_path / "plain.npz"
    assert main(student_args(data, plain, "--quiet")) == 0
    assert np.abs(params_of(plain)["W2"] - params_of(whole)["W2"]).max() > 1e-3

    signal_during_step(monkeypatch, 32 + 5, signal.SIGINT)  # epoch 2 (32 batches), batch 5
    out = tmp_path / "m.npz"
    assert main(student_args(data, out, *teach)) == 130
    monkeypatch.undo()
    ckpt = tmp_path / "m.checkpoint.npz"
    assert load_checkpoint(ckpt)[2]["teacher"] == record["teacher"]
    assert main(["train", "--resume", str(ckpt), "--data-dir", str(data), "--no-verify"]) == 0
    for k, v in params_of(whole).items():
        np.testing.assert_array_equal(params_of(out)[k], v)


def test_resuming_with_a_changed_teacher_is_refused(tmp_path, taught, capsys, monkeypatch):
    import shutil

    from tests.test_train_cli import signal_during_step

    data, teachers = taught
    mine = tmp_path / "teacher.npz"
    shutil.copy(teachers[0], mine)
    signal_during_step(monkeypatch, 5, signal.SIGINT)
    out = tmp_path / "m.npz"
    assert main(student_args(data, out, "--teacher", str(mine), "--distill", "0.8")) == 130
    monkeypatch.undo()
    shutil.copy(teachers[1], mine)  # another model under the same name
    ckpt = tmp_path / "m.checkpoint.npz"
    capsys.readouterr()
    assert main(["train", "--resume", str(ckpt), "--data-dir", str(data), "--no-verify"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"anynet: error: the teacher {mine.resolve()} has changed since the run "
                   "began (its SHA-256 differs): resume with the teacher it was trained with, "
                   "or start a new run")
    assert main(["train", "--resume", str(ckpt), "--data-dir", str(data), "--no-verify",
                 "--teacher", str(teachers[0])]) == 2
    assert "a resumed run takes its teacher from the checkpoint: drop --teacher" in \
        capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--distill", "0.5"], "--distill 0.5 needs --teacher MODEL [MODEL ...]: the trained "
                           "models whose probabilities it mixes into the targets"),
    (["--teacher", "{t}", "--distill", "0"], "--teacher with --distill 0 would not use the "
                                             "teacher: give --distill in (0, 1], or drop "
                                             "--teacher"),
    (["--teacher", "{t}", "--distill", "1.5"], "--distill: expected a number in [0, 1], got "
                                               "'1.5'"),
    (["--teacher", "{t}", "--temperature", "0"], "--temperature: expected a number in "
                                                 "(0, 100], got '0'"),
    (["--teacher", "{t}", "{t}"], "is named twice; a committee counts each model once"),
    (["--recipe", "best"], "recipe best distils a committee of h800-affine-deslant networks: "
                           "train them first (anynet train --recipe h800-affine-deslant --seed "
                           "S --out teacherS.npz, for S in 43, 45, 46), then add --teacher with "
                           "their files"),
    (["--teacher", "{missing}"], "missing.npz"),
])
def test_bad_teacher_options_exit_2_in_one_line(tmp_path, taught, capsys, argv, message):
    data, teachers = taught
    argv = [a.format(t=teachers[0], missing=tmp_path / "missing.npz") for a in argv]
    assert main(student_args(data, tmp_path / "m.npz", *argv)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "m.npz").exists()


def test_a_teacher_for_other_classes_is_refused(tmp_path, taught, capsys):
    data, _ = taught
    small = TwoLayerNet(n_in=784, n_hidden=4, n_out=3, seed=0)
    from anynet.modelio import save_model

    save_model(tmp_path / "three.npz", small, {"config": {}})
    assert main(student_args(data, tmp_path / "m.npz", "--teacher",
                             str(tmp_path / "three.npz"))) == 2
    err = capsys.readouterr().err.strip()
    assert "the teacher takes 784 inputs to 3 classes" in err and len(err.splitlines()) == 1
