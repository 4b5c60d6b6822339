"""What several backend modules share, written once: import probes, device checks by pattern,
and the do-nothing defaults (no compilation, no fused ops, no CUDA graph) of the contract in
`anynet.backend.contract`."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from anynet.errors import BackendError


def import_probe(module: str, label: str) -> Callable[[], str]:
    """A backend's `probe`: empty when `module` imports; else "`label` is not installed (why)"."""
    def probe() -> str:
        try:
            importlib.import_module(module)
        except ImportError as e:
            return f"{label} is not installed ({e})"
        return ""

    return probe


def device_check(name: str, pattern: str, hint: str) -> Callable[[str | None], str | None]:
    """A backend's `check_device`: a device unchanged when None or when it matches `pattern`
    whole; else BackendError "backend 'name': unknown device '...'; `hint`"."""
    form = re.compile(pattern)

    def check_device(device: str | None) -> str | None:
        if device is not None and not form.fullmatch(device):
            raise BackendError(f"backend '{name}': unknown device '{device}'; {hint}")
        return device

    return check_device


def compile(fn: Callable, donate: tuple[int, ...] = ()) -> Callable:
    """No compilation: `fn` itself (nothing to donate to)."""
    return fn


def fused_ops(backend: Any) -> None:
    """No in-place primitives: the reference step only."""
    return None


def graph_capture(backend: Any) -> None:
    """No CUDA graph."""
    return None
