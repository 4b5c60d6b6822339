"""Backends: the one seam between anynet and the array libraries.

Everything that differs between NumPy, CuPy, PyTorch, JAX and array-api-strict lives in this
package, one module per library (`_numpy`, `_cupy`, `_torch`, `_jax`, `_strict`), each with the
same small interface: the namespace and device (`open`), host transfers (`from_host`,
`to_host`), synchronisation for timing (`sync`), compilation (`compile`: `jax.jit` on JAX), the
in-place primitives of the fused training step (`fused_ops`), an availability probe (`probe`),
and thread control (`anynet.backend.threads`). The rest of anynet receives arrays, asks
`array_api_compat.array_namespace` for their namespace, and never names a library.

A backend is chosen by a spec, `NAME[:DEVICE]`:

    numpy                          the CPU
    cupy, cupy:N                   NVIDIA GPU N (default: the current one)
    torch, torch:cpu, torch:cuda, torch:cuda:N, torch:mps
    jax, jax:cpu, jax:gpu, jax:gpu:N
    array-api-strict, array-api-strict:device1, array-api-strict:device2
    auto                           cupy when it imports and a CUDA device answers, else numpy

`parse_spec` checks a spec's form without importing anything (the command line uses it for
`--backend`); `get_namespace` imports the library and opens the device. A library is imported
only when asked for, so `import anynet` works with NumPy alone.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from anynet.errors import BackendError

NAMES = ("numpy", "cupy", "torch", "jax", "array-api-strict", "auto")
_MODULES = {"numpy": "_numpy", "cupy": "_cupy", "torch": "_torch", "jax": "_jax",
            "array-api-strict": "_strict"}
SPEC_HELP = ("numpy, cupy[:N], torch[:cpu|cuda[:N]|mps], jax[:cpu|gpu[:N]], "
             "array-api-strict[:device1|device2], auto")


def library(name: str) -> ModuleType:
    """The seam module of backend `name` ("numpy", "torch", ...); imports no array library."""
    return importlib.import_module(f"anynet.backend.{_MODULES[name]}")


def import_or_explain(module: str, backend: str, install: str) -> ModuleType:
    """Import `module`, or raise a BackendError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendError(
            f"backend '{backend}' needs the package '{module}', which cannot be imported ({e}); "
            f"install it with: {install}"
        ) from None


