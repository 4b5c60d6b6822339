"""Every fast training step computes what the reference Array API step computes, on the backend
under test: the fused step where the backend has in-place arrays (NumPy, CuPy, PyTorch), the
compiled step where it compiles (JAX)."""

from __future__ import annotations

import numpy as np
import pytest

from anynet.config import TrainConfig
from anynet.network import TwoLayerNet
from anynet.optim import SGD
from anynet.steps import (
    ArrayAPIStep,
    CompiledStep,
    FusedStep,
    GraphCaptureUnavailable,
    GraphedStep,
    fast_step_applies,
    make_train_step,
)
from anynet.training import Trainer


def run_steps(step_cls, dtype, batch, wd, backend, n_examples=1000, epochs=2, momentum=0.0,
              nesterov=False):
    rng = np.random.default_rng(0)
    images = backend.asarray(rng.integers(0, 256, (n_examples, 784), dtype=np.uint8))
    labels = backend.asarray(rng.integers(0, 10, n_examples), "int64")
    net = TwoLayerNet(n_hidden=20, dtype=dtype, seed=1, backend=backend)
    opt = SGD(lr=0.1, weight_decay=wd, momentum=momentum, nesterov=nesterov)
    step = step_cls(net, opt, images, labels, batch, opt.init(net.params))
    losses = []
    n_batches = -(-n_examples // batch)
    for epoch in range(epochs):
        step.begin_epoch(np.random.default_rng(epoch).permutation(n_examples))
        # read within the epoch, as the Trainer does: the graphed step's losses are valid
        # until the same batch of the next epoch
        losses += [float(backend.to_numpy(step(i, 0.1 * (1 - 0.01 * i))))
                   for i in range(n_batches)]
    return np.array(losses), net.host_params()


def fast_step_of(backend):
    if backend.fused_ops() is not None:
        return FusedStep
    if backend.compiles:
        return CompiledStep
    pytest.skip(f"{backend.name} has no fast step: it runs the reference step only")


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 2e-4)])
@pytest.mark.parametrize("batch", [64, 10, 1000, 333])  # 333: a short last batch
@pytest.mark.parametrize("wd", [0.0, 1e-3])
@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.5, True)])
def test_fast_step_equals_reference(backend, dtype, rtol, batch, wd, momentum, nesterov):
    if momentum and dtype == "float32":
        rtol = 2e-3  # a velocity sums many rounded gradients: float32 runs drift further apart
    kw = dict(momentum=momentum, nesterov=nesterov)
    fast_losses, fast = run_steps(fast_step_of(backend), dtype, batch, wd, backend, **kw)
    ref_losses, ref = run_steps(ArrayAPIStep, dtype, batch, wd, backend, **kw)
    np.testing.assert_allclose(fast_losses, ref_losses, rtol=rtol)
    for k in ref:
        assert fast[k].dtype == np.dtype(dtype)
        np.testing.assert_allclose(fast[k], ref[k], rtol=rtol, atol=rtol * np.abs(ref[k]).max(),
                                   err_msg=k)


def test_fused_step_keeps_params_in_the_net():
    net = TwoLayerNet(n_hidden=5, seed=0)
    before = net.host_params()
    images = np.zeros((8, 784), np.uint8)
    step = FusedStep(net, SGD(lr=0.1), images, np.zeros(8, np.int64), 4)
    for k in before:  # taken over unchanged, as the step's own arrays
        np.testing.assert_array_equal(net.params[k], before[k])
    assert np.shares_memory(net.params["W2"], step.W2a)
    step.begin_epoch(np.arange(8))
    step(0, 0.5)
    assert not np.array_equal(net.params["b2"], before["b2"])  # updated in place, seen by net


def test_which_step_runs(backend):
    net = TwoLayerNet(n_hidden=3, backend=backend)
    fused = backend.fused_ops() is not None
    assert fast_step_applies(net, SGD(lr=0.1, weight_decay=1e-4)) == fused
    assert fast_step_applies(net, SGD(lr=0.1, momentum=0.9, nesterov=True)) == fused
    args = (backend.asarray(np.zeros((4, 784), np.uint8)),
            backend.asarray(np.zeros(4, np.int64)), 2, {})
    expected = FusedStep if fused else CompiledStep if backend.compiles else ArrayAPIStep
    assert type(make_train_step(net, SGD(lr=0.1), *args)) is expected
    assert type(make_train_step(net, SGD(lr=0.1), *args, fast=False)) is ArrayAPIStep
    assert type(make_train_step(net, SGD(lr=0.1, momentum=0.5), *args)) is expected
    if not fused:
        with pytest.raises(ValueError, match="in-place"):
            FusedStep(net, SGD(lr=0.1), *args[:3])


