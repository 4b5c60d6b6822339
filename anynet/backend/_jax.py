"""JAX: CPU and GPU through XLA. Devices: `cpu` (default), `gpu`, `gpu:N`.

JAX dispatches each operation separately unless it is compiled, so `compile` is `jax.jit`: the
training step runs as one XLA computation per batch, and the arguments it names as donated
(the step's parameters and velocities) lend their memory to its results, so XLA updates them in
place instead of writing new arrays. Arrays are immutable: no fused step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anynet.backend._common import device_check, import_probe
from anynet.backend._common import fused_ops as fused_ops  # immutable arrays: none
from anynet.backend._common import graph_capture as graph_capture
from anynet.errors import BackendError

NAME = "jax"
INSTALL = "pip install 'anynet[jax]'"

# the device of each kind ("cpu", "gpu") this library computes on, as a spec's device; absent: none
KIND_DEVICES: dict[str, str | None] = {"cpu": "cpu", "gpu": "gpu"}
COMPILES = True


def device_name(device: Any) -> str:
    return f"{device.platform}:{device.id}"


check_device = device_check(NAME, r"(cpu|gpu|cuda|rocm|tpu)(:\d+)?",
                            "use jax:cpu, jax:gpu or jax:gpu:N")
probe = import_probe("jax", "JAX")


def open(device: str | None) -> tuple[Any, Any]:
    from anynet.backend import import_or_explain

    jax = import_or_explain("jax", NAME, INSTALL)
    # float64 on request needs JAX's 64-bit mode; anynet always names its dtypes, so turning it
    # on changes nothing for float32 work.
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as xp

    platform, _, index = (check_device(device) or "cpu").partition(":")
    try:
        devices = jax.devices(platform)
    except RuntimeError as e:
        raise BackendError(f"backend 'jax:{device}': JAX has no '{platform}' device "
                           f"({' '.join(str(e).split())})") from None
    i = int(index or 0)
    if i >= len(devices):
        raise BackendError(f"backend 'jax:{device}': there are only {len(devices)} "
                           f"'{platform}' device(s)")
    return xp, devices[i]


def owns(array: Any) -> bool:
    module = type(array).__module__
    return module.startswith(("jax", "jaxlib"))


def from_host(xp: Any, device: Any, array: np.ndarray) -> Any:
    import jax

    # a copy: on the CPU device_put may alias the host memory, which its owner may change
    return jax.device_put(np.array(array, copy=True), device)


def to_host(array: Any) -> np.ndarray:
    import jax

    return np.asarray(jax.device_get(array))


def sync(array: Any = None) -> None:
    if array is not None:
        array.block_until_ready()


def compile(fn, donate: tuple[int, ...] = ()):
    import jax

    return jax.jit(fn, donate_argnums=donate)
