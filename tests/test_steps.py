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
from tests.fake_capture import CaptureRefused, strict_capture


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


# The batch sizes test the fused step's hand-written arithmetic on each shape; a compiled step
# (the reference, jitted) is the same code at any size, so there 333 alone (a full batch and a
# short last one) runs: the others are marked fused_grid, deselected where no fused step exists.
FUSED_GRID = pytest.mark.fused_grid


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 2e-4)])
@pytest.mark.parametrize("batch", [pytest.param(64, marks=FUSED_GRID),
                                   pytest.param(10, marks=FUSED_GRID),
                                   pytest.param(1000, marks=FUSED_GRID),
                                   333])  # 333: a short last batch
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
    # Nesterov with lr * weight_decay >= 1 would divide by zero in the rearranged update
    assert not fast_step_applies(net, SGD(lr=2.0, momentum=0.9, nesterov=True, weight_decay=0.5))
    args = (backend.asarray(np.zeros((4, 784), np.uint8)),
            backend.asarray(np.zeros(4, np.int64)), 2, {})
    graphs = fused and backend.graph_capture() is not None   # CUDA: PyTorch captures, CuPy not
    expected = (GraphedStep if graphs else FusedStep if fused else
                CompiledStep if backend.compiles else ArrayAPIStep)
    assert type(make_train_step(net, SGD(lr=0.1), *args)) is expected
    assert type(make_train_step(net, SGD(lr=0.1), *args, fast=False)) is ArrayAPIStep
    assert type(make_train_step(net, SGD(lr=0.1, momentum=0.5), *args)) is expected
    if not fused:
        with pytest.raises(ValueError, match="in-place"):
            FusedStep(net, SGD(lr=0.1), *args[:3])


def test_compiled_step_donates_only_its_own_state(backend):
    """The compiled step gives each replaced state up to the next call (JAX writes the new
    parameters over the old), never the arrays it was given: those stay readable, unchanged,
    and the step still computes what the reference computes."""
    if not backend.compiles:
        pytest.skip(f"{backend.name} compiles nothing: no compiled step")
    rng = np.random.default_rng(0)
    images = backend.asarray(rng.integers(0, 256, (64, 784), dtype=np.uint8))
    labels = backend.asarray(rng.integers(0, 10, 64), "int64")
    net = TwoLayerNet(n_hidden=6, seed=1, backend=backend)
    opt = SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    given_params, given_velocity = net.params, opt.init(net.params)
    before = {k: backend.to_numpy(v) for k, v in given_params.items()}
    step = CompiledStep(net, opt, images, labels, 16, given_velocity)
    step.begin_epoch(np.arange(64))
    step(0, 0.1)
    first = step.params
    step(1, 0.1)
    for k, v in given_params.items():   # the caller's arrays: still there, as they were
        np.testing.assert_array_equal(backend.to_numpy(v), before[k])
        np.testing.assert_array_equal(backend.to_numpy(given_velocity[k]), 0)
    if hasattr(first["W1"], "is_deleted"):   # JAX: the first step's W1 was donated to the second
        assert first["W1"].is_deleted()
    reference = ArrayAPIStep(TwoLayerNet(n_hidden=6, seed=1, backend=backend), opt, images,
                             labels, 16, opt.init(net.params))
    reference.begin_epoch(np.arange(64))
    reference(0, 0.1)
    reference(1, 0.1)
    for k, v in reference.params.items():
        np.testing.assert_allclose(backend.to_numpy(step.params[k]), backend.to_numpy(v),
                                   rtol=1e-5, atol=1e-6, err_msg=k)


