"""What several backend modules share, written once: import probes, device checks by pattern,
and the do-nothing defaults (no compilation, no fused ops, no CUDA graph) of the contract in
`anynet.backend.contract`."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from anynet.errors import BackendError


def probe_import(module: str, label: str) -> str:
    """Empty when `module` imports; else "`label` is not installed (the error)"."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        return f"{label} is not installed ({e})"
    return ""


def check_form(name: str, device: str | None, pattern: re.Pattern, hint: str) -> str | None:
    """`device` unchanged when None or when it matches `pattern` whole; else BackendError
    "backend 'name': unknown device '...'; `hint`"."""
    if device is not None and not pattern.fullmatch(device):
        raise BackendError(f"backend '{name}': unknown device '{device}'; {hint}")
    return device


def compile(fn: Callable) -> Callable:
    """No compilation: `fn` itself."""
    return fn


def fused_ops(backend: Any) -> None:
    """No in-place primitives: the reference step only."""
    return None


def graph_capture(backend: Any) -> None:
    """No CUDA graph."""
    return None
