"""A CPU stand-in for CUDA graph capture that keeps a real capture's rules, for the tests of
`anynet.steps.GraphedStep`.

`strict_capture(flavour)` is a `capture(fn) -> replay` as `Backend.graph_capture` gives on CUDA,
and behaves as a real one does where that matters to the step:

- **warm-up**: `fn()` runs once, eagerly; it may not make persistent buffers (`empty`, `host`,
  `clone`): on CuPy 13 a warm-up's allocations came from the capture's pool, freed if capture
  failed.
- **recording**: `fn()` runs a second time, but the seam's primitives (`step.ops`) are only
  recorded, not executed, as a stream capture records kernels without running them. Refused,
  as the real libraries refuse them: host reads (`float(x)`, `.item()`, `.cpu()`, ...; on
  PyTorch, through a TorchFunctionMode), host-to-device copies (`upload_`), primitives that
  return new arrays (allocations outside the step's buffers), any PyTorch computation outside
  the primitives (it would not be replayed here), and for the "cupy" flavour, matrix products
  (CuPy refuses cuBLAS calls during stream capture).
- **replay**: runs the recorded primitives on the same buffers, WITHOUT running Python again:
  a host value, a branch or a re-bound array frozen at capture gives a wrong result, as on a
  GPU. Indices are checked at every replay: an index out of range wraps on CuPy and ends the
  CUDA context on PyTorch, so here it raises.

It reaches the primitives through the step the bound method `fn` belongs to (`fn.__self__.ops`).
On NumPy, host reads cannot be intercepted: there they see the values the warm-up left, and the
replay shows what was frozen.
"""

from __future__ import annotations

import contextlib

import numpy as np

ALLOCATING = {"empty", "host", "clone"}            # persistent buffers
RETURNS_NEW = {"take", "dot", "sum_log"}           # temporaries a caller would hold
HOST_TO_DEVICE = {"upload_"}
MATMUL = {"mm", "sub_mm_", "gemm_acc_"}
INDEXED = {"take_into": 1, "put_": 1, "load_rows": 1}   # the index argument's position


class CaptureRefused(RuntimeError):
    """What the fake raises where a real capture would fail."""


def _check_indices(name, args, kwargs):
    pos = INDEXED.get(name)
    if pos is None:
        return
    array, idx = args[0], args[pos]
    axis = kwargs.get("axis", args[3] if name == "take_into" and len(args) > 3 else 0)
    values = np.asarray(idx.detach().cpu() if hasattr(idx, "detach") else idx)
    n = array.shape[axis]
    if values.size and (values.min() < 0 or values.max() >= n):
        raise IndexError(f"{name}: index {values.min()}..{values.max()} out of range for "
                         f"{n} (CuPy would wrap it, PyTorch would end the CUDA context)")


class _Recorder:
    """The step's ops during warm-up ("warmup") or recording ("record")."""

    def __init__(self, ops, phase: str, flavour: str):
        self._ops, self._phase, self._flavour = ops, phase, flavour
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name):
        attr = getattr(self._ops, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if name in ALLOCATING:
                raise CaptureRefused(f"{name}: a persistent buffer made during capture "
                                     f"({self._phase}); make it with the step")
            if self._phase == "warmup":
                return attr(*args, **kwargs)
            if name in RETURNS_NEW:
                raise CaptureRefused(f"{name}: returns a new array (an allocation outside the "
                                     "step's buffers, and its result is not replayed)")
            if name in HOST_TO_DEVICE:
                raise CaptureRefused(f"{name}: a host-to-device copy during capture")
            if self._flavour == "cupy" and name in MATMUL:
                raise CaptureRefused(f"{name}: calling cuBLAS API during stream capture is "
                                     "currently unsupported (CuPy's matrix products)")
            self.calls.append((name, args, kwargs))
            return None

        return call


@contextlib.contextmanager
def _no_host_work(ops):
    """On PyTorch, refuse host reads and computation outside the primitives while recording."""
    torch = getattr(ops, "torch", None)
    if torch is None:
        yield
        return
    from torch.overrides import TorchFunctionMode

    views = {"__getitem__", "__get__", "t", "transpose", "swapaxes", "view", "reshape", "size",
             "dim", "stride", "is_contiguous", "numel", "__len__"}
    reads = {"item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy", "cpu",
             "__array__", "__format__", "__repr__", "to"}

    class Refuse(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", str(func))
            if name in reads:
                raise CaptureRefused(f"{name}: a host read during capture")
            if name not in views:
                raise CaptureRefused(f"{name}: a computation outside the seam's primitives "
                                     "during capture")
            return func(*args, **(kwargs or {}))

    with Refuse():
        yield


def strict_capture(flavour: str = "torch"):
    """`capture(fn) -> replay` with a real capture's rules (module docstring). `flavour`
    "torch" (PyTorch's CUDA graphs) or "cupy" (also refuses matrix products)."""

    def capture(fn):
        step = fn.__self__
        ops = step.ops
        try:
            step.ops = _Recorder(ops, "warmup", flavour)
            fn()
            step.ops = recorder = _Recorder(ops, "record", flavour)
            with _no_host_work(ops):
                fn()
        finally:
            step.ops = ops
        calls = recorder.calls
        if not calls:
            raise CaptureRefused("nothing was recorded")

        def replay():
            for name, args, kwargs in calls:
                _check_indices(name, args, kwargs)
                getattr(ops, name)(*args, **kwargs)

        replay.calls = calls
        return replay

    return capture
