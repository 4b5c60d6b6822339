"""Thread control: how many CPU threads a backend's work may use (`--threads N`).

Not for GPU work (a GPU backend's host side is one Python thread whatever is set here), and
not a scheduler: the count is chosen once, when a command starts, and kept for the run.

The thread count is part of what a run computes: BLAS splits a product differently for 1 and 2
threads, and the sums come out different in the last bits (an epoch at H = 30 ends 3e-7 apart).
So a run is repeatable bit for bit with the same count: `anynet train` records the count it
used in its checkpoints and model file, `--resume` continues with the recorded count, and
`--threads N` pins it for runs that must match across differently loaded machines.

Why anynet sets it at all: the libraries' default, one thread per core, collapses as soon as
another process takes a core. BLAS and OpenMP threads meet at a barrier after every product and
element-wise kernel; when one of them is not running, the others wait for it a scheduler time
slice at a time. On a quiet 2-core machine 2 threads are 1.1-1.8x faster than 1 (most for large
products); beside one CPU-bound process they are 1.7-5x slower than 1 thread, single epochs up
to 10x. So the default (`default_threads`) is one thread per core that no other process keeps
busy, sampled for 0.1 s at start: every core on a quiet machine, as before, one fewer per busy
core. bench/README.md, section "Threads", has the measurements (`python bench/threads.py`).

What is limited, per library:

- NumPy: its BLAS (OpenBLAS or MKL) through threadpoolctl, when it is installed (the `all`
  extra brings it). Without threadpoolctl, the OpenBLAS that NumPy's wheels bundle is set
  directly (`anynet.backend._numpy.OpenBLAS`); any other BLAS keeps its own count (set
  `OPENBLAS_NUM_THREADS` / `MKL_NUM_THREADS` before starting Python instead).
- PyTorch: `torch.set_num_threads` (its intra-op OpenMP pool and its MKL), and through
  threadpoolctl every other OpenMP or BLAS pool loaded in the process. The default never
  exceeds PyTorch's own (one per physical core).
- JAX: XLA sizes its CPU thread pool once, when JAX creates its CPU client, from the CPUs the
  process may run on. `set_threads` creates the client while the calling thread is limited to
  N CPUs, then gives every thread all CPUs back: N pool threads, free to move off a busy core.
  (The often-quoted `XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
  intra_op_parallelism_threads=1` changes nothing on JAX 0.10: the second word is not an XLA
  flag and is ignored, and the first does not reach its thunk runtime.) After the client exists
  nothing can change its pool: `set_threads` then leaves it, and returns the pool size JAX made
  (the CPUs the process may use).
- CuPy, array-api-strict: NumPy's rules (CuPy's host-side NumPy, strict's NumPy underneath).
"""

from __future__ import annotations

import math
import os
import sys
import time

SAMPLE_S = 0.1  # how long default_threads() watches the machine before deciding


def _schedulable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy since boot (/proc/stat); None without it.
    Steal time counts as busy: the hypervisor gave a core to someone else."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def busy_cores(sample_s: float = SAMPLE_S) -> float | None:
    """How many cores other processes keep busy now: the machine's busy time over `sample_s`
    seconds (/proc/stat) minus this process's own CPU time, per second. Where there is no
    /proc/stat, the 1-minute load average (which lags); None where there is neither."""
    busy0, own0, t0 = machine_busy_s(), time.process_time(), time.perf_counter()
    if busy0 is None:
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    time.sleep(sample_s)
    busy1, own1, t1 = machine_busy_s(), time.process_time(), time.perf_counter()
    if busy1 is None:  # /proc/stat went away between the two reads
        return None
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)


def free_cores(others: float | None, cpus: int | None = None) -> int:
    """The thread count for `cpus` CPUs (default: this process's) when other processes keep
    `others` cores busy: one per core nobody else uses, at least 1. A core counts as busy from
    half a core on (None: nothing known, every core free)."""
    cpus = _schedulable_cpus() if cpus is None else cpus
    taken = math.floor(others + 0.5) if others is not None else 0
    return max(1, cpus - taken)


