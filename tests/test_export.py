"""The model outside anynet: `anynet export` to ONNX (traced from anynet's own forward by
ndonnx, run by onnxruntime) and to safetensors (read back by anynet with every check of an .npz
model file, and by the safetensors package); every function of anynet.functional traces with a
symbolic batch size."""

from __future__ import annotations

import inspect
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from anynet import functional as F
from anynet import network
from anynet.cli import main
from anynet.errors import ModelFileError
from anynet.modelio import load_model, save_model, save_model_safetensors
from anynet.network import PARAM_NAMES, TwoLayerNet

RECORD = {"metrics": {"test_accuracy": 0.9123}, "seed": 4}


@pytest.fixture
def net():
    net = TwoLayerNet(n_hidden=16, seed=4)
    # biases away from zero, so that a lost bias shows
    net.params["b1"] = net.params["b1"] + np.linspace(-0.1, 0.1, 16, dtype=np.float32)
    net.params["b2"] = net.params["b2"] + np.linspace(-0.5, 0.5, 10, dtype=np.float32)
    return net


def _pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 784), dtype=np.uint8)


# --- safetensors -------------------------------------------------------------------------------


def test_safetensors_round_trip(tmp_path, net):
    path = tmp_path / "m.safetensors"
    save_model_safetensors(path, net, RECORD)
    back, record = load_model(path)
    for k in PARAM_NAMES:
        np.testing.assert_array_equal(back.params[k], net.params[k])
    assert record["format"] == "anynet-model" and record["metrics"] == RECORD["metrics"]
    assert record["architecture"]["hidden"] == 16 and back.dtype == "float32"


def test_safetensors_float64_round_trip(tmp_path):
    net = TwoLayerNet(n_in=5, n_hidden=3, n_out=2, dtype="float64", seed=1)
    save_model_safetensors(tmp_path / "m.safetensors", net)
    back, _ = load_model(tmp_path / "m.safetensors")
    assert back.dtype == "float64"
    np.testing.assert_array_equal(back.params["W1"], net.params["W1"])


def test_the_safetensors_package_agrees_both_ways(tmp_path, net):
    stn = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open

    ours = tmp_path / "ours.safetensors"
    save_model_safetensors(ours, net, RECORD)
    loaded = stn.load_file(str(ours))
    assert sorted(loaded) == sorted(PARAM_NAMES)
    for k in PARAM_NAMES:
        np.testing.assert_array_equal(loaded[k], net.params[k])
    with safe_open(str(ours), "np") as f:
        record = json.loads(f.metadata()["anynet"])
    assert record["format"] == "anynet-model"
    theirs = tmp_path / "theirs.safetensors"
    stn.save_file(net.host_params(), str(theirs), metadata={"anynet": json.dumps(record)})
    back, _ = load_model(theirs)
    np.testing.assert_array_equal(back.params["W2"], net.params["W2"])


def test_export_command_writes_safetensors_that_predict_reads(tmp_path, net, capsys):
    save_model(tmp_path / "m.npz", net, RECORD)
    out = tmp_path / "m.safetensors"
    assert main(["export", str(tmp_path / "m.npz"), "--format", "safetensors", "--out",
                 str(out)]) == 0
    assert "784-16-10" in capsys.readouterr().out
    _, record = load_model(out)
    assert record["seed"] == 4 and record["metrics"] == RECORD["metrics"]
    np.save(tmp_path / "digit.npy", _pixels(1, 3).reshape(28, 28))
    answers = []
    for model in (tmp_path / "m.npz", out):
        assert main(["predict", str(model), str(tmp_path / "digit.npy"), "--json"]) == 0
        answers.append(json.loads(capsys.readouterr().out))
    assert answers[0] == answers[1]


