"""The math of the network, as pure functions of arrays: each forward beside its backward.

Shapes, used in every docstring:
    N   examples in a batch
    D   inputs per example (784 = 28 x 28 pixels)
    H   hidden units (30 by default)
    K   classes (10 digits)

The network, for a batch X (N, D) with integer labels t (N,):
    Z1 = X @ W1 + b1          (N, H)    linear
    A1 = relu(Z1)             (N, H)    ReLU
    Z2 = A1 @ W2 + b2         (N, K)    linear: the logits
    P  = softmax(Z2)          (N, K)    class probabilities
    J  = -mean_i log P[i, t_i]          mean cross-entropy

and its gradients, by the chain rule (Y = one_hot(t)):
    dZ2 = (P - Y) / N         (N, K)
    dW2 = A1.T @ dZ2          (H, K)     db2 = sum_i dZ2[i]   (K,)
    dA1 = dZ2 @ W2.T          (N, H)
    dZ1 = dA1 * relu'(Z1)     (N, H)
    dW1 = X.T @ dZ1           (D, H)     db1 = sum_i dZ1[i]   (H,)

Two training levers change a step and nothing at evaluation (anynet.levers draws their masks):
    dropout          A1' = A1 * M (M = keep / (1 - p), keep 0 or 1), Z2 = A1' @ W2 + b2,
                     dA1 = (dZ2 @ W2.T) * M;  on the inputs X' = X * M_x the same way
    label smoothing  T = (1 - eps) Y + eps / K,  J = -mean_i sum_k T[i, k] log P[i, k],
                     dZ2 = (P - T) / N

Every function takes arrays of any Array API library and answers in the same library; it finds
the namespace with `array_api_compat.array_namespace` and uses only the standard. These functions
never print, never update parameters, and never move data between devices.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace, is_lazy_array
from array_api_compat import device as device_of

Array = Any


# --- linear layer ------------------------------------------------------------------------------

def linear(X: Array, W: Array, b: Array) -> Array:
    """Affine map, one row per example: Y = X @ W + b.

    X (N, n_in), W (n_in, n_out), b (n_out,) -> Y (N, n_out).
    """
    return X @ W + b


def linear_grad_params(dY: Array, X: Array) -> tuple[Array, Array]:
    """Gradients of a linear layer's parameters from the gradient of its output.

    dY (N, n_out), X (N, n_in) -> dW = X.T @ dY (n_in, n_out), db = sum over rows of dY (n_out,).
    """
    xp = array_namespace(dY, X)
    return X.T @ dY, xp.sum(dY, axis=0)


def linear_grad_input(dY: Array, W: Array) -> Array:
    """Gradient of a linear layer's input: dX = dY @ W.T.

    dY (N, n_out), W (n_in, n_out) -> dX (N, n_in). The network never asks this of its first
    layer: the gradient with respect to the images is not needed to train.
    """
    return dY @ W.T


# --- ReLU --------------------------------------------------------------------------------------

def relu(Z: Array) -> Array:
    """Rectified linear unit, elementwise: relu(z) = max(0, z). Any shape."""
    xp = array_namespace(Z)
    return xp.maximum(Z, xp.zeros_like(Z))


def relu_grad(Z: Array) -> Array:
    """Derivative of ReLU, elementwise: 1 where z > 0, and 0 where z <= 0 (0 at exactly z = 0,
    as the assignment defines it). Any shape; same dtype as Z."""
    xp = array_namespace(Z)
    return xp.astype(Z > 0, Z.dtype)


def relu_backward(dA: Array, Z: Array) -> Array:
    """Chain rule through ReLU: dZ = dA * relu'(Z). dA, Z of the same shape."""
    xp = array_namespace(dA, Z)
    return xp.where(Z > 0, dA, xp.zeros_like(dA))


# --- dropout -----------------------------------------------------------------------------------

