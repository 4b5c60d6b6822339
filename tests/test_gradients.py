"""Backpropagation against two oracles: central differences, and PyTorch's autograd."""

from __future__ import annotations

import numpy as np
import pytest

from anynet.backend import to_numpy
from anynet.gradcheck import (
    check_gradients,
    eps_and_tolerance,
    numerical_gradient,
    relative_error,
)
from anynet.network import TwoLayerNet


def batch(seed, n=8, d=784):
    rng = np.random.default_rng(seed)
    return rng.random((n, d)), rng.integers(0, 10, n)


def test_central_differences_every_entry_of_every_parameter(backend):
    # a narrower input keeps the check of every entry quick on every backend
    X, t = batch(0, n=6, d=40)
    net = TwoLayerNet(40, 6, 10, backend=backend, dtype="float64", seed=1)
    eps, tolerance = eps_and_tolerance(backend)  # 1e-6; float32's where float64 is only as good
    errors = check_gradients(net, X, t, eps=eps)
    assert set(errors) == {"W1", "b1", "W2", "b2"}
    for name, err in errors.items():
        assert err < tolerance, (name, err)


def test_central_differences_full_size_sample(backend):
    X, t = batch(1)
    net = TwoLayerNet(n_hidden=30, backend=backend, dtype="float64", seed=2)
    if not backend.capabilities["float64 accurate"]:
        # float32-accurate exp and log (MLX) drown a 784-wide network's central differences
        # (3e-2 at the best eps): its analytic gradients are held to NumPy's float64 ones
        reference = TwoLayerNet(n_hidden=30, dtype="float64", seed=2)
        _, expected = reference.loss_and_grads(X, t)
        _, grads = net.loss_and_grads(X, t)
        for k, g in expected.items():
            np.testing.assert_allclose(to_numpy(grads[k]), g, rtol=1e-5, atol=1e-8)
        return
    errors = check_gradients(net, X, t, max_entries=40, seed=3)
    assert max(errors.values()) < 1e-6, errors


def test_gradcheck_detects_a_wrong_gradient():
    # the check must be able to fail: a gradient off by 1e-4 relative is caught
    X, t = batch(2, n=4, d=20)
    net = TwoLayerNet(20, 4, 10, dtype="float64", seed=0)
    _, grads = net.loss_and_grads(X, t)
    numeric = numerical_gradient(net, X, t, "W2")
    assert relative_error(grads["W2"] * (1 + 1e-4), numeric).max() > 1e-6
    assert relative_error(grads["W2"], numeric).max() < 1e-6


def test_gradcheck_command(capsys, backend):
    from anynet.cli import main

    assert main(["gradcheck", "--backend", backend.spec, "--hidden", "3", "--entries", "30"]) == 0
    out = capsys.readouterr().out
    assert "W1" in out and "b2" in out and "passed" in out


def test_against_torch_autograd(backend):
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle here; install torch==2.13.0")
    rng = np.random.default_rng(4)
    X, t = rng.random((16, 784)), rng.integers(0, 10, 16)
    net = TwoLayerNet(n_hidden=30, backend=backend, dtype="float64", seed=5)
    loss, grads = net.loss_and_grads(X, t)

    params = {k: torch.tensor(v, requires_grad=True) for k, v in net.host_params().items()}
    Xt, tt = torch.tensor(X), torch.tensor(t)
    logits = torch.relu(Xt @ params["W1"] + params["b1"]) @ params["W2"] + params["b2"]
    ref = torch.nn.functional.cross_entropy(logits, tt)
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    for k, p in params.items():
        np.testing.assert_allclose(to_numpy(grads[k]), p.grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=k)