def test_fused_momentum_takes_over_a_checkpoints_velocity():
    net = TwoLayerNet(n_hidden=4, seed=0)
    velocity = {k: np.full(v.shape, 0.5, v.dtype) for k, v in net.host_params().items()}
    images, labels = np.zeros((8, 784), np.uint8), np.zeros(8, np.int64)
    step = FusedStep(net, SGD(lr=0.1, momentum=0.9), images, labels, 4, velocity)
    for k, v in step.velocity.items():
        np.testing.assert_array_equal(v, velocity[k])
    assert np.shares_memory(step.velocity["W2"], step.vW2a)


def test_trainer_fast_and_reference_give_the_same_curve(backend):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (700, 784), dtype=np.uint8)
    labels = (images[:, :10].argmax(axis=1)).astype(np.uint8)  # learnable
    cfg = TrainConfig(hidden=12, epochs=3, batch_size=32, lr=0.1, val_size=0)
    fast = Trainer(cfg, images, labels, backend=backend, fast=True).fit()
    ref = Trainer(cfg, images, labels, backend=backend, fast=False).fit()
    for a, b in zip(fast.state.history, ref.state.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["train_accuracy"] == pytest.approx(b["train_accuracy"], abs=2 / 700)
    assert fast.state.history[-1]["train_loss"] < fast.state.history[0]["train_loss"]


# ---------------------------------------------------------------------------------------------
# The CUDA-graph step. Its capture needs CUDA; everything around it (the device counter, the
# rates and permutation in device buffers, the warm-up's state put back, the fallback) runs
# here with a capture that calls the step eagerly.


def eager_capture(fn):
    """What `Backend.graph_capture` gives on CUDA, minus the recording: warm up, then replay
    by calling again."""
    fn()
    return fn


def graphed(backend):
    """GraphedStep with the backend's own capture on CUDA, else the eager one; skips where
    there is no fused step."""
    if backend.fused_ops() is None:
        pytest.skip(f"{backend.name} has no fused step, so no CUDA-graph step")
    capture = backend.graph_capture() or eager_capture

    def make(*args):
        return GraphedStep(*args, capture)

    return make


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 2e-4)])
@pytest.mark.parametrize("batch", [64, 333])  # 333: a short last batch, which the fused step runs
@pytest.mark.parametrize("wd", [0.0, 1e-3])
@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.5, True)])
def test_graphed_step_equals_reference(backend, dtype, rtol, batch, wd, momentum, nesterov):
    if momentum and dtype == "float32":
        rtol = 2e-3
    kw = dict(momentum=momentum, nesterov=nesterov)
    graph_losses, graph = run_steps(graphed(backend), dtype, batch, wd, backend, **kw)
    ref_losses, ref = run_steps(ArrayAPIStep, dtype, batch, wd, backend, **kw)
    np.testing.assert_allclose(graph_losses, ref_losses, rtol=rtol)
    for k in ref:
        np.testing.assert_allclose(graph[k], ref[k], rtol=rtol, atol=rtol * np.abs(ref[k]).max(),
                                   err_msg=k)


def _two_steps(backend, make, rates=None, momentum=0.9):
    """Batches 3, 4 and 7 of an epoch (a resume, then a jump), rates given ahead or not."""
    rng = np.random.default_rng(0)
    images = backend.asarray(rng.integers(0, 256, (100, 784), dtype=np.uint8))
    labels = backend.asarray(rng.integers(0, 10, 100), "int64")
    net = TwoLayerNet(n_hidden=7, dtype="float64", seed=2, backend=backend)
    opt = SGD(lr=0.1, momentum=momentum, weight_decay=1e-3)
    step = make(net, opt, images, labels, 10, opt.init(net.params))
    step.begin_epoch(np.random.default_rng(1).permutation(100), rates)
    losses = [float(backend.to_numpy(step(b, lr))) for b, lr in ((3, 0.2), (4, 0.1), (7, 0.3))]
    return losses, net.host_params()


