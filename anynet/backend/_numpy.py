"""NumPy: the CPU backend every installation has, and the fused step's ufunc primitives.

The primitives (`UfuncOps`) write every result into preallocated memory through the ufunc
`out=` API. CuPy shares that API, so `_cupy` reuses this class over the `cupy` module.

Two primitives have a faster road on NumPy where NumPy's own BLAS can be called (`OpenBLAS`,
the library NumPy's wheels carry): y += a x as one BLAS axpy (one pass over memory, on BLAS's
threads, where ufuncs take two passes on one thread), and C = beta C + A B as one GEMM that
accumulates (where `np.matmul` can only overwrite). The momentum step is made of these.
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
    return UfuncOps(np, OpenBLAS.load())


BLAS_MIN_SIZE = 1 << 16  # elements: below it a ctypes call costs more than the ufuncs' passes
# axpy pays from a smaller size: it replaces two ufunc passes (a multiply into a buffer, then an
# add) with one, and inside a training step, where the batch's inputs have pushed the
# parameters out of the nearest caches, the pass saved counts more than the ctypes call.
# Nesterov momentum with weight decay, 2 threads, epochs against plain SGD's in one process:
# H = 30 (23,860 parameters) 1.10-1.23x through BLAS (median of six runs 1.12x) against
# 1.07-1.30x through the ufuncs (median 1.18x); H = 40 1.08-1.10x against 1.22-1.24x; H = 50
# 1.12-1.24x against 1.27-1.43x; at H = 20 (15,910) and H = 10, no gain or a loss.
AXPY_MIN_SIZE = 1 << 14


class OpenBLAS:
    """axpy, axpby and GEMM from the OpenBLAS that NumPy itself calls (NumPy's wheels bundle it as
    scipy-openblas: `numpy.libs/` on Linux and Windows, `numpy/.dylibs/` on macOS), through
    ctypes. The same library, loaded once: its threads are NumPy's (threadpoolctl limits them
    alike), so no second BLAS runs in the process. `load()` is None where NumPy was built
    against another BLAS (MKL, Accelerate, a system library): the ufuncs serve there.

    Each call takes arrays the BLAS can read as they are (float32 or float64, contiguous or,
    for GEMM operands, transposed-contiguous; at least BLAS_MIN_SIZE elements, AXPY_MIN_SIZE for
    axpy; scalars as numbers) and returns True, or returns False and does nothing: the
    caller's ufuncs run."""

    _loaded: OpenBLAS | None = None
    _searched = False

    def __init__(self, lib, suffix: str, int_type):
        import ctypes

        vp, i, c_int = ctypes.c_void_p, int_type, ctypes.c_int
        self.axpy, self.gemm, self.axpby, self.rotm = {}, {}, {}, {}
        for letter, dtype, real in (("s", np.float32, ctypes.c_float),
                                    ("d", np.float64, ctypes.c_double)):
            axpy = getattr(lib, f"scipy_cblas_{letter}axpy{suffix}")
            axpy.argtypes, axpy.restype = [i, real, vp, i, vp, i], None
            gemm = getattr(lib, f"scipy_cblas_{letter}gemm{suffix}")
            gemm.argtypes = [c_int, c_int, c_int, i, i, i, real, vp, i, vp, i, real, vp, i]
            gemm.restype = None
            self.axpy[np.dtype(dtype)], self.gemm[np.dtype(dtype)] = axpy, gemm
            axpby = getattr(lib, f"scipy_cblas_{letter}axpby{suffix}", None)  # an extension
            if axpby is not None:
                axpby.argtypes, axpby.restype = [i, real, vp, i, real, vp, i], None
                self.axpby[np.dtype(dtype)] = axpby
            rotm = getattr(lib, f"scipy_cblas_{letter}rotm{suffix}", None)
            if rotm is not None:
                rotm.argtypes, rotm.restype = [i, vp, i, vp, i, vp], None
                self.rotm[np.dtype(dtype)] = rotm
        self.threads = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None)
        if self.threads is not None:
            self.threads.argtypes, self.threads.restype = [], c_int
        # where threadpoolctl is not installed, `anynet.backend.threads` sets the count here
        self.set_threads = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
        if self.set_threads is not None:
            self.set_threads.argtypes, self.set_threads.restype = [c_int], None

    @classmethod
    def load(cls) -> OpenBLAS | None:
        """NumPy's OpenBLAS, found once per process; None where there is none to find."""
        if not cls._searched:
            cls._loaded, cls._searched = cls._find(), True
        return cls._loaded

    @classmethod
    def _find(cls) -> OpenBLAS | None:
        import ctypes
        from pathlib import Path

        here = Path(np.__file__).resolve().parent
        for folder in (here.parent / "numpy.libs", here / ".dylibs"):
            for path in sorted(folder.glob("*scipy_openblas*")) if folder.is_dir() else ():
                try:
                    lib = ctypes.CDLL(str(path))
                    if hasattr(lib, "scipy_cblas_sgemm64_"):      # ILP64: 64-bit integers
                        return cls(lib, "64_", ctypes.c_int64)
                    if hasattr(lib, "scipy_cblas_sgemm"):
                        return cls(lib, "", ctypes.c_int)
                except (OSError, AttributeError):
                    continue
        return None

    def try_axpy(self, y, a, x) -> bool:                # y += a x
        if (type(y) is not np.ndarray or type(x) is not np.ndarray or y.size < AXPY_MIN_SIZE
                or isinstance(a, np.ndarray) or y.dtype != x.dtype or y.size != x.size
                or y.dtype not in self.axpy or not y.flags.c_contiguous
                or not x.flags.c_contiguous):
            return False
        self.axpy[y.dtype](y.size, float(a), x.ctypes.data, 1, y.ctypes.data, 1)
        return True

    def try_axpby(self, y, a, x, b) -> bool:            # y = a x + b y
        if (type(y) is not np.ndarray or type(x) is not np.ndarray or y.size < BLAS_MIN_SIZE
                or y.dtype != x.dtype or y.size != x.size or y.dtype not in self.axpby
                or not y.flags.c_contiguous or not x.flags.c_contiguous):
            return False
        self.axpby[y.dtype](y.size, float(a), x.ctypes.data, 1, float(b), y.ctypes.data, 1)
        return True

    def try_rotm(self, x, y, h11, h12, h21, h22) -> bool:
        """(x, y) <- (h11 x + h12 y, h21 x + h22 y), elementwise, in one pass (BLAS rotm with
        flag -1, the full 2 x 2 matrix). Only on one BLAS thread: OpenBLAS runs rotm on one
        core, where two axpys run on all of BLAS's threads, and there they are faster (H = 800,
        2 threads: rotm 190 us, the two axpys 142; 1 thread: 190 against 376)."""
        if (self.threads is None or self.threads() != 1 or type(x) is not np.ndarray
                or type(y) is not np.ndarray or x.size < BLAS_MIN_SIZE or x.dtype != y.dtype
                or x.size != y.size or x.dtype not in self.rotm or not x.flags.c_contiguous
                or not y.flags.c_contiguous or any(isinstance(h, np.ndarray)
                                                   for h in (h11, h12, h21, h22))):
            return False
        # param: flag -1, then h11, h21, h12, h22 (column-major, as BLAS stores H)
        param = np.array([-1.0, h11, h21, h12, h22], dtype=x.dtype)
        self.rotm[x.dtype](x.size, x.ctypes.data, 1, y.ctypes.data, 1, param.ctypes.data)
        return True

    def try_gemm(self, C, A, B, alpha, beta) -> bool:   # C = alpha A B + beta C
        if (type(C) is not np.ndarray or C.size < BLAS_MIN_SIZE or C.dtype not in self.gemm
                or isinstance(alpha, np.ndarray) or isinstance(beta, np.ndarray)
                or not C.flags.c_contiguous or A.dtype != C.dtype or B.dtype != C.dtype):
            return False
        (m, k), n = A.shape, B.shape[1]
        a, b = _operand(A), _operand(B)
        if a is None or b is None:
            return False
        # CblasRowMajor = 101; each operand (transpose flag, leading dimension)
        self.gemm[C.dtype](101, a[0], b[0], m, n, k, float(alpha), A.ctypes.data, a[1],
                           B.ctypes.data, b[1], float(beta), C.ctypes.data, n)
        return True


