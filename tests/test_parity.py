"""Parity: from the same seed, every backend trains to the same numbers as NumPy.

The backend under test runs several SGD steps (with momentum, so the optimizer state takes part)
beside NumPy; losses and gradients agree to float32 tolerance at every step. array-api-strict,
which holds the code to the standard alone, and PyTorch are compared in every session that has
them installed.
"""

from __future__ import annotations

import numpy as np
import pytest

from anynet.backend import get_backend, to_numpy
from anynet.network import TwoLayerNet
from anynet.optim import SGD


def trajectory(backend, steps=8):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (steps, 32, 784), dtype=np.uint8)
    t = rng.integers(0, 10, (steps, 32))
    net = TwoLayerNet(n_hidden=30, backend=backend, seed=42)
    opt = SGD(lr=0.1, momentum=0.9, weight_decay=1e-4)
    state = opt.init(net.params)
    losses, grads_seq = [], []
    for i in range(steps):
        loss, grads = net.loss_and_grads(X[i], t[i])
        losses.append(loss)
        grads_seq.append({k: to_numpy(v) for k, v in grads.items()})
        net.params, state = opt.step(net.params, grads, state)
    return np.array(losses), grads_seq, net.host_params()


def assert_same(a, b):
    losses_a, grads_a, params_a = a
    losses_b, grads_b, params_b = b
    np.testing.assert_allclose(losses_a, losses_b, rtol=1e-5)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        for k in ga:
            scale = np.abs(ga[k]).max()
            np.testing.assert_allclose(ga[k], gb[k], rtol=1e-4, atol=1e-5 * scale, err_msg=k)
    for k in params_a:
        np.testing.assert_allclose(params_a[k], params_b[k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.fixture(scope="module")
def numpy_trajectory():
    return trajectory("numpy")


def test_backend_under_test_matches_numpy(backend, numpy_trajectory):
    result = trajectory(backend)
    initial = TwoLayerNet(n_hidden=30, seed=42).host_params()
    assert np.abs(result[2]["W2"] - initial["W2"]).max() > 1e-2  # the steps moved the weights
    assert_same(result, numpy_trajectory)


@pytest.mark.parametrize("other", ["array-api-strict", "torch"])
def test_reference_backends_match_numpy(other, numpy_trajectory):
    pytest.importorskip(other.replace("-", "_"), reason=f"{other} is not installed in this session")
    assert_same(trajectory(get_backend(other)), numpy_trajectory)


def test_same_seed_same_model(backend):
    a, b = trajectory(backend, steps=3), trajectory(backend, steps=3)
    for k in a[2]:
        np.testing.assert_array_equal(a[2][k], b[2][k])