def dropout(A: Array, M: Array) -> Array:
    """Inverted dropout with a given mask, elementwise: A' = A * M.

    A (N, n) activations (the hidden units, or the inputs), M (N, n) the scaled mask
    M = keep / (1 - p): keep[i, j] is 1 (unit j of example i kept) with probability 1 - p and 0
    (dropped) with probability p, drawn for each training step (`anynet.levers.draw_masks`).
    The kept units are scaled up by 1 / (1 - p) so that E[A'] = A: evaluation then uses the
    plain network, with no mask and no rescaling.
    """
    return A * M


def dropout_backward(dA_out: Array, M: Array) -> Array:
    """Chain rule through `dropout`: dA = dA' * M. A dropped unit passes no gradient, a kept
    one its gradient times 1 / (1 - p). dA_out (N, n), M (N, n) the forward's mask."""
    return dA_out * M


# --- softmax and cross-entropy -----------------------------------------------------------------

def softmax(Z: Array) -> Array:
    """Softmax over the last axis: p_j = exp(z_j) / sum_k exp(z_k).

    Z (..., K) -> P (..., K), each row summing to 1. Stable: the row maximum is subtracted first,
    which changes nothing mathematically (it cancels) and keeps exp from overflowing.
    """
    xp = array_namespace(Z)
    E = xp.exp(Z - xp.max(Z, axis=-1, keepdims=True))
    return E / xp.sum(E, axis=-1, keepdims=True)


