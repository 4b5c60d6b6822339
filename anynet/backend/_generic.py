"""Any other Array API library, by the standard alone: `--backend MODULE[:DEVICE]`.

For a namespace that is not one of the named five (`dask.array`, `mlx.core`, `dpnp`, `ndonnx`,
...), this module does what the named modules do, asking the library only what the standard
lets anyone ask:

- the namespace: the module as users import it, wrapped by array-api-compat where it has a
  wrapper (`dask.array` becomes `array_api_compat.dask.array`), found through an array of it;
- devices: `__array_namespace_info__()`, its `default_device()` and `devices()`; a spec's
  `:DEVICE` is matched against the devices' names (`device_name`) or their position;
- to the device: `asarray(a, dtype=, device=, copy=True)`, dropping the keywords a library
  refuses (MLX takes neither `device=` nor, for `astype`, `copy=`);
- to the host: DLPack (`np.from_dlpack(x, device="cpu", copy=True)`), then `to_device("cpu")`,
  then the library's own documented way (`_HOST_WAYS`: Dask's `compute`, ndonnx's
  `unwrap_numpy`, ...);
- capabilities (`capabilities`): each tried once on a tiny array, never assumed from a name.
  What anynet needs to train is `take` (the batches are gathered with it; integer-array
  indexing is reported, not used), `arange` and the math functions in `MATH`; a library without
  one of them is refused at start, in one line naming it (`check_trainable`; pydata `sparse`
  lacks take and arange). In-place updates (item assignment) are reported, but the fused step
  needs the named backends' own primitives (`out=` ufuncs, PyTorch's in-place methods), so
  every other library trains with the reference step (`anynet.steps.ArrayAPIStep`). A lazy
  library's arrays are materialised after every step (`materialise`: Dask's `persist`, MLX's
  `eval`), so a training run's graph never grows. Float64 accuracy is measured (MLX's `exp`
  and `log` are float32-accurate even in float64; the examples then hold it to float32's).
"""

from __future__ import annotations

import importlib
import math
import re
import warnings
from typing import Any

import numpy as np

from anynet.backend._common import compile as compile
from anynet.backend._common import fused_ops as fused_ops  # the named backends' only
from anynet.backend._common import graph_capture as graph_capture
from anynet.errors import BackendError

COMPILES = False
# unknown: the benchmark's CPU/GPU comparison names its libraries
KIND_DEVICES: dict[str, str | None] = {}
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

# pip's name for a module's distribution where it differs from the module's top package
_INSTALL = {"mlx": "pip install 'mlx[cpu]' (Linux; on Apple silicon pip install mlx)",
            "dask": "pip install 'dask[array]'",
            "dpnp": "pip install dpnp (the CPU device needs intel-opencl-rt too)"}

# A library's own documented way to the host, for arrays that DLPack and to_device cannot move
# (looked up by the array's top-level package): Dask computes (https://docs.dask.org/en/stable/
# generated/dask.array.Array.compute.html), ndonnx unwraps its propagated value, pydata sparse
# densifies, dpnp copies out explicitly, MLX exports through the buffer protocol.
_HOST_WAYS = {
    "dask": lambda x: np.asarray(x.compute()),
    "ndonnx": lambda x: np.asarray(x.unwrap_numpy()),
    "sparse": lambda x: np.asarray(x.todense()),
    "dpnp": lambda x: np.asarray(x.asnumpy()),
    "mlx": lambda x: np.array(x, copy=True),
}


def _persist_dask(arrays: list) -> list:
    import dask

    return list(dask.persist(*arrays, scheduler="sync"))


def _eval_mlx(arrays: list) -> list:
    import mlx.core as mx

    mx.eval(*arrays)
    return arrays


# Lazy libraries: how to compute what a list of arrays holds now, so later work starts from values
# instead of from the whole history (Dask: persist; MLX: eval). By top-level package.
_MATERIALISE = {"dask": _persist_dask, "mlx": _eval_mlx}


def _top(obj: Any) -> str:
    """The top-level package an array (or module) comes from: 'dask', 'mlx', 'dpnp'."""
    name = obj.__name__ if isinstance(obj, type(np)) else type(obj).__module__
    name = name.removeprefix("array_api_compat.")
    return name.split(".")[0]


def is_module_name(name: str) -> bool:
    return bool(_MODULE.fullmatch(name))


def known_install(name: str) -> str:
    """How to install the library of module `name`, where anynet knows it; else empty."""
    return _INSTALL.get(name.split(".")[0], "")


def install_hint(name: str) -> str:
    """How to install the library of module `name` (pip's name guessed from the module's)."""
    return known_install(name) or f"pip install {name.split('.')[0]}"


def check_device(device: str | None) -> str | None:
    """Devices are the library's own to name: any non-empty text passes here, and is matched
    against `__array_namespace_info__().devices()` when the backend opens."""
    return device


