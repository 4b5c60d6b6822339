"""Backends: the one seam between anynet and the array libraries.

Everything that differs between NumPy, CuPy, PyTorch, JAX and array-api-strict lives in this
package, one module per library (`_numpy`, `_cupy`, `_torch`, `_jax`, `_strict`), each with the
same small interface: the namespace and device (`open`), host transfers (`from_host`,
`to_host`), synchronisation for timing (`sync`), compilation (`compile`: `jax.jit` on JAX), the
in-place primitives of the fused training step (`fused_ops`), an availability probe (`probe`),
and thread control (`anynet.backend.threads`). `anynet.backend.contract` writes that interface
down as Protocols (checked by mypy); `_common` holds what several modules share. The rest of
anynet receives arrays, asks `array_api_compat.array_namespace` for their namespace, and never
names a library.

A backend is chosen by a spec, `NAME[:DEVICE]`:

    numpy                          the CPU
    cupy, cupy:N                   NVIDIA GPU N (default: the current one)
    torch, torch:cpu, torch:cuda, torch:cuda:N, torch:mps
    jax, jax:cpu, jax:gpu, jax:gpu:N
    array-api-strict, array-api-strict:device1, array-api-strict:device2
    auto                           cupy when it imports and a CUDA device answers, else numpy

    MODULE, MODULE:DEVICE          any other Array API namespace, by its module: dask.array,
                                   mlx.core, dpnp, ndonnx (`_generic`: the standard alone)

`parse_spec` checks a spec's form without importing anything (the command line uses it for
`--backend`); `require` says in one line which package is missing, before anything imports it;
`get_backend` imports the library and opens the device (`get_namespace`: its deprecated old
name). In Python, `get_backend` (and so `TwoLayerNet(backend=...)`) also takes a namespace
module as users import it (`dask.array`, `mlx.core`) or an array of one. A library is imported
only when asked for, so `import anynet` works with NumPy alone.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from anynet.errors import BackendError

if TYPE_CHECKING:
    from anynet.backend.contract import FusedOps, Library

NAMES = ("numpy", "cupy", "torch", "jax", "array-api-strict", "auto")
_MODULES = {"numpy": "_numpy", "cupy": "_cupy", "torch": "_torch", "jax": "_jax",
            "array-api-strict": "_strict"}
SPEC_HELP = ("numpy, cupy[:N], torch[:cpu|cuda[:N]|mps], jax[:cpu|gpu[:N]], "
             "array-api-strict[:device1|device2], auto, or any Array API module[:DEVICE] "
             "(dask.array, mlx.core, dpnp, ndonnx)")
# the module each named backend imports, for `require`
_IMPORTS = {"numpy": "numpy", "cupy": "cupy", "torch": "torch", "jax": "jax",
            "array-api-strict": "array_api_strict"}
# a namespace module's top-level package -> the named backend that serves it
_NAMED_BY_PACKAGE = {"numpy": "numpy", "cupy": "cupy", "torch": "torch", "jax": "jax",
                     "jaxlib": "jax", "array_api_strict": "array-api-strict"}


def library(name: str) -> ModuleType:
    """The seam module of backend `name` ("numpy", "torch", ...; `_generic` for any other
    module name); imports no array library."""
    return importlib.import_module(f"anynet.backend.{_MODULES.get(name, '_generic')}")


def is_host_numpy(name: str) -> bool:
    """Whether the library `name` is NumPy itself, on the host: what a helper process computing
    with NumPy (anynet.distort_worker) reproduces bit for bit."""
    return name == "numpy"


def is_named(name: str) -> bool:
    """Whether `name` is one of the named backends (with a module of its own in the seam)."""
    return name in _MODULES


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
    def _lib(self) -> Library:
        return library(self.name)

    @property
    def spec(self) -> str:
        """The spec that opens this backend again, device included: 'torch:cuda:0'."""
        device = self.device_name
        if not is_named(self.name):  # the library's default device goes unnamed
            from anynet.backend import _generic

            default = _generic.pick_device(self.name, self.xp, None)
            return self.name if device == _generic.device_name(default) else \
                f"{self.name}:{device}"
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
    def on_cpu(self) -> bool:
        """Whether this backend computes on the host's CPU: NumPy and array-api-strict always,
        PyTorch and JAX on their 'cpu' device; a library of unknown kind counts as not."""
        devices = self._lib.KIND_DEVICES
        if "cpu" not in devices:
            return False
        return "gpu" not in devices or self.device_name.split(":")[0] == "cpu"

    @property
    def compiles(self) -> bool:
        """Whether `compile` does anything here (JAX: jax.jit)."""
        return self._lib.COMPILES

    def compile(self, fn: Callable, donate: tuple[int, ...] = ()) -> Callable:
        """`fn` compiled for this backend (jax.jit on JAX); `fn` itself elsewhere. The
        arguments numbered in `donate` are given up to each call (JAX may write its results
        into their memory): the caller must not read them afterwards."""
        return self._lib.compile(fn, donate)

    def fused_ops(self) -> FusedOps | None:
        """The in-place primitives of the fused training step, or None where there are none
        (immutable arrays, or a backend meant only for testing the standard)."""
        return self._lib.fused_ops(self)

    def graph_capture(self) -> Callable[[Callable[[], None]], Callable] | None:
        """Where the device is CUDA (CuPy, PyTorch), `capture(fn) -> replay`: `fn` (a step
        over buffers that never move) run once to warm up, then recorded as a CUDA graph that
        `replay()` launches as one unit. None elsewhere."""
        return self._lib.graph_capture(self)

    @property
    def capabilities(self) -> dict[str, bool]:
        """What the library can do, each tried once on a tiny array of this device (see
        `_generic.capabilities`): take, integer indexing, in-place, arange, math, lazy,
        float64, float64 accurate."""
        from anynet.backend import _generic

        return _generic.cached_capabilities(self.xp, self.device, self.asarray, self.to_numpy)

    def materialise(self, arrays: list) -> list:
        """`arrays` with their values computed where the library is lazy (Dask: persisted,
        MLX: evaluated), so that work built on them never drags their history along; the
        arrays themselves elsewhere. Called on the parameters after every training step."""
        if is_named(self.name):
            return arrays
        from anynet.backend import _generic

        return _generic.materialise(arrays)

    def holds(self, array: Any) -> bool:
        """Whether `array` is an array of this backend's namespace on its device."""
        from array_api_compat import array_namespace, is_array_api_obj

        from anynet.backend import _generic

        if isinstance(array, np.generic) or not (is_array_api_obj(array) or
                                                 hasattr(array, "__array_namespace__")):
            return False
        try:
            if array_namespace(array) is not self.xp:
                return False
        except TypeError:
            return False
        device = _generic.device_of(array)
        # arrays without a device (MLX's) live in the library's one memory: any device reads them
        return device is None or _generic.same_device(device, self.device)

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
        _check_module_name(spec, name)
        if ":" in spec and not device:
            raise BackendError(f"backend '{spec}': empty device after ':'")
        return name, device or None
    if name == "auto":
        if device:
            raise BackendError("backend 'auto' takes no device; name one instead, e.g. cupy:1")
        return name, None
    if ":" in spec and not device:
        raise BackendError(f"backend '{spec}': empty device after ':'")
    library(name).check_device(device or None)
    return name, device or None