def test_a_ctrl_c_while_a_step_donates_leaves_the_state_whole(backend, monkeypatch):
    """A Ctrl-C that comes after a donating step has given up the old state, and before the
    loop has stored the new one, is held back until it has: the KeyboardInterrupt then leaves
    a caller's TrainState readable, its position matching its parameters; and Python's own
    SIGINT handler is back after fit."""
    import os
    import signal

    from anynet import training

    if not backend.compiles:
        pytest.skip(f"{backend.name} compiles nothing: no step donates its state")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a plain script
    try:
        real_make = training.make_train_step

        def make_interrupted(*args, **kwargs):
            step = real_make(*args, **kwargs)
            real_call = step._step_from

            def call_then_ctrl_c(*a):
                out = real_call(*a)             # the old state is given up here
                if len(calls) == 2:
                    os.kill(os.getpid(), signal.SIGINT)
                calls.append(1)
                return out

            step._step_from = call_then_ctrl_c
            return step

        calls: list = []
        monkeypatch.setattr(training, "make_train_step", make_interrupted)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (100, 784), dtype=np.uint8)
        labels = rng.integers(0, 10, 100).astype(np.uint8)
        cfg = TrainConfig(hidden=8, epochs=2, batch_size=20, lr=0.1, momentum=0.9, val_size=0)
        trainer = Trainer(cfg, images, labels, backend=backend)
        state = trainer.initial_state()
        with pytest.raises(KeyboardInterrupt):
            trainer.fit(resume=state)
        assert (state.batch, state.step) == (3, 3)          # three steps stored, and counted
        for part in (state.params, state.velocity):
            for k, v in part.items():
                assert np.isfinite(backend.to_numpy(v)).all(), k   # readable: not donated
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_held_interrupts_only_where_a_step_donates_and_python_handles_ctrl_c():
    import signal
    import threading
    from types import SimpleNamespace

    from anynet.steps import HeldInterrupts

    donating, other = SimpleNamespace(donates=True), SimpleNamespace()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert HeldInterrupts.for_step(other) is None             # NumPy's, PyTorch's steps
        held = HeldInterrupts.for_step(donating)
        assert held is not None and signal.getsignal(signal.SIGINT) == held._on_sigint
        with pytest.raises(KeyboardInterrupt):                    # outside the block: at once
            held._on_sigint(signal.SIGINT, None)
        with pytest.raises(KeyboardInterrupt):
            with held:
                held._on_sigint(signal.SIGINT, None)              # held ...
                reached = True                                    # ... the block goes on
        assert reached and not held.pending
        held.restore()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, lambda *a: None)             # a handler of the caller's own
        assert HeldInterrupts.for_step(donating) is None
        signal.signal(signal.SIGINT, signal.default_int_handler)
        found: list = []
        thread = threading.Thread(target=lambda: found.append(HeldInterrupts.for_step(donating)))
        thread.start()
        thread.join()
        assert found == [None]                                    # signals reach the main thread
    finally:
        signal.signal(signal.SIGINT, previous)


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
# The CUDA-graph step. Its capture needs CUDA; elsewhere it runs with `strict_capture`
# (tests/fake_capture.py): recorded once, replayed without running Python, refusing what a
# real capture refuses. A capture that fails is an error here (pyproject's filterwarnings).


def graphed(backend, flavour="torch"):
    """GraphedStep with the backend's own capture on CUDA, else the strict fake; skips where
    there is no fused step."""
    if backend.fused_ops() is None:
        pytest.skip(f"{backend.name} has no fused step, so no CUDA-graph step")
    capture = backend.graph_capture() or strict_capture(flavour)

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
    """make_train_step picks GraphedStep when `graph_capture` offers a capture (CUDA, else the
    strict fake); the run then matches a run of the plain fused step (no capture offered)."""
    if backend.fused_ops() is None:
        pytest.skip(f"{backend.name} has no fused step")
    rng = np.random.default_rng(3)
    images, labels = rng.integers(0, 256, (300, 784), dtype=np.uint8), rng.integers(0, 10, 300)
    config = TrainConfig(hidden=6, epochs=2, batch_size=32, val_size=0, dtype="float64",
                         momentum=0.9, backend=backend.spec)
    capture = backend.graph_capture() or strict_capture()
    with monkeypatch.context() as m:
        m.setattr(type(backend), "graph_capture", lambda self: None)
        plain = Trainer(config, images, labels, backend=backend).fit()
    monkeypatch.setattr(type(backend), "graph_capture", lambda self: capture)
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
    monkeypatch.setattr(type(backend), "graph_capture", lambda self: strict_capture())
    net = TwoLayerNet(n_hidden=3, backend=backend)
    images, labels = backend.asarray(np.zeros((8, 784), np.uint8)), backend.asarray(
        np.zeros(8, np.int64), "int64")
    distorter = Distorter(Distortion(kind="affine"), backend, seed=0)
    step = make_train_step(net, SGD(lr=0.1), images, labels, 4, {}, distorter=distorter)
    assert type(step) is FusedStep and step.distorter is distorter
    assert isinstance(make_train_step(net, SGD(lr=0.1), images, labels, 4, {}), GraphedStep)