@pytest.mark.parametrize("rates", [None, np.full(10, 0.1)])  # not given; given, two of them wrong
def test_graphed_step_follows_the_batch_and_rate_it_is_given(backend, rates):
    """The device counter is reset where the batch is not the next one, and a rate that was
    not given ahead (or differs) is written to the device before the replay."""
    losses, params = _two_steps(backend, graphed(backend), rates)
    ref_losses, ref = _two_steps(backend, ArrayAPIStep)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-10)
    for k in ref:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_failed_capture_warns_and_trains_with_the_fused_step(backend):
    if backend.fused_ops() is None:
        pytest.skip(f"{backend.name} has no fused step")

    def broken(fn):
        fn()  # a warm-up that changed the state, then the recording fails
        raise RuntimeError("operation not permitted when stream is capturing")

    def make(*args):
        return GraphedStep(*args, broken)

    with pytest.warns(GraphCaptureUnavailable, match="not permitted when stream is capturing"):
        losses, params = _two_steps(backend, make)
    ref_losses, ref = _two_steps(backend, ArrayAPIStep)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-10)
    for k in ref:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_training_takes_the_graphed_step_where_the_backend_captures(backend, monkeypatch):
    """make_train_step picks GraphedStep when `graph_capture` offers a capture (CUDA); the run
    then matches a run of the plain fused step."""
    if backend.fused_ops() is None:
        pytest.skip(f"{backend.name} has no fused step")
    rng = np.random.default_rng(3)
    images, labels = rng.integers(0, 256, (300, 784), dtype=np.uint8), rng.integers(0, 10, 300)
    config = TrainConfig(hidden=6, epochs=2, batch_size=32, val_size=0, dtype="float64",
                         momentum=0.9, backend=backend.spec)
    plain = Trainer(config, images, labels, backend=backend).fit()
    if backend.graph_capture() is None:
        monkeypatch.setattr(type(backend), "graph_capture", lambda self: eager_capture)
    trainer = Trainer(config, images, labels, backend=backend)
    net = TwoLayerNet(n_hidden=3, backend=backend)
    assert isinstance(make_train_step(net, SGD(lr=0.1), backend.asarray(images),
                                      backend.asarray(labels, "int64"), 32, {}), GraphedStep)
    graphed_run = trainer.fit()
    for k, v in plain.net.host_params().items():
        np.testing.assert_allclose(graphed_run.net.host_params()[k], v, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose([h["train_loss"] for h in graphed_run.state.history],
                               [h["train_loss"] for h in plain.state.history], rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# Distorted training images: every step distorts a chunk at a time with the same keys.


@pytest.mark.parametrize("batch", [64, 333])
@pytest.mark.parametrize("kind", ["affine", "affine+elastic"])
def test_steps_train_on_the_same_distortions(backend, batch, kind):
    """The fast step (fused, compiled) and the reference draw the same distortions for the same
    (epoch, chunk), so they compute the same training, to float rounding."""
    from anynet.augment import Distorter, Distortion

    def distorter(dtype):
        return Distorter(Distortion(kind=kind), backend, seed=4, dtype=dtype)

    def with_distorter(cls):
        def make(net, opt, images, labels, b, velocity):
            return cls(net, opt, images, labels, b, velocity, distorter=distorter(net.dtype))
        return make

    fast_cls = fast_step_of(backend)
    fast_losses, fast = run_steps(with_distorter(fast_cls), "float64", batch, 1e-3, backend,
                                  epochs=2, momentum=0.9)
    ref_losses, ref = run_steps(with_distorter(ArrayAPIStep), "float64", batch, 1e-3, backend,
                                epochs=2, momentum=0.9)
    plain_losses, _ = run_steps(ArrayAPIStep, "float64", batch, 1e-3, backend, epochs=2,
                                momentum=0.9)
    np.testing.assert_allclose(fast_losses, ref_losses, rtol=1e-10)
    for k in ref:
        np.testing.assert_allclose(fast[k], ref[k], rtol=1e-10, atol=1e-12, err_msg=k)
    assert np.abs(ref_losses - plain_losses).max() > 1e-3  # the distortions did change the data


def test_distortions_take_the_fused_step_not_a_graph(backend, monkeypatch):
    """A CUDA graph replays fixed work; distortions are drawn on the host a chunk at a time, so
    with them the fused step runs (on CUDA too)."""
    from anynet.augment import Distorter, Distortion

    if backend.fused_ops() is None:
        pytest.skip(f"{backend.name} has no fused step")
    monkeypatch.setattr(type(backend), "graph_capture", lambda self: eager_capture)
    net = TwoLayerNet(n_hidden=3, backend=backend)
    images, labels = backend.asarray(np.zeros((8, 784), np.uint8)), backend.asarray(
        np.zeros(8, np.int64), "int64")
    distorter = Distorter(Distortion(kind="affine"), backend, seed=0)
    step = make_train_step(net, SGD(lr=0.1), images, labels, 4, {}, distorter=distorter)
    assert type(step) is FusedStep and step.distorter is distorter
    assert isinstance(make_train_step(net, SGD(lr=0.1), images, labels, 4, {}), GraphedStep)
