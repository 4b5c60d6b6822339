"""CuPy: NVIDIA GPUs. Devices: `cupy` (the current device) or `cupy:N` (GPU number N).

The fused step's primitives are NumPy's ufunc ones (`_numpy.UfuncOps`) over the `cupy` module:
CuPy implements the same `out=` API.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anynet.errors import BackendError

NAME = "cupy"
DEVICES = "N (GPU number)"
INSTALL = ("pip install 'anynet[cupy-cuda12]' (or anynet[cupy-cuda13]; nvidia-smi shows your "
           "CUDA version)")

# the device of each kind ("cpu", "gpu") this library computes on, as a spec's device; absent: none
KIND_DEVICES = {"gpu": "0"}
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

    index = int(check_device(device) or 0)
    count = cupy.cuda.runtime.getDeviceCount()
    if index >= count:
        raise BackendError(f"backend 'cupy:{index}': there are only {count} CUDA device(s) "
                           f"(0..{count - 1})")
    return xp, cupy.cuda.Device(index)


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


def compile(fn):
    return fn


def graph_capture(backend):
    """`capture(fn) -> replay`: runs `fn` once to warm up, then records it by stream capture
    into a `cupy.cuda.Graph`, launched on the current stream. Its temporaries come from a memory
    pool of its own that nothing else allocates from, so no later array takes memory the graph
    writes to. None where this CuPy has no stream capture (CuPy < 10)."""
    import cupy

    if not hasattr(cupy.cuda.Stream, "begin_capture"):
        return None

    def capture(fn):
        pool = cupy.cuda.MemoryPool()
        with backend.device, cupy.cuda.using_allocator(pool.malloc):
            fn()  # kernels compiled, and the pool's blocks allocated, outside the capture
            stream = cupy.cuda.Stream(non_blocking=True)
            with stream:
                stream.begin_capture()
                try:
                    fn()
                finally:
                    graph = stream.end_capture()

        def replay():
            graph.launch(cupy.cuda.get_current_stream())

        replay.memory_pool = pool  # lives as long as the graph
        return replay

    return capture


def fused_ops(backend):
    import cupy

    from anynet.backend._numpy import UfuncOps

    class CupyOps(UfuncOps):
        """NumPy's primitives over cupy; reductions through cupy.max/sum (out= supported)."""

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