# ---------------------------------------------------------------------------------------------
# The strict fake capture itself: it fails where a real capture fails, and its replay runs no
# Python, so what a step freezes at capture shows.


class _Toy:
    """A step of one primitive, `x += one`, with Python state beside it."""

    def __init__(self, backend, body=None):
        self.backend, self.ops = backend, backend.fused_ops()
        self.x = self.ops.host(np.zeros(3))
        self.one = self.ops.host(np.ones(3))
        self.calls, self.body = 0, body

    def step(self):
        self.calls += 1
        (self.body or (lambda toy: toy.ops.add_(toy.x, toy.one)))(self)


def _toy(backend, body=None):
    if backend.fused_ops() is None:
        pytest.skip(f"{backend.name} has no fused step")
    return _Toy(backend, body)


def test_strict_capture_replays_without_running_python(backend):
    toy = _toy(backend)
    replay = strict_capture()(toy.step)     # warm-up runs it; recording records, runs nothing
    for _ in range(3):
        replay()
    assert toy.calls == 2
    np.testing.assert_array_equal(backend.to_numpy(toy.x), [4, 4, 4])  # warm-up + 3 replays


def test_strict_capture_freezes_or_refuses_host_values(backend):
    """A branch on a device value, taken on the host, is frozen at capture (NumPy), or refused
    as a host read (PyTorch), as a real capture refuses it."""
    def body(toy):   # add while x[0] < 1, else subtract: a host decision
        if float(toy.backend.to_numpy(toy.x)[0]) < 1:
            toy.ops.add_(toy.x, toy.one)
        else:
            toy.ops.sub_(toy.x, toy.one)

    toy = _toy(backend, body)
    try:
        replay = strict_capture()(toy.step)
    except CaptureRefused as e:
        assert "host read" in str(e) or "outside the seam" in str(e)
        return
    for _ in range(3):
        replay()
    # run eagerly, x would go 1, 0, 1, 0; replayed, the branch taken at capture (x = 1:
    # subtract) is all there is
    np.testing.assert_array_equal(backend.to_numpy(toy.x), [-2, -2, -2])


@pytest.mark.parametrize("what", ["empty", "dot", "upload_", "mm", "index"])
def test_strict_capture_refuses_what_a_real_one_refuses(backend, what):
    def body(toy):
        o = toy.ops
        if what == "empty":
            o.empty((3,), np.float64)       # a persistent buffer made during capture
        elif what == "dot":
            o.dot(toy.x, toy.one)           # a new array
        elif what == "upload_" and toy.calls > 1:
            o.upload_(toy.x, np.ones(3))    # host to device while recording
        elif what == "mm":
            o.mm(toy.x.reshape(1, 3), toy.one.reshape(3, 1), out=toy.x[:1].reshape(1, 1))
        elif what == "index":
            o.take_into(toy.one, toy.idx, out=toy.x)

    toy = _toy(backend, body)
    toy.idx = toy.ops.host(np.array([0, 1, 3]), np.int64)   # 3: out of range
    if what == "index":   # recorded, then refused at replay (NumPy would raise; CuPy wraps)
        toy.idx = toy.ops.host(np.array([0, 1, 2]), np.int64)
        replay = strict_capture()(toy.step)
        toy.ops.copy_(toy.idx, toy.ops.host(np.array([0, 1, -1]), np.int64))
        with pytest.raises(IndexError, match="out of range"):
            replay()
        return
    flavour = "cupy" if what == "mm" else "torch"
    with pytest.raises(CaptureRefused, match="cuBLAS" if what == "mm" else what):
        strict_capture(flavour)(toy.step)


