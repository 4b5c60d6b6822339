"""examples/from_scratch.py, the whole idea on one screen, runs on the backend under test: its
gradients are anynet's and its training learns. (That it reaches what the README prints on
genuine MNIST is tests/test_docs.py's check of the README's example.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from data_helpers import synthetic_mnist

from anynet import network

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "from_scratch.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("from_scratch", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pixels(backend, n, seed):
    images, labels = synthetic_mnist(n, seed)
    X = backend.asarray((images.reshape(n, 784) / 255).astype(np.float32))
    return X, backend.asarray(labels.astype(np.int64))


def test_example_gradients_are_anynets(example, backend):
    X, t = pixels(backend, 32, 0)
    params = example.init(X, H=7, seed=3)
    J, grads = example.loss_and_grads(params, X, t)
    J_ref, grads_ref = network.loss_and_grads(params, X, t)
    assert float(J) == pytest.approx(float(J_ref), rel=1e-6)
    for name, value in grads.items():
        np.testing.assert_allclose(backend.to_numpy(value), backend.to_numpy(grads_ref[name]),
                                   rtol=1e-5, atol=1e-7)


def test_example_trains(example, backend, capsys):
    X, t = pixels(backend, 600, 0)
    params = example.train(X, t, epochs=3, batch=32, lr=0.1)
    assert capsys.readouterr().out.count("epoch ") == 3
    X_test, t_test = pixels(backend, 200, 1)
    assert example.accuracy(params, X_test, t_test) >= 0.9
