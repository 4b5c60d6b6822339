"""Training's levers (anynet.levers): dropout, label smoothing, averaged weights. The math
against independent references (NumPy written out here, torch.autograd, central differences),
the masks' reproducibility, and every fast step equal to the reference step with each lever
on, on the backend under test. The training loop's side is tests/test_levers_training.py."""

from __future__ import annotations

import numpy as np
import pytest

from anynet import functional as F
from anynet.backend import get_backend, to_numpy
from anynet.gradcheck import check_gradients, eps_and_tolerance
from anynet.levers import MASK_STREAM, Levers, ema_update, ema_weights, swa_update
from anynet.network import TwoLayerNet, loss_and_grads
from anynet.optim import SGD
from anynet.steps import ArrayAPIStep, FusedStep, GraphedStep, make_train_step
from tests.fake_capture import strict_capture
from tests.test_steps import fast_step_of


def _mask(rng, shape, p):
    """A scaled dropout mask drawn here, apart from anynet.levers: keep / (1 - p)."""
    return (rng.random(shape) >= p) / (1 - p)


# --- the pure functions ------------------------------------------------------------------------


def test_dropout_forward_and_backward_are_the_mask_times(backend):
    rng = np.random.default_rng(0)
    A, dY, M = rng.normal(size=(6, 5)), rng.normal(size=(6, 5)), _mask(rng, (6, 5), 0.4)
    out = to_numpy(F.dropout(backend.asarray(A, "float64"), backend.asarray(M, "float64")))
    back = to_numpy(F.dropout_backward(backend.asarray(dY, "float64"),
                                       backend.asarray(M, "float64")))
    np.testing.assert_array_equal(out, A * M)
    np.testing.assert_array_equal(back, dY * M)
    assert (out[M == 0] == 0).all() and np.allclose(out[M > 0], A[M > 0] / 0.6, rtol=1e-15)


def test_smoothed_targets_and_their_loss_against_numpy(backend, tol):
    rng = np.random.default_rng(1)
    Z, t, eps = rng.normal(size=(7, 10)) * 3, rng.integers(0, 10, 7), 0.1
    T = to_numpy(F.smoothed_targets(backend.asarray(t, "int64"), 10, eps, backend.dtype("float64")))
    expected_T = np.full((7, 10), eps / 10)
    expected_T[np.arange(7), t] = 1 - eps + eps / 10
    np.testing.assert_allclose(T, expected_T, rtol=1e-15)
    np.testing.assert_allclose(T.sum(axis=1), 1, rtol=1e-15)
    # J = -mean_i sum_k T log softmax(Z), and dZ = (P - T) / N, written out in NumPy
    log_P = Z - Z.max(axis=1, keepdims=True)
    log_P -= np.log(np.exp(log_P).sum(axis=1, keepdims=True))
    Zb, tb = backend.asarray(Z, "float64"), backend.asarray(t, "int64")
    J, P = F.softmax_cross_entropy_forward(Zb, tb, eps)
    assert float(J) == pytest.approx(-(expected_T * log_P).sum(axis=1).mean(), rel=tol(1e-13))
    assert float(F.softmax_cross_entropy(Zb, tb, eps)) == pytest.approx(float(J), rel=1e-15)
    np.testing.assert_allclose(to_numpy(F.softmax_cross_entropy_grad(P, tb, eps)),
                               (np.exp(log_P) - expected_T) / 7, rtol=tol(1e-12), atol=1e-15)


