"""The two-layer network: parameters, forward pass, and backpropagation written out by hand.

    X (N, D) -> linear(W1, b1) -> ReLU -> linear(W2, b2) -> logits (N, K) -> softmax

D = 784 inputs, H hidden units (30 by default), K = 10 classes. The math is in
`anynet.functional`; this module holds the parameters, puts the pieces together in order, and
applies the chain rule backwards (no autograd). It computes gradients and never changes the
parameters: updating them is the optimizer's job (`anynet.optim`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anynet import functional as F
from anynet.backend import Backend, get_backend, to_numpy
from anynet.preprocess import Preprocessing

PARAM_NAMES = ("W1", "b1", "W2", "b2")
PIXEL_SCALE = 255  # uint8 pixels 0..255 become inputs in [0, 1]


def init_params(n_in: int, n_hidden: int, n_out: int, seed: int, dtype: str = "float32") -> dict:
    """He-normal weights and zero biases, drawn on the host from NumPy's Generator(seed).

    W1 ~ N(0, 2 / n_in) of shape (n_in, n_hidden), W2 ~ N(0, 2 / n_hidden) of shape
    (n_hidden, n_out); b1, b2 zero. He scaling keeps the variance of ReLU activations steady from
    layer to layer. Drawn in float64 and rounded once to `dtype`, so every backend starts from the
    same numbers. Returns host NumPy arrays.
    """
    rng = np.random.default_rng(seed)
    W1 = rng.standard_normal((n_in, n_hidden)) * np.sqrt(2.0 / n_in)
    W2 = rng.standard_normal((n_hidden, n_out)) * np.sqrt(2.0 / n_hidden)
    return {
        "W1": W1.astype(dtype),
        "b1": np.zeros(n_hidden, dtype=dtype),
        "W2": W2.astype(dtype),
        "b2": np.zeros(n_out, dtype=dtype),
    }


def check_param_shapes(shapes: dict[str, tuple]) -> tuple[int, int, int]:
    """Check that parameter shapes form one hidden layer; return (n_in, n_hidden, n_out).

    Raises ValueError naming the first inconsistency.
    """
    missing = [k for k in PARAM_NAMES if k not in shapes]
    if missing:
        raise ValueError(f"missing parameters: {', '.join(missing)}")
    W1, b1, W2, b2 = (tuple(shapes[k]) for k in PARAM_NAMES)
    if len(W1) != 2 or len(W2) != 2 or len(b1) != 1 or len(b2) != 1:
        raise ValueError(
            "expected W1 (D, H), b1 (H,), W2 (H, K), b2 (K,); "
            f"got W1 {W1}, b1 {b1}, W2 {W2}, b2 {b2}"
        )
    n_in, n_hidden = W1
    n_out = W2[1]
    if b1 != (n_hidden,) or W2[0] != n_hidden or b2 != (n_out,):
        raise ValueError(
            f"shapes do not fit one hidden layer: W1 {W1}, b1 {b1}, W2 {W2}, b2 {b2} "
            "(expected W1 (D, H), b1 (H,), W2 (H, K), b2 (K,))"
        )
    return n_in, n_hidden, n_out


def forward(params: dict, X: Any, hidden_mask: Any = None) -> tuple[Any, dict]:
    """The forward pass, keeping what backward needs.

    params {"W1": (D, H), "b1": (H,), "W2": (H, K), "b2": (K,)}, X float (N, D) ->
    (logits Z2 (N, K), cache {"Z1": (N, H), "A1": (N, H), "M": the mask or None}):
        Z1 = X @ W1 + b1,   A1 = relu(Z1),   Z2 = A1 @ W2 + b2,
    with `hidden_mask` M (N, H) (training with dropout, `anynet.functional.dropout`) the hidden
    units dropped first: A1 = relu(Z1) * M, the cache's A1 being what the output layer saw.
    """
    Z1 = F.linear(X, params["W1"], params["b1"])
    A1 = F.relu(Z1)
    if hidden_mask is not None:
        A1 = F.dropout(A1, hidden_mask)
    Z2 = F.linear(A1, params["W2"], params["b2"])
    return Z2, {"Z1": Z1, "A1": A1, "M": hidden_mask}


def backward(params: dict, X: Any, cache: dict, dZ2: Any) -> dict:
    """The chain rule from the logits' gradient back to every parameter's.

    dZ2 (N, K) = dJ/dZ2, cache from `forward` -> grads with the keys and shapes of params:
        dW2 = A1.T @ dZ2, db2 = sum_i dZ2[i];  dA1 = dZ2 @ W2.T;  dZ1 = dA1 * relu'(Z1);
        dW1 = X.T @ dZ1,  db1 = sum_i dZ1[i];
    with a dropout mask M in the cache, dA1 = (dZ2 @ W2.T) * M (`dropout_backward`).
    No gradient for the input images: training does not need it.
    """
    dW2, db2 = F.linear_grad_params(dZ2, cache["A1"])
    dA1 = F.linear_grad_input(dZ2, params["W2"])
    if cache.get("M") is not None:
        dA1 = F.dropout_backward(dA1, cache["M"])
    dZ1 = F.relu_backward(dA1, cache["Z1"])
    dW1, db1 = F.linear_grad_params(dZ1, X)
    return {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


def loss(params: dict, X: Any, t: Any, *, hidden_mask: Any = None,
         label_smoothing: float = 0.0, targets: Any = None) -> Any:
    """Mean cross-entropy of the network with `params` on a batch: X (N, D), t (N,) -> 0-d;
    with a dropout mask, label smoothing and soft targets as `loss_and_grads` takes them."""
    return F.softmax_cross_entropy(forward(params, X, hidden_mask)[0], t, label_smoothing,
                                   targets)


def loss_and_grads(params: dict, X: Any, t: Any, *, hidden_mask: Any = None,
                   label_smoothing: float = 0.0, targets: Any = None) -> tuple[Any, dict]:
    """Mean cross-entropy of the network with `params` on a batch, and its gradients.

    A pure function: params as in `forward`, X float (N, D), t integer labels (N,), all arrays
    of one backend -> (J as a 0-d array, grads with the keys and shapes of params). One forward,
    one softmax (inside the loss's log-sum-exp), one backward; nothing is updated. Training's
    levers: `hidden_mask` (N, H), dropout's scaled mask on the hidden units (see `forward`);
    `label_smoothing` eps, the targets (1 - eps) one_hot(t) + eps / K; `targets` (N, K), soft
    targets in their place (a teacher's, `anynet.distill`).
    """
    Z2, cache = forward(params, X, hidden_mask)
    J, P = F.softmax_cross_entropy_forward(Z2, t, label_smoothing, targets)
    return J, backward(params, X, cache,
                       F.softmax_cross_entropy_grad(P, t, label_smoothing, targets))


def _dtype_name(array: Any) -> str:
    """'float32' for a float32 array of any library (torch says 'torch.float32')."""
    return str(array.dtype).rsplit(".", 1)[-1]


def _preprocessing(value: Any) -> Preprocessing:
    """`value` as an `anynet.preprocess.Preprocessing`: None is none, text is parsed."""
    if value is None:
        return Preprocessing()
    return value if isinstance(value, Preprocessing) else Preprocessing.parse(value)


def pixels_to_inputs(pixels: Any, dtype: Any) -> Any:
    """uint8 pixels 0..255 -> floats in [0, 1] of `dtype`: pixels / 255. Any shape."""
    from array_api_compat import array_namespace

    return array_namespace(pixels).astype(pixels, dtype) / PIXEL_SCALE


class TwoLayerNet:
    """A 784-H-10 network with ReLU hidden units and a softmax output, on any backend.

    `params` maps "W1" (D, H), "b1" (H,), "W2" (H, K), "b2" (K,) to arrays of the backend. Inputs
    X may be host NumPy arrays or arrays of the backend, either uint8 pixels (scaled by 1/255
    here) or floats already in [0, 1]; labels are integer class indices. `preprocessing` (an
    `anynet.preprocess.Preprocessing`, or its text: "deslant", ...) is applied to every X
    first, as the network was trained; by default none.
    """

    def __init__(
        self,
        n_in: int = 784,
        n_hidden: int = 30,
        n_out: int = 10,
        *,
        backend: str | Backend = "numpy",
        dtype: str = "float32",
        seed: int = 0,
        preprocessing: Any = None,
    ):
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', not {dtype!r}")
        self.preprocessing = _preprocessing(preprocessing)
        self.backend = get_backend(backend)
        self.dtype = dtype
        host = init_params(n_in, n_hidden, n_out, seed, dtype)
        self.params = {k: self.backend.asarray(v) for k, v in host.items()}

    @classmethod
    def from_params(cls, params: dict, *, backend: str | Backend = "numpy",
                    preprocessing: Any = None) -> TwoLayerNet:
        """A network holding the given parameters (host NumPy or any backend's arrays).

        The shapes must form one hidden layer (see `check_param_shapes`); the dtype, float32 or
        float64, is kept (all four must share it).
        """
        backend = get_backend(backend)
        check_param_shapes({k: tuple(params[k].shape) for k in PARAM_NAMES if k in params})
        net = cls.__new__(cls)
        net.preprocessing = _preprocessing(preprocessing)
        net.backend = backend
        net.params = {k: net._own(params[k]) for k in PARAM_NAMES}
        dtypes = {_dtype_name(v) for v in net.params.values()}
        if len(dtypes) != 1 or not dtypes <= {"float32", "float64"}:
            raise ValueError(f"parameters must all be float32 or all float64, got {sorted(dtypes)}")
        net.dtype = dtypes.pop()
        return net

    def _is_own(self, array: Any) -> bool:
        """Whether `array` is already an array of this net's library, on its device (NumPy
        arrays count as the host's unless the backend is NumPy). Devices are compared by the
        seam (`Backend.holds`): MLX's arrays have none, dpnp's device objects never compare
        equal."""
        return self.backend.holds(array)

    def _own(self, array: Any) -> Any:
        """`array` as an array of this net's backend and device: kept as it is when it already
        is one, else through the host (`to_numpy` knows every library's way there)."""
        if self._is_own(array):
            return array
        return self.backend.asarray(to_numpy(array))

    # --- shape and data ------------------------------------------------------------------------

    @property
    def xp(self):
        return self.backend.xp

    @property
    def sizes(self) -> tuple[int, int, int]:
        """(D, H, K): inputs, hidden units, classes."""
        D, H = self.params["W1"].shape
        return D, H, self.params["W2"].shape[1]

    def with_preprocessing(self, preprocessing: Any) -> TwoLayerNet:
        """This network (the same parameter arrays) with another preprocessing of its inputs."""
        return TwoLayerNet.from_params(self.params, backend=self.backend,
                                       preprocessing=preprocessing)

    def inputs(self, X: Any) -> Any:
        """X as a float array of this net's backend and dtype, (N, D) or (D,) -> (N, D).

        The net's preprocessing first (if any); then uint8 pixels are divided by 255, and float
        inputs are taken as they are.
        """
        xp = self.xp
        X = self._own(X)
        if X.ndim == 1:
            X = xp.reshape(X, (1, -1))
        X = self.preprocessing(X)
        if xp.isdtype(X.dtype, "integral"):
            return pixels_to_inputs(X, self.backend.dtype(self.dtype))
        dtype = self.backend.dtype(self.dtype)
        return X if X.dtype == dtype else xp.astype(X, dtype)  # MLX refuses astype's copy=

    def labels(self, t: Any) -> Any:
        """Integer class labels (N,) as an int64 array of this net's backend."""
        if not self._is_own(t):
            return self.backend.asarray(to_numpy(t), "int64")
        return self.xp.astype(t, self.xp.int64)

    # --- forward and backward ------------------------------------------------------------------

    def forward(self, X: Any) -> Any:
        """Logits Z2 = relu(X @ W1 + b1) @ W2 + b2: X (N, D) -> (N, K). See `forward`."""
        return forward(self.params, self.inputs(X))[0]

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities softmax(forward(X)): X (N, D) -> (N, K), rows summing to 1."""
        return F.softmax(self.forward(X))

    def predict(self, X: Any) -> Any:
        """Most probable class per example: X (N, D) -> (N,) int."""
        return self.xp.argmax(self.forward(X), axis=-1)

    def loss_and_grads(self, X: Any, labels: Any) -> tuple[float, dict]:
        """Mean cross-entropy on a batch, and its gradient for every parameter.

        X (N, D), labels (N,) -> (J as a Python float, {"W1": (D, H), "b1": (H,), "W2": (H, K),
        "b2": (K,)}). The backward pass is the chain rule of `anynet.functional`'s docstring.
        """
        J, grads = self.loss_and_grads_array(X, labels)
        return float(self.backend.to_numpy(J)), grads

    def loss_and_grads_array(self, X: Any, labels: Any, *, hidden_mask: Any = None,
                             label_smoothing: float = 0.0,
                             targets: Any = None) -> tuple[Any, dict]:
        """As `loss_and_grads`, but the loss stays a 0-d backend array (no device sync); with
        training's levers as the pure `loss_and_grads` takes them."""
        return loss_and_grads(self.params, self.inputs(X), self.labels(labels),
                              hidden_mask=hidden_mask, label_smoothing=label_smoothing,
                              targets=targets)

    def loss(self, X: Any, labels: Any) -> float:
        """Mean cross-entropy on a batch, as a Python float. X (N, D), labels (N,)."""
        return float(self.backend.to_numpy(loss(self.params, self.inputs(X),
                                                self.labels(labels))))

    def host_params(self) -> dict[str, np.ndarray]:
        """The parameters as host NumPy arrays (for saving, printing, plotting)."""
        return {k: self.backend.to_numpy(v) for k, v in self.params.items()}

    # --- pickling ------------------------------------------------------------------------------

    def __getstate__(self) -> dict:
        """What a pickle holds: the backend's spec ('torch:cuda:0') and the parameters as host
        NumPy copies, so joblib and multiprocessing can carry a network; never the library's
        module or device objects. anynet itself never loads pickles from files."""
        return {"backend": self.backend.spec, "dtype": self.dtype,
                "preprocessing": str(self.preprocessing),
                "params": {k: np.array(v, copy=True) for k, v in self.host_params().items()}}

    def __setstate__(self, state: dict) -> None:
        """Reopen the pickled backend spec (a `BackendError` where it is not available here)
        and move the parameters onto it."""
        self.backend = get_backend(state["backend"])
        self.dtype = state["dtype"]
        self.preprocessing = _preprocessing(state.get("preprocessing"))
        self.params = {k: self.backend.asarray(state["params"][k]) for k in PARAM_NAMES}