def default_threads() -> int:
    """The thread count used when none is asked for: one per core that no other process keeps
    busy, watched for 0.1 s (`busy_cores`), at least 1. On a quiet machine that is every core,
    as the libraries' own default; beside a busy process, one fewer per busy core."""
    return free_cores(busy_cores())


def _name(backend) -> str:
    """The library name of a `Backend`, or of a spec string such as 'torch:cuda'."""
    if isinstance(backend, str):
        from anynet.backend import parse_spec

        return parse_spec(backend)[0]
    return backend.name


def set_threads(backend, n: int | None = None) -> int:
    """Limit the CPU threads of `backend` (a `Backend` or a spec string like "jax") to `n`.

    `n` None means `default_threads()` (for PyTorch at most its own default); `n` must be an int
    >= 1 (ValueError otherwise). Returns the thread count now in effect for the library's CPU
    work: `n`, except for a JAX whose CPU client already existed (its pool size, which cannot
    change any more).

    For JAX call it before `get_backend` (which creates JAX's client): with a spec string.
    Limits are process-wide and stay until set again. A spec whose library cannot be imported
    raises BackendError naming the package to install (`anynet.backend.require`), before
    anything tries to import it.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"the thread count must be an integer >= 1, not {n!r}")
    name = _name(backend)
    if isinstance(backend, str):  # nothing imported it yet: a missing library is one line
        from anynet.backend import require

        require(backend)
    if name == "torch":
        import torch  # before threadpoolctl, so that it sees torch's OpenMP pool

        global _TORCH_OWN
        _TORCH_OWN = _TORCH_OWN or torch.get_num_threads()
        n = min(default_threads(), _TORCH_OWN) if n is None else n
        torch.set_num_threads(n)
    elif n is None:
        n = default_threads()
    _limit_native_pools(n)
    if name == "jax":
        return _limit_jax(n)
    return n


_TORCH_OWN: int | None = None  # PyTorch's own thread count, before anynet first set it
_JAX_POOL: int | None = None   # the size set_threads gave XLA's CPU pool, once it did


def _limit_native_pools(n: int) -> None:
    """Every BLAS and OpenMP pool loaded in the process (threadpoolctl), when it is installed;
    else NumPy's own OpenBLAS, where its wheels bundle one."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        from anynet.backend._numpy import OpenBLAS

        blas = OpenBLAS.load()
        if blas is not None and blas.set_threads is not None:
            blas.set_threads(n)
        return
    threadpool_limits(limits=n)  # not used as a context manager: the limit stays


def _jax_initialised() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge  # private; the public API has no such question

    if hasattr(xla_bridge, "backends_are_initialized"):
        return xla_bridge.backends_are_initialized()
    return bool(getattr(xla_bridge, "_backends", True))  # unknown: assume it started


def _limit_jax(n: int) -> int:
    """Create JAX's clients while this thread may run on `n` CPUs only (XLA sizes its pool
    from that), then give every thread of the process its CPUs back."""
    global _JAX_POOL
    if _jax_initialised():
        return _JAX_POOL or _schedulable_cpus()  # XLA's own default: one per CPU
    import jax

    if not hasattr(os, "sched_setaffinity"):  # macOS, Windows: XLA takes every core
        jax.devices()
        return _schedulable_cpus()
    allowed = os.sched_getaffinity(0)
    if n >= len(allowed):
        jax.devices()
        return len(allowed)
    os.sched_setaffinity(0, sorted(allowed)[:n])
    try:
        jax.devices()  # creates the clients; XLA's CPU pool gets n threads
    finally:
        os.sched_setaffinity(0, allowed)
        # the pool's threads inherited the narrow mask: widen them again
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), allowed)
            except OSError:  # a thread that ended meanwhile
                pass
    _JAX_POOL = n
    return n


def thread_counts() -> dict[str, int]:
    """The thread count of every pool this process has loaded, for reports: threadpoolctl's
    view ('openblas', 'mkl', 'openmp', ...) and 'torch' when PyTorch is imported."""
    counts: dict[str, int] = {}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        pass
    else:
        for pool in threadpool_info():
            counts[pool["internal_api"]] = pool["num_threads"]
    if "torch" in sys.modules:
        counts["torch"] = sys.modules["torch"].get_num_threads()
    return counts
