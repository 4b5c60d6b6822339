"""Tests for `anynet predict`, through `anynet.cli.main(argv)`: every option and error path.

Most tests use a model of known weights, built by hand, whose answers can be worked out on
paper: hidden unit 0 sums the ink in the centre columns, unit 1 the ink in the centre rows; a
vertical bar is then a "1" and a horizontal bar a "7". One test trains a small network on
genuine MNIST and predicts real digits saved as PNG files.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from anynet.cli import main
from anynet.images import preprocess_digit
from anynet.modelio import save_model
from anynet.network import TwoLayerNet

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

GAIN = 0.1  # logit per unit of hidden activation
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `anynet argv...`."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, pattern: str) -> None:
    """A user's mistake: exit 2, nothing on stdout, one line on stderr, no traceback."""
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("anynet: error: ") and re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err


def write_model(path, W1, b1, W2, b2) -> str:
    params = {k: np.asarray(v, dtype=np.float64) for k, v in zip(
        ("W1", "b1", "W2", "b2"), (W1, b1, W2, b2), strict=True)}
    save_model(path, TwoLayerNet.from_params(params), {})
    return str(path)


@pytest.fixture
def bars_model(tmp_path) -> str:
    """784-2-10 model: unit 0 = ink in columns 12..15, unit 1 = ink in rows 12..15;
    unit 0 votes for class 1, unit 1 for class 7."""
    band = np.zeros((28, 28))
    columns, rows = band.copy(), band.copy()
    columns[:, 12:16] = 1.0
    rows[12:16, :] = 1.0
    W1 = np.stack([columns.ravel(), rows.ravel()], axis=1)  # (784, 2)
    W2 = np.zeros((2, 10))
    W2[0, 1] = GAIN
    W2[1, 7] = GAIN
    return write_model(tmp_path / "bars.npz", W1, np.zeros(2), W2, np.zeros(10))


@pytest.fixture
def pictures(tmp_path, monkeypatch) -> dict[str, str]:
    """A vertical bar (black on white PNG, 200x200) and a horizontal one (white on black .npy),
    named relative to the working folder, tmp_path, as a user would type them."""
    monkeypatch.chdir(tmp_path)
    vertical = np.full((200, 200), 255, dtype=np.uint8)
    vertical[30:150, 60:78] = 0  # 120 x 18: scaled by 20/120 to exactly 20 x 3
    Image.fromarray(vertical).save(tmp_path / "vertical.png")
    horizontal = np.zeros((50, 90))
    horizontal[20:26, 10:50] = 1.0  # 6 x 40: scaled to exactly 3 x 20
    np.save(tmp_path / "horizontal-bar.npy", horizontal)
    return {"vertical": "vertical.png", "horizontal": "horizontal-bar.npy"}


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def bar_probabilities(in_band: int, across: int, winner: int, loser: int) -> np.ndarray:
    """Worked out by hand: a 20 x 3 bar of full ink has 60 pixels in its own band and
    4 * 3 = 12 in the crossing band, so the logits are 0.1 * 60 and 0.1 * 12."""
    z = np.zeros(10)
    z[winner], z[loser] = GAIN * in_band, GAIN * across
    return softmax(z)


def test_bars_are_preprocessed_as_worked_out():
    vertical = np.full((200, 200), 1.0)
    vertical[30:150, 60:78] = 0.0
    image = preprocess_digit(vertical).reshape(28, 28)
    expected = np.zeros((28, 28), dtype=np.uint8)
    expected[4:24, 13:16] = 255  # centre of mass (13.5, 14): rows 4..23, columns 13..15
    np.testing.assert_array_equal(image, expected)


def test_human_output(capsys, bars_model, pictures):
    code, out, err = run(capsys, "predict", bars_model, "vertical.png", "horizontal-bar.npy")
    assert code == 0 and err == ""
    p = bar_probabilities(60, 12, winner=1, loser=7)
    assert (round(100 * p[1], 1), round(100 * p[7], 1), round(100 * p[0], 1)) == (97.3, 0.8, 0.2)
    assert out.splitlines() == [  # file names padded to the longest
        "vertical.png:        1 (97.3%)   then 7 (0.8%), 0 (0.2%)",
        "horizontal-bar.npy:  7 (97.3%)   then 1 (0.8%), 0 (0.2%)",
    ]