def log_softmax(Z: Array) -> Array:
    """Logarithm of the softmax over the last axis, through log-sum-exp:

        log p_j = z_j - m - log sum_k exp(z_k - m),    m = max_k z_k.

    Z (..., K) -> (..., K). Finite for any finite logits (no log of 0).
    """
    xp = array_namespace(Z)
    shifted = Z - xp.max(Z, axis=-1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


def one_hot(labels: Array, num_classes: int, dtype: Any = None) -> Array:
    """Indicator rows: Y[i, k] = 1 if labels[i] == k else 0.

    labels (N,) integer class indices in [0, num_classes) -> Y (N, num_classes) of `dtype`
    (default float64).
    """
    xp = array_namespace(labels)
    classes = xp.arange(num_classes, dtype=labels.dtype, **_on_device_of(labels))
    Y = labels[:, None] == classes[None, :]
    return xp.astype(Y, dtype if dtype is not None else xp.float64)


def _on_device_of(x: Array) -> dict:
    """`device=` for a creation function, to make an array beside `x`; nothing where the
    library's arrays have no device (MLX: one memory, and no `device=` keyword either)."""
    try:
        return {"device": device_of(x)}
    except AttributeError:
        return {}


def smoothed_targets(labels: Array, num_classes: int, smoothing: float = 0.0,
                     dtype: Any = None) -> Array:
    """Label-smoothed targets: T = (1 - eps) Y + eps / K, Y = one_hot(labels), eps = smoothing.

    labels (N,) -> T (N, K) of `dtype` (default float64), each row summing to 1: the label gets
    1 - eps + eps / K, every other class eps / K. eps = 0 gives one_hot's Y itself.
    """
    Y = one_hot(labels, num_classes, dtype)
    if smoothing == 0:
        return Y
    return (1 - smoothing) * Y + smoothing / num_classes


def cross_entropy(P: Array, labels: Array) -> Array:
    """Mean cross-entropy of probabilities: J = -(1/N) sum_i log P[i, t_i].

    P (N, K) probabilities (rows of a softmax), labels (N,) integer classes -> J, a 0-d array.
    This is the assignment's loss, computed from probabilities; a probability of exactly 0 gives
    inf. Training uses `softmax_cross_entropy`, which works from the logits and never does.
    """
    xp = array_namespace(P, labels)
    picked = xp.sum(P * one_hot(labels, P.shape[-1], P.dtype), axis=-1)  # P[i, t_i]
    return -xp.mean(xp.log(picked))


def softmax_cross_entropy(Z: Array, labels: Array, smoothing: float = 0.0,
                          targets: Array | None = None) -> Array:
    """Mean cross-entropy of softmax(Z), computed stably from the logits:

        J = -(1/N) sum_i log_softmax(Z)[i, t_i],  or with label smoothing eps
        J = -(1/N) sum_i sum_k T[i, k] log_softmax(Z)[i, k],  T = smoothed_targets(t, K, eps),
    or with T = `targets` (N, K) where given (soft targets, `anynet.distill`).

    Z (N, K) logits, labels (N,) integer classes -> J, a 0-d array. Finite for any finite Z.
    """
    xp = array_namespace(Z, labels)
    T = smoothed_targets(labels, Z.shape[-1], smoothing, Z.dtype) if targets is None else targets
    return -xp.mean(xp.sum(log_softmax(Z) * T, axis=-1))


def softmax_cross_entropy_forward(Z: Array, labels: Array, smoothing: float = 0.0,
                                  targets: Array | None = None) -> tuple[Array, Array]:
    """The loss and what its backward needs, from one log-softmax:

        log P = log_softmax(Z),   J = -(1/N) sum_i sum_k T[i, k] log P[i, k],   P = exp(log P),

    T the targets: one_hot(t) (J = -(1/N) sum_i log P[i, t_i]), or with label smoothing eps
    `smoothed_targets(t, K, eps)`, or `targets` (N, K) where given, rows summing to 1 (a
    teacher's soft targets, `anynet.distill`). Z (N, K) logits, labels (N,) -> (J a 0-d array,
    P (N, K)). The softmax is computed once per step: the probabilities for
    `softmax_cross_entropy_grad` come from the same log-sum-exp as the loss, so J stays finite
    for any finite Z.
    """
    xp = array_namespace(Z, labels)
    log_P = log_softmax(Z)
    T = smoothed_targets(labels, Z.shape[-1], smoothing, Z.dtype) if targets is None else targets
    J = -xp.mean(xp.sum(log_P * T, axis=-1))
    return J, xp.exp(log_P)


def softmax_cross_entropy_grad(P: Array, labels: Array, smoothing: float = 0.0,
                               targets: Array | None = None) -> Array:
    """The backward of `softmax_cross_entropy_forward`: the gradient of the mean softmax
    cross-entropy with respect to the logits, dZ = (P - T) / N (T = Y = one_hot(t) without
    label smoothing; `smoothed_targets(t, K, eps)` with it; `targets` where given).

    Why so simple: with log P[i, k] = Z[i, k] - logsumexp(Z[i]), the derivative of
    -sum_j T[i, j] log P[i, j] by Z[i, k] is -T[i, k] + P[i, k] sum_j T[i, j] = P[i, k] - T[i, k],
    as every row of T sums to 1; the mean divides by N.
    P (N, K) = softmax(Z), labels (N,) -> dZ (N, K). N may be unknown until run (a traced graph,
    such as ndonnx's symbolic batch): then it is counted, as a sum of ones.
    """
    N, K = P.shape
    if N is None:
        xp = array_namespace(P, labels)
        N = xp.sum(xp.ones_like(labels, dtype=P.dtype))
    T = smoothed_targets(labels, K, smoothing, P.dtype) if targets is None else targets
    return (P - T) / N


def accuracy(Z_or_P: Array, labels: Array) -> float | Array:
    """Fraction of rows whose largest entry is at the label's column. (N, K), (N,) -> float.

    In a traced graph (ndonnx, or JAX inside jit) the value is not known yet: there the answer is
    the 0-d float64 array that will hold it.
    """
    xp = array_namespace(Z_or_P, labels)
    hits = xp.argmax(Z_or_P, axis=-1) == xp.astype(labels, xp.int64)
    fraction = xp.mean(xp.astype(hits, xp.float64))
    if is_lazy_array(fraction):
        try:
            return float(fraction)
        except Exception:  # the library's way of saying the value is not there yet
            return fraction
    return float(fraction)