@dataclass(frozen=True)
class Backend:
    """An array library ready to compute: its Array API namespace `xp` and the `device` to use.

    `name` is the library's backend name (`auto` already resolved); `note` says why `auto` chose
    what it chose, for the user (empty otherwise). The methods are the seam's operations.
    """

    name: str
    xp: ModuleType = field(repr=False)
    device: Any
    note: str = ""

    @property
    def _lib(self) -> ModuleType:
        return library(self.name)

    @property
    def spec(self) -> str:
        """The spec that opens this backend again, device included: 'torch:cuda:0'."""
        device = self.device_name
        return self.name if device in ("cpu", "CPU_DEVICE") else f"{self.name}:{device}"

    @property
    def device_name(self) -> str:
        """The device as the user names it: 'cpu', 'cuda:0', 'gpu:0', '0', 'device1'."""
        return self._lib.device_name(self.device)

    def asarray(self, array: Any, dtype: str | None = None) -> Any:
        """Move a host array (NumPy, or anything array-like) to this backend's device.

        `dtype` is a name ("float32", "float64", "int64", "uint8"); None keeps the array's own.
        The result owns its memory on every backend but NumPy, where it may be `array` itself.
        """
        array = np.asarray(array) if dtype is None else np.asarray(array, dtype=dtype)
        return self._lib.from_host(self.xp, self.device, array)

    def to_numpy(self, array: Any) -> np.ndarray:
        """The values of an array of this backend, on any device, as a host NumPy array (which
        may share memory with an array already on the CPU: copy it before changing it)."""
        return self._lib.to_host(array)

    def sync(self, array: Any = None) -> None:
        """Wait until the device has finished the work queued so far (for timing)."""
        self._lib.sync(array)

    @property
    def compiles(self) -> bool:
        """Whether `compile` does anything here (JAX: jax.jit)."""
        return self._lib.COMPILES

    def compile(self, fn):
        """`fn` compiled for this backend (jax.jit on JAX); `fn` itself elsewhere."""
        return self._lib.compile(fn)

    def fused_ops(self):
        """The in-place primitives of the fused training step, or None where there are none
        (immutable arrays, or a backend meant only for testing the standard)."""
        return self._lib.fused_ops(self)

    def graph_capture(self):
        """Where the device is CUDA (CuPy, PyTorch), `capture(fn) -> replay`: `fn` (a step
        over buffers that never move) run once to warm up, then recorded as a CUDA graph that
        `replay()` launches as one unit. None elsewhere."""
        capture = getattr(self._lib, "graph_capture", None)
        return capture(self) if capture else None

    def dtype(self, name: str) -> Any:
        """The namespace's dtype object for a dtype name such as "float32"."""
        return getattr(self.xp, name)

    def describe(self) -> str:
        """A short human description: 'torch (device cuda:0)'."""
        return f"{self.name} (device {self.device_name})" + (f"; {self.note}" if self.note
                                                              else "")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split and check a backend spec 'NAME[:DEVICE]' -> (name, device or None).

    Checks the form only (no library is imported); raises BackendError naming what is wrong.
    """
    name, _, device = str(spec).strip().partition(":")
    if name not in NAMES:
        raise BackendError(f"unknown backend '{spec}'; choose one of: {SPEC_HELP}")
    if name == "auto":
        if device:
            raise BackendError("backend 'auto' takes no device; name one instead, e.g. cupy:1")
        return name, None
    if ":" in spec and not device:
        raise BackendError(f"backend '{spec}': empty device after ':'")
    library(name).check_device(device or None)
    return name, device or None


def spec_for(name: str, kind: str) -> str:
    """The spec of backend `name` on its first device of a kind, "cpu" or "gpu" (for tools that
    compare libraries device by device, such as the benchmark); BackendError where it has none.
    """
    if name not in _MODULES:
        raise BackendError(f"unknown backend '{name}'; choose one of: {SPEC_HELP}")
    devices = library(name).KIND_DEVICES
    if kind not in devices:
        where = " or ".join(k.upper() for k in devices) or "no device"
        raise BackendError(f"backend '{name}' computes on a {where} only, not on a "
                           f"{kind.upper()}")
    device = devices[kind]
    return name if device is None else f"{name}:{device}"


def probe(name: str) -> str:
    """Empty when backend `name` can be used here; otherwise the reason it cannot."""
    return library(name).probe()


def get_namespace(spec: str | Backend = "numpy") -> Backend:
    """Resolve a backend spec ("torch:cuda", see the module docstring) to a `Backend`.

    Raises `BackendError` naming the package (or extra) to install, or the device that is
    missing, when the backend cannot be used. A `Backend` passes through unchanged.
    """
    if isinstance(spec, Backend):
        return spec
    name, device = parse_spec(spec)
    if name == "auto":
        reason = probe("cupy")
        if not reason:
            xp, dev = library("cupy").open(None)
            return Backend("cupy", xp, dev, note="auto chose cupy: a CUDA device answered")
        xp, dev = library("numpy").open(None)
        return Backend("numpy", xp, dev, note=f"auto chose numpy: {reason}")
    xp, dev = library(name).open(device)
    return Backend(name, xp, dev)


def to_numpy(array: Any) -> np.ndarray:
    """Any backend's array (on any device) as a host NumPy array, as `Backend.to_numpy`; NumPy
    arrays and Python scalars or lists pass through `np.asarray`."""
    if isinstance(array, (np.ndarray, np.generic)):
        return np.asarray(array)
    module = type(array).__module__
    for name in ("cupy", "torch", "jax", "array-api-strict"):
        lib = library(name)
        if lib.owns(array):
            return lib.to_host(array)
    if module.startswith(("builtins", "numpy")):
        return np.asarray(array)
    # another Array API library: DLPack is the standard's own way across
    return np.from_dlpack(array)
