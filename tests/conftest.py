"""Test configuration: the backend under test, and where genuine MNIST is.

The same suite runs on every backend. Choose it with `pytest --backend NAME` or the environment
variable ANYNET_TEST_BACKEND (the nox sessions set it); the default is numpy. Tests that compute
take the `backend` fixture; tests of host-only code (files, data, command-line parsing) ignore it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def pytest_addoption(parser):
    parser.addoption(
        "--backend", default=os.environ.get("ANYNET_TEST_BACKEND", "numpy"),
        help="array backend under test, a spec such as numpy, torch, array-api-strict:device1 "
        "(default: $ANYNET_TEST_BACKEND or numpy)",
    )
    parser.addoption(
        "--backend-tests-only", action="store_true",
        default=_env_flag("ANYNET_TEST_BACKEND_ONLY"),
        help="run only the tests that use the backend under test (the `backend` or "
        "`backend_name` fixture); host-only tests run once, in the numpy session "
        "(default: $ANYNET_TEST_BACKEND_ONLY)",
    )
    parser.addoption(
        "--network", action="store_true", default=_env_flag("ANYNET_TEST_NETWORK"),
        help="also run the tests marked 'network', which reach the npm registry "
        "(default: $ANYNET_TEST_NETWORK)",
    )


BACKEND_FIXTURES = {"backend", "backend_name"}


def _uses_backend(item) -> bool:
    """A test that computes on the backend under test, or needs a library (torch, jax) that only
    that backend's session installs."""
    return bool(BACKEND_FIXTURES & set(item.fixturenames)) or "backend_library" in item.keywords


def _has_fused_step(spec: str) -> bool:
    """Whether the backend `spec` trains with the fused step; True where it cannot be opened
    here (its tests then skip through the `backend` fixture, saying why)."""
    from anynet.backend import get_backend

    try:
        return get_backend(spec).fused_ops() is not None
    except Exception:
        return True


def _deselect(config, items, drop) -> None:
    dropped = [item for item in items if drop(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not drop(item)]


def pytest_collection_modifyitems(config, items):
    """Host-only tests are deselected in a backend-only session (they ran in the numpy one), and
    the fused step's extra grid cases on a backend without one; tests that reach the network
    skip unless asked for."""
    if config.getoption("--backend-tests-only"):
        _deselect(config, items, lambda item: not _uses_backend(item))
    if any("fused_grid" in item.keywords for item in items) and not _has_fused_step(
            config.getoption("--backend")):
        _deselect(config, items, lambda item: "fused_grid" in item.keywords)
    if not config.getoption("--network"):
        offline = pytest.mark.skip(
            reason="reaches the npm registry: opt in with --network or ANYNET_TEST_NETWORK=1")
        for item in items:
            if "network" in item.keywords:
                item.add_marker(offline)


def pytest_report_header(config):
    return f"anynet backend under test: {config.getoption('--backend')}"


@pytest.fixture(scope="session")
def backend_name(request) -> str:
    return request.config.getoption("--backend")


@pytest.fixture(scope="session")
def backend(backend_name):
    """The `anynet.backend.Backend` under test. The cupy session skips where no GPU answers."""
    from anynet.backend import get_backend, parse_spec, probe

    name, _ = parse_spec(backend_name)
    if name == "cupy":
        reason = probe("cupy")
        if reason:
            pytest.skip(f"cupy backend not testable here: {reason}")
    return get_backend(backend_name)


@pytest.fixture(scope="session")
def tol(backend):
    """A float64 tolerance as the backend can meet it: `tol(t)` is t where the library computes
    float64 to float64 accuracy, and at least float32's 1e-5 where its exp and log are only
    float32-accurate (MLX's; `Backend.capabilities["float64 accurate"]` measures it)."""
    accurate = backend.capabilities["float64 accurate"]
    return lambda t: t if accurate else max(t, 1e-5)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """A folder with genuine MNIST, found the way the tool finds it: $ANYNET_DATA_DIR, else the
    cache (`anynet data` fills it; checked against the pinned SHA-256 once per session), else
    ../shared/data/mnist beside the checkout. The files may be raw or gzip'd, under any name
    `anynet.data.catalog.find_file` knows. Skips, saying how to get MNIST, when there is none."""
    import hashlib

    from anynet.data.catalog import MNIST_FILES, default_cache_dir, find_file

    def has_mnist(folder: Path) -> bool:
        return folder.is_dir() and all(find_file(folder, spec.stem) for spec in MNIST_FILES)

    def verified(folder: Path) -> bool:
        """All four raw files with the pinned size and SHA-256 (55 MB: well under a second)."""
        for spec in MNIST_FILES:
            path = folder / spec.stem
            if not path.is_file() or path.stat().st_size != spec.raw_size:
                return False
            with open(path, "rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() != spec.raw_sha256:
                    return False
        return True

    from_env = os.environ.get("ANYNET_DATA_DIR")
    if from_env:
        if has_mnist(Path(from_env)):
            return Path(from_env)
        pytest.skip(f"genuine MNIST not found: ANYNET_DATA_DIR={from_env} lacks the four files")
    if verified(default_cache_dir()):
        return default_cache_dir()
    if has_mnist(SHARED_MNIST):
        return SHARED_MNIST
    pytest.skip(
        "genuine MNIST not found (not in ANYNET_DATA_DIR, the verified cache, or "
        "../shared/data/mnist): run 'anynet data' to download it into the cache"
    )