def probe_module(name: str) -> str:
    try:
        importlib.import_module(name)
    except ImportError as e:
        return f"{name} cannot be imported ({e})"
    except Exception as e:  # a module that fails as it loads is not usable either: one line
        return f"{name} failed as it was imported ({type(e).__name__}: {e})"
    return ""


def namespace_of(module: Any) -> Any:
    """The Array API namespace of a module as users import it: array-api-compat's wrapper where
    it has one (found through a small array of the module), else the module itself."""
    from array_api_compat import array_namespace

    try:
        xp = array_namespace(module.asarray([0.0]))
    except Exception:  # not an array library array-api-compat knows: the module must be one
        return module
    # the wrapper of this very library; a module that builds on another library's arrays is its
    # own namespace
    return xp if _top(xp) == _top(module) else module


def open_module(name: str, device: str | None) -> tuple[Any, Any]:
    """(namespace, device) for module `name`; BackendError saying what is missing."""
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise BackendError(
            f"backend '{name}' cannot be used: the module cannot be imported ({e}); install it "
            f"with: {install_hint(name)}") from None
    if not hasattr(module, "asarray"):
        raise BackendError(f"backend '{name}': the module is not an array library (no asarray); "
                           "name the Array API namespace, such as dask.array or mlx.core")
    xp = namespace_of(module)
    return xp, pick_device(name, xp, device)


def _info(xp: Any) -> Any:
    info = getattr(xp, "__array_namespace_info__", None)
    return info() if info is not None else None


def pick_device(name: str, xp: Any, device: str | None) -> Any:
    """The default device, or the one of `devices()` whose name or position is `device`."""
    info = _info(xp)
    if info is None:
        if device is not None:
            raise BackendError(f"backend '{name}:{device}': the library has no "
                               "__array_namespace_info__, so no device can be chosen")
        return None
    if device is None:
        return info.default_device()
    devices = list(info.devices())
    names = [device_name(d) for d in devices]
    for i, (d, n) in enumerate(zip(devices, names, strict=True)):
        if device in (n, str(i)):
            return d
    raise BackendError(f"backend '{name}': no device '{device}'; the library has "
                       f"{', '.join(names) or 'none'} (or their positions 0..{len(devices) - 1})")


def device_name(device: Any) -> str:
    """A device as users would name it: 'cpu', 'cpu:0' (MLX), 'opencl:cpu:0' (dpnp), 'default'
    for a device whose only text is Python's object repr (ndonnx)."""
    if device is None:
        return "default"
    sycl = getattr(device, "sycl_device", device)  # dpnp's Device wraps a dpctl.SyclDevice
    if hasattr(sycl, "filter_string"):
        return str(sycl.filter_string)
    text = str(device)
    if " object at 0x" in text:
        return "default"
    inner = re.fullmatch(r"Device\((.*)\)", text)
    if inner:  # MLX: Device(cpu, 0); array-api-compat's dpnp: Device(opencl:cpu:0)
        return re.sub(r",\s*", ":", inner.group(1))
    return text


def device_of(array: Any) -> Any:
    """An array's device (array_api_compat.device), or None for a library whose arrays have
    none (MLX)."""
    from array_api_compat import device

    try:
        return device(array)
    except AttributeError:
        return None


def same_device(a: Any, b: Any) -> bool:
    """Whether two device objects are one device: equal, or equal by name (dpnp's device objects
    never compare equal)."""
    if a is None or b is None:
        return a is b or device_name(a) == device_name(b)
    try:
        if a == b:
            return True
    except Exception:
        pass
    return device_name(a) == device_name(b)


def from_host(xp: Any, device: Any, array: np.ndarray) -> Any:
    """A host array on `device`, in the library's dtype of the same name, in memory of its own.
    Keywords a library refuses are dropped one at a time (MLX: device=; it copies anyway)."""
    dtype = getattr(xp, array.dtype.name, None)
    tries = [dict(dtype=dtype, device=device, copy=True), dict(dtype=dtype, copy=True),
             dict(dtype=dtype)]
    if device is None:
        tries = tries[1:]
    error = None
    for kw in tries:
        try:
            return xp.asarray(np.array(array, copy=True), **kw)
        except (TypeError, ValueError, NotImplementedError) as e:
            error = e
    raise BackendError(f"{getattr(xp, '__name__', xp)} cannot take a host array: {error}")


def to_host(array: Any) -> np.ndarray:
    """An array's values as a new host NumPy array: DLPack, then to_device('cpu'), then the
    library's own documented way, then NumPy's conversion."""
    try:
        return np.from_dlpack(array, device="cpu", copy=True)
    except (AttributeError, TypeError, BufferError, RuntimeError, ValueError,
            NotImplementedError):
        pass
    to_device = getattr(array, "to_device", None)
    if to_device is not None:
        try:
            return np.from_dlpack(to_device("cpu"), copy=True)
        except Exception:  # the library's own refusal, of any kind: go on to the next way
            pass
    way = _HOST_WAYS.get(_top(array))
    if way is not None:
        return way(array)
    return np.array(array, copy=True)


