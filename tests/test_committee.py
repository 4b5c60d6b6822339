"""Committees (anynet.committee): the mean of the members' probabilities, the bounds on what a
command line may ask, and `evaluate`, `predict`, `serve` and `sweep --workers 0` with several
models, through the real command line.

The members are small networks trained here, in a fraction of a second each, on synthetic
MNIST-format data (tests/data_helpers.py); the committee computes on the backend under test.
One test trains three seeds on genuine MNIST where it is available.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_helpers import make_mnist_dir

from anynet.cli import main
from anynet.committee import (
    MAX_MEMBERS,
    Committee,
    evaluate_committee,
    load_committee,
)
from anynet.errors import UserError
from anynet.evaluation import evaluate
from anynet.modelio import save_model
from anynet.network import TwoLayerNet

ROOT = Path(__file__).resolve().parents[1]
HANG = 60  # seconds: a hang guard only


def random_net(backend, hidden: int, seed: int, dtype: str = "float32", n_in: int = 784,
               n_out: int = 10) -> TwoLayerNet:
    """A network with weights large enough that its probabilities are far from uniform."""
    rng = np.random.default_rng(seed)
    params = {"W1": rng.normal(0, 0.1, (n_in, hidden)), "b1": rng.normal(0, 0.1, hidden),
              "W2": rng.normal(0, 1.0, (hidden, n_out)), "b2": rng.normal(0, 0.1, n_out)}
    return TwoLayerNet.from_params({k: v.astype(dtype) for k, v in params.items()},
                                   backend=backend)


def host_probabilities(net: TwoLayerNet, pixels: np.ndarray) -> np.ndarray:
    """softmax(relu(x W1 + b1) W2 + b2) in float64 NumPy, from the net's parameters alone."""
    p = {k: v.astype(np.float64) for k, v in net.host_params().items()}
    Z = np.maximum(pixels / 255.0 @ p["W1"] + p["b1"], 0) @ p["W2"] + p["b2"]
    E = np.exp(Z - Z.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


def pixels(n: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 784)).astype(np.uint8)


def one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("anynet: error: "), lines[0]
    return lines[0]


# --- the mathematics, on the backend under test -------------------------------------------------


