"""Properties of the math in anynet.functional, on the backend under test."""

from __future__ import annotations

import numpy as np
import pytest

from anynet import functional as F
from anynet.backend import to_numpy


def test_softmax_rows_sum_to_one_and_match_definition(backend, tol):
    Z = np.random.default_rng(0).normal(size=(5, 10)) * 3
    P = to_numpy(F.softmax(backend.asarray(Z, "float64")))
    E = np.exp(Z)
    np.testing.assert_allclose(P, E / E.sum(axis=1, keepdims=True), rtol=tol(1e-13))
    np.testing.assert_allclose(P.sum(axis=1), 1, rtol=tol(1e-14))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_huge_logits_give_finite_softmax_and_loss(backend, dtype):
    Z = backend.asarray([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, 1000.0]], dtype)
    t = backend.asarray([1, 2], "int64")
    P = to_numpy(F.softmax(Z))
    assert np.all(np.isfinite(P))
    np.testing.assert_allclose(P, [[1, 0, 0], [0, 0, 1]], atol=1e-30)
    logP = to_numpy(F.log_softmax(Z))
    assert np.all(np.isfinite(logP))
    np.testing.assert_allclose(logP, [[0, -2000, -1000], [-2000, -2000, 0]], rtol=1e-6)
    # example 0 puts its label on a logit 2000 below the top: loss (2000 + 0) / 2
    loss = float(F.softmax_cross_entropy(Z, t))
    assert np.isfinite(loss) and loss == pytest.approx(1000.0, rel=1e-6)
    grad = to_numpy(F.softmax_cross_entropy_grad(F.softmax(Z), t))
    np.testing.assert_allclose(grad, [[0.5, -0.5, 0], [0, 0, 0]], atol=1e-7)


def test_log_softmax_is_log_of_softmax(backend, tol):
    Z = backend.asarray(np.random.default_rng(1).normal(size=(4, 10)), "float64")
    np.testing.assert_allclose(to_numpy(F.log_softmax(Z)), np.log(to_numpy(F.softmax(Z))),
                               rtol=tol(1e-12))


def test_one_hot(backend):
    Y = to_numpy(F.one_hot(backend.asarray([2, 0, 9], "int64"), 10, backend.dtype("float32")))
    assert Y.dtype == np.float32 and Y.shape == (3, 10)
    np.testing.assert_array_equal(np.argmax(Y, axis=1), [2, 0, 9])
    np.testing.assert_array_equal(Y.sum(axis=1), 1)


def test_cross_entropy_from_probs_equals_from_logits(backend, tol):
    Z = backend.asarray(np.random.default_rng(2).normal(size=(6, 10)), "float64")
    t = backend.asarray([0, 1, 2, 3, 4, 5], "int64")
    assert float(F.cross_entropy(F.softmax(Z), t)) == pytest.approx(
        float(F.softmax_cross_entropy(Z, t)), rel=tol(1e-13))


def test_linear_and_its_gradients(backend):
    rng = np.random.default_rng(3)
    X, W, b, dY = rng.normal(size=(4, 3)), rng.normal(size=(3, 2)), rng.normal(size=2), \
        rng.normal(size=(4, 2))
    on = lambda a: backend.asarray(a, "float64")  # noqa: E731
    np.testing.assert_allclose(to_numpy(F.linear(on(X), on(W), on(b))), X @ W + b, rtol=1e-13)
    dW, db = F.linear_grad_params(on(dY), on(X))
    np.testing.assert_allclose(to_numpy(dW), X.T @ dY, rtol=1e-13)
    np.testing.assert_allclose(to_numpy(db), dY.sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(to_numpy(F.linear_grad_input(on(dY), on(W))), dY @ W.T,
                               rtol=1e-13)


def test_relu_backward_masks_by_preactivation(backend):
    Z = backend.asarray([[-1.0, 0.0, 2.0]], "float64")
    dA = backend.asarray([[5.0, 6.0, 7.0]], "float64")
    np.testing.assert_array_equal(to_numpy(F.relu_backward(dA, Z)), [[0, 0, 7]])


def test_accuracy(backend):
    Z = backend.asarray([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], "float32")
    assert F.accuracy(Z, backend.asarray([1, 0, 0], "int64")) == pytest.approx(2 / 3)