# ---------------------------------------------------------------------------------------------
# What the reading of CuPy and PyTorch found (issue 18), each where a CPU can express it.


def test_cupy_offers_no_graph_capture():
    """CuPy refuses cuBLAS during stream capture, so a graph of the step never captures there:
    the seam offers none (and imports nothing to say so); CuPy trains with the fused step."""
    from anynet.backend import _cupy

    assert _cupy.graph_capture(None) is None


def test_a_capture_that_refuses_matrix_products_falls_back_with_the_reason(backend):
    """The CuPy flavour of the fake refuses the step's matrix products, as CuPy does: capture
    fails, the warning says why, and the fused step trains as the reference does."""
    if backend.fused_ops() is None:
        pytest.skip(f"{backend.name} has no fused step")
    with pytest.warns(GraphCaptureUnavailable, match="cuBLAS"):
        losses, params = _two_steps(backend, graphed_with(strict_capture("cupy")))
    ref_losses, ref = _two_steps(backend, ArrayAPIStep)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-10)
    for k in ref:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_a_capture_that_fails_inside_the_step_reports_the_first_cause(backend):
    """A capture ended in a `finally` (CuPy) or `__exit__` (PyTorch) raises its own error,
    cudaErrorStreamCaptureInvalidated, over the one that broke the capture: the warning names
    the first."""
    if backend.fused_ops() is None:
        pytest.skip(f"{backend.name} has no fused step")

    def invalidated(fn):
        try:
            return strict_capture("cupy")(fn)
        finally:
            raise RuntimeError("cudaErrorStreamCaptureInvalidated: operation failed due to a "
                               "previous error during capture")

    with pytest.warns(GraphCaptureUnavailable, match="cuBLAS API during stream capture.*; "
                      "then RuntimeError: cudaErrorStreamCaptureInvalidated"):
        _two_steps(backend, graphed_with(invalidated))


def test_the_graphed_step_makes_no_buffer_during_capture(backend):
    """Every buffer of the step exists before capture: a warm-up's allocations would come from
    the capture's pool (CuPy 13 freed it when capture failed, under live arrays)."""
    if backend.fused_ops() is None:
        pytest.skip(f"{backend.name} has no fused step")
    made = []

    def watching(fn):
        ops = fn.__self__.ops
        real_empty = ops.empty
        try:
            ops.empty = lambda *a: made.append(a) or real_empty(*a)
            return strict_capture()(fn)
        finally:
            del ops.empty

    _two_steps(backend, graphed_with(watching))
    assert made == []


def graphed_with(capture):
    def make(*args):
        return GraphedStep(*args, capture)
    return make


@pytest.mark.parametrize("bad", ["negative", "too large", "repeated", "short"])
def test_every_step_refuses_an_order_that_is_not_a_permutation(backend, bad):
    """An index out of range is silent on CuPy (take wraps) and fatal on PyTorch's CUDA (a
    device-side assert): every step takes only permutations of the training set."""
    n = 40
    perm = np.arange(n)
    if bad == "negative":
        perm[5] = -1
    elif bad == "too large":
        perm[5] = n
    elif bad == "repeated":
        perm[5] = 6
    else:
        perm = perm[:-1]
    images = backend.asarray(np.zeros((n, 784), np.uint8))
    labels = backend.asarray(np.zeros(n, np.int64), "int64")
    classes = every_step_class(backend)
    for cls in classes:
        net = TwoLayerNet(n_hidden=3, backend=backend)
        step = cls(net, SGD(lr=0.1), images, labels, 8, {})
        with pytest.raises(ValueError, match=r"permutation|integers"):
            step.begin_epoch(perm)
        step.begin_epoch(np.arange(n))
        for batch in (-1, 5):
            with pytest.raises(IndexError, match="batch"):
                step(batch, 0.1)


def every_step_class(backend) -> list:
    """The steps that can train on `backend`: the reference, and its fast ones (the fused and,
    with a strict fake capture, the CUDA-graph step; or the compiled one)."""
    classes = [ArrayAPIStep]
    if backend.fused_ops() is not None:
        classes += [FusedStep, graphed_with(strict_capture())]
    elif backend.compiles:
        classes += [CompiledStep]
    return classes


