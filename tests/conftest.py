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


def pytest_addoption(parser):
    parser.addoption(
        "--backend", default=os.environ.get("ANYNET_TEST_BACKEND", "numpy"),
        help="array backend under test, a spec such as numpy, torch, array-api-strict:device1 "
        "(default: $ANYNET_TEST_BACKEND or numpy)",
    )


def pytest_report_header(config):
    return f"anynet backend under test: {config.getoption('--backend')}"


@pytest.fixture(scope="session")
def backend_name(request) -> str:
    return request.config.getoption("--backend")


@pytest.fixture(scope="session")
def backend(backend_name):
    """The `anynet.backend.Backend` under test. The cupy session skips where no GPU answers."""
    from anynet.backend import get_namespace, parse_spec, probe

    name, _ = parse_spec(backend_name)
    if name == "cupy":
        reason = probe("cupy")
        if reason:
            pytest.skip(f"cupy backend not testable here: {reason}")
    return get_namespace(backend_name)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """A folder with genuine MNIST: $ANYNET_DATA_DIR, else ../shared/data/mnist beside the repo."""
    for candidate in (os.environ.get("ANYNET_DATA_DIR"), SHARED_MNIST):
        if candidate and any(Path(candidate).glob("train-images-idx3-ubyte*")):
            return Path(candidate)
    pytest.skip("genuine MNIST not found: set ANYNET_DATA_DIR to a folder holding the four files")