def test_long_names_are_not_padded_beyond_40_characters(capsys, bars_model, pictures):
    long_name = Path("a-rather-long-folder-name") / ("x" * 30 + ".png")  # 60 characters
    long_name.parent.mkdir()
    shutil.copy(pictures["vertical"], long_name)
    code, out, _ = run(capsys, "predict", bars_model, long_name, pictures["vertical"])
    assert code == 0
    first, second = out.splitlines()
    assert first.startswith(f"{long_name}:  1 (")
    assert second.startswith("vertical.png:" + " " * (41 - 13) + "  1 (")  # padded to 40 + ":"


def test_json_output(capsys, bars_model, pictures):
    code, out, _ = run(capsys, "predict", bars_model, pictures["vertical"], pictures["horizontal"],
                       "--json", "--top", "4")
    assert code == 0
    results = json.loads(out)
    p = bar_probabilities(60, 12, winner=1, loser=7)
    assert [r["file"] for r in results] == [pictures["vertical"], pictures["horizontal"]]
    assert [r["prediction"] for r in results] == [1, 7]
    first = results[0]["top"]
    assert [t["class"] for t in first] == [1, 7, 0, 2]  # ties keep the lower class first
    np.testing.assert_allclose([t["probability"] for t in first], p[[1, 7, 0, 2]], rtol=1e-6)
    assert [t["class"] for t in results[1]["top"]] == [7, 1, 0, 2]


@pytest.mark.parametrize("k", [1, 10])
def test_top_k(capsys, bars_model, pictures, k):
    code, out, _ = run(capsys, "predict", bars_model, pictures["vertical"], "--top", str(k))
    assert code == 0
    listed = re.findall(r"(\d) \((?:<?\d+\.\d|>?99\.9)%\)", out)
    assert len(listed) == k and listed[0] == "1"
    assert ("then" in out) == (k > 1)


def test_top_more_than_the_classes(capsys, bars_model, pictures):
    assert_one_line_error(*run(capsys, "predict", bars_model, pictures["vertical"], "--top", "11"),
                          r"--top 11: the model has only 10 classes")


@pytest.mark.parametrize("value", ["0", "-1", "three"])
def test_top_must_be_a_positive_integer(capsys, bars_model, pictures, value):
    code, out, err = run(capsys, "predict", bars_model, pictures["vertical"], "--top", value)
    assert code == 2 and out == ""
    assert "--top" in err and "positive integer" in err and "Traceback" not in err


def test_unsure_is_marked(capsys, tmp_path, pictures):
    flat = write_model(tmp_path / "flat.npz", np.zeros((784, 3)), np.zeros(3), np.zeros((3, 10)),
                       np.zeros(10))  # every class 10%
    code, out, _ = run(capsys, "predict", flat, pictures["vertical"])
    assert code == 0
    assert out == f"{pictures['vertical']}:  0 (10.0%)   then 1 (10.0%), 2 (10.0%)   (unsure)\n"


def test_show_draws_what_the_network_sees(capsys, bars_model, pictures):
    code, out, _ = run(capsys, "predict", bars_model, pictures["vertical"], "--show")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 29 and lines[28].startswith(pictures["vertical"])
    picture = lines[:28]
    assert all(len(line) == 56 for line in picture)  # two characters per pixel
    assert picture[0] == " " * 56 and picture[4] == " " * 26 + "@" * 6 + " " * 24


def test_show_and_json_do_not_mix(capsys, bars_model, pictures):
    assert_one_line_error(
        *run(capsys, "predict", bars_model, pictures["vertical"], "--show", "--json"),
        "cannot be combined with --json",
    )


