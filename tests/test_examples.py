"""The assignment's worked examples, exactly, on the backend under test."""

from __future__ import annotations

import numpy as np
import pytest

from anynet import examples as E
from anynet import functional as F
from anynet.backend import to_numpy
from anynet.cli import main

pytestmark = pytest.mark.portable  # every Array API library's session runs these, ndonnx's too


def f64(backend, a):
    return backend.asarray(a, "float64")


def test_relu_table(backend):
    out = to_numpy(F.relu(f64(backend, E.RELU_INPUT)))
    expected = np.array([
        [0.24254239, 0.0, 0.06251788],
        [0.29174967, 0.00640839, 0.0088702],
        [0.21299534, 0.01685097, 0.0],
        [0.28040822, 0.08560704, 0.0],
        [0.20900069, 0.05125724, 0.0],
    ])
    np.testing.assert_array_equal(out, expected)


def test_relu_derivative_is_zero_at_zero(backend):
    z = f64(backend, [-2.0, -1e-300, 0.0, 1e-300, 3.0])
    np.testing.assert_array_equal(to_numpy(F.relu_grad(z)), [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(
        to_numpy(F.relu_grad(f64(backend, E.RELU_INPUT))),
        [[1, 0, 1], [1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 1, 0]],
    )


def test_softmax_example(backend, tol):
    p = to_numpy(F.softmax(f64(backend, E.SOFTMAX_LOGITS)))
    np.testing.assert_allclose(p, E.SOFTMAX_EXPECTED, rtol=tol(1e-7), atol=0)
    assert abs(p.sum() - 1) < tol(1e-15)


def test_loss_example(backend):
    P, t = f64(backend, E.LOSS_PROBS), backend.asarray(E.LOSS_LABELS, "int64")
    assert abs(float(F.cross_entropy(P, t)) - 9.451778874433794) <= 1e-9


def test_loss_example_through_logits(backend, tol):
    # log P are logits whose softmax is P (rows sum to 1 within 2.3e-10)
    P, t = f64(backend, E.LOSS_PROBS), backend.asarray(E.LOSS_LABELS, "int64")
    loss = float(F.softmax_cross_entropy(backend.xp.log(P), t))
    assert abs(loss - 9.451778874433794) <= tol(1e-9)


def test_gradient_table(backend):
    P, t = f64(backend, E.LOSS_PROBS), backend.asarray(E.LOSS_LABELS, "int64")
    dZ = to_numpy(F.softmax_cross_entropy_grad(P, t))
    np.testing.assert_allclose(dZ, E.GRAD_EXPECTED, rtol=0, atol=1e-9)
    # the three targets carry the -1/3
    assert dZ[0, 6] < -0.33 and dZ[1, 4] < -0.33 and dZ[2, 7] < -0.33
    np.testing.assert_allclose(dZ.sum(axis=1), 0, atol=1e-9)


def test_run_examples_all_ok(backend):
    results = E.run_examples(backend)
    assert [r.name for r in results if not r.ok] == []
    assert len(results) == 7


def test_examples_command(backend, capsys):
    assert main(["examples", "--backend", backend.spec]) == 0
    out = capsys.readouterr().out
    assert "9.451778874433794" in out
    assert "all examples agree" in out
    assert "-3.33332934e-01" in out


def test_examples_command_json(backend, capsys):
    import json

    assert main(["examples", "--backend", backend.spec, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by_name = {e["name"]: e for e in doc["examples"]}
    assert by_name["cross_entropy"]["computed"] == pytest.approx(9.451778874433794, abs=1e-9)
    assert all(e["ok"] for e in doc["examples"])
