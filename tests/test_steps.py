"""The fused step (NumPy, PyTorch) computes what the reference Array API step computes."""

from __future__ import annotations

import numpy as np
import pytest

from anynet.backend import get_namespace
from anynet.config import TrainConfig
from anynet.network import TwoLayerNet
from anynet.optim import SGD
from anynet.steps import (
    ArrayAPIStep,
    FusedStep,
    JaxJitStep,
    fast_step_applies,
    make_train_step,
)
from anynet.training import Trainer

FUSED_BACKENDS = ["numpy", "torch"]


def run_steps(step_cls, dtype, batch, wd, backend="numpy", n_examples=1000, epochs=2):
    rng = np.random.default_rng(0)
    b = get_namespace(backend)
    images = b.asarray(rng.integers(0, 256, (n_examples, 784), dtype=np.uint8))
    labels = b.asarray(rng.integers(0, 10, n_examples), "int64")
    net = TwoLayerNet(n_hidden=20, dtype=dtype, seed=1, backend=b)
    opt = SGD(lr=0.1, weight_decay=wd)
    if step_cls is FusedStep:
        step = FusedStep(net, opt, images, labels, batch)
    else:
        step = step_cls(net, opt, images, labels, batch, {})
    losses = []
    n_batches = -(-n_examples // batch)
    for epoch in range(epochs):
        step.begin_epoch(np.random.default_rng(epoch).permutation(n_examples))
        losses += [step(i, 0.1 * (1 - 0.01 * i)) for i in range(n_batches)]
    return np.array(losses), net.host_params()


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 2e-4)])
@pytest.mark.parametrize("batch", [64, 10, 1000, 333])  # 333: a short last batch
@pytest.mark.parametrize("wd", [0.0, 1e-3])
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_fused_step_equals_reference(dtype, rtol, batch, wd, backend):
    pytest.importorskip(backend, reason=f"{backend} is not installed in this session")
    fast_losses, fast = run_steps(FusedStep, dtype, batch, wd, backend)
    ref_losses, ref = run_steps(ArrayAPIStep, dtype, batch, wd)
    np.testing.assert_allclose(fast_losses, ref_losses, rtol=rtol)
    for k in ref:
        assert fast[k].dtype == np.dtype(dtype)
        np.testing.assert_allclose(fast[k], ref[k], rtol=rtol, atol=rtol * np.abs(ref[k]).max(),
                                   err_msg=k)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 2e-4)])
@pytest.mark.parametrize("batch", [64, 333])
def test_jax_jit_step_equals_reference(dtype, rtol, batch):
    pytest.importorskip("jax", reason="jax is not installed in this session")
    jit_losses, jit = run_steps(JaxJitStep, dtype, batch, 1e-3, "jax")
    ref_losses, ref = run_steps(ArrayAPIStep, dtype, batch, 1e-3)
    np.testing.assert_allclose(jit_losses, ref_losses, rtol=rtol)
    for k in ref:
        np.testing.assert_allclose(jit[k], ref[k], rtol=rtol, atol=rtol * np.abs(ref[k]).max(),
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


def test_which_step_runs():
    net = TwoLayerNet(n_hidden=3)
    assert fast_step_applies(net, SGD(lr=0.1, weight_decay=1e-4))
    assert not fast_step_applies(net, SGD(lr=0.1, momentum=0.9))
    args = (np.zeros((4, 784), np.uint8), np.zeros(4, np.int64), 2, {})
    assert isinstance(make_train_step(net, SGD(lr=0.1), *args), FusedStep)
    assert isinstance(make_train_step(net, SGD(lr=0.1), *args, fast=False), ArrayAPIStep)
    assert isinstance(make_train_step(net, SGD(lr=0.1, momentum=0.5), *args), ArrayAPIStep)
    with pytest.raises(ValueError):
        FusedStep(net, SGD(lr=0.1, momentum=0.5), *args[:3])
    assert not fast_step_applies(TwoLayerNet(n_hidden=3, backend="array-api-strict"), SGD())


def test_trainer_fast_and_reference_give_the_same_curve():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (700, 784), dtype=np.uint8)
    labels = (images[:, :10].argmax(axis=1)).astype(np.uint8)  # learnable
    cfg = TrainConfig(hidden=12, epochs=3, batch_size=32, lr=0.1, val_size=0)
    fast = Trainer(cfg, images, labels, fast=True).fit()
    ref = Trainer(cfg, images, labels, fast=False).fit()
    for a, b in zip(fast.state.history, ref.state.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["train_accuracy"] == pytest.approx(b["train_accuracy"], abs=2 / 700)
    assert fast.state.history[-1]["train_loss"] < fast.state.history[0]["train_loss"]