def _write(path, header: dict | list | bytes, data: bytes = b"", length: int | None = None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


def _good_header(net, **change) -> tuple[dict, bytes]:
    header, data, offset = {}, b"", 0
    for k in PARAM_NAMES:
        b = np.asarray(net.params[k]).tobytes()
        header[k] = {"dtype": "F32", "shape": list(net.params[k].shape),
                     "data_offsets": [offset, offset + len(b)]}
        data, offset = data + b, offset + len(b)
    record = {"format": "anynet-model", "format_version": 1,
              "architecture": {"inputs": 784, "hidden": 16, "classes": 10}}
    header["__metadata__"] = {"anynet": json.dumps(record)}
    for key, value in change.items():
        if value is None:
            del header[key]
        else:
            header[key] = value
    return header, data


DAMAGED = {
    "empty": (lambda p, net: p.write_bytes(b""), "too few"),
    "short": (lambda p, net: p.write_bytes(b"\x01\x02\x03"), "too few"),
    "huge header length": (lambda p, net: _write(p, b"{}", length=2**63), "more than"),
    "header past the end": (lambda p, net: _write(p, b"{}", length=4000), "only 2 follow"),
    "not JSON": (lambda p, net: _write(p, b"{not json"), "not valid JSON"),
    "not UTF-8": (lambda p, net: _write(p, b"\xff\xfe"), "not valid JSON"),
    "a list": (lambda p, net: _write(p, [1, 2]), "not an object"),
    "deep": (lambda p, net: _write(p, b'{"a":' * 300 + b"1" + b"}" * 300), "nests deeper"),
    # more than a model needs, refused before json.loads builds it (a 25 MB header of {} x 8
    # million took 11.7 s and 1.28 GB): brackets, strings, and anything else outside strings
    "deeper": (lambda p, net: _write(p, b"[" * 100_000 + b"]" * 100_000), "strings and brackets"),
    "many objects": (lambda p, net: _write(p, b"[" + b"{}," * 100_000 + b"{}]"),
                     "more than 1,000 strings and brackets"),
    "many keys": (lambda p, net: _write(p, b"{" + b'"k":"",' * 100_000 + b'"k":""}'),
                  "more than 1,000 strings and brackets"),
    "many numbers": (lambda p, net: _write(p, b'{"k":[' + b"1," * 100_000 + b"1]}"),
                     "characters outside strings"),
    "no record": (lambda p, net: _write(p, *_good_header(net, __metadata__=None)),
                  "no __metadata__"),
    "record not JSON": (lambda p, net: _write(p, *_good_header(
        net, __metadata__={"anynet": "{"})), "not valid JSON"),
    "other format": (lambda p, net: _write(p, *_good_header(
        net, __metadata__={"anynet": '{"format": "x"}'})), "format 'x'"),
    "newer version": (lambda p, net: _write(p, *_good_header(
        net, __metadata__={"anynet": '{"format": "anynet-model", "format_version": 99}'})),
        "newer"),
    "int dtype": (lambda p, net: _write(p, *_good_header(
        net, b2={"dtype": "I32", "shape": [10], "data_offsets": [0, 40]})), "not F32 or F64"),
    "bad shape": (lambda p, net: _write(p, *_good_header(
        net, b2={"dtype": "F32", "shape": [10, -1], "data_offsets": [0, 40]})), "shape"),
    "huge shape": (lambda p, net: _write(p, *_good_header(
        net, b2={"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 40]})),
        "elements"),
    "offsets past data": (lambda p, net: _write(p, *_good_header(
        net, b2={"dtype": "F32", "shape": [10], "data_offsets": [0, 10**9]})), "within"),
    "bool offsets": (lambda p, net: _write(p, *_good_header(
        net, b2={"dtype": "F32", "shape": [10], "data_offsets": [False, True]})), "within"),
    "size mismatch": (lambda p, net: _write(p, *_good_header(
        net, b2={"dtype": "F32", "shape": [10], "data_offsets": [0, 8]})), "bytes of data"),
    "missing W2": (lambda p, net: _write(p, *_good_header(net, W2=None)), "lacks"),
    "wrong shapes": (lambda p, net: _write(p, *_good_header(
        net, b2={"dtype": "F32", "shape": [7], "data_offsets": [0, 28]})), "one hidden layer"),
    "an npz": (lambda p, net: save_model(p, net), ".npz archive"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_safetensors_are_one_line_errors(tmp_path, net, case):
    write, expected = DAMAGED[case]
    path = tmp_path / "m.safetensors"
    write(path, net)
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and expected in message, message


def test_non_finite_parameters_are_refused(tmp_path, net):
    net.params["W2"] = net.params["W2"] * np.float32("nan")
    save_model_safetensors(tmp_path / "m.safetensors", net)
    with pytest.raises(ModelFileError, match="non-finite"):
        load_model(tmp_path / "m.safetensors")


def test_export_refuses_a_wrong_suffix(tmp_path, net, capsys):
    save_model(tmp_path / "m.npz", net)
    assert main(["export", str(tmp_path / "m.npz"), "--format", "safetensors", "--out",
                 str(tmp_path / "m.bin")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ".safetensors" in err


def test_onnx_export_without_the_extra_names_it(tmp_path, net):
    save_model(tmp_path / "m.npz", net)
    code = ("import sys; sys.modules['ndonnx'] = None\n"
            "from anynet.cli import main\n"
            f"sys.exit(main(['export', {str(tmp_path / 'm.npz')!r}, '--format', 'onnx', "
            f"'--out', {str(tmp_path / 'm.onnx')!r}]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "anynet[onnx]" in done.stderr
    assert not (tmp_path / "m.onnx").exists()


# --- ONNX ----------------------------------------------------------------------------------------


def _session(model):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_onnx_export_matches_anynet_on_synthetic_pixels(tmp_path, net, capsys):
    pytest.importorskip("ndonnx")
    onnx = pytest.importorskip("onnx")
    save_model(tmp_path / "m.npz", net, RECORD)
    out = tmp_path / "m.onnx"
    assert main(["export", str(tmp_path / "m.npz"), "--format", "onnx", "--out",
                 str(out)]) == 0
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    assert inp.name == "pixels"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 784  # any batch size
    assert [o.name for o in model.graph.output] == ["probabilities", "label"]
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert props["test_accuracy"] == 0.9123 and props["anynet_version"]
    assert props["architecture"]["hidden"] == 16 and props["input"]["dtype"] == "uint8"
    session = _session(model)
    for n in (1, 257):
        pixels = _pixels(n, seed=n)
        P, labels = session.run(None, {"pixels": pixels})
        assert P.shape == (n, 10) and labels.dtype == np.int64
        np.testing.assert_array_equal(labels, net.predict(pixels))
        np.testing.assert_allclose(P, net.predict_proba(pixels), atol=1e-5, rtol=0)


def test_onnx_float_input(net):
    from anynet.export import onnx_model

    pytest.importorskip("ndonnx")
    session = _session(onnx_model(net, input="float32"))
    X = _pixels(50).astype(np.float32) / 255
    P, labels = session.run(None, {"pixels": X})
    np.testing.assert_array_equal(labels, net.predict(X))
    np.testing.assert_allclose(P, net.predict_proba(X), atol=1e-5, rtol=0)


def test_onnx_float64_model(tmp_path):
    from anynet.export import onnx_model

    pytest.importorskip("ndonnx")
    net = TwoLayerNet(n_hidden=8, dtype="float64", seed=2)
    P, _ = _session(onnx_model(net)).run(None, {"pixels": _pixels(9)})
    assert P.dtype == np.float64
    np.testing.assert_allclose(P, net.predict_proba(_pixels(9)), atol=1e-12, rtol=0)


@pytest.mark.realdata
def test_onnx_agrees_with_anynet_on_the_mnist_test_set(mnist_dir, tmp_path):
    from anynet.config import TrainConfig
    from anynet.data import load_mnist
    from anynet.export import onnx_model
    from anynet.training import Trainer

    pytest.importorskip("ndonnx")
    mnist = load_mnist(mnist_dir, download=False)
    config = TrainConfig(epochs=1, hidden=30)
    net = Trainer(config, mnist.train_images, mnist.train_labels).fit().net
    session = _session(onnx_model(net, {"note": "one epoch"}))
    P, labels = session.run(None, {"pixels": mnist.test_images})
    assert P.shape == (10_000, 10)
    np.testing.assert_array_equal(labels, net.predict(mnist.test_images))
    np.testing.assert_allclose(P, net.predict_proba(mnist.test_images), atol=1e-5, rtol=0)
    assert np.mean(labels == mnist.test_labels) > 0.9


@pytest.mark.realdata
def test_evaluate_reads_a_safetensors_model_as_an_npz_one(mnist_dir, tmp_path, net, capsys):
    save_model(tmp_path / "m.npz", net, RECORD)
    assert main(["export", str(tmp_path / "m.npz"), "--format", "safetensors", "--out",
                 str(tmp_path / "m.safetensors")]) == 0
    capsys.readouterr()
    results = []
    for name in ("m.npz", "m.safetensors"):
        assert main(["evaluate", str(tmp_path / name), "--json", "--data-dir",
                     str(mnist_dir)]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["examples"] == 10_000
    for key in ("accuracy", "loss"):
        assert results[0][key] == results[1][key]


# --- every function of anynet.functional traces ------------------------------------------------


def _public_functions(module) -> set[str]:
    return {name for name, f in vars(module).items() if inspect.isfunction(f)
            and f.__module__ == module.__name__ and not name.startswith("_")}


def test_every_function_traces_with_a_symbolic_batch():
    """Each function of anynet.functional (and the network's loss and gradients) on ndonnx
    arrays of shape (N, ...), N unknown, becomes an ONNX graph that onnxruntime runs to
    NumPy's answers."""
    ndx = pytest.importorskip("ndonnx")
    N, D, K = 7, 5, 4
    rng = np.random.default_rng(0)
    host = {"X": rng.normal(size=(N, D)), "dY": rng.normal(size=(N, K)),
            "Z": rng.normal(size=(N, K)), "t": rng.integers(0, K, N)}
    W, b = rng.normal(size=(D, K)), rng.normal(size=K)
    sym = {"X": ndx.argument(shape=("N", D), dtype=ndx.float64),
           "dY": ndx.argument(shape=("N", K), dtype=ndx.float64),
           "Z": ndx.argument(shape=("N", K), dtype=ndx.float64),
           "t": ndx.argument(shape=("N",), dtype=ndx.int64)}

    def calls(a, W, b, params):
        X, dY, Z, t = a["X"], a["dY"], a["Z"], a["t"]
        P = F.softmax(Z)
        J, cache = network.loss_and_grads(params, X, t)
        return {
            "linear": F.linear(X, W, b),
            "linear_grad_params": F.linear_grad_params(dY, X)[0],
            "linear_grad_input": F.linear_grad_input(dY, W),
            "relu": F.relu(Z), "relu_grad": F.relu_grad(Z), "relu_backward": F.relu_backward(dY, Z),
            "softmax": P, "log_softmax": F.log_softmax(Z), "one_hot": F.one_hot(t, K),
            "cross_entropy": F.cross_entropy(P, t),
            "softmax_cross_entropy": F.softmax_cross_entropy(Z, t),
            "softmax_cross_entropy_forward": F.softmax_cross_entropy_forward(Z, t)[0],
            "softmax_cross_entropy_grad": F.softmax_cross_entropy_grad(P, t),
            "smoothed_targets": F.smoothed_targets(t, K, 0.1),
            "smoothed_softmax_cross_entropy_grad": F.softmax_cross_entropy_grad(P, t, 0.1),
            "dropout": F.dropout(Z, dY), "dropout_backward": F.dropout_backward(dY, Z),
            "accuracy": F.accuracy(Z, t),
            "network.loss_and_grads": J, "network.dW1": cache["W1"],
        }

    host_params = {"W1": rng.normal(size=(D, 3)), "b1": rng.normal(size=3),
                   "W2": rng.normal(size=(3, K)), "b2": rng.normal(size=K)}
    expected = calls(host, W, b, host_params)
    traced = calls(sym, ndx.asarray(W), ndx.asarray(b),
                   {k: ndx.asarray(v) for k, v in host_params.items()})
    assert _public_functions(F) <= set(traced), "a new function of anynet.functional: test it"
    model = ndx.build(sym, {k.replace(".", "_"): v for k, v in traced.items()})
    session = _session(model)
    outputs = session.run(None, host)
    for name, got in zip(traced, outputs, strict=True):
        np.testing.assert_allclose(got, np.asarray(expected[name], dtype=got.dtype),
                                   rtol=1e-12, atol=1e-12, err_msg=name)
