"""array-api-strict: the standard and nothing more, for testing portability.

Devices: `CPU_DEVICE` (the default), `device1` and `device2`. The latter two refuse implicit
conversion to NumPy, as a GPU's arrays do, so device mistakes show up on a CPU-only machine
(scikit-learn's CI runs its Array API tests on `device1` for this reason).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anynet.backend._common import compile as compile
from anynet.backend._common import device_check, import_probe
from anynet.backend._common import fused_ops as fused_ops
from anynet.backend._common import graph_capture as graph_capture

NAME = "array-api-strict"
INSTALL = "pip install array-api-strict"
_KNOWN = ("CPU_DEVICE", "device1", "device2")
# compile, fused_ops, graph_capture: _common's, none (the reference step only: this backend
# exists to test the standard)

# the device of each kind ("cpu", "gpu") this library computes on, as a spec's device; absent: none
KIND_DEVICES: dict[str, str | None] = {"cpu": None}
COMPILES = False


def device_name(device: Any) -> str:
    return str(device).split("'")[1]  # repr: Device('device1')


check_device = device_check(NAME, "|".join(_KNOWN), f"choose one of: {', '.join(_KNOWN)}")
probe = import_probe("array_api_strict", "array-api-strict")


def open(device: str | None) -> tuple[Any, Any]:
    from anynet.backend import import_or_explain

    xp = import_or_explain("array_api_strict", NAME, INSTALL)
    return xp, xp.Device(check_device(device) or "CPU_DEVICE")


def owns(array: Any) -> bool:
    return type(array).__module__.startswith("array_api_strict")


def from_host(xp: Any, device: Any, array: np.ndarray) -> Any:
    return xp.asarray(array, device=device, copy=True)  # its own memory, as on a real device


def to_host(array: Any) -> np.ndarray:
    import array_api_strict

    return np.from_dlpack(array.to_device(array_api_strict.Device("CPU_DEVICE")))


def sync(array: Any = None) -> None:
    """Computes eagerly, as NumPy."""