def test_smoothing_0_and_a_mask_of_ones_change_nothing(backend):
    """Label smoothing 0 is the one-hot loss, and a mask of ones (dropout with p = 0) the plain
    network, bit for bit."""
    rng = np.random.default_rng(2)
    X, t = backend.asarray(rng.random((8, 784)), "float32"), backend.asarray(
        rng.integers(0, 10, 8), "int64")
    net = TwoLayerNet(n_hidden=12, backend=backend, seed=3)
    J, grads = loss_and_grads(net.params, X, t)
    ones = Levers(dropout=0.0).draw_masks((0, 0), 8, 784, 12, "float32")
    assert ones == (None, None)  # p = 0 draws no mask at all
    from anynet.levers import _scaled_keep

    M = _scaled_keep(np.random.default_rng(0), (8, 12), 0.0, "float32")
    assert (M == 1).all()
    J2, grads2 = loss_and_grads(net.params, X, t, hidden_mask=backend.asarray(M),
                                label_smoothing=0.0)
    assert to_numpy(J).tobytes() == to_numpy(J2).tobytes()
    for k in grads:
        assert to_numpy(grads[k]).tobytes() == to_numpy(grads2[k]).tobytes(), k


def test_central_differences_with_dropout_and_label_smoothing(backend):
    rng = np.random.default_rng(4)
    X, t = rng.random((6, 40)), rng.integers(0, 10, 6)
    net = TwoLayerNet(40, 7, 10, backend=backend, dtype="float64", seed=5)
    M = backend.asarray(_mask(rng, (6, 7), 0.3), "float64")
    eps, tolerance = eps_and_tolerance(backend)
    errors = check_gradients(net, X, t, eps=eps, hidden_mask=M, label_smoothing=0.2)
    assert set(errors) == {"W1", "b1", "W2", "b2"}
    assert max(errors.values()) < tolerance, errors
    # the check can fail: the plain gradient is not the gradient of the smoothed loss
    from anynet.gradcheck import numerical_gradient, relative_error

    _, plain = net.loss_and_grads(X, t)
    numeric = numerical_gradient(net, X, t, "W2", eps, hidden_mask=M, label_smoothing=0.2)
    assert relative_error(to_numpy(plain["W2"]), numeric).max() > 1e-3


def test_levers_against_torch_autograd(backend):
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle here")
    rng = np.random.default_rng(6)
    X, t = rng.random((16, 784)), rng.integers(0, 10, 16)
    Mx, Mh = _mask(rng, (16, 784), 0.2), _mask(rng, (16, 30), 0.5)
    net = TwoLayerNet(n_hidden=30, backend=backend, dtype="float64", seed=7)
    loss, grads = net.loss_and_grads_array(backend.asarray(X * Mx, "float64"), t,
                                           hidden_mask=backend.asarray(Mh, "float64"),
                                           label_smoothing=0.1)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in net.host_params().items()}
    hidden = torch.relu(torch.tensor(X * Mx) @ p["W1"] + p["b1"]) * torch.tensor(Mh)
    ref = torch.nn.functional.cross_entropy(hidden @ p["W2"] + p["b2"], torch.tensor(t),
                                            label_smoothing=0.1)
    ref.backward()
    assert float(to_numpy(loss)) == pytest.approx(ref.item(), rel=1e-12)
    for k, v in p.items():
        np.testing.assert_allclose(to_numpy(grads[k]), v.grad.numpy(), rtol=1e-10, atol=1e-14,
                                   err_msg=k)


# --- masks and averages ------------------------------------------------------------------------


def test_masks_are_drawn_from_the_seed_and_the_chunk():
    lv = Levers(dropout=0.5, input_dropout=0.2, seed=9)
    Mx, Mh = lv.draw_masks((1, 3), 1000, 784, 40, "float32")
    again = lv.draw_masks((1, 3), 1000, 784, 40, "float32")
    assert Mx.dtype == Mh.dtype == np.float32 and Mx.shape == (1000, 784) and Mh.shape == (1000, 40)
    assert (Mx == again[0]).all() and (Mh == again[1]).all()  # the same key, the same masks
    assert set(np.unique(Mh)) == {0.0, np.float32(2.0)}
    assert set(np.unique(Mx)) == {0.0, np.float32(1 / 0.8)}
    assert abs((Mh == 0).mean() - 0.5) < 0.01 and abs((Mx == 0).mean() - 0.2) < 0.005
    # the generator is NumPy's, seeded by (seed, MASK_STREAM, epoch, chunk), inputs first
    rng = np.random.default_rng([9, MASK_STREAM, 1, 3])
    np.testing.assert_array_equal(Mx == 0, rng.random((1000, 784), dtype=np.float32) < 0.2)
    np.testing.assert_array_equal(Mh == 0, rng.random((1000, 40), dtype=np.float32) < 0.5)
    for other in [Levers(dropout=0.5, input_dropout=0.2, seed=10).draw_masks((1, 3), 1000, 784,
                                                                           40, "float32"),
                  lv.draw_masks((1, 4), 1000, 784, 40, "float32"),
                  lv.draw_masks((2, 3), 1000, 784, 40, "float32")]:
        assert (other[1] != Mh).any()