def _operand(M):
    """(CBLAS transpose flag, leading dimension) of a 2-D array as row-major BLAS reads it, or
    None: C-contiguous as it is (CblasNoTrans = 111), F-contiguous as its transpose (112)."""
    if type(M) is not np.ndarray or M.ndim != 2:
        return None
    if M.flags.c_contiguous:
        return 111, max(1, M.shape[1])
    if M.flags.f_contiguous:
        return 112, max(1, M.shape[0])
    return None


class UfuncOps:
    """The in-place primitives of `anynet.steps.FusedStep` for a NumPy-like module `lib`.

    Every result goes into `out=` memory; `dot` and `sum_log` return 0-d arrays (no sync).
    """

    def __init__(self, lib, blas: OpenBLAS | None = None):
        self.lib, self.blas = lib, blas

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

    def zero_tiny_(self, a, tiny, tmp):                 # a[|a| < tiny] = 0
        tmp = tmp[:a.size].reshape(a.shape)
        self.lib.abs(a, out=tmp)
        self.lib.copyto(a, 0, where=tmp < tiny)

    def axpy_(self, y, a, x, tmp):                      # y += a * x
        if self.blas is not None and self.blas.try_axpy(y, a, x):
            return
        self.lib.multiply(x, a, out=tmp)
        self.lib.add(y, tmp, out=y)

    def look_ahead_(self, p, v, a, k, tmp):             # p += a v; v += k p
        # one BLAS rotm pass, (p, v) <- (p + a v, k p + (1 + k a) v), where it pays
        if self.blas is not None and self.blas.try_rotm(p, v, 1.0, a, k, 1.0 + k * a):
            return
        self.axpy_(p, a, v, tmp)
        self.axpy_(v, k, p, tmp)

    def ema_(self, a, p, decay, tmp):                   # a = decay * a + (1 - decay) * p
        if self.blas is not None and self.blas.try_axpby(a, 1.0 - decay, p, decay):
            return                                      # one pass: OpenBLAS's axpby
        self.lib.multiply(a, decay, out=a)
        self.axpy_(a, 1.0 - decay, p, tmp)

    def gemm_acc_(self, C, A, B, beta, tmp):            # C = beta * C + A @ B
        if self.blas is not None and self.blas.try_gemm(C, A, B, 1.0, beta):
            return
        self.lib.matmul(A, B, out=tmp)
        self.lib.multiply(C, beta, out=C)
        self.lib.add(C, tmp, out=C)

    def sub_mm_(self, W, A, B, tmp):                    # W -= A @ B
        if self.blas is not None and self.blas.try_gemm(W, A, B, -1.0, 1.0):
            return
        self.lib.matmul(A, B, out=tmp)
        self.lib.subtract(W, tmp, out=W)
