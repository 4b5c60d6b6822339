"""Tests for anynet.backend.threads: the thread count is really set in every pool it names, the
default is the module's rule, bad counts are refused. No timing here (that is bench/threads.py).
Every test leaves the process's thread pools as it found them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from anynet.backend import get_backend, threads

threadpoolctl = pytest.importorskip("threadpoolctl")


@pytest.fixture(autouse=True)
def restore_threads():
    """Put every pool (threadpoolctl's view, and PyTorch's count) back after the test."""
    pools = threadpoolctl.threadpool_info()
    torch_threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    yield
    if "torch" in sys.modules and torch_threads is not None:
        sys.modules["torch"].set_num_threads(torch_threads)
    for pool in pools:
        threadpoolctl.threadpool_limits(limits={pool["prefix"]: pool["num_threads"]})


def blas_threads() -> set[int]:
    return {p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"}


@pytest.mark.parametrize("n", [1, 2])
def test_set_threads_limits_numpy_blas(n):
    assert threads.set_threads(get_backend("numpy"), n) == n
    assert blas_threads() == {n}                      # NumPy's OpenBLAS (or MKL) itself
    assert threads.thread_counts()[next(p["internal_api"] for p in
                                        threadpoolctl.threadpool_info()
                                        if p["user_api"] == "blas")] == n


@pytest.mark.parametrize("n", [1, 2])
def test_without_threadpoolctl_numpy_s_own_openblas_is_set(monkeypatch, n):
    """A bare install (numpy and array-api-compat only) has no threadpoolctl: --threads still
    reaches the OpenBLAS NumPy's wheels bundle."""
    from anynet.backend._numpy import OpenBLAS

    blas = OpenBLAS.load()
    if blas is None or blas.set_threads is None:
        pytest.skip("this NumPy does not bundle scipy-openblas")
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails
    assert threads.set_threads("numpy", n) == n
    assert blas.threads() == n  # (other BLAS pools in the process are threadpoolctl's to set)


def test_set_threads_takes_a_spec_string_too():
    assert threads.set_threads("numpy", 1) == 1
    assert blas_threads() == {1}


@pytest.mark.backend_library
@pytest.mark.parametrize("n", [1, 2])
def test_set_threads_limits_torch_and_its_openmp_pool(n):
    torch = pytest.importorskip("torch")
    assert threads.set_threads(get_backend("torch"), n) == n
    assert torch.get_num_threads() == n
    openmp = {p["num_threads"] for p in threadpoolctl.threadpool_info()
              if p["user_api"] == "openmp"}
    assert openmp <= {n}                              # libgomp/libiomp, when threadpoolctl sees it
    assert blas_threads() <= {n}
    assert threads.thread_counts()["torch"] == n


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_set_threads_refuses_counts_that_are_not_positive_ints(bad):
    before = blas_threads()
    with pytest.raises(ValueError, match="integer >= 1"):
        threads.set_threads(get_backend("numpy"), bad)
    assert blas_threads() == before


@pytest.mark.parametrize("others, cpus, expected", [
    (0.0, 2, 2),     # quiet: every core, as the libraries' own default
    (0.4, 2, 2),     # under half a core taken: still free
    (0.67, 2, 1),    # a spinning neighbour beside our 2 threads gets 2/3 of a core
    (1.0, 2, 1),     # one core busy
    (3.0, 2, 1),     # more busy than there are cores: never below 1
    (2.2, 16, 14),
    (None, 8, 8),    # nothing known (no /proc/stat, no load average): every core
])
def test_free_cores_is_one_thread_per_core_nobody_else_keeps_busy(others, cpus, expected):
    assert threads.free_cores(others, cpus) == expected


def test_default_threads_follows_the_busy_cores_sampled(monkeypatch):
    cpus = threads._schedulable_cpus()
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s=threads.SAMPLE_S: 0.0)
    assert threads.default_threads() == cpus
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s=threads.SAMPLE_S: 1.0)
    assert threads.default_threads() == max(1, cpus - 1)


def test_set_threads_none_means_the_default(monkeypatch):
    monkeypatch.setattr(threads, "default_threads", lambda: 1)
    assert threads.set_threads(get_backend("numpy")) == 1
    assert blas_threads() == {1}


def test_busy_cores_is_a_number_of_cores():
    others = threads.busy_cores(0.02)
    if others is None:
        pytest.skip("neither /proc/stat nor a load average on this platform")
    assert 0 <= others <= 4 * (os.cpu_count() or 1)    # a load average may exceed the cores


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="JAX's pool is sized through CPU affinity: Linux, 2 CPUs or more")
@pytest.mark.backend_library
def test_set_threads_sizes_jax_pool_before_its_client_starts_then_leaves_it():
    # JAX's client is created once per process: in a child, so this process is untouched
    pytest.importorskip("jax")
    code = textwrap.dedent("""
        import json, os
        from anynet.backend import threads
        from anynet.backend import get_backend
        allowed = os.sched_getaffinity(0)
        first = threads.set_threads("jax", 1)             # before the client: the pool is sized
        get_backend("jax")
        again = threads.set_threads(get_backend("jax"), 1)   # after: left as it is
        masks = {len(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}
        print(json.dumps({"first": first, "again": again, "masks": sorted(masks),
                          "allowed": len(allowed)}))
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["first"] == 1
    assert r["again"] == 1                            # the pool it made, left as it is
    assert r["masks"] == [r["allowed"]]               # every thread may use every CPU again