def test_ema_and_swa_against_numpy(backend):
    rng = np.random.default_rng(8)
    snapshots = [{"W": rng.normal(size=(3, 4)), "b": rng.normal(size=4)} for _ in range(5)]
    on = [{k: backend.asarray(v, "float64") for k, v in s.items()} for s in snapshots]
    m = {k: backend.xp.zeros_like(v) for k, v in on[0].items()}
    swa = {}
    for i, s in enumerate(on):
        m = ema_update(m, s, 0.9)
        swa = swa_update(swa, s, i + 1)
    weights = 0.9 ** np.arange(4, -1, -1) * 0.1  # the steps' weights, newest last
    for k in ("W", "b"):
        stack = np.stack([s[k] for s in snapshots])
        np.testing.assert_allclose(to_numpy(m[k]), np.tensordot(weights, stack, 1), rtol=1e-13,
                                   atol=1e-15)
        np.testing.assert_allclose(to_numpy(ema_weights(m, 0.9, 5)[k]),
                                   np.tensordot(weights / weights.sum(), stack, 1), rtol=1e-13,
                                   atol=1e-15)
        np.testing.assert_allclose(to_numpy(swa[k]), stack.mean(axis=0), rtol=1e-13, atol=1e-15)
    # bias correction: an EMA of unchanging weights reports those weights after any step
    constant = {"W": on[0]["W"]}
    m = {"W": backend.xp.zeros_like(on[0]["W"])}
    for steps in range(1, 4):
        m = ema_update(m, constant, 0.999)
        np.testing.assert_allclose(to_numpy(ema_weights(m, 0.999, steps)["W"]), snapshots[0]["W"],
                                   rtol=1e-10)


# --- the steps ---------------------------------------------------------------------------------

LEVERS = {
    "dropout": Levers(dropout=0.5, seed=1),
    "input dropout": Levers(input_dropout=0.2, seed=1),
    "label smoothing": Levers(label_smoothing=0.1),
    "ema": Levers(ema=0.9),
    "all": Levers(dropout=0.3, input_dropout=0.1, label_smoothing=0.2, ema=0.99, seed=2),
}


