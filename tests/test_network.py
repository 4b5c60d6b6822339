"""TwoLayerNet: initialisation, inputs, prediction, and learning on the backend under test."""

from __future__ import annotations

import numpy as np
import pytest

from anynet.backend import to_numpy
from anynet.network import TwoLayerNet, init_params
from anynet.optim import SGD


def test_init_is_he_normal_and_seeded():
    p = init_params(784, 800, 10, seed=0, dtype="float64")
    assert p["W1"].shape == (784, 800) and p["W2"].shape == (800, 10)
    assert p["W1"].std() == pytest.approx(np.sqrt(2 / 784), rel=0.01)
    assert p["W2"].std() == pytest.approx(np.sqrt(2 / 800), rel=0.05)
    assert not p["b1"].any() and not p["b2"].any()
    q = init_params(784, 800, 10, seed=0, dtype="float64")
    np.testing.assert_array_equal(p["W1"], q["W1"])
    assert not np.array_equal(p["W1"], init_params(784, 800, 10, seed=1, dtype="float64")["W1"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_backend_starts_from_the_same_numbers(backend, dtype):
    net = TwoLayerNet(n_hidden=7, backend=backend, dtype=dtype, seed=3)
    host = init_params(784, 7, 10, seed=3, dtype=dtype)
    for k, v in net.host_params().items():
        assert v.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(v, host[k])


def test_from_params_keeps_dtype_and_shapes(backend):
    host = init_params(20, 4, 3, seed=0, dtype="float64")
    net = TwoLayerNet.from_params(host, backend=backend)
    assert net.sizes == (20, 4, 3) and net.dtype == "float64"
    np.testing.assert_array_equal(net.host_params()["W2"], host["W2"])


@pytest.mark.parametrize("change, message", [
    ({"b1": np.zeros(5)}, "fit one hidden layer"),
    ({"W2": np.zeros((4, 3, 1))}, "expected W1"),
])
def test_from_params_rejects_inconsistent_shapes(change, message):
    host = {**init_params(20, 4, 3, seed=0, dtype="float64"), **change}
    with pytest.raises(ValueError, match=message):
        TwoLayerNet.from_params(host)


def test_from_params_rejects_mixed_dtypes():
    host = init_params(20, 4, 3, seed=0, dtype="float64")
    host["b2"] = host["b2"].astype(np.float32)
    with pytest.raises(ValueError, match="must all be float32 or all float64"):
        TwoLayerNet.from_params(host)


def test_uint8_pixels_are_scaled(backend):
    net = TwoLayerNet(n_hidden=5, backend=backend, dtype="float64")
    pixels = np.random.default_rng(0).integers(0, 256, (3, 784), dtype=np.uint8)
    np.testing.assert_allclose(to_numpy(net.forward(pixels)),
                               to_numpy(net.forward(pixels / 255.0)), rtol=1e-13)
    # a backend array works as well as a host one, and one example as well as a batch
    np.testing.assert_allclose(to_numpy(net.forward(backend.asarray(pixels))),
                               to_numpy(net.forward(pixels)), rtol=1e-13)
    assert to_numpy(net.forward(pixels[0])).shape == (1, 10)


def test_forward_matches_numpy_formula(backend):
    net = TwoLayerNet(n_hidden=6, backend=backend, dtype="float64", seed=2)
    X = np.random.default_rng(1).random((5, 784))
    p = net.host_params()
    expected = np.maximum(X @ p["W1"] + p["b1"], 0) @ p["W2"] + p["b2"]
    np.testing.assert_allclose(to_numpy(net.forward(X)), expected, rtol=1e-12)
    P = to_numpy(net.predict_proba(X))
    np.testing.assert_allclose(P.sum(axis=1), 1, rtol=1e-12)
    np.testing.assert_array_equal(to_numpy(net.predict(X)), expected.argmax(axis=1))


def test_loss_and_grads_shapes_and_types(backend):
    net = TwoLayerNet(n_hidden=9, backend=backend)
    X = np.random.default_rng(0).integers(0, 256, (12, 784), dtype=np.uint8)
    loss, grads = net.loss_and_grads(X, np.arange(12) % 10)
    assert isinstance(loss, float) and np.isfinite(loss)
    # an untrained net is close to uniform: loss near log(10)
    assert 1.0 < loss < 5.0
    for k, v in net.params.items():
        assert tuple(grads[k].shape) == tuple(v.shape)
        assert to_numpy(grads[k]).dtype == np.float32


def test_overfits_64_examples(backend):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (64, 784), dtype=np.uint8)
    t = rng.integers(0, 10, 64)
    net = TwoLayerNet(n_hidden=30, backend=backend, seed=0)
    opt = SGD(lr=0.1)
    state = opt.init(net.params)
    for _ in range(300):
        loss, grads = net.loss_and_grads(X, t)
        net.params, state = opt.step(net.params, grads, state)
    assert np.mean(to_numpy(net.predict(X)) == t) == 1.0
    assert loss < 0.05
