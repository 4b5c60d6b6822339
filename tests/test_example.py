"""examples/from_scratch.py, the whole idea on one screen, runs on the backend under test: its
gradients are anynet's, its training learns, and on genuine MNIST it reaches what it says."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
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


@pytest.mark.realdata
@pytest.mark.slow
def test_example_script_on_genuine_mnist(mnist_dir):
    done = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                          timeout=600, env=os.environ | {"ANYNET_DATA_DIR": str(mnist_dir)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:5]] == [f"epoch {i}" for i in range(1, 6)]
    accuracy = float(lines[-1].removeprefix("test accuracy ").removesuffix("%"))
    assert 94.0 <= accuracy <= 98.0