def test_every_step_refuses_a_batch_before_its_epochs_order(backend):
    """Before `begin_epoch` there is no order to gather by: the CUDA-graph step would gather
    through its uninitialised device permutation (indices out of range), so every step refuses
    a batch then, naming begin_epoch."""
    n = 40
    images = backend.asarray(np.zeros((n, 784), np.uint8))
    labels = backend.asarray(np.zeros(n, np.int64), "int64")
    classes = every_step_class(backend)
    for cls in classes:
        step = cls(TwoLayerNet(n_hidden=3, backend=backend), SGD(lr=0.1), images, labels, 8, {})
        with pytest.raises(RuntimeError, match="begin_epoch"):
            step(0, 0.1)


@pytest.mark.parametrize("label", [-1, 10])
def test_fused_steps_refuse_labels_that_are_not_classes(backend, label):
    """The fused steps gather one-hot rows by label; a label out of 0..9 is refused when the
    step is made, not gathered out of range on the device."""
    if backend.fused_ops() is None:
        pytest.skip(f"{backend.name} has no fused step")
    images = backend.asarray(np.zeros((8, 784), np.uint8))
    labels = backend.asarray(np.array([0, 1, 2, label, 4, 5, 6, 7]), "int64")
    for cls in (FusedStep, graphed_with(strict_capture())):
        with pytest.raises(ValueError, match=r"classes 0\.\.9"):
            cls(TwoLayerNet(n_hidden=3, backend=backend), SGD(lr=0.1), images, labels, 4, {})


def test_cupy_n_makes_gpu_n_current(monkeypatch):
    """`cupy:N`: CuPy launches kernels on the current device, so opening GPU N makes it
    current (for the opening thread); `cupy` keeps the current one. A fake cupy module stands
    in for the library, which needs CUDA to import."""
    import sys
    import types

    from anynet.backend import _cupy

    state = {"current": 0}

    class Device:
        def __init__(self, index=None):
            self.id = state["current"] if index is None else index

        def use(self):
            state["current"] = self.id

    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(
        Device=Device, runtime=types.SimpleNamespace(getDeviceCount=lambda: 2))
    compat = types.ModuleType("array_api_compat.cupy")
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "array_api_compat.cupy", compat)
    monkeypatch.setattr(_cupy, "probe", lambda: "")
    xp, dev = _cupy.open("1")
    assert xp is compat and dev.id == 1 and state["current"] == 1
    state["current"] = 0
    _, dev = _cupy.open(None)
    assert dev.id == 0 and state["current"] == 0


def test_torch_cuda_n_captures_on_device_n(monkeypatch):
    """`torch:cuda:N` with another device current: the warm-up and the capture run with device
    N current and on a stream of device N (`torch.cuda.graph(..., stream=)`), else the step's
    kernels are not in the graph. PyTorch's CUDA calls are replaced by fakes that record."""
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    from anynet.backend import _torch

    current, seen = {"device": 0}, {}

    class Stream:
        def __init__(self, device=None):
            self.device = torch.device(device if device is not None else
                                       f"cuda:{current['device']}")

        def wait_stream(self, other):
            pass

    class DeviceScope:
        def __init__(self, device):
            self.index = torch.device(device).index

        def __enter__(self):
            self.before, current["device"] = current["device"], self.index

        def __exit__(self, *exc):
            current["device"] = self.before

    class Graph:
        def replay(self):
            pass

    class GraphScope:
        def __init__(self, graph, stream=None, **kw):
            seen["stream"] = stream if stream is not None else Stream()
            seen["current"] = current["device"]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class StreamScope:
        def __init__(self, stream):
            seen["warm-up stream"] = stream

        def __enter__(self):
            seen["warm-up current"] = current["device"]

        def __exit__(self, *exc):
            return False

    for name, fake in [("Stream", Stream), ("device", DeviceScope), ("CUDAGraph", Graph),
                       ("graph", GraphScope), ("stream", StreamScope),
                       ("current_stream", lambda device=None: Stream(device))]:
        monkeypatch.setattr(torch.cuda, name, fake)
    capture = _torch.graph_capture(SimpleNamespace(device=torch.device("cuda", 1)))
    calls = []
    capture(lambda: calls.append(current["device"]))
    assert calls == [1, 1]                      # warm-up and recording, with device 1 current
    assert seen["stream"].device == torch.device("cuda", 1) and seen["current"] == 1
    assert seen["warm-up stream"].device == torch.device("cuda", 1)
    assert current["device"] == 0               # put back


