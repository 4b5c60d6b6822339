"""CuPy: NVIDIA GPUs. Devices: `cupy` (the current device) or `cupy:N` (GPU number N, made
the current device of the thread that opens the backend, so every kernel runs there).

The fused step's primitives are NumPy's ufunc ones (`_numpy.UfuncOps`) over the `cupy` module
(CuPy implements the same `out=` API), except the element-wise and reduction chains between the
step's matrix products, which are CuPy kernels of their own (`CupyOps`): bias + ReLU in one
launch, softmax + cross-entropy + its gradient in two, ReLU's derivative in one, and the
momentum update of all the parameters in one (they share one buffer: `FusedStep`).

No CUDA graph: CuPy refuses every cuBLAS call while a stream is capturing
(`cupy_backends/cuda/libs/cublas.pyx`, `setStream`; CuPy's own test
`test_stream_capture_failure_cublas`), and the step's matrix products are cuBLAS calls. So
`graph_capture` offers none, and CuPy trains with the fused step, launch by launch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from anynet.backend._common import compile as compile
from anynet.errors import BackendError

if TYPE_CHECKING:
    from anynet.backend.contract import FusedOps

NAME = "cupy"
INSTALL = ("pip install 'anynet[cupy-cuda12]' (or anynet[cupy-cuda13]; nvidia-smi shows your "
           "CUDA version)")

# the device of each kind ("cpu", "gpu") this library computes on, as a spec's device; absent: none
KIND_DEVICES: dict[str, str | None] = {"gpu": "0"}
COMPILES = False


def device_name(device: Any) -> str:
    return str(device.id)


def check_device(device: str | None) -> str | None:
    if device is None:
        return None
    if not device.isdigit():
        raise BackendError(f"backend 'cupy': device '{device}' is not a GPU number; "
                           "use 'cupy' or 'cupy:N' (N = 0, 1, ...)")
    return device


def probe() -> str:
    """Empty when CuPy imports and a CUDA device runs a kernel; else the reason it cannot."""
    try:
        import cupy
    except ImportError as e:
        return f"CuPy is not installed ({e})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy found no CUDA device"
        int((cupy.arange(3) * 2).sum())  # a device that answers a kernel, not just a count
    except Exception as e:  # CUDA errors come in many types: driver, runtime, compiler
        return f"CuPy cannot use a CUDA device ({type(e).__name__}: {e})"
    return ""


def open(device: str | None) -> tuple[Any, Any]:
    reason = probe()
    if reason:
        raise BackendError(f"backend 'cupy' is not usable: {reason}. It needs an NVIDIA GPU and "
                           f"the CuPy wheel for your CUDA version: {INSTALL}")
    import array_api_compat.cupy as xp
    import cupy

    device = check_device(device)
    if device is None:
        return xp, cupy.cuda.Device()  # the current device, as the docs say
    index, count = int(device), cupy.cuda.runtime.getDeviceCount()
    if index >= count:
        raise BackendError(f"backend 'cupy:{index}': there are only {count} CUDA device(s) "
                           f"(0..{count - 1})")
    dev = cupy.cuda.Device(index)
    # CuPy launches every kernel on the current device, whatever device its arrays are on (it
    # then fails with "peer access is unavailable", or computes over peer access): GPU N is
    # made current here, for this thread, so steps, evaluation and distortions all run on it
    dev.use()
    return xp, dev


def owns(array: Any) -> bool:
    return type(array).__module__.startswith("cupy")


def from_host(xp: Any, device: Any, array: np.ndarray) -> Any:
    with device:
        return xp.asarray(array)


def to_host(array: Any) -> np.ndarray:
    return array.get()


def sync(array: Any = None) -> None:
    import cupy

    cupy.cuda.get_current_stream().synchronize()


def graph_capture(backend):
    """None: CuPy cannot capture the step (its matrix products are cuBLAS calls, which CuPy
    refuses during stream capture; see the module docstring). Imports nothing."""
    return None


# The element-wise chains between the step's matrix products, one launch each where NumPy's
# ufuncs take several. Made on first use (compiled by CuPy then, once per dtype).
_KERNELS: dict = {}


def _kernels():
    if not _KERNELS:
        import cupy

        _KERNELS["bias_relu"] = cupy.ElementwiseKernel(
            "T b", "T z, T a", "z += b; a = z > (T)0 ? z : (T)0;", "anynet_bias_relu")
        _KERNELS["relu_backward"] = cupy.ElementwiseKernel(
            "T z", "T dz", "if (!(z > (T)0)) dz = (T)0;", "anynet_relu_backward")
        # one thread per column i of the logits P (K, N): its max, the sum of exponentials,
        # the column's share of the mean loss l[i] = (log s - (z_target - max)) / N, and its
        # gradient column c (softmax - y). 2-D indices honour any strides (Y may be a view).
        _KERNELS["softmax_xent"] = cupy.ElementwiseKernel(
            "raw T Y, int32 K, int32 N, T c", "raw T P, T l",
            """
            ptrdiff_t ix[2] = {0, i};
            T m = P[ix];
            for (int k = 1; k < K; ++k) { ix[0] = k; T v = P[ix]; m = v > m ? v : m; }
            T s = 0, picked = 0;
            for (int k = 0; k < K; ++k) {
                ix[0] = k;
                T z = P[ix] - m;
                picked += z * Y[ix];
                T e = exp(z);
                P[ix] = e;
                s += e;
            }
            l = (log(s) - picked) / (T)N;
            for (int k = 0; k < K; ++k) { ix[0] = k; P[ix] = c * (P[ix] / s - Y[ix]); }
            """, "anynet_softmax_xent")
        # SGD with momentum, SGD.step's formula, element by element over every parameter at
        # once (`FusedStep` keeps them, their gradients and velocities, in one buffer each):
        # g += wd p; v = mu v + g; p -= lr (g + mu v) (Nesterov) or p -= lr v
        _KERNELS["momentum"] = cupy.ElementwiseKernel(
            "T g, T wd, T mu, T neg_lr, bool nesterov", "T p, T v",
            "T gw = g + wd * p; v = mu * v + gw; p += neg_lr * (nesterov ? gw + mu * v : v);",
            "anynet_momentum")
        # the EMA of the weights, one pass: m = d m + (1 - d) p
        _KERNELS["ema"] = cupy.ElementwiseKernel(
            "T p, T d", "T m", "m = d * m + ((T)1 - d) * p;", "anynet_ema")
    return _KERNELS


def fused_ops(backend) -> FusedOps:
    import cupy

    from anynet.backend._numpy import UfuncOps

    class CupyOps(UfuncOps):
        """NumPy's primitives over cupy; reductions through cupy.max/sum (out= supported); the
        element-wise chains between the matrix products as kernels of their own."""

        def bias_relu_(self, Z, b, A):
            _kernels()["bias_relu"](b, Z, A)

        def relu_backward_(self, dZ, Z, mask):
            _kernels()["relu_backward"](Z, dZ)

        def momentum_(self, p, g, v, wd, mu, neg_lr, nesterov):
            _kernels()["momentum"](g, wd, mu, neg_lr, nesterov, p, v)

        def ema_(self, a, p, decay, tmp):
            _kernels()["ema"](p, decay, a)

        def softmax_xent_(self, P, Y, c, m, s, loss):
            K, N = P.shape
            _kernels()["softmax_xent"](Y, K, N, c, P, m)     # m: each column's loss share
            cupy.sum(m, axis=0, keepdims=True, out=loss)

        def colmax(self, a, out):
            cupy.max(a, axis=0, out=out)

        def colsum(self, a, out):
            cupy.sum(a, axis=0, out=out)

        def host(self, array, dtype=None):
            with backend.device:
                return super().host(array, dtype)

        def empty(self, shape, dtype):
            with backend.device:
                return super().empty(shape, dtype)

        def clone(self, array):
            with backend.device:
                return array.copy()

        def put_(self, array, idx, value):
            cupy.put(array, idx, value)

    return CupyOps(cupy)
