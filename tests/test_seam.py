"""The backend seam: specs with devices, device-true transfers, and no library named elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from anynet.backend import NAMES, get_backend, parse_spec, to_numpy
from anynet.cli import main
from anynet.errors import BackendError
from anynet.network import TwoLayerNet

REPO = Path(__file__).resolve().parents[1]
LIBRARIES = {"torch", "jax", "jaxlib", "cupy", "array_api_strict"}
BACKEND_NAMES = {"numpy", "cupy", "torch", "jax", "array-api-strict"}
# The benchmark's peers are other people's code, one library each by nature: they stay outside.
PEERS = {"impl_torch_module.py", "impl_torch_noautograd.py", "impl_numpy_naive.py",
         "impl_jax_jit.py", "impl_nielsen.py", "impl_sklearn.py"}


def _outside_the_seam() -> list[Path]:
    files = [p for p in (REPO / "anynet").rglob("*.py")
             if (REPO / "anynet" / "backend") not in p.parents]
    files += [p for p in (REPO / "bench").glob("*.py") if p.name not in PEERS]
    return [*files, REPO / "noxfile.py"]


def _violations(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Compare):
            constants = [c for c in [node.left, *node.comparators]
                         if isinstance(c, ast.Constant) and c.value in BACKEND_NAMES]
            containers = [e for c in [node.left, *node.comparators]
                          if isinstance(c, (ast.Tuple, ast.List, ast.Set)) for e in c.elts
                          if isinstance(e, ast.Constant) and e.value in BACKEND_NAMES]
            found += [f"{path.name}:{node.lineno} compares with backend name {c.value!r}"
                      for c in constants + containers]
            continue
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] in LIBRARIES or (parts[0] == "array_api_compat" and len(parts) > 1
                                         and parts[1] in LIBRARIES | {"numpy"}):
                found.append(f"{path.name}:{node.lineno} imports {name}")
    return found


def test_no_module_outside_the_seam_names_a_library():
    files = _outside_the_seam()
    assert len(files) > 20  # the scan really covers the package
    problems = [v for path in files for v in _violations(path)]
    assert problems == []


def test_the_scan_would_catch_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nfrom jax import numpy\nif name == 'cupy':\n    pass\n"
                   "if b in ('numpy', 'x'):\n    pass\nimport array_api_compat.torch\n")
    assert len(_violations(bad)) == 5


@pytest.mark.parametrize("spec, expected", [
    ("numpy", ("numpy", None)), ("numpy:cpu", ("numpy", "cpu")), ("cupy:1", ("cupy", "1")),
    ("torch:cuda:1", ("torch", "cuda:1")), ("torch:mps", ("torch", "mps")),
    ("jax:gpu:0", ("jax", "gpu:0")), ("array-api-strict:device1", ("array-api-strict", "device1")),
    ("auto", ("auto", None)),
])
def test_specs_are_parsed_without_importing_anything(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec, words", [
    ("tensorflow", "unknown backend"), ("cupy:gpu", "not a GPU number"),
    ("torch:tpu", "unknown device"), ("jax:quantum", "unknown device"),
    ("numpy:cuda", "CPU only"), ("array-api-strict:device9", "unknown device"),
    ("auto:1", "takes no device"), ("torch:", "empty device"),
])
def test_bad_specs_name_the_problem(spec, words):
    with pytest.raises(BackendError, match=words):
        parse_spec(spec)


@pytest.mark.parametrize("spec", ["tensorflow", "torch:tpu", "cupy:x", "numpy:gpu"])
def test_bad_spec_on_the_command_line_is_one_line_exit_2(capsys, spec):
    assert main(["gradcheck", "--entries", "2", "--backend", spec]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--backend" in err[0], err


def test_every_name_is_known():
    assert set(NAMES) == BACKEND_NAMES | {"auto"}


def test_transfers_are_device_true(backend):
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    on_device = backend.asarray(host)
    assert backend.holds(on_device)  # its namespace, on its device
    np.testing.assert_array_equal(backend.to_numpy(on_device), host)
    np.testing.assert_array_equal(to_numpy(on_device), host)  # the free function finds it
    host[0, 0] = 99  # the backend's copy is its own (NumPy may share: it is the host)
    if backend.name != "numpy":
        assert backend.to_numpy(on_device)[0, 0] == 0


def test_a_spec_opens_the_same_backend_again(backend):
    again = get_backend(backend.spec)
    assert (again.name, again.device_name) == (backend.name, backend.device_name)


def test_from_params_keeps_arrays_on_their_device(backend):
    net = TwoLayerNet(n_hidden=4, backend=backend, seed=3)
    same = TwoLayerNet.from_params(net.params, backend=backend)
    assert all(same.params[k] is net.params[k] for k in net.params)  # no round trip
    moved = TwoLayerNet.from_params(net.host_params(), backend=backend)
    for k, v in moved.params.items():
        np.testing.assert_array_equal(backend.to_numpy(v), net.host_params()[k])


def test_the_seam_runs_on_the_strict_second_device():
    pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")
    b = get_backend("array-api-strict:device1")
    assert b.describe() == "array-api-strict (device device1)"
    net = TwoLayerNet(n_hidden=3, backend=b)
    assert net.forward(np.zeros((2, 784), np.uint8)).device == b.device
    with pytest.raises(Exception, match="device"):  # what the seam exists to avoid
        np.asarray(net.params["W1"])


# The written contract (anynet/backend/contract.py): mypy proves it in nox's lint session; this
# checks at run time that every member is there, so it holds where mypy is not installed.
NAMED_MODULES = ["_numpy", "_cupy", "_torch", "_jax", "_strict"]


@pytest.mark.parametrize("module", [*NAMED_MODULES, "_generic"])
def test_every_backend_module_keeps_the_contract(module):
    import importlib

    from anynet.backend import contract

    lib = importlib.import_module(f"anynet.backend.{module}")  # imports no array library
    protocol = contract.GenericLibrary if module == "_generic" else contract.NamedLibrary
    wanted = contract.members(protocol)
    assert len(wanted) > 12
    assert sorted(wanted - set(dir(lib))) == []
    for name in wanted:
        value = getattr(lib, name)
        assert callable(value) or name.isupper(), f"{module}.{name} is not a function"


def test_every_fused_ops_class_keeps_the_contract():
    from anynet.backend import _numpy, _torch, contract  # the classes import no library

    wanted = contract.members(contract.FusedOps)
    assert len(wanted) > 25
    for cls in (_numpy.UfuncOps, _torch.TorchOps):
        assert sorted(n for n in wanted if not callable(getattr(cls, n, None))) == [], cls


def test_the_backend_fused_ops_keep_the_contract(backend):
    from anynet.backend import contract

    ops = backend.fused_ops()
    if ops is None:
        return
    missing = sorted(n for n in contract.members(contract.FusedOps)
                     if not callable(getattr(ops, n, None)))
    assert missing == []  # CuPy's class is made inside fused_ops: checked here, on its session


def test_the_contract_check_would_catch_a_missing_member():
    from anynet.backend import contract

    class Partial:
        def empty(self, shape, dtype):
            return None

    assert "mm" in {n for n in contract.members(contract.FusedOps)
                    if not callable(getattr(Partial(), n, None))}


def test_get_namespace_is_the_deprecated_name_of_get_backend():
    import anynet
    from anynet import backend

    assert anynet.get_backend is backend.get_backend
    assert "deprecated" in (backend.get_namespace.__doc__ or "").lower()
    old, new = anynet.get_namespace("numpy"), anynet.get_backend("numpy")
    assert (old.name, old.device_name, old.xp) == (new.name, new.device_name, new.xp)
