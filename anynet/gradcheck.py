"""Checking backpropagation against central differences, for every parameter.

For each parameter entry w, the numerical derivative of the loss J is

    dJ/dw ~ (J(w + eps) - J(w - eps)) / (2 eps)        error O(eps^2)

and it is compared with the analytic gradient from `TwoLayerNet.loss_and_grads`. The comparison
is the relative error |a - n| / max(|a| + |n|, floor) per entry, whose largest value is reported
for each parameter. The floor is 1e-3 of the parameter's largest analytic gradient: float64
rounding leaves about 1e-16 |J| / eps (~1e-11) of absolute noise in every numerical derivative,
which would make entries near zero look wrong; below the floor an entry must still agree to
tolerance * floor in absolute terms. Run in float64: in float32 the differences drown in rounding.

Training's levers are checked the same way: `check_gradients(..., hidden_mask=M,
label_smoothing=eps)` differentiates the loss with that dropout mask and those smoothed
targets (`anynet.network.loss_and_grads`'s options).

This module is for verifying the math (tests, `anynet gradcheck`), not for training.
"""

from __future__ import annotations

import numpy as np

from anynet.network import PARAM_NAMES, TwoLayerNet, loss

DEFAULT_EPS = 1e-5  # balances truncation (eps^2) against rounding (1e-16 / eps) in float64
FLOOR_FRACTION = 1e-3
TOLERANCE = 1e-6
# A library whose float64 exp and log are float32-accurate (MLX's: `Backend.capabilities`) leaves
# ~1e-7 |J| of noise in every loss: a larger step balances it (measured on MLX: 4.5e-4 at worst
# at eps 3e-3), and the tolerance is float32's. A wrong gradient still errs by O(1).
FLOAT32_ACCURATE_EPS = 3e-3
FLOAT32_ACCURATE_TOLERANCE = 1e-3


def eps_and_tolerance(backend) -> tuple[float, float]:
    """The default step and the tolerance for `backend`: float64's, or float32's where the
    library computes float64 only to float32 accuracy."""
    if backend.capabilities["float64 accurate"]:
        return DEFAULT_EPS, TOLERANCE
    return FLOAT32_ACCURATE_EPS, FLOAT32_ACCURATE_TOLERANCE


def numerical_gradient(net: TwoLayerNet, X, labels, name: str, eps: float = DEFAULT_EPS,
                       indices: np.ndarray | None = None, **loss_options) -> np.ndarray:
    """Central-difference gradient of the loss for parameter `name`, as a host array.

    Evaluates the pure `anynet.network.loss` (with `loss_options`: hidden_mask,
    label_smoothing) on copies of the parameters with one entry moved by +-eps; the net itself
    is never changed. `indices` (flat positions) limits the check to some entries; the others
    are left at 0.
    """
    backend = net.backend
    host = backend.to_numpy(net.params[name]).astype(np.float64)
    flat = host.reshape(-1)
    grad = np.zeros_like(flat)
    positions = range(flat.size) if indices is None else indices
    X, labels = net.inputs(X), net.labels(labels)

    def loss_with(value: float, i: int) -> float:
        moved = host.copy()
        moved.reshape(-1)[i] = value
        params = {**net.params, name: backend.asarray(moved, net.dtype)}
        return float(backend.to_numpy(loss(params, X, labels, **loss_options)))

    for i in positions:
        grad[i] = (loss_with(flat[i] + eps, i) - loss_with(flat[i] - eps, i)) / (2 * eps)
    return grad.reshape(host.shape)


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> np.ndarray:
    """Entrywise |a - n| / max(|a| + |n|, floor), floor = 1e-3 * max |a| (see the module doc)."""
    floor = max(FLOOR_FRACTION * float(np.max(np.abs(analytic), initial=0.0)), 1e-300)
    return np.abs(analytic - numeric) / np.maximum(np.abs(analytic) + np.abs(numeric), floor)


def check_gradients(net: TwoLayerNet, X, labels, *, eps: float = DEFAULT_EPS,
                    max_entries: int | None = None, seed: int = 0,
                    **loss_options) -> dict[str, float]:
    """The largest relative error between analytic and numerical gradients, per parameter.

    `max_entries` checks a random sample of that many entries of each parameter (all when None).
    `loss_options` (hidden_mask, label_smoothing) go to the loss and its gradient alike.
    """
    _, grads = net.loss_and_grads_array(X, labels, **loss_options)
    rng = np.random.default_rng(seed)
    errors = {}
    for name in PARAM_NAMES:
        analytic = net.backend.to_numpy(grads[name]).astype(np.float64)
        size = analytic.size
        indices = None
        if max_entries is not None and max_entries < size:
            indices = np.sort(rng.choice(size, max_entries, replace=False))
        numeric = numerical_gradient(net, X, labels, name, eps, indices, **loss_options)
        err = relative_error(analytic, numeric).reshape(-1)
        errors[name] = float(np.max(err if indices is None else err[indices]))
    return errors
