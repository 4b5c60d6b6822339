"""Test sessions: the same suite, against the same documented examples, on every backend.

    nox                      every session below, two at a time (cupy and torch-cuda skip, saying
                             why, without a CUDA device); `nox -s gpu` runs the GPU check
                             (bench/README.md); `nox --parallel 1` runs them one by one
    nox -s numpy             one session; `nox -l` lists them
    nox -s torch -- -k grad  arguments after -- go to pytest (`-- -n 0`: the long sessions
                             in one process, not one per core with pytest-xdist)

The backend under test reaches the tests through the environment variable ANYNET_TEST_BACKEND
(equivalently `pytest --backend NAME`). The numpy session runs the whole suite; every other
backend session runs only the tests that compute on its backend (ANYNET_TEST_BACKEND_ONLY=1,
see tests/conftest.py): host-only tests (files, parsing, servers) run once. Genuine MNIST for the
real-data tests: ANYNET_DATA_DIR, else ../shared/data/mnist beside the checkout when it exists.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nox

nox.options.error_on_missing_interpreters = False
# Longest first: under --parallel they start in this order.
nox.options.sessions = ["numpy", "jax", "lint", "array-api-strict", "torch", "sweep", "dpnp",
                        "interop", "dask", "ndonnx", "mlx", "minimal", "cupy", "torch-cuda"]
if hasattr(nox.options, "parallel"):  # nox >= 2026.10; an older nox runs them one by one
    # Two sessions at a time: one's installs (single-threaded) and waits (clusters, servers)
    # overlap the other's tests. More would only crowd the CPUs, which the long sessions'
    # pytest-xdist already fills. Output stays whole: each session's is printed when it ends.
    nox.options.parallel = 2
    nox.options.allow_parallel = True

ROOT = Path(__file__).parent
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
TORCH = "torch==2.13.0"  # the CPU build; other versions pull gigabytes of CUDA packages


def _env(backend: str, backend_only: bool = False) -> dict[str, str]:
    # Bytecode caches on, even where the machine turns them off (PYTHONDONTWRITEBYTECODE=1, as
    # on this project's CI): the installs skip compiling (`_install`), so without caches every
    # test process, and every `python -m anynet` a test starts, would compile each module it
    # imports (NumPy, Dask, the tests' assertion rewriting) from source again.
    env = {"ANYNET_TEST_BACKEND": backend, "ANYNET_TEST_BACKEND_ONLY": "1" if backend_only else "",
           "PYTHONDONTWRITEBYTECODE": ""}
    if "ANYNET_DATA_DIR" not in os.environ and SHARED_MNIST.is_dir():
        env["ANYNET_DATA_DIR"] = str(SHARED_MNIST)
    return env


def _install(session: nox.Session, *args: str) -> None:
    """pip install without byte-compiling every installed module (matplotlib, torch and jax
    bring thousands): Python compiles the few a test imports when it first imports them, and
    keeps them (`_env` turns bytecode caches on)."""
    session.install("--no-compile", *args)


def _pytest(session: nox.Session, backend: str, *args: str, backend_only: bool = True,
            spread: bool = False, env: dict[str, str] | None = None) -> None:
    """pytest on `backend`. `spread`: on every core (pytest-xdist's `-n auto`), for the long
    sessions; the short ones run in one process, as two sessions at a time already fill the
    cores and each worker collects the suite and imports its libraries once more. Arguments
    after `--` come last: `nox -s numpy -- -n 0` runs it in one process."""
    session.run("pytest", "-p", "no:cacheprovider", *(("-n", "auto") if spread else ()), *args,
                *session.posargs, env=_env(backend, backend_only) | (env or {}))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the package, tests, benchmarks, examples and this file; mypy over anynet/
    (configured in pyproject.toml), which proves every backend module and fused-ops class
    keeps the seam's Protocols (anynet/backend/contract.py)."""
    _install(session, "ruff>=0.5", "mypy>=1.10", "numpy>=1.24")
    session.run("ruff", "check", "anynet", "tests", "bench", "examples", "noxfile.py")
    session.run("mypy")


@nox.session
def minimal(session: nox.Session) -> None:
    """Runtime dependencies only: `import anynet` and the numpy path work; nothing else loads."""
    _install(session, ".")
    session.run("python", "-c", (
        "import sys, anynet\n"
        "heavy = {'torch', 'jax', 'cupy', 'array_api_strict', 'matplotlib', 'PIL', 'tqdm',\n"
        "         'dask', 'distributed'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
        "from anynet.cli import main\n"
        "assert main(['examples', '--backend', 'numpy']) == 0\n"
        "assert main(['gradcheck', '--entries', '20']) == 0\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
        "print('import anynet with numpy and array-api-compat alone: ok')\n"
    ))


@nox.session
def numpy(session: nox.Session) -> None:
    """The whole suite on NumPy: the host-only tests run here, once (the browser's too)."""
    _install(session, ".[test,browser]")
    _pytest(session, "numpy", backend_only=False, spread=True)


@nox.session(name="array-api-strict")
def array_api_strict(session: nox.Session) -> None:
    """The suite on array-api-strict (the code uses the standard and nothing else) with every
    array on `device1`, which refuses implicit conversion to NumPy as a GPU's arrays do: device
    handling is tested without a GPU. Then the Array API tests (PORTABLE_TESTS) on its default
    device, the CPU one: what passes on device1 passes there, bar a path taken only on it."""
    _install(session, ".[test]")
    _pytest(session, "array-api-strict:device1", spread=True)
    _pytest(session, "array-api-strict", *PORTABLE_TESTS)


@nox.session
def torch(session: nox.Session) -> None:
    """The suite on PyTorch (CPU), with torch.autograd as a further oracle."""
    _install(session, TORCH, ".[test]")
    _pytest(session, "torch", spread=True)


@nox.session
def jax(session: nox.Session) -> None:
    """The suite on JAX (CPU). Each Trainer jits its own step, so the tests compile the same
    computation many times: JAX's compilation cache, in this session's temporary folder, lets
    a repeated one load instead (a third less time here)."""
    _install(session, ".[test,jax]")
    cache = {"JAX_COMPILATION_CACHE_DIR": str(Path(session.create_tmp()).resolve() / "jax-cache"),
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    _pytest(session, "jax", spread=True, env=cache)


@nox.session
def interop(session: nox.Session) -> None:
    """The model outside anynet: ONNX export run by onnxruntime, safetensors read by the
    safetensors package, the scikit-learn estimator (pandas and array-api-strict for its checks),
    pickling. ~100 MB of wheels, so not in the 'test' extra; elsewhere these tests skip."""
    _install(session, ".[test,onnx,sklearn]", "onnxruntime>=1.20", "safetensors>=0.4", "pandas")
    _pytest(session, "numpy", "tests/test_export.py", "tests/test_sklearn.py",
            "tests/test_pickle.py", backend_only=False, env={"SCIPY_ARRAY_API": "1"})


@nox.session
def sweep(session: nox.Session) -> None:
    """anynet sweep on real Dask clusters on this machine (a scheduler and two workers started
    by the tests, one killed mid-sweep; the LocalCluster default) and its pure parts."""
    _install(session, ".[test,sweep]")
    _pytest(session, "numpy", "tests/test_sweep.py", "tests/test_sweep_cluster.py",
            backend_only=False)


def _installed(session: nox.Session, backend: str, probe: str) -> None:
    """The suite on a GPU backend, against the packages already installed (GPU machines are
    often offline): in the interpreter that runs nox, with the checkout on PYTHONPATH; skips,
    saying why, where `probe` (Python printing the reason, empty when usable) says so."""
    env = _env(backend, backend_only=True) | {"PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=os.environ | env)
    reason = result.stdout.strip() or (result.stderr.strip().splitlines() or [""])[-1]
    if result.returncode != 0 or reason:
        session.skip(f"no usable {backend} here ({reason or 'unknown'})")
    # a CUDA graph that fails to capture is an error here, as in pyproject's filterwarnings
    session.run(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W",
                "error::anynet.steps.GraphCaptureUnavailable", *session.posargs, env=env,
                external=True)


@nox.session(venv_backend="none")
def cupy(session: nox.Session) -> None:
    """The suite on CuPy (the fused step, CuPy's own kernels); skips where CuPy does not import
    or no CUDA device answers (anynet's own probe says which)."""
    _installed(session, "cupy", "from anynet.backend import probe; print(probe('cupy'))")


@nox.session(name="torch-cuda", venv_backend="none")
def torch_cuda(session: nox.Session) -> None:
    """The suite on PyTorch's CUDA device (the CUDA-graph step), against the installed PyTorch;
    skips where it has no CUDA device."""
    _installed(session, "torch:cuda", "import torch; print('' if torch.cuda.is_available() "
               "else 'PyTorch sees no CUDA device')")


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """The GPU check (bench/gpu_check.py; bench/README.md): the suite on cupy, torch:cuda and
    jax:gpu, a graphed step's replay, the recipes on MNIST and the GPU rows of bench/epoch.py,
    in under 8 minutes; skips at once without a CUDA device. Arguments after -- go to the
    script (--dry-run, --prepare, --out DIR)."""
    session.run(sys.executable, str(ROOT / "bench" / "gpu_check.py"), *session.posargs,
                external=True)


# Any other Array API library, by its module (`--backend dask.array`): the assignment's examples,
# the gradient checks, a short training held to NumPy's with the same seed, and the command line,
# on four libraries anynet has no module of its own for. A slow library runs the `portable` subset.
PORTABLE_TESTS = ("tests/test_any_namespace.py", "tests/test_examples.py",
                  "tests/test_gradients.py", "tests/test_functional.py", "tests/test_network.py",
                  "tests/test_seam.py")


def _any_namespace(session: nox.Session, spec: str, *packages: str, marked: bool = False,
                   env: dict[str, str] | None = None) -> None:
    _install(session, ".[test]", *packages)
    _pytest(session, spec, *PORTABLE_TESTS, *(["-m", "portable"] if marked else []), env=env)


@nox.session
def dask(session: nox.Session) -> None:
    """The Array API tests on dask.array (lazy: parameters persisted every step), and pydata
    sparse refused at start for what it lacks."""
    _any_namespace(session, "dask.array", "dask[array]>=2024.1", "sparse>=0.15")


@nox.session
def mlx(session: nox.Session) -> None:
    """The Array API tests on mlx.core (lazy: evaluated every step; float64 exp and log only
    float32-accurate, so float32's tolerances). On Linux the CPU build, mlx[cpu]."""
    _any_namespace(session, "mlx.core", "mlx[cpu]>=0.25" if sys.platform == "linux" else "mlx")


@nox.session
def dpnp(session: nox.Session) -> None:
    """The Array API tests on dpnp (Intel's SYCL arrays) on its OpenCL CPU device. The wheel's
    OpenCL ICD file names a placeholder path: OCL_ICD_FILENAMES points at the real driver."""
    _install(session, "dpnp>=0.16", "intel-opencl-rt")
    driver = next(Path(session.virtualenv.location).glob("lib*/libintelocl.so"), None)
    if driver is None:
        session.skip("intel-opencl-rt installed no libintelocl.so (not Linux x86-64?)")
    _any_namespace(session, "dpnp", env={"OCL_ICD_FILENAMES": str(driver)})


@nox.session
def ndonnx(session: nox.Session) -> None:
    """The portable subset on ndonnx (ONNX arrays whose values are propagated op by op, 0.4 s a
    training step: the whole set would take an hour)."""
    _any_namespace(session, "ndonnx", "ndonnx>=0.23", marked=True)