def _check_module_name(spec: str, name: str) -> None:
    """A backend that is not one of the named: the form of a module path whose top-level package
    is installed (found without importing it), else BackendError."""
    import importlib.util

    from anynet.backend import _generic

    if not _generic.is_module_name(name):
        raise BackendError(f"unknown backend '{spec}'; choose one of: {SPEC_HELP}")
    top = name.split(".")[0]
    try:
        found = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        known = _generic.known_install(name)
        hint = f" (install it with: {known})" if known else ""
        raise BackendError(f"unknown backend '{spec}': not a named backend, and no module "
                           f"'{top}' is installed to use as an Array API namespace{hint}; "
                           f"choose one of: {SPEC_HELP}")


def require(spec: str) -> None:
    """Raise BackendError, in one line naming the package and how to install it, where the
    library of backend `spec` cannot be imported. Call it before anything imports the library
    (thread setting does): a missing library is the user's to fix, not a traceback."""
    name, _ = parse_spec(spec)
    if name == "auto":
        return
    if is_named(name):
        import_or_explain(_IMPORTS[name], name, library(name).INSTALL)
        return
    from anynet.backend import _generic

    reason = _generic.probe_module(name)
    if reason:
        raise BackendError(f"backend '{name}' cannot be used: {reason}; install it with: "
                           f"{_generic.install_hint(name)}")


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
    if not is_named(name):
        return library(name).probe_module(name)
    return library(name).probe()