def test_the_probabilities_are_the_mean_of_the_members(backend):
    members = [random_net(backend, 3, 0), random_net(backend, 7, 1, "float64"),
               random_net(backend, 12, 2)]
    committee = Committee(members)
    X = pixels()
    expected = np.mean([host_probabilities(net, X) for net in members], axis=0)
    P = backend.to_numpy(committee.predict_proba(X))
    assert committee.dtype == "float64" and P.dtype == np.float64  # the widest member's
    np.testing.assert_allclose(P, expected, rtol=0, atol=2e-6)
    S = backend.to_numpy(committee.forward(X))  # log of the mean: its softmax is the mean
    np.testing.assert_allclose(np.exp(S), expected, rtol=0, atol=2e-6)
    top2 = np.sort(expected, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4  # leave out near-ties that rounding may decide
    assert clear.sum() > 50
    predicted = backend.to_numpy(committee.predict(X))
    np.testing.assert_array_equal(predicted[clear], expected.argmax(axis=1)[clear])
    assert committee.sizes == (784, 12, 10)


def test_a_committee_of_one_is_its_model_bit_for_bit(backend):
    net = random_net(backend, 6, 3)
    committee = Committee([net])
    X, t = pixels(200, 1), np.arange(200) % 10
    for mine, its in ((committee.forward(X), net.forward(X)),
                      (committee.predict_proba(X), net.predict_proba(X)),
                      (committee.predict(X), net.predict(X))):
        np.testing.assert_array_equal(backend.to_numpy(mine), backend.to_numpy(its))
    alone = evaluate(net, X, t, confusion=True, n_wrong=5)
    found = evaluate_committee(committee, X, t, confusion=True, n_wrong=5)
    assert found.members == [found.committee]
    assert (found.committee.loss, found.committee.accuracy, found.committee.wrong) == \
        (alone.loss, alone.accuracy, alone.wrong)
    np.testing.assert_array_equal(found.committee.confusion, alone.confusion)


def test_the_members_must_agree_on_inputs_and_classes(backend):
    base = random_net(backend, 4, 0)
    Committee([base, random_net(backend, 9, 1, "float64")])  # H and dtype may differ
    with pytest.raises(UserError, match=r"^a\.npz and b\.npz cannot form a committee: a\.npz "
                       r"takes 784 inputs, b\.npz 100"):
        Committee([base, random_net(backend, 4, 1, n_in=100)], ["a.npz", "b.npz"])
    with pytest.raises(UserError, match=r"a\.npz has 10 classes, c\.npz 3"):
        Committee([base, random_net(backend, 4, 1, n_out=3)], ["a.npz", "c.npz"])
    with pytest.raises(UserError, match="at least one"):
        Committee([])
    with pytest.raises(UserError, match=f"at most {MAX_MEMBERS} members"):
        Committee([base] * (MAX_MEMBERS + 1))


def test_members_on_other_backends_are_refused(backend):
    other = "array-api-strict" if backend.name != "array-api-strict" else "numpy"
    pytest.importorskip("array_api_strict")
    with pytest.raises(UserError, match="computes on"):
        Committee([random_net(backend, 4, 0), random_net(other, 4, 1)], ["a.npz", "b.npz"])


# --- members trained here, on synthetic data ----------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_mnist_dir(tmp_path_factory.mktemp("synth"), n_train=300, n_test=1000, seed=0)


@pytest.fixture(scope="module")
def members(synth, tmp_path_factory) -> list[Path]:
    """Three seeds of one small recipe (784-16-10, 3 epochs): each alone between about 30% and
    80% on the synthetic test set, so a committee has something to gain."""
    folder = tmp_path_factory.mktemp("members")
    paths = []
    for seed in range(3):
        path = folder / f"m{seed}.npz"
        assert main(["train", "--data-dir", str(synth), "--no-verify", "--hidden", "16",
                     "--epochs", "3", "--lr", "0.3", "--val-size", "0", "--seed", str(seed),
                     "--threads", "1", "--quiet", "--out", str(path)]) == 0
        paths.append(path)
    return paths


def test_a_committee_of_seeds_beats_its_best_member(members, synth, backend, capsys):
    from anynet.data import load_mnist

    capsys.readouterr()
    test = load_mnist(synth, verify=False)
    found = evaluate_committee(load_committee(members, backend=backend), test.test_images,
                               test.test_labels)
    best = max(alone.accuracy for alone in found.members)
    assert best < 0.95  # the members err: the comparison means something
    assert found.committee.accuracy >= best


def test_evaluate_several_models(members, synth, backend, capsys):
    capsys.readouterr()
    common = ["--data-dir", str(synth), "--no-verify", "--backend", backend.spec]
    alone = []
    for path in members:
        assert main(["evaluate", str(path), "--json", *common]) == 0
        document = json.loads(capsys.readouterr().out)
        assert "members" not in document and document["model"] == str(path)
        alone.append(document)
    assert main(["evaluate", *map(str, members), "--json", *common]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["models"] == [str(p) for p in members] and "model" not in document
    assert [m["accuracy"] for m in document["members"]] == [a["accuracy"] for a in alone]
    assert [m["seed"] for m in document["members"]] == [0, 1, 2]
    assert np.array(document["confusion"]).sum() == 1000

    from anynet.data import load_mnist

    test = load_mnist(synth, verify=False)
    found = evaluate_committee(load_committee(members, backend=backend), test.test_images,
                               test.test_labels)
    assert document["accuracy"] == found.committee.accuracy

    assert main(["evaluate", *map(str, members), "--wrong", "2", *common]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == f"committee of 3 models on {backend.name}, voting with the mean of " \
                      "their class probabilities:"
    for line, path, member in zip(text[1:4], members, document["members"], strict=True):
        assert line.startswith(f"  {path}: 784-16-10, float32, seed {member['seed']}: test "
                               f"accuracy {100 * member['accuracy']:.2f}%"), line
    assert text[4].startswith(f"test accuracy {100 * found.committee.accuracy:.2f}% (")
    best = 100 * (1 - max(m["accuracy"] for m in document["members"]))
    assert re.fullmatch(rf"test error [0-9.]+%: its best member's {best:.2f}%, the members' "
                        r"mean [0-9.]+%", text[5]), text[5]
    assert "confusion matrix (rows: true digit, columns: predicted):" in text


def test_models_that_cannot_vote_together_are_one_line(members, synth, tmp_path, capsys):
    other = tmp_path / "other.npz"
    save_model(other, random_net("numpy", 5, 0, n_in=100))
    capsys.readouterr()
    for command in (["evaluate", str(members[0]), str(other), "--data-dir", str(synth),
                     "--no-verify"],
                    ["predict", str(members[0]), str(other), "digit.png"],
                    ["serve", str(members[0]), str(other), "--port", "0"]):
        assert main(command) == 2
        line = one_error_line(capsys)
        assert f"{members[0]} and {other} cannot form a committee: {members[0]} takes 784 " \
               "inputs, " in line, line
    broken = tmp_path / "broken.npz"
    broken.write_text("not a zip")
    assert main(["evaluate", str(members[0]), str(broken), "--data-dir", str(synth),
                 "--no-verify"]) == 2
    assert f"{broken} is not an anynet model file: not an .npz archive" in one_error_line(capsys)
    assert main(["evaluate", str(members[0]), str(members[1]), str(members[0])]) == 2
    assert "is named twice" in one_error_line(capsys)


@pytest.mark.parametrize("command", ["evaluate", "predict", "serve"])
def test_too_many_members_are_refused_before_any_file_is_read(command, tmp_path, monkeypatch,
                                                               capsys, members):
    """10,000 model files on a command line: one line, exit 2, and not one of them opened."""
    import anynet.modelio

    one = members[0]
    paths = []
    for i in range(10_000):
        link = tmp_path / f"m{i:05}.npz"
        link.symlink_to(one)
        paths.append(str(link))
    read = []
    real = anynet.modelio.load_model
    monkeypatch.setattr(anynet.modelio, "load_model", lambda *a, **k: read.append(a) or
                        real(*a, **k))
    extra = {"evaluate": [], "predict": ["digit.png"], "serve": ["--port", "0"]}[command]
    assert main([command, *paths, *extra]) == 2
    assert f"10,000 model files: a committee has at most {MAX_MEMBERS} members" in \
        one_error_line(capsys)
    assert read == []
    with pytest.raises(UserError, match="at most"):
        load_committee(paths)
    assert read == []


def _with_huge_w1(valid: Path, out: Path) -> Path:
    """A copy of model file `valid` whose W1 header declares 10^9 x 30 floats (112 GiB)."""
    import struct
    import zipfile

    with zipfile.ZipFile(valid) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    header = repr({"descr": "<f4", "fortran_order": False, "shape": (10**9, 30)}).encode()
    members["W1.npy"] = (b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header) + 1) + header
                         + b"\n" + bytes(64))
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out


def test_hostile_members_and_command_lines_cost_little(members, pictures, tmp_path):
    """In a child process under a memory limit: a member whose header asks for 112 GiB, and
    10,000 model files on one command line, are each one line, exit 2, in little memory."""
    from fuzz_helpers import assert_clean_ending, run_cli_bounded

    huge = _with_huge_w1(members[1], tmp_path / "huge.npz")
    result = run_cli_bounded(["evaluate", str(members[0]), str(huge), "--data-dir",
                              str(tmp_path / "none")])
    assert_clean_ending(result)
    assert result.returncode == 2 and f"{huge} is not a readable anynet model file" in \
        result.stderr, result.stderr
    assert result.peak_mb < 300, f"{result.peak_mb:.0f} MB"
    for i in range(10_000):
        (tmp_path / f"m{i}.npz").symlink_to(members[0])
    result = run_cli_bounded(["predict", *(f"m{i}.npz" for i in range(10_000)),
                              str(pictures[0])], cwd=tmp_path)
    assert_clean_ending(result)
    assert result.returncode == 2 and "10,000 model files" in result.stderr, result.stderr
    assert result.peak_mb < 300, f"{result.peak_mb:.0f} MB"


def test_the_members_parameters_are_bounded_together(members, monkeypatch):
    import anynet.modelio

    each = 784 * 16 + 16 + 16 * 10 + 10
    monkeypatch.setattr(anynet.modelio, "MAX_PARAM_ELEMENTS", 2 * each + each // 2)
    load_committee(members[:2])
    with pytest.raises(UserError, match=rf"^{re.escape(str(members[2]))}: the committee's "
                       rf"members up to it hold {3 * each:,} parameters"):
        load_committee(members)


# --- predict and serve --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pictures(synth, tmp_path_factory) -> list[Path]:
    """Four synthetic test digits as .npy pictures (28 x 28 uint8, light ink on black)."""
    from anynet.data import load_mnist

    folder = tmp_path_factory.mktemp("pictures")
    images = load_mnist(synth, verify=False).test_images[:4].reshape(-1, 28, 28)
    paths = []
    for i, image in enumerate(images):
        np.save(folder / f"d{i}.npy", image)
        paths.append(folder / f"d{i}.npy")
    return paths


def test_predict_with_several_models(members, pictures, backend, capsys):
    from anynet.images import preprocess_digit, read_image

    capsys.readouterr()
    argv = ["predict", *map(str, members), *map(str, pictures), "--backend", backend.spec]
    assert main([*argv, "--json", "--top", "10"]) == 0
    results = json.loads(capsys.readouterr().out)
    committee = load_committee(members, backend=backend)
    seen = np.stack([preprocess_digit(read_image(p), source=p) for p in pictures])
    expected = backend.to_numpy(committee.predict_proba(seen)).astype(np.float64)
    for result, row in zip(results, expected, strict=True):
        assert [c["class"] for c in result["top"]] == list(np.argsort(-row, kind="stable"))
        assert [c["probability"] for c in result["top"]] == sorted(row.tolist(), reverse=True)
        assert [m["model"] for m in result["members"]] == [str(p) for p in members]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "committee of 3 models (the mean of their class probabilities): " + \
        ", ".join(map(str, members))
    for line, result in zip(lines[1:], results, strict=True):
        assert line.startswith(f"{result['file']}:") and f"  {result['prediction']} (" in line
        votes = [m["prediction"] for m in result["members"]]
        assert ("(members: " + " ".join(map(str, votes)) + ")" in line) == (len(set(votes)) > 1)
    assert main(["predict", *map(str, members)]) == 2
    assert "no picture to read" in one_error_line(capsys)


def test_predict_with_one_model_says_nothing_of_committees(members, pictures, capsys):
    capsys.readouterr()
    assert main(["predict", str(members[0]), *map(str, pictures), "--json"]) == 0
    assert all("members" not in r for r in json.loads(capsys.readouterr().out))


def test_the_predictor_of_a_committee(members, pictures, backend):
    pytest.importorskip("PIL")
    from anynet.images import preprocess_digit, read_image
    from anynet.serve.predictor import Predictor

    committee = load_committee(members, backend=backend)
    predictor = Predictor(committee)
    try:
        described = predictor.describe()
        assert described["committee"] == 3 and described["classes"] == 10
        assert [m["file"] for m in described["members"]] == [p.name for p in members]
        assert all(m["architecture"] == "784-16-10" for m in described["members"])
        body = _png(np.load(pictures[0]))
        answer = predictor.predict(body, "image/png")
        seen = preprocess_digit(read_image(pictures[0]), source="x")
        P = backend.to_numpy(committee.predict_proba(seen[None, :]))[0]
        assert answer["prediction"] == int(np.argmax(P))
        assert answer["top"][0]["probability"] == pytest.approx(float(P.max()), abs=1e-12)
        assert [m["model"] for m in answer["members"]] == [p.name for p in members]
    finally:
        predictor.close()


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.skipif(sys.platform == "win32", reason="sends POSIX signals")
def test_serve_several_models(members, pictures):
    """A real `anynet serve` process with three models: it says it serves a committee, lists the
    members and answers with their mean and each member's reading."""
    import http.client

    pytest.importorskip("PIL")
    process = subprocess.Popen(
        [sys.executable, "-m", "anynet", "serve", *map(str, members), "--port", "0",
         "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        first = process.stdout.readline()
        assert first.startswith("anynet serve: http://127.0.0.1:"), first
        assert f"(a committee of 3 models: {', '.join(map(str, members))}, numpy;" in first
        port = int(first.split("http://127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG)
        conn.request("GET", "/api/model")
        described = json.loads(conn.getresponse().read())
        assert described["committee"] == 3 and len(described["members"]) == 3
        conn.request("POST", "/api/predict", body=_png(np.load(pictures[1])),
                     headers={"Content-Type": "image/png"})
        answer = json.loads(conn.getresponse().read())
        assert len(answer["top"]) == 10 and len(answer["members"]) == 3
        conn.close()
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=HANG)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143 and "Traceback" not in err, err


# --- the members from a sweep, without Dask --------------------------------------------------


def test_a_sweep_in_this_process_trains_the_members(synth, tmp_path, capsys):
    """`anynet sweep --seeds 0-2 --workers 0` trains a committee's members without Dask; the
    same models `anynet train` makes; `anynet evaluate OUT/runs/*.npz` is their committee."""
    out = tmp_path / "seeds"
    common = ["--data-dir", str(synth), "--no-verify", "--hidden", "16", "--epochs", "2",
              "--val-size", "0"]
    assert main(["sweep", "--seeds", "0-2", "--workers", "0", "--out", str(out), *common]) == 0
    printed = capsys.readouterr().out
    assert "in this process, one run after another (--workers 0: no Dask)" in printed
    runs = sorted((out / "runs").glob("*.npz"))
    assert len(runs) == 3
    seeds = {}
    for path in runs:
        from anynet.modelio import load_model

        net, record = load_model(path)
        seeds[record["config"]["seed"]] = net
    assert sorted(seeds) == [0, 1, 2]
    trained = tmp_path / "s1.npz"
    assert main(["train", "--seed", "1", "--threads", "1", "--quiet", "--out", str(trained),
                 *common]) == 0
    from anynet.modelio import load_model

    again, _ = load_model(trained)
    for k, v in again.host_params().items():
        np.testing.assert_array_equal(seeds[1].host_params()[k], v)
    capsys.readouterr()
    assert main(["sweep", "--seeds", "0-2", "--workers", "0", "--out", str(out), *common]) == 0
    assert "3 done before, 0 to train" in capsys.readouterr().out
    assert main(["evaluate", *map(str, runs), "--data-dir", str(synth), "--no-verify"]) == 0
    assert capsys.readouterr().out.startswith("committee of 3 models on numpy")


def test_ctrl_c_stops_a_sweep_in_this_process_keeping_its_runs(synth, tmp_path, monkeypatch,
                                                                capsys):
    import anynet.sweep_cluster

    out, calls = tmp_path / "seeds", []
    real = anynet.sweep_cluster.train_run

    def interrupted_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:  # Ctrl-C while the second run trains
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(anynet.sweep_cluster, "train_run", interrupted_second)
    argv = ["sweep", "--seeds", "0-2", "--workers", "0", "--out", str(out), "--data-dir",
            str(synth), "--no-verify", "--hidden", "8", "--epochs", "1", "--val-size", "0",
            "--quiet"]
    assert main(argv) == 130
    assert "interrupted (SIGINT): 1 of 3 runs finished here" in capsys.readouterr().err
    assert len((out / "results.jsonl").read_text().splitlines()) == 1
    monkeypatch.setattr(anynet.sweep_cluster, "train_run", real)
    assert main([a for a in argv if a != "--quiet"]) == 0
    assert "1 done before, 2 to train" in capsys.readouterr().out
    assert main(["sweep", "--seeds", "0", "--workers", "0", "--scheduler", "tcp://127.0.0.1:1",
                 "--out", str(out)]) == 2
    assert "--workers sizes the local cluster" in one_error_line(capsys)


# --- genuine MNIST ------------------------------------------------------------------------------


@pytest.mark.realdata
def test_three_seeds_on_mnist_beat_their_best_member(mnist_dir, tmp_path, backend, capsys):
    """Three seeds of the default 784-30-10 network, one epoch each: the committee's test error
    is no worse than its best member's (measured: 95.43% against 94.78% to 95.18% alone, the
    example of docs/sweeps.md)."""
    from anynet.data import load_mnist

    paths = []
    for seed in range(3):
        paths.append(tmp_path / f"s{seed}.npz")
        assert main(["train", "--data-dir", str(mnist_dir), "--epochs", "1", "--seed", str(seed),
                     "--threads", "1", "--quiet", "--out", str(paths[-1])]) == 0
    mnist = load_mnist(mnist_dir)
    found = evaluate_committee(load_committee(paths, backend=backend), mnist.test_images,
                               mnist.test_labels)
    best = max(alone.accuracy for alone in found.members)
    assert 0.9 < best < 0.99
    assert found.committee.accuracy >= best


def test_per_class_accuracy_needs_the_confusion_matrix():
    from anynet.evaluation import Evaluation

    found = Evaluation(examples=4, loss=0.5, accuracy=0.75,
                       confusion=np.array([[2, 0], [1, 1]]))
    np.testing.assert_allclose(found.per_class_accuracy, [1.0, 0.5])
    with pytest.raises(ValueError, match="confusion=True"):
        _ = Evaluation(examples=4, loss=0.5, accuracy=0.75).per_class_accuracy
