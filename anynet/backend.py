"""Backends: turn a name ("numpy", "torch", ...) into an Array API namespace and a device.

This is the only module that knows the array libraries by name. Everything else receives arrays
and asks `array_api_compat.array_namespace` for their namespace, so the math is written once.

Names: `numpy`, `cupy`, `torch`, `jax`, `array-api-strict`, and `auto` (CuPy when it imports and
a CUDA device answers, else NumPy). `torch` and `jax` take an optional device after a colon:
`torch:cuda`, `torch:cuda:1`, `jax:gpu`; without one they compute on the CPU.

A backend is imported only when asked for, so `import anynet` works with NumPy alone. Host data
(NumPy arrays: MNIST, model files) crosses to a backend with `Backend.asarray` and comes back with
`to_numpy`; nothing else in anynet moves arrays between devices.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from anynet.errors import BackendError

NAMES = ("numpy", "cupy", "torch", "jax", "array-api-strict", "auto")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Backend:
    """An array library ready to compute: its Array API namespace `xp` and the `device` to use.

    `name` is the canonical backend name (`auto` already resolved); `note` says why `auto` chose
    what it chose, for the user (empty otherwise).
    """

    name: str
    xp: ModuleType = field(repr=False)
    device: Any
    note: str = ""

    def asarray(self, array: Any, dtype: str | None = None) -> Any:
        """Move a host array (NumPy, or anything array-like) to this backend's device.

        `dtype` is a name ("float32", "float64", "int64", "uint8"); None keeps the array's own.
        """
        xp = self.xp
        if dtype is not None:
            array = np.asarray(array, dtype=dtype)
        else:
            array = np.asarray(array)
        if self.name == "torch":
            # torch.asarray shares memory with a NumPy array; copy so the backend owns its data.
            return xp.asarray(array.copy(), device=self.device)
        return xp.asarray(array, device=self.device)

    def dtype(self, name: str) -> Any:
        """The namespace's dtype object for a dtype name such as "float32"."""
        return getattr(self.xp, name)

    def describe(self) -> str:
        """A short human description: 'torch (device cuda:0)'."""
        device = str(self.device)
        if device.startswith("array_api_strict.Device("):  # its repr, as str: show the name
            device = device.split("'")[1]
        return f"{self.name} (device {device})" + (f"; {self.note}" if self.note else "")


def _import(module: str, backend: str, install: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendError(
            f"backend '{backend}' needs the package '{module}', which cannot be imported ({e}); "
            f"install it with: {install}"
        ) from None


def _numpy(device: str | None) -> Backend:
    import array_api_compat.numpy as xp

    if device not in (None, "cpu"):
        raise BackendError(f"backend 'numpy' runs on the CPU only, not on device '{device}'")
    return Backend("numpy", xp, "cpu")


def _cupy_ready() -> tuple[ModuleType | None, str]:
    """Import CuPy and check that a CUDA device answers; return (cupy or None, reason)."""
    try:
        import cupy
    except ImportError as e:
        return None, f"CuPy is not installed ({e})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "CuPy found no CUDA device"
        int((cupy.arange(3) * 2).sum())  # a device that answers a kernel, not just a count
    except Exception as e:  # CUDA errors come in many types: driver, runtime, compiler
        return None, f"CuPy cannot use a CUDA device ({type(e).__name__}: {e})"
    return cupy, ""


def _cupy(device: str | None) -> Backend:
    cupy, reason = _cupy_ready()
    if cupy is None:
        raise BackendError(
            f"backend 'cupy' is not usable: {reason}. It needs an NVIDIA GPU and the CuPy wheel "
            "for your CUDA version: pip install 'anynet[cupy-cuda12]' (or anynet[cupy-cuda13])"
        )
    import array_api_compat.cupy as xp

    index = int(device.rsplit(":", 1)[-1]) if device and device not in ("cuda", "gpu") else 0
    return Backend("cupy", xp, cupy.cuda.Device(index))


def _torch(device: str | None) -> Backend:
    torch = _import("torch", "torch", "pip install torch (see https://pytorch.org)")
    import array_api_compat.torch as xp

    try:
        dev = torch.device(device or "cpu")
    except RuntimeError as e:
        raise BackendError(
            f"backend 'torch': '{device}' is not a device PyTorch knows ({e})"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendError(
            "backend 'torch:cuda' asked for, but PyTorch sees no CUDA device; "
            "use 'torch' for the CPU"
        )
    return Backend("torch", xp, dev)


def _jax(device: str | None) -> Backend:
    jax = _import("jax", "jax", "pip install 'anynet[jax]'")
    # float64 on request needs JAX's 64-bit mode; anynet always names its dtypes, so turning it
    # on changes nothing for float32 work.
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as xp

    platform = (device or "cpu").split(":")[0]
    try:
        devices = jax.devices(platform)
    except RuntimeError as e:
        raise BackendError(f"backend 'jax': no '{platform}' device ({e})") from None
    index = int(device.split(":")[1]) if device and ":" in device else 0
    return Backend("jax", xp, devices[index])


def _strict(device: str | None) -> Backend:
    xp = _import("array_api_strict", "array-api-strict", "pip install array-api-strict")
    return Backend("array-api-strict", xp, xp.asarray(0).device)


def _auto(device: str | None) -> Backend:
    cupy, reason = _cupy_ready()
    if cupy is not None:
        b = _cupy(device)
        return Backend(b.name, b.xp, b.device, note="auto chose cupy: a CUDA device answered")
    b = _numpy(None)
    return Backend(b.name, b.xp, b.device, note=f"auto chose numpy: {reason}")


_LOADERS = {
    "numpy": _numpy,
    "cupy": _cupy,
    "torch": _torch,
    "jax": _jax,
    "array-api-strict": _strict,
    "auto": _auto,
}


def get_namespace(name: str | Backend = "numpy") -> Backend:
    """Resolve a backend name, optionally with a device ("torch:cuda"), to a `Backend`.

    Raises `BackendError` naming the package (or extra) to install when the backend cannot be
    used. A `Backend` passes through unchanged.
    """
    if isinstance(name, Backend):
        return name
    base, _, device = str(name).partition(":")
    if base not in _LOADERS:
        raise BackendError(f"unknown backend '{name}'; choose one of: {', '.join(NAMES)}")
    return _LOADERS[base](device or None)


def to_numpy(array: Any) -> np.ndarray:
    """Copy any backend's array (on any device) to a host NumPy array."""
    if isinstance(array, np.ndarray):
        return array
    module = type(array).__module__
    if module.startswith("cupy"):
        return array.get()
    if module.startswith("torch"):
        return array.detach().cpu().numpy()
    return np.asarray(array)  # JAX, array-api-strict, and NumPy scalars


def namespace_of(*arrays: Any) -> ModuleType:
    """The Array API namespace of `arrays` (array-api-compat's `array_namespace`)."""
    from array_api_compat import array_namespace

    return array_namespace(*arrays)
