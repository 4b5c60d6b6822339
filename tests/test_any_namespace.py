"""Any Array API library as a backend (`--backend MODULE[:DEVICE]`), and missing libraries.

The tests that take `backend` run on the library under test (the nox sessions dask, mlx, dpnp
and ndonnx name theirs: `dask.array`, `mlx.core`, `dpnp`, `ndonnx`); those marked `portable`
are the subset that a slow library's session runs (`pytest -m portable`). The rest need no
library beyond the test extra: they build small namespaces of their own in a temporary folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_helpers import make_mnist_dir, synthetic_mnist

from anynet.backend import _generic, get_backend, is_named, parse_spec, require, to_numpy
from anynet.cli import main
from anynet.config import TrainConfig
from anynet.errors import BackendError
from anynet.network import TwoLayerNet
from anynet.optim import SGD
from anynet.training import Trainer

REPO = Path(__file__).resolve().parents[1]

# A namespace without take and arange, over NumPy: anynet must refuse it at start, naming both.
LACKING = """
from numpy import *  # noqa: F403
import numpy as _np
del take, arange  # noqa: F821
__array_namespace_info__ = _np.__array_namespace_info__
"""


@pytest.fixture
def lacking(tmp_path, monkeypatch):
    (tmp_path / "lacking_lib.py").write_text(LACKING)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "lacking_lib"


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --- specs, devices and names: no library needed -------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("numpy.linalg", ("numpy.linalg", None)), ("numpy.linalg:cpu", ("numpy.linalg", "cpu")),
    ("numpy.linalg:opencl:cpu:0", ("numpy.linalg", "opencl:cpu:0")),
])
def test_a_module_spec_is_parsed_without_importing_it(spec, expected):
    before = set(sys.modules)
    assert parse_spec(spec) == expected
    assert not is_named(expected[0])
    assert "numpy.linalg" in before or "numpy.linalg" not in sys.modules


@pytest.mark.parametrize("spec, words", [
    ("no_such_library_here", "no module 'no_such_library_here' is installed"),
    ("1abc", "unknown backend"), ("numpy.linalg:", "empty device"), ("a b", "unknown backend"),
])
def test_bad_module_specs_name_the_problem(spec, words):
    with pytest.raises(BackendError, match=words):
        parse_spec(spec)


def test_a_known_library_that_is_not_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(_generic._INSTALL, "no_such_library_here", "pip install it-please")
    with pytest.raises(BackendError, match="install it with: pip install it-please"):
        parse_spec("no_such_library_here.core")


def test_an_unknown_module_on_the_command_line_is_one_line_exit_2(capsys):
    assert main(["examples", "--backend", "no_such_library_here"]) == 2
    assert "no module 'no_such_library_here' is installed" in one_line(capsys)


class _Sycl:  # dpnp's devices: two objects for one device never compare equal
    filter_string = "opencl:cpu:0"

    def __eq__(self, other):
        return False

    __hash__ = object.__hash__


class _Mlx:
    def __str__(self):
        return "Device(cpu, 0)"


@pytest.mark.parametrize("device, name", [
    ("cpu", "cpu"), (_Sycl(), "opencl:cpu:0"), (_Mlx(), "cpu:0"), (object(), "default"),
    (None, "default"),
])
def test_devices_are_named_as_users_name_them(device, name):
    assert _generic.device_name(device) == name


def test_devices_that_never_compare_equal_are_the_same_by_name():
    assert _generic.same_device(_Sycl(), _Sycl())
    assert not _generic.same_device(_Sycl(), "cpu")


class _OnlyToDevice:  # no DLPack of its own: to_device("cpu") is the next way to the host
    def to_device(self, device):
        assert device == "cpu"
        return np.arange(3.0)


class _NeitherWay:  # neither: NumPy's own conversion is the last
    def __array__(self, dtype=None, copy=None):
        return np.arange(2.0)


def test_the_ways_to_the_host_are_tried_in_order():
    host = np.arange(4.0)
    copied = _generic.to_host(host)
    assert copied is not host and np.array_equal(copied, host)  # DLPack, a copy
    np.testing.assert_array_equal(_generic.to_host(_OnlyToDevice()), [0, 1, 2])
    np.testing.assert_array_equal(_generic.to_host(_NeitherWay()), [0, 1])


def test_eager_arrays_are_not_materialised():
    arrays = [np.zeros(2), np.ones(3)]
    assert all(a is b for a, b in zip(_generic.materialise(arrays), arrays, strict=True))


def test_a_library_that_cannot_train_is_refused_in_one_line(lacking, capsys):
    with pytest.raises(BackendError, match=r"lacks .*: take, arange$"):
        get_backend(lacking)
    assert main(["train", "--backend", lacking, "--epochs", "1"]) == 2
    line = one_line(capsys)
    assert f"backend '{lacking}' cannot train anynet" in line and "take, arange" in line


@pytest.mark.backend_library
def test_pydata_sparse_is_refused_naming_what_it_lacks(capsys):
    pytest.importorskip("sparse", reason="pydata sparse is not installed")
    assert main(["examples", "--backend", "sparse"]) == 2
    line = one_line(capsys)
    assert "take" in line and "arange" in line and "item assignment" in line


def test_modules_and_arrays_of_the_named_libraries_open_the_named_backend():
    import array_api_compat.numpy as compat_numpy

    assert get_backend(np).name == "numpy" and get_backend(compat_numpy).name == "numpy"
    assert get_backend(np.zeros(3)).name == "numpy"
    strict = pytest.importorskip("array_api_strict")
    b = get_backend(strict.asarray([1.0], device=strict.Device("device1")))
    assert (b.name, b.device_name) == ("array-api-strict", "device1")
    with pytest.raises(BackendError, match="not a backend"):
        get_backend(3.5)


# --- missing libraries (#22 item 9): one line, exit 2, before anything imports them -------------

@pytest.fixture
def model_file(tmp_path):
    from anynet.modelio import save_model

    path = tmp_path / "m.npz"
    save_model(path, TwoLayerNet(n_hidden=4, seed=0))
    return path


@pytest.mark.parametrize("library", ["torch", "jax"])
@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "serve", "gradcheck",
                                     "examples", "sweep"])
def test_a_backend_that_is_not_installed_is_one_line(monkeypatch, capsys, tmp_path, model_file,
                                                     library, command):
    monkeypatch.setitem(sys.modules, library, None)  # `import torch` now raises ImportError
    np.save(tmp_path / "digit.npy", np.zeros((28, 28), np.uint8))
    args = {"train": ["--epochs", "1", "--out", str(tmp_path / "new.npz")],
            "evaluate": [str(model_file)],
            "predict": [str(model_file), str(tmp_path / "digit.npy")],
            "serve": [str(model_file), "--port", "0"], "gradcheck": [], "examples": [],
            "sweep": ["--out", str(tmp_path / "sweep"), "--lr", "0.1,0.2"]}[command]
    assert main([command, *args, "--backend", library]) == 2
    line = one_line(capsys)
    assert f"needs the package '{library}'" in line and "install it with: pip install" in line
    assert not (tmp_path / "sweep").exists()


def test_resuming_a_torch_cuda_checkpoint_without_torch_is_one_line(monkeypatch, capsys,
                                                                    tmp_path):
    from anynet.modelio import load_checkpoint, save_checkpoint

    images, labels = synthetic_mnist(64, 0)
    ckpt = tmp_path / "m.checkpoint.npz"
    config = TrainConfig(hidden=4, epochs=2, batch_size=32, val_size=0)
    Trainer(config, images.reshape(64, -1), labels, checkpoint_path=ckpt).fit()
    params, velocity, record = load_checkpoint(ckpt)
    record["config"]["backend"] = "torch:cuda"
    save_checkpoint(ckpt, params, velocity, record)
    monkeypatch.setitem(sys.modules, "torch", None)
    assert main(["train", "--resume", str(ckpt), "--out", str(tmp_path / "m.npz")]) == 2
    assert "backend 'torch' needs the package 'torch'" in one_line(capsys)


def test_a_missing_library_in_a_fresh_process_is_one_line(tmp_path):
    # as a user meets it: nothing imported before; torch made unimportable for this process
    code = ("import sys; sys.modules['torch'] = None; from anynet.cli import main; "
            "raise SystemExit(main(['gradcheck', '--backend', 'torch:cuda']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                          timeout=120)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "pip install torch" in err[0], err


def test_require_passes_installed_libraries():
    require("numpy")
    require("numpy.linalg")
    require("auto")


# --- the library under test -------------------------------------------------------------------

@pytest.mark.portable
def test_the_library_opens_from_its_module_and_from_its_arrays(backend):
    array = backend.asarray(np.arange(6.0).reshape(2, 3))
    from_array = get_backend(array)
    assert (from_array.name, from_array.device_name) == (backend.name, backend.device_name)
    if not is_named(backend.name):
        import importlib

        module = importlib.import_module(backend.name)
        assert get_backend(module).spec == backend.spec
        net = TwoLayerNet(n_hidden=3, backend=module)
        assert net.backend.holds(net.params["W1"])
    np.testing.assert_array_equal(to_numpy(array), np.arange(6.0).reshape(2, 3))


@pytest.mark.portable
def test_capabilities_are_measured(backend):
    caps = backend.capabilities
    assert {"take", "in-place", "lazy", "float64", "float64 accurate"} <= set(caps)
    assert caps["take"] and caps["arange"]  # what training needs
    assert all(isinstance(v, bool) for v in caps.values())


@pytest.mark.portable
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_short_training_matches_numpy_with_the_same_seed(backend, tol, dtype):
    images, labels = synthetic_mnist(320, 0)
    images = images.reshape(320, -1)
    config = TrainConfig(hidden=16, epochs=1, batch_size=32, lr=0.1, momentum=0.9,
                         val_size=0, dtype=dtype)
    ours = Trainer(config, images, labels, backend=backend).fit()
    numpy = Trainer(config, images, labels, backend="numpy", fast=False).fit()
    bound = tol(1e-12) if dtype == "float64" else 1e-5
    for k, v in numpy.net.host_params().items():
        np.testing.assert_allclose(ours.net.host_params()[k], v, rtol=0, atol=bound, err_msg=k)
    assert ours.state.history[0]["train_loss"] == pytest.approx(
        numpy.state.history[0]["train_loss"], rel=bound)


@pytest.mark.backend_library
def test_a_lazy_library_s_graph_does_not_grow_while_training():
    da = pytest.importorskip("dask.array", reason="dask is not installed")
    net = TwoLayerNet(n_hidden=8, backend=da, seed=0)
    rng = np.random.default_rng(0)
    X, t = rng.integers(0, 256, (32, 784), dtype=np.uint8), rng.integers(0, 10, 32)
    opt = SGD(lr=0.1, momentum=0.9)
    state = opt.init(net.params)
    for _ in range(20):  # a hand-written loop: SGD.step materialises what it returns
        _, grads = net.loss_and_grads_array(X, t)
        net.params, state = opt.step(net.params, grads, state, lr=0.1)
    for v in [*net.params.values(), *state.values()]:
        assert len(v.__dask_graph__()) == v.npartitions  # values, not twenty steps of history


@pytest.mark.portable
def test_the_command_line_on_the_library(backend, tmp_path, capsys):
    spec = backend.spec
    assert main(["examples", "--backend", spec]) == 0
    assert "all examples agree" in capsys.readouterr().out
    assert main(["gradcheck", "--backend", spec, "--hidden", "3", "--entries", "3"]) == 0
    assert "passed" in capsys.readouterr().out
    data = make_mnist_dir(tmp_path / "mnist", n_train=420, n_test=100, seed=0)
    model = tmp_path / "m.npz"
    assert main(["train", "--backend", spec, "--epochs", "1", "--hidden", "8", "--val-size",
                 "100", "--batch-size", "32", "--data-dir", str(data), "--no-verify", "--out",
                 str(model), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(model), "--backend", spec, "--data-dir", str(data),
                 "--no-verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["examples"] == 100 and report["backend"] == backend.name
    assert np.array(report["confusion"]).sum() == 100