@pytest.mark.parametrize("nesterov", [False, True])
def test_a_fused_momentum_primitive_computes_what_the_loop_does(monkeypatch, nesterov):
    """Where the seam offers `momentum_` (CuPy: one kernel a parameter), the fused step uses it;
    here it is the kernel's expression in NumPy, and the step still equals the reference."""
    from anynet.backend import get_backend
    from anynet.backend._numpy import UfuncOps

    calls = []

    def momentum_(self, p, g, v, wd, mu, neg_lr, nesterov):   # the CuPy kernel's expression
        calls.append(p.shape)
        gw = g + wd * p
        v[...] = mu * v + gw
        p += neg_lr * (gw + mu * v if nesterov else v)

    monkeypatch.setattr(UfuncOps, "momentum_", momentum_, raising=False)
    backend = get_backend("numpy")
    kw = dict(momentum=0.9, nesterov=nesterov)
    fast_losses, fast = run_steps(FusedStep, "float64", 64, 1e-3, backend, **kw)
    ref_losses, ref = run_steps(ArrayAPIStep, "float64", 64, 1e-3, backend, **kw)
    assert calls
    np.testing.assert_allclose(fast_losses, ref_losses, rtol=1e-10)
    for k in ref:
        np.testing.assert_allclose(fast[k], ref[k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 2e-3)])
@pytest.mark.parametrize("momentum, nesterov, wd", [(0.0, False, 1e-3), (0.9, False, 1e-3),
                                                    (0.9, True, 1e-4), (0.5, True, 0.0)])
@pytest.mark.parametrize("batch", [64, 333])
@pytest.mark.parametrize("blas_threads", [1, 2])
def test_numpy_blas_road_equals_reference(monkeypatch, dtype, rtol, momentum, nesterov, wd,
                                          batch, blas_threads):
    """NumPy's fused step calls its OpenBLAS (axpy, GEMM that accumulates, and on one BLAS
    thread rotm for Nesterov's look-ahead with weight decay) for large arrays: made to take
    that road for every array here, it still equals the reference."""
    from anynet.backend import _numpy, get_namespace

    blas = _numpy.OpenBLAS.load()
    if blas is None:
        pytest.skip("NumPy's BLAS is not the OpenBLAS of its wheels: the ufuncs serve")
    monkeypatch.setattr(_numpy, "BLAS_MIN_SIZE", 0)
    monkeypatch.setattr(_numpy, "AXPY_MIN_SIZE", 0)
    monkeypatch.setattr(blas, "threads", lambda: blas_threads)
    calls = []
    for name in ("try_axpy", "try_gemm", "try_rotm"):
        real = getattr(_numpy.OpenBLAS, name)

        def counted(self, *args, _real=real, _name=name):
            done = _real(self, *args)
            calls.append((_name, done))
            return done

        monkeypatch.setattr(_numpy.OpenBLAS, name, counted)
    backend = get_namespace("numpy")
    kw = dict(momentum=momentum, nesterov=nesterov)
    fast_losses, fast = run_steps(FusedStep, dtype, batch, wd, backend, **kw)
    ref_losses, ref = run_steps(ArrayAPIStep, dtype, batch, wd, backend, **kw)
    assert ("try_gemm", True) in calls and (not momentum or ("try_axpy", True) in calls)
    rotm = [done for name, done in calls if name == "try_rotm"]
    assert rotm == ([blas_threads == 1] * len(rotm)) and bool(rotm) == (nesterov and wd > 0)
    assert all(done for name, done in calls if name != "try_rotm")
    np.testing.assert_allclose(fast_losses, ref_losses, rtol=rtol)
    for k in ref:
        np.testing.assert_allclose(fast[k], ref[k], rtol=rtol, atol=rtol * np.abs(ref[k]).max(),
                                   err_msg=k)