def materialise(arrays: list) -> list:
    """The arrays of a lazy library computed (Dask: persisted; MLX: evaluated), so that what is
    built on them later starts from values; other libraries' arrays unchanged."""
    if not arrays:
        return arrays
    way = _MATERIALISE.get(_top(arrays[0]))
    return way(arrays) if way is not None else arrays


def sync(array: Any = None) -> None:
    """Wait for an array's value (timing): a lazy library computes it."""
    if array is not None:
        materialise([array])  # Dask persists on the calling thread: computed on return


_CAPABILITIES: dict = {}  # (namespace, device name) -> capabilities, tried once per process


def cached_capabilities(xp: Any, device: Any, put=None, get=None) -> dict:
    """`capabilities`, tried once per namespace and device in a process."""
    key = (getattr(xp, "__name__", id(xp)), device_name(device))
    if key not in _CAPABILITIES:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # a library's warnings about the probes themselves
            _CAPABILITIES[key] = capabilities(xp, device, put, get)
    return _CAPABILITIES[key]


def capabilities(xp: Any, device: Any, put=None, get=None) -> dict[str, bool]:
    """What the library can do, each tried on a tiny array on `device` (moved there and back by
    `put(host_array)` and `get(array)`, by default this module's `from_host` and `to_host`):

    take, integer indexing (x[idx, ...]), in-place (item assignment), arange, each of the math
    functions anynet uses (matmul, exp, log, max, sum, argmax, where), lazy (needs
    materialising: Dask, MLX, ndonnx), float64 (whether it exists), float64 accurate (exp and
    log to 1e-12 in float64: MLX's are float32-accurate). True or False each.
    """
    put = put or (lambda a: from_host(xp, device, a))
    get = get or to_host
    x = put(np.arange(6, dtype=np.float32).reshape(3, 2))
    idx = put(np.array([2, 0]))
    caps: dict[str, bool] = {}

    def works(fn) -> bool:
        try:
            out = fn()
            if out is not None:
                get(out)
            return True
        except Exception:  # a library says "cannot" in its own words: all mean "no"
            return False

    def assign():
        y = put(np.zeros(3, np.float32))
        y[1] = 1.0
        return y

    def gathered(fn):
        return works(lambda: np.testing.assert_array_equal(get(fn()), [[4, 5], [0, 1]]))

    caps["take"] = gathered(lambda: xp.take(x, idx, axis=0))
    caps["integer indexing"] = gathered(lambda: x[idx, ...])
    caps["in-place"] = works(assign)
    caps["arange"] = works(lambda: xp.arange(3))
    for name, fn in MATH.items():
        caps[name] = works(lambda fn=fn: fn(xp, x))
    from array_api_compat import is_lazy_array

    caps["lazy"] = _top(x) in _MATERIALISE or bool(works(lambda: is_lazy_array(x))
                                                    and is_lazy_array(x))
    caps["float64"] = hasattr(xp, "float64") and works(lambda: put(np.ones(2)))
    caps["float64 accurate"] = False
    if caps["float64"]:
        try:
            v = get(xp.exp(put(np.array([1.0, 0.5]))))
            w = get(xp.log(put(np.array([3.0, 7.0]))))
            caps["float64 accurate"] = bool(
                abs(float(v[0]) - math.e) < 1e-12 and abs(float(w[1]) - math.log(7)) < 1e-12)
        except Exception:
            pass
    return caps


# the standard's functions the math uses (anynet.functional, anynet.network), each tried alone
MATH = {
    "matmul": lambda xp, x: x @ x.T,
    "exp": lambda xp, x: xp.exp(x),
    "log": lambda xp, x: xp.log(x + 1),
    "max": lambda xp, x: xp.max(x, axis=-1, keepdims=True),
    "sum": lambda xp, x: xp.sum(x, axis=0),
    "argmax": lambda xp, x: xp.argmax(x, axis=-1),
    "where": lambda xp, x: xp.where(x > 1, x, xp.zeros_like(x)),
}
REQUIRED = ("take", "arange", *MATH)


def lacking(caps: dict) -> list[str]:
    """What of the standard a library lacks that anynet needs to train, in words."""
    missing = []
    for key in REQUIRED:
        if not caps[key]:
            missing.append(key)
    return missing


def check_trainable(name: str, xp: Any, device: Any) -> dict:
    """The library's capabilities; BackendError in one line where anynet cannot train on it,
    naming what it lacks (and, for the record, whether it has item assignment)."""
    caps = cached_capabilities(xp, device)
    missing = lacking(caps)
    if missing:
        also = "" if caps["in-place"] else " (nor item assignment, x[i] = v)"
        raise BackendError(f"backend '{name}' cannot train anynet: it lacks what the Array API "
                           f"standard has and anynet uses: {', '.join(missing)}{also}")
    return caps
