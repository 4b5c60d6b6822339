"""Thread control: how many BLAS/OpenMP threads the backend's CPU work may use.

Two BLAS threads on a 2-core machine collapse (10-100x slower) as soon as another process
takes a core: each product waits for a thread that is not running. anynet therefore sets the
thread count itself (`--threads N` on every command that computes), with a measured default.

NumPy's BLAS (OpenBLAS, MKL) is limited through threadpoolctl when it is installed (the `all`
extra brings it); PyTorch through `torch.set_num_threads`.
"""

from __future__ import annotations

DEFAULT_THREADS = 1  # placeholder until measured; see bench/README.md


def default_threads() -> int:
    """The thread count used when none is asked for."""
    return DEFAULT_THREADS


def set_threads(backend, n: int | None = None) -> int:
    """Limit `backend`'s CPU threads to `n` (None: `default_threads()`); return the count set."""
    n = default_threads() if n is None else n
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        threadpool_limits(limits=n)
    if backend.name == "torch":
        import torch

        torch.set_num_threads(n)
    return n