def get_backend(spec: Any = "numpy") -> Backend:
    """Resolve a backend to a `Backend`: a spec ("torch:cuda", "dask.array", see the module
    docstring), a namespace module as users import it (`numpy`, `dask.array`, `mlx.core`), or an
    array of any library (its namespace, on its device). A `Backend` passes through unchanged.

    Raises `BackendError` naming the package (or extra) to install, the device that is
    missing, or what of the standard a library lacks to train anynet.
    """
    if isinstance(spec, Backend):
        return spec
    if isinstance(spec, ModuleType):
        return _from_module(spec)
    if not isinstance(spec, str):
        return _from_array(spec)
    name, device = parse_spec(spec)
    if name == "auto":
        reason = probe("cupy")
        if not reason:
            xp, dev = library("cupy").open(None)
            return Backend("cupy", xp, dev, note="auto chose cupy: a CUDA device answered")
        xp, dev = library("numpy").open(None)
        return Backend("numpy", xp, dev, note=f"auto chose numpy: {reason}")
    if not is_named(name):
        return _generic_backend(name, *library(name).open_module(name, device))
    xp, dev = library(name).open(device)
    return Backend(name, xp, dev)


def get_namespace(spec: Any = "numpy") -> Backend:
    """Deprecated alias of `get_backend` (the name of anynet 0.1, kept for existing code): it
    returns a `Backend`, whose `xp` is the namespace."""
    return get_backend(spec)


def _generic_backend(name: str, xp: ModuleType, device: Any) -> Backend:
    library(name).check_trainable(name, xp, device)
    return Backend(name, xp, device)


def _module_name(module: ModuleType) -> str:
    """'dask.array' for dask.array and for array-api-compat's wrapper of it."""
    return module.__name__.removeprefix("array_api_compat.")


def _from_module(module: ModuleType) -> Backend:
    name = _module_name(module)
    named = _NAMED_BY_PACKAGE.get(name.split(".")[0])
    if named is not None:
        return get_backend(named)
    from anynet.backend import _generic

    xp = _generic.namespace_of(module)
    return _generic_backend(name, xp, _generic.pick_device(name, xp, None))


def _from_array(array: Any) -> Backend:
    """The backend of an array: its namespace, on its device."""
    from array_api_compat import array_namespace

    from anynet.backend import _generic

    try:
        xp = array_namespace(array)
    except TypeError:
        raise BackendError("not a backend, a namespace module or an array of one: "
                           f"{type(array).__name__}") from None
    name = _module_name(xp)
    named = _NAMED_BY_PACKAGE.get(name.split(".")[0])
    device = _generic.device_of(array)
    if named is None:
        if device is None:
            device = _generic.pick_device(name, xp, None)
        return _generic_backend(name, xp, device)
    if named == "numpy":
        return get_backend("numpy")
    xp, _ = library(named).open(None)
    return Backend(named, xp, device)


def materialise(arrays: list) -> list:
    """The arrays with their values computed where their library is lazy (Dask: persisted; MLX:
    evaluated), the arrays themselves elsewhere (also inside a trace, such as jax.jit's).
    `SGD.step` calls it on the parameters it returns, so a training loop's graph never grows,
    whoever writes the loop."""
    from anynet.backend import _generic

    return _generic.materialise(arrays)


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
    # another Array API library: DLPack, to_device("cpu"), then the library's documented way
    from anynet.backend import _generic

    return _generic.to_host(array)