def run_steps(make, backend, levers, *, batch=64, momentum=0.0, dtype="float64", n=700,
              epochs=2):
    rng = np.random.default_rng(0)
    images = backend.asarray(rng.integers(0, 256, (n, 784), dtype=np.uint8))
    labels = backend.asarray(rng.integers(0, 10, n), "int64")
    net = TwoLayerNet(n_hidden=20, dtype=dtype, seed=1, backend=backend)
    opt = SGD(lr=0.1, weight_decay=1e-3, momentum=momentum)
    step = make(net, opt, images, labels, batch, opt.init(net.params), levers=levers)
    losses = []
    for epoch in range(epochs):
        step.begin_epoch(np.random.default_rng(epoch).permutation(n), epoch=epoch)
        losses += [float(backend.to_numpy(step(i, 0.1 * (1 - 0.01 * i))))
                   for i in range(-(-n // batch))]
    average = {k: backend.to_numpy(v) for k, v in step.average.items()}
    return np.array(losses), net.host_params(), average


def assert_same_run(a, b, rtol):
    (la, pa, aa), (lb, pb, ab) = a, b
    np.testing.assert_allclose(la, lb, rtol=rtol)
    assert set(aa) == set(ab)
    for got, want in ((pa, pb), (aa, ab)):
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=rtol,
                                       atol=rtol * np.abs(want[k]).max(), err_msg=k)


@pytest.mark.parametrize("lever", LEVERS)
@pytest.mark.parametrize("batch", [pytest.param(64, marks=pytest.mark.fused_grid),
                                   333])  # 333: a short last batch
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fast_step_equals_reference_with_each_lever(backend, lever, batch, momentum):
    levers = LEVERS[lever]
    fast = run_steps(fast_step_of(backend), backend, levers, batch=batch, momentum=momentum)
    ref = run_steps(ArrayAPIStep, backend, levers, batch=batch, momentum=momentum)
    assert_same_run(fast, ref, 1e-10)
    plain = run_steps(ArrayAPIStep, backend, None, batch=batch, momentum=momentum)
    assert np.abs(ref[0] - plain[0]).max() > 1e-4 or lever == "ema"  # the lever changed it
    assert (lever in ("ema", "all")) == bool(ref[2])                    # an EMA where asked
    if ref[2]:
        assert np.abs(ref[2]["W1"] - ref[1]["W1"]).max() > 1e-6         # ... not the weights


def test_fused_float32_with_every_lever(backend):
    if backend.fused_ops() is None:
        pytest.skip(f"{backend.name} has no fused step")
    fast = run_steps(FusedStep, backend, LEVERS["all"], dtype="float32", momentum=0.9)
    ref = run_steps(ArrayAPIStep, backend, LEVERS["all"], dtype="float32", momentum=0.9)
    assert_same_run(fast, ref, 2e-3)


@pytest.mark.parametrize("lever", ["label smoothing", "ema"])
def test_graphed_step_equals_reference_with_smoothing_and_ema(backend, lever):
    """Label smoothing and the EMA are recorded with the CUDA graph (the strict fake on CPU)."""
    if backend.fused_ops() is None:
        pytest.skip(f"{backend.name} has no fused step, so no CUDA-graph step")
    capture = backend.graph_capture() or strict_capture()

    def graphed(*args, **kw):
        return GraphedStep(*args, capture, **kw)

    ref = run_steps(ArrayAPIStep, backend, LEVERS[lever], batch=64, momentum=0.9)
    assert_same_run(run_steps(graphed, backend, LEVERS[lever], batch=64, momentum=0.9), ref,
                    1e-10)


def test_dropout_takes_the_fused_step_not_a_graph(backend, monkeypatch):
    if backend.fused_ops() is None:
        pytest.skip(f"{backend.name} has no fused step")
    monkeypatch.setattr(type(backend), "graph_capture", lambda self: strict_capture())
    net = TwoLayerNet(n_hidden=3, backend=backend)
    args = (net, SGD(lr=0.1), backend.asarray(np.zeros((8, 784), np.uint8)),
            backend.asarray(np.zeros(8, np.int64), "int64"), 4, {})
    assert type(make_train_step(*args, levers=LEVERS["dropout"])) is FusedStep
    assert type(make_train_step(*args, levers=LEVERS["ema"])) is GraphedStep
    with pytest.raises(ValueError, match="no dropout"):
        GraphedStep(*args, strict_capture(), levers=LEVERS["input dropout"])


def test_the_backends_draw_the_same_masks_and_agree(backend):
    """The same seed trains with the same masks on every backend: the backend under test
    agrees with NumPy's reference step to float64 rounding."""
    ref = run_steps(ArrayAPIStep, get_backend("numpy"), LEVERS["all"], momentum=0.9)
    here = run_steps(ArrayAPIStep, backend, LEVERS["all"], momentum=0.9)
    assert_same_run(here, ref, 1e-9)


def test_levers_are_checked():
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 0.95\]"):
        Levers(dropout=1.0)
    with pytest.raises(ValueError, match="ema must be a decay"):
        Levers(ema=1.0)
