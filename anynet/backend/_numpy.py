"""NumPy: the CPU backend every installation has, and the fused step's ufunc primitives.

The primitives (`UfuncOps`) write every result into preallocated memory through the ufunc
`out=` API. CuPy shares that API, so `_cupy` reuses this class over the `cupy` module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anynet.backend._common import compile as compile
from anynet.backend._common import graph_capture as graph_capture
from anynet.errors import BackendError

NAME = "numpy"
INSTALL = "pip install numpy"

# the device of each kind ("cpu", "gpu") this library computes on, as a spec's device; absent: none
KIND_DEVICES: dict[str, str | None] = {"cpu": None}
COMPILES = False


def device_name(device: Any) -> str:
    return str(device)


def check_device(device: str | None) -> str | None:
    if device not in (None, "cpu"):
        raise BackendError(f"backend 'numpy' runs on the CPU only, not on device '{device}'; "
                           "use 'numpy' or 'numpy:cpu'")
    return device


def probe() -> str:
    return ""


def open(device: str | None) -> tuple[Any, Any]:
    import array_api_compat.numpy as xp

    check_device(device)
    return xp, "cpu"


def owns(array: Any) -> bool:
    return isinstance(array, (np.ndarray, np.generic))


def from_host(xp: Any, device: Any, array: np.ndarray) -> Any:
    return array


def to_host(array: Any) -> np.ndarray:
    return np.asarray(array)


def sync(array: Any = None) -> None:
    """NumPy computes eagerly on the calling thread: nothing to wait for."""


def fused_ops(backend) -> UfuncOps:
    return UfuncOps(np)


class UfuncOps:
    """The in-place primitives of `anynet.steps.FusedStep` for a NumPy-like module `lib`.

    Every result goes into `out=` memory; `dot` and `sum_log` return 0-d arrays (no sync).
    """

    def __init__(self, lib):
        self.lib = lib

    def empty(self, shape, dtype):
        return self.lib.empty(shape, dtype)

    def host(self, array, dtype=None):
        """A host (NumPy) array as a new array of this library, optionally converted."""
        return self.lib.array(np.asarray(array) if dtype is None else np.asarray(array, dtype))

    def load_rows(self, images, idx, out, scale, pixels):  # out = images[idx] * scale
        self.lib.take(images, idx, axis=0, out=pixels)
        # a plain cast, then a multiply of like types: 15% faster than one mixed-type multiply
        self.lib.copyto(out, pixels)
        self.lib.multiply(out, out.dtype.type(scale), out=out)

    def take(self, array, idx):
        return self.lib.take(array, idx, axis=0)

    # For the CUDA-graph step, whose every input sits in a device buffer (and which the CPU
    # suite runs eagerly): results into existing memory, indices and scalars as device arrays.
    def take_into(self, array, idx, out, axis=0):        # out = array[idx] along axis
        self.lib.take(array, idx, axis=axis, out=out)

    def mul_into(self, a, c, out):                       # out = a * c
        self.lib.multiply(a, c, out=out)

    def add_into(self, a, b, out):                       # out = a + b
        self.lib.add(a, b, out=out)

    def put_(self, array, idx, value):                   # array[idx] = value
        self.lib.put(array, idx, value)

    def copy_(self, dst, src):
        self.lib.copyto(dst, src)

    def clone(self, array):
        return array.copy()

    def upload_(self, dst, host):                        # dst[...] = a host array's values
        dst[...] = self.lib.asarray(host)

    def mm(self, a, b, out):
        self.lib.matmul(a, b, out=out)

    def add_(self, a, b):
        self.lib.add(a, b, out=a)

    def sub_(self, a, b):
        self.lib.subtract(a, b, out=a)

    def mul_(self, a, b):
        self.lib.multiply(a, b, out=a)

    def relu_to(self, a, out):                          # out = max(a, 0)
        self.lib.maximum(a, 0, out=out)

    def div_(self, a, b):
        self.lib.divide(a, b, out=a)

    def exp_(self, a):
        self.lib.exp(a, out=a)

    def colmax(self, a, out):
        # the ufunc's own reduce: a few microseconds less per call than np.max's wrapper
        self.lib.maximum.reduce(a, axis=0, out=out)

    def colsum(self, a, out):
        self.lib.add.reduce(a, axis=0, out=out)

    def bias_relu_(self, Z, b, A):                      # Z += b; A = max(Z, 0)
        self.lib.add(Z, b, out=Z)
        self.lib.maximum(Z, 0, out=A)

    def softmax_xent_(self, P, Y, c, m, s, loss):
        """Logits P (K, N) in, one-hot Y (K, N): loss[0] = mean over columns of
        log sum exp P - P[target], and P <- c (softmax(P) - Y), stably (max subtracted);
        m, s (N,) are room for each column's max and sum of exponentials."""
        self.colmax(P, out=m)
        self.sub_(P, m)
        picked = self.dot(P, Y)                         # sum of the targets' shifted logits
        self.exp_(P)
        self.colsum(P, out=s)
        loss[...] = (self.sum_log(s) - picked) / P.shape[1]
        self.div_(P, s)
        self.sub_(P, Y)
        self.mul_(P, c)

    def dot(self, a, b):
        return self.lib.vdot(a, b)

    def sum_log(self, a):
        return self.lib.sum(self.lib.log(a))

    def relu_backward_(self, dZ, Z, mask):              # dZ *= (Z > 0)
        self.lib.greater(Z, 0, out=mask)
        self.lib.multiply(dZ, mask, out=dZ)

    def axpy_(self, y, a, x, tmp):                      # y += a * x
        self.lib.multiply(x, a, out=tmp)
        self.lib.add(y, tmp, out=y)

    def gemm_acc_(self, C, A, B, beta, tmp):            # C = beta * C + A @ B
        self.lib.matmul(A, B, out=tmp)
        self.lib.multiply(C, beta, out=C)
        self.lib.add(C, tmp, out=C)

    def sub_mm_(self, W, A, B, tmp):                    # W -= A @ B
        self.lib.matmul(A, B, out=tmp)
        self.lib.subtract(W, tmp, out=W)
