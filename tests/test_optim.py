"""SGD steps worked out by hand, and the learning-rate schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anynet.backend import to_numpy
from anynet.optim import SGD, make_schedule


def arrays(backend, **values):
    return {k: backend.asarray(v, "float64") for k, v in values.items()}


def steps(backend, opt, p, grads_seq):
    params, state = arrays(backend, w=p), None
    state = opt.init(params)
    for g in grads_seq:
        params, state = opt.step(params, arrays(backend, w=g), state)
    return to_numpy(params["w"]), {k: to_numpy(v) for k, v in state.items()}


def test_plain_sgd_step(backend):
    # w - lr * g = [1 - 0.1 * 0.5, -2 - 0.1 * 0.25]
    w, state = steps(backend, SGD(lr=0.1), [1.0, -2.0], [[0.5, 0.25]])
    np.testing.assert_allclose(w, [0.95, -2.025], rtol=1e-15)
    assert state == {}


def test_weight_decay_step(backend):
    # g + wd * w = [0.5 + 0.01, 0.25 - 0.02] = [0.51, 0.23]; w - 0.1 * that
    w, _ = steps(backend, SGD(lr=0.1, weight_decay=0.01), [1.0, -2.0], [[0.5, 0.25]])
    np.testing.assert_allclose(w, [0.949, -2.023], rtol=1e-15)


def test_momentum_two_steps(backend):
    # step 1: v = g1 = [0.5, 0.25];            w = [1, -2] - 0.1 v = [0.95, -2.025]
    # step 2: v = 0.9 v + g2 = [0.45 + 1.0, 0.225 - 0.5] = [1.45, -0.275]
    #         w = [0.95 - 0.145, -2.025 + 0.0275] = [0.805, -1.9975]
    w, state = steps(backend, SGD(lr=0.1, momentum=0.9), [1.0, -2.0],
                     [[0.5, 0.25], [1.0, -0.5]])
    np.testing.assert_allclose(w, [0.805, -1.9975], rtol=1e-14)
    np.testing.assert_allclose(state["w"], [1.45, -0.275], rtol=1e-14)


def test_nesterov_momentum_weight_decay_two_steps(backend):
    # lr 0.1, mu 0.5, wd 0.1, w0 = [2.0]
    # step 1: g = 1 + 0.1 * 2 = 1.2; v = 1.2; d = 1.2 + 0.5 * 1.2 = 1.8; w = 2 - 0.18 = 1.82
    # step 2: g = -1 + 0.1 * 1.82 = -0.818; v = 0.6 - 0.818 = -0.218;
    #         d = -0.818 + 0.5 * -0.218 = -0.927; w = 1.82 + 0.0927 = 1.9127
    w, state = steps(backend, SGD(lr=0.1, momentum=0.5, nesterov=True, weight_decay=0.1), [2.0],
                     [[1.0], [-1.0]])
    np.testing.assert_allclose(w, [1.9127], rtol=1e-14)
    np.testing.assert_allclose(state["w"], [-0.218], rtol=1e-13)


def test_step_does_not_modify_its_inputs(backend):
    params = arrays(backend, w=[1.0, 2.0])
    grads = arrays(backend, w=[1.0, 1.0])
    opt = SGD(lr=0.5, momentum=0.9)
    state = opt.init(params)
    opt.step(params, grads, state)
    np.testing.assert_array_equal(to_numpy(params["w"]), [1.0, 2.0])
    np.testing.assert_array_equal(to_numpy(state["w"]), [0.0, 0.0])


def test_step_lr_override(backend):
    params = arrays(backend, w=[1.0])
    new, _ = SGD(lr=0.1).step(params, arrays(backend, w=[1.0]), {}, lr=0.01)
    np.testing.assert_allclose(to_numpy(new["w"]), [0.99])


@pytest.mark.parametrize("kwargs", [dict(lr=0), dict(lr=float("nan")), dict(momentum=1.0),
                                    dict(momentum=-0.1), dict(nesterov=True),
                                    dict(weight_decay=-1)])
def test_invalid_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        SGD(**kwargs)


def test_schedules():
    const = make_schedule("constant", 0.5, 100)
    assert [const(s) for s in (0, 50, 99)] == [0.5, 0.5, 0.5]
    step = make_schedule("step", 1.0, 100)
    assert [step(s) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    cos = make_schedule("cosine", 2.0, 100)
    assert cos(0) == 2.0
    assert cos(50) == pytest.approx(1.0)
    assert cos(99) == pytest.approx(1.0 + math.cos(math.pi * 0.99))
    assert all(cos(s) > cos(s + 1) for s in range(99))
    with pytest.raises(ValueError):
        make_schedule("linear", 1.0, 10)