def test_other_backend_gives_the_same_answer(capsys, bars_model, pictures):
    pytest.importorskip("array_api_strict")
    _, numpy_out, _ = run(capsys, "predict", bars_model, pictures["vertical"], "--json")
    code, strict_out, _ = run(capsys, "predict", bars_model, pictures["vertical"], "--json",
                              "--backend", "array-api-strict")
    assert code == 0
    a, b = json.loads(numpy_out)[0], json.loads(strict_out)[0]
    assert a["prediction"] == b["prediction"] == 1
    np.testing.assert_allclose([t["probability"] for t in a["top"]],
                               [t["probability"] for t in b["top"]], rtol=1e-5)


def test_backend_under_test(capsys, backend, backend_name, bars_model, pictures):
    # The backend the suite runs on (pytest --backend NAME); numpy by default.
    code, out, _ = run(capsys, "predict", bars_model, pictures["vertical"], pictures["horizontal"],
                       "--json", "--backend", backend_name)
    assert code == 0
    assert [r["prediction"] for r in json.loads(out)] == [1, 7]


def test_unknown_backend(capsys, bars_model, pictures):
    code, out, err = run(capsys, "predict", bars_model, pictures["vertical"], "--backend", "tpu")
    assert code == 2 and out == "" and "unknown backend 'tpu'" in err


def test_help(capsys):
    code, out, _ = run(capsys, "predict", "--help")
    assert code == 0
    for option in ("MODEL", "IMAGE", "--top", "--json", "--show", "--backend"):
        assert option in out


def test_needs_model_and_image(capsys, bars_model):
    code, out, err = run(capsys, "predict", bars_model)
    assert code == 2 and out == "" and "IMAGE" in err


# ----------------------------------------------------------------------------- mistakes


def test_missing_model(capsys, tmp_path, pictures):
    assert_one_line_error(*run(capsys, "predict", tmp_path / "nope.npz", pictures["vertical"]),
                          r"nope\.npz does not exist")


def test_model_that_is_not_a_model(capsys, tmp_path, pictures):
    (tmp_path / "notes.npz").write_text("not a model")
    assert_one_line_error(*run(capsys, "predict", tmp_path / "notes.npz", pictures["vertical"]),
                          r"notes\.npz is not an anynet model file: not an \.npz")


def test_model_of_the_wrong_input_size(capsys, tmp_path, pictures):
    small = write_model(tmp_path / "small.npz", np.ones((100, 4)), np.zeros(4), np.ones((4, 10)),
                        np.zeros(10))
    assert_one_line_error(*run(capsys, "predict", small, pictures["vertical"]),
                          r"small\.npz: the model takes 100 inputs, but a picture becomes 784")


def test_model_of_inconsistent_shapes(capsys, tmp_path, pictures):
    # W2 does not fit W1: the file itself is broken.
    np.savez(tmp_path / "broken.npz", W1=np.ones((784, 4)), b1=np.zeros(4), W2=np.ones((5, 10)),
             b2=np.zeros(10), metadata=np.array(json.dumps(
                 {"format": "anynet-model", "format_version": 1,
                  "architecture": {"inputs": 784, "hidden": 4, "classes": 10}})))
    assert_one_line_error(*run(capsys, "predict", tmp_path / "broken.npz", pictures["vertical"]),
                          r"broken\.npz: shapes do not fit")


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda d: d / "missing.png", r"missing\.png: no such file"),
        (lambda d: d, "is a folder"),
        (lambda d: (d / "text.png").write_text("hello") and d / "text.png",
         r"text\.png: not an image file"),
        (lambda d: (d / "cut.png").write_bytes(PNG_MAGIC + b"\x00" * 30) and d / "cut.png",
         r"cut\.png: (damaged|not an image)"),
        (lambda d: np.save(d / "blank.npy", np.zeros((30, 30))) or d / "blank.npy",
         r"blank\.npy: no digit found"),
        (lambda d: np.save(d / "cube.npy", np.zeros((3, 3, 3, 3))) or d / "cube.npy",
         r"cube\.npy: a \.npy image must be"),
    ],
)
def test_bad_images_fail_before_any_output(capsys, tmp_path, bars_model, pictures, make, pattern):
    bad = make(tmp_path)
    # The good picture comes first: still nothing is printed, the run fails as a whole.
    assert_one_line_error(*run(capsys, "predict", bars_model, pictures["vertical"], bad), pattern)