def test_numpy_axpy_takes_blas_from_a_smaller_size_than_the_rest(monkeypatch):
    """axpy goes to BLAS from AXPY_MIN_SIZE elements, below BLAS_MIN_SIZE: the momentum
    update of a 784-30-10 network (23,860 parameters) makes its axpys there, while an array
    under AXPY_MIN_SIZE, and GEMM at that size, stay with the ufuncs."""
    from anynet.backend import _numpy

    blas = _numpy.OpenBLAS.load()
    if blas is None:
        pytest.skip("NumPy's BLAS is not the OpenBLAS of its wheels: the ufuncs serve")
    assert _numpy.AXPY_MIN_SIZE < 784 * 30 + 30 + 31 * 10 < _numpy.BLAS_MIN_SIZE
    y0 = np.arange(_numpy.AXPY_MIN_SIZE, dtype=np.float32)
    y = y0.copy()
    assert blas.try_axpy(y, 0.5, np.ones_like(y))
    np.testing.assert_array_equal(y, y0 + 0.5)
    assert not blas.try_axpy(y[:-1], 0.5, y[1:])                 # one short: the ufuncs
    C = np.zeros((784, 30), np.float32)                          # GEMM at that size: the ufuncs
    assert not blas.try_gemm(C, np.ones((784, 8), np.float32), np.ones((8, 30), np.float32),
                             1.0, 1.0)
    calls = []
    real = _numpy.OpenBLAS.try_axpy

    def counted(self, y, a, x):
        done = real(self, y, a, x)
        calls.append((y.size, done))
        return done

    monkeypatch.setattr(_numpy.OpenBLAS, "try_axpy", counted)
    from anynet.backend import get_namespace

    backend = get_namespace("numpy")
    rng = np.random.default_rng(0)
    net = TwoLayerNet(n_hidden=30, seed=0, backend=backend)
    opt = SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    step = FusedStep(net, opt, rng.integers(0, 256, (64, 784), dtype=np.uint8),
                     rng.integers(0, 10, 64), 32, opt.init(net.params))
    step.begin_epoch(np.arange(64))
    step(0, 0.1)
    n_params = 784 * 30 + 30 + 31 * 10
    assert [done for size, done in calls if size == n_params] == [True] * 3   # the update's axpys


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_openblas_rotm_applies_the_two_by_two_matrix(monkeypatch, dtype):
    """try_rotm: (x, y) <- (h11 x + h12 y, h21 x + h22 y) in place, on one BLAS thread and
    large contiguous arrays only; otherwise it returns False and changes nothing."""
    from anynet.backend import _numpy

    blas = _numpy.OpenBLAS.load()
    if blas is None or not blas.rotm:
        pytest.skip("NumPy's BLAS is not the OpenBLAS of its wheels: the ufuncs serve")
    rng = np.random.default_rng(0)
    x0, y0 = (rng.standard_normal(2 * _numpy.BLAS_MIN_SIZE + 6).astype(dtype) for _ in range(2))
    x, y = x0.copy(), y0.copy()
    monkeypatch.setattr(blas, "threads", lambda: 1)
    assert blas.try_rotm(x, y, 1.0, 0.25, 1e-3, 1.0 + 0.25e-3)
    tol = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(x, x0 + 0.25 * y0, rtol=tol, atol=tol)
    np.testing.assert_allclose(y, 1e-3 * x0 + (1.0 + 0.25e-3) * y0, rtol=tol, atol=tol)
    x, y = x0.copy(), y0.copy()
    assert not blas.try_rotm(x[:100], y[:100], 1.0, 0.25, 1e-3, 1.0)   # small: the ufuncs
    assert not blas.try_rotm(x[::2], y[::2], 1.0, 0.25, 1e-3, 1.0)     # strided
    monkeypatch.setattr(blas, "threads", lambda: 2)
    assert not blas.try_rotm(x, y, 1.0, 0.25, 1e-3, 1.0)               # two axpys are faster
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
