"""The seam's written contract: what a backend module and a fused-ops object must offer.

`Library` is what every backend module offers; `NamedLibrary` adds what each of the five named
modules (`_numpy`, `_cupy`, `_torch`, `_jax`, `_strict`) offers, `GenericLibrary` what
`_generic` offers for any other Array API namespace. `FusedOps` is the set of in-place
primitives `anynet.steps.FusedStep` and `GraphedStep` are written over (`fused_ops(backend)`:
NumPy's and CuPy's `UfuncOps`, PyTorch's `TorchOps`). mypy checks each module and class
against its Protocol (`_checks` below, run by nox's `lint` session); `tests/test_seam.py` checks
at run time that every member is there, so the contract holds without mypy too.

Shapes: N (batch), D (inputs, 784), H (hidden), K (classes, 10). The fused step keeps its
activations with one column per example: X (D, N), Z and A (H, N), logits P (K, N).
Arrays are typed `Any`: each library has its own array type.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

Array = Any  # an array of the backend's library, on its device


class Library(Protocol):
    """What every backend module offers (the named five and `_generic`)."""

    COMPILES: bool
    """Whether `compile` does anything (JAX: jax.jit)."""

    @property
    def KIND_DEVICES(self) -> Mapping[str, str | None]:
        """The device of each kind ("cpu", "gpu") the library computes on, as a spec's device
        (None: the default device); a kind that is absent is one it has no device of."""
        ...

    def device_name(self, device: Any) -> str:
        """A device object as the user names it in a spec: 'cpu', 'cuda:0', 'gpu:0', '0'."""
        ...

    def check_device(self, device: str | None) -> str | None:
        """`device` (a spec's part after ':') unchanged if its form is right, else BackendError;
        imports nothing."""
        ...

    def from_host(self, xp: Any, device: Any, array: np.ndarray) -> Array:
        """A host NumPy array as an array of namespace `xp` on `device`, owning its memory
        (NumPy may return `array` itself)."""
        ...

    def to_host(self, array: Array) -> np.ndarray:
        """An array of this library, on any device, as a host NumPy array (same shape)."""
        ...

    def sync(self, array: Array = None) -> None:
        """Wait until the device has finished the work queued so far (for timing)."""
        ...

    def compile(self, fn: Callable, donate: tuple[int, ...] = ()) -> Callable:
        """`fn` compiled for the library (jax.jit on JAX); `fn` itself elsewhere. The
        positional arguments numbered in `donate` are given up to the call: their buffers may
        hold its results, and the caller never reads them again."""
        ...

    def fused_ops(self, backend: Any) -> FusedOps | None:
        """The in-place primitives of the fused step for a `Backend` of this library, or None
        where there are none (immutable arrays, or the standard alone)."""
        ...

    def graph_capture(self, backend: Any) -> Callable[[Callable[[], None]], Callable] | None:
        """On a CUDA device, `capture(fn) -> replay`: `fn` run once, then recorded as a CUDA
        graph that `replay()` launches as one unit; None where the library captures none."""
        ...


class NamedLibrary(Library, Protocol):
    """A named backend module: one library, opened by a spec `NAME[:DEVICE]`."""

    NAME: str
    """The backend's name in a spec: "numpy", "cupy", "torch", "jax", "array-api-strict"."""
    INSTALL: str
    """The command that installs the library, for error messages."""

    def probe(self) -> str:
        """Empty when the library can be used here; otherwise the reason it cannot."""
        ...

    def open(self, device: str | None) -> tuple[Any, Any]:
        """Import the library and open `device` (None: its default) -> (namespace, device);
        BackendError naming what is missing."""
        ...

    def owns(self, array: Any) -> bool:
        """Whether `array` is an array of this library (by its type; imports nothing)."""
        ...


class GenericLibrary(Library, Protocol):
    """`_generic`: any other Array API namespace, by its module name, through the standard."""

    def probe_module(self, name: str) -> str:
        """Empty when module `name` imports and is an Array API namespace; else the reason."""
        ...

    def open_module(self, name: str, device: str | None) -> tuple[Any, Any]:
        """Import module `name` -> (its Array API namespace, the device named or default)."""
        ...

    def pick_device(self, name: str, xp: Any, device: str | None) -> Any:
        """The device of namespace `xp` that a spec's `device` names (None: the default)."""
        ...

    def materialise(self, arrays: list) -> list:
        """The arrays with their values computed where the library is lazy (Dask, MLX)."""
        ...

    def check_trainable(self, name: str, xp: Any, device: Any) -> dict:
        """The namespace's capabilities, or BackendError naming what anynet needs it lacks."""
        ...


class FusedOps(Protocol):
    """The fused step's in-place primitives. A trailing `_` or an `out` argument: the result
    is written into existing memory, nothing is allocated. Arrays are 2-D unless said.

    Optional: `momentum_(p, g, v, wd, mu, neg_lr, nesterov)`, one parameter's whole SGD update
    in one kernel (CuPy's); the step uses it where present, else `axpy_` and friends."""

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Array:
        """A new uninitialised array of `shape` and NumPy dtype `dtype` on the device."""
        ...

    def host(self, array: Any, dtype: Any = None) -> Array:
        """A host array as a new device array, converted to `dtype` when given."""
        ...

    def load_rows(self, images: Array, idx: Array, out: Array, scale: float,
                  pixels: Array) -> None:
        """out (B, D) = images[idx] * scale, through `pixels` (B, D, the images' dtype)."""
        ...

    def take(self, array: Array, idx: Array) -> Array:
        """array[idx] along axis 0, as a new array."""
        ...

    def take_into(self, array: Array, idx: Array, out: Array, axis: int = 0) -> None:
        """out = array[idx] along `axis`."""
        ...

    def mul_into(self, a: Array, c: Any, out: Array) -> None:
        """out = a * c (c a scalar or a 0-d device array)."""
        ...

    def add_into(self, a: Array, b: Array, out: Array) -> None:
        """out = a + b."""
        ...

    def put_(self, array: Array, idx: Array, value: Array) -> None:
        """array[idx] = value (1-d `array`, 0-d `idx` and `value`)."""
        ...

    def copy_(self, dst: Array, src: Array) -> Any:
        """dst[...] = src (same shape, both on the device)."""
        ...

    def clone(self, array: Array) -> Array:
        """A copy of `array` in new memory on the same device."""
        ...

    def upload_(self, dst: Array, host: np.ndarray) -> None:
        """dst[...] = a host NumPy array's values (same shape)."""
        ...

    def mm(self, a: Array, b: Array, out: Array) -> None:
        """out (M, N) = a (M, J) @ b (J, N)."""
        ...

    def add_(self, a: Array, b: Any) -> Any:
        """a += b (b broadcast)."""
        ...

    def sub_(self, a: Array, b: Any) -> Any:
        """a -= b (b broadcast)."""
        ...

    def mul_(self, a: Array, b: Any) -> Any:
        """a *= b (b broadcast)."""
        ...

    def div_(self, a: Array, b: Any) -> Any:
        """a /= b (b broadcast)."""
        ...

    def exp_(self, a: Array) -> Any:
        """a = exp(a)."""
        ...

    def relu_to(self, a: Array, out: Array) -> None:
        """out = max(a, 0)."""
        ...

    def colmax(self, a: Array, out: Array) -> None:
        """out (N,) = the maximum of each column of a (K, N)."""
        ...

    def colsum(self, a: Array, out: Array) -> None:
        """out (N,) = the sum of each column of a (K, N)."""
        ...

    def bias_relu_(self, Z: Array, b: Array, A: Array) -> None:
        """Z (H, N) += b (H, 1); A (H, N) = max(Z, 0)."""
        ...

    def softmax_xent_(self, P: Array, Y: Array, c: Any, m: Array, s: Array,
                      loss: Array) -> None:
        """Logits P (K, N), one-hot Y (K, N): loss (1,) = mean cross-entropy, and
        P <- c (softmax(P) - Y); m, s (N,) are room for each column's max and sum."""
        ...

    def dot(self, a: Array, b: Array) -> Array:
        """The sum of a * b over all entries, as a 0-d device array (no sync)."""
        ...

    def sum_log(self, a: Array) -> Array:
        """The sum of log(a) over all entries, as a 0-d device array (no sync)."""
        ...

    def relu_backward_(self, dZ: Array, Z: Array, mask: Array) -> None:
        """dZ (H, N) *= (Z > 0); `mask` (H, N) is room for the comparison."""
        ...

    def axpy_(self, y: Array, a: Any, x: Array, tmp: Array) -> None:
        """y += a * x (a a scalar or a 0-d device array); `tmp` is room like x."""
        ...

    def look_ahead_(self, p: Array, v: Array, a: Any, k: Any, tmp: Array) -> None:
        """p += a * v, then v += k * p (the new p): Nesterov's look-ahead, then weight decay
        folded into the velocity, two axpys in one call (one pass where the library can)."""
        ...

    def zero_tiny_(self, a: Array, tiny: float, tmp: Array) -> None:
        """a[|a| < tiny] = 0: subnormal velocities, slow on x86, flushed; `tmp` is flat room
        of at least a.size elements."""
        ...

    def ema_(self, a: Array, p: Array, decay: float, tmp: Array) -> None:
        """a = decay * a + (1 - decay) * p: the exponential moving average of the weights p
        (1-d, of one size); `tmp` is room like a."""
        ...

    def gemm_acc_(self, C: Array, A: Array, B: Array, beta: float, tmp: Array) -> None:
        """C = beta * C + A @ B; `tmp` is room like C."""
        ...

    def sub_mm_(self, W: Array, A: Array, B: Array, tmp: Array) -> None:
        """W -= A @ B; `tmp` is room like W."""
        ...


def members(protocol: type) -> set[str]:
    """The names a Protocol of this module asks for (its own and its bases'), for run-time
    checks: methods, properties and annotated attributes."""
    names: set[str] = set()
    for cls in protocol.__mro__:
        if cls.__module__ == __name__:
            names |= {n for n in [*vars(cls), *inspect.get_annotations(cls)]
                      if not n.startswith("_")}
    return names


if TYPE_CHECKING:  # what mypy proves: each module and class keeps its side of the contract
    from anynet.backend import _cupy, _generic, _jax, _numpy, _strict, _torch

    _checks: list[Library] = [_numpy, _cupy, _torch, _jax, _strict, _generic]
    _named: list[NamedLibrary] = [_numpy, _cupy, _torch, _jax, _strict]
    _any: GenericLibrary = _generic
    _ufunc: FusedOps = _numpy.UfuncOps(np)
    _torch_ops: FusedOps = _torch.TorchOps("cpu")