def test_without_pillow_png_names_the_extra_and_npy_still_works(
    capsys, monkeypatch, bars_model, pictures
):
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert_one_line_error(*run(capsys, "predict", bars_model, pictures["vertical"]),
                          r"needs Pillow.*pip install 'anynet\[image\]'")
    code, out, _ = run(capsys, "predict", bars_model, pictures["horizontal"])
    assert code == 0 and ":  7 (" in out


# ----------------------------------------------------------------------------- real digits


def read_idx_gz(path, count: int) -> np.ndarray:
    """The first `count` records of a uint8 IDX file (gzip'd or raw), read with NumPy."""
    import gzip

    from anynet.data.catalog import find_file

    path = find_file(path.parent, path.name.removesuffix(".gz"))  # the cache holds raw files
    with open(path, "rb") as raw:
        packed = raw.read(2) == b"\x1f\x8b"
    with (gzip.open(path) if packed else open(path, "rb")) as f:
        magic = int.from_bytes(f.read(4), "big")
        assert magic >> 8 == 0x08, f"{path}: not a uint8 IDX file"
        dims = [int.from_bytes(f.read(4), "big") for _ in range(magic & 0xFF)]
        per_record = int(np.prod(dims[1:], dtype=np.int64))
        return np.frombuffer(f.read(count * per_record), np.uint8).reshape(count, *dims[1:])


@pytest.mark.realdata
def test_real_digits_saved_as_png_are_recognised(capsys, tmp_path, mnist_dir):
    from anynet.optim import SGD

    train_x = read_idx_gz(mnist_dir / "train-images-idx3-ubyte.gz", 10_000).reshape(-1, 784)
    train_y = read_idx_gz(mnist_dir / "train-labels-idx1-ubyte.gz", 10_000)
    net = TwoLayerNet(n_hidden=64, seed=0)
    opt = SGD(lr=0.5)
    state = opt.init(net.params)
    rng = np.random.default_rng(0)
    for _ in range(400):
        batch = rng.integers(0, len(train_x), 100)
        _, grads = net.loss_and_grads(train_x[batch], train_y[batch])
        net.params, state = opt.step(net.params, grads, state)
    save_model(tmp_path / "mnist.npz", net, {})

    test_x = read_idx_gz(mnist_dir / "t10k-images-idx3-ubyte.gz", 20)
    test_y = read_idx_gz(mnist_dir / "t10k-labels-idx1-ubyte.gz", 20)
    files = []
    for k, digit in enumerate(test_x):  # as a user would draw them: black on white, 112x112
        Image.fromarray(255 - digit).resize((112, 112), Image.BICUBIC).save(tmp_path / f"{k}.png")
        files.append(tmp_path / f"{k}.png")
    code, out, _ = run(capsys, "predict", tmp_path / "mnist.npz", *files, "--json", "--top", "1")
    assert code == 0
    predicted = np.array([r["prediction"] for r in json.loads(out)])
    assert (predicted == test_y).mean() >= 0.9  # the model gets 19 of these 20 right


def test_finite_but_huge_weights_are_an_error_not_nan_percent(capsys, tmp_path, pictures):
    # finite, so the file loads; but float32 overflows on the first product: no probabilities
    huge = np.float32(3e38)
    params = {"W1": np.full((784, 2), huge), "b1": np.zeros(2, np.float32),
              "W2": np.full((2, 10), huge), "b2": np.zeros(10, np.float32)}
    save_model(tmp_path / "huge.npz", TwoLayerNet.from_params(params), {})
    for extra in ([], ["--json"]):
        code, out, err = run(capsys, "predict", tmp_path / "huge.npz", pictures["vertical"],
                             *extra)
        assert_one_line_error(code, out, err, r"huge\.npz: the model's outputs for vertical\.png "
                              r"are not finite \(nan/inf\).*retrain it")
