"""Tests for anynet.plots: what each figure holds, the files it writes, and its error paths.

The figures are inspected before they are saved (the data in each image and line, the titles,
the labels), so a plot that shows the wrong thing fails here, not only one that crashes.
"""

from __future__ import annotations

import json
import math
import re
import sys

import numpy as np
import pytest

from anynet import plots
from anynet.errors import MissingExtraError, UserError

pytest.importorskip("matplotlib")


@pytest.fixture
def figures(monkeypatch):
    """Every figure `plots` saves, in order (they are still written to their files)."""
    saved = []
    original = plots._save

    def keep(figure, path):
        saved.append(figure)
        original(figure, path)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def image_axes(figure):
    """The axes of `figure` (subfigures included) that show an image, in drawing order."""
    return [ax for ax in figure.get_axes() if ax.get_images()]


def metrics(n_epochs=3, **overrides):
    document = {
        "format": "anynet-metrics",
        "version": 1,
        "config": {"hidden": 30, "lr": 0.5, "batch_size": 64, "backend": "numpy", "augment": False},
        "epochs": [
            {
                "epoch": e,
                "train_loss": 1.0 / e,
                "train_accuracy": None,
                "val_loss": 1.2 / e,
                "val_accuracy": 0.90 + 0.01 * e,
                "lr": 0.5,
                "seconds": 1.5,
            }
            for e in range(1, n_epochs + 1)
        ],
        "test_loss": 0.25,
        "test_accuracy": 0.925,
    }
    document.update(overrides)
    return document


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    "suffix, magic", [(".png", b"\x89PNG\r\n\x1a\n"), (".svg", b"<?xml"), (".pdf", b"%PDF")]
)
def test_format_follows_the_suffix(tmp_path, suffix, magic):
    W1 = np.random.default_rng(0).normal(size=(784, 4))
    path = tmp_path / "sub" / f"hidden{suffix}"  # a missing folder is created
    plots.plot_weights(W1, path)
    data = path.read_bytes()
    assert data.startswith(magic)
    plots.plot_weights(W1, path)  # the same figure gives the same bytes
    assert path.read_bytes() == data
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_png_has_the_expected_size(tmp_path):
    from PIL import Image

    plots.plot_curves(metrics(), tmp_path / "c.png")
    with Image.open(tmp_path / "c.png") as image:
        assert image.size == (1200, 504)  # 10 x 4.2 inches at 120 dpi


@pytest.mark.parametrize("name", ["plot.jpg", "plot", "plot.png.txt"])
def test_other_suffixes_are_refused(tmp_path, name):
    with pytest.raises(UserError, match=r"must end in \.png, \.svg or \.pdf"):
        plots.figure_format(tmp_path / name)
    with pytest.raises(UserError, match="must end in"):
        plots.plot_weights(np.ones((784, 2)), tmp_path / name)
    assert not (tmp_path / name).exists()


def test_upper_case_suffix_is_fine():
    assert plots.figure_format("A.PNG") == "png"
    assert plots.figure_format("b.Svg") == "svg"


def test_unwritable_destination_is_a_user_error(tmp_path):
    (tmp_path / "not_a_folder").write_text("x")
    with pytest.raises(UserError, match="cannot write the plot"):
        plots.plot_weights(np.ones((784, 2)), tmp_path / "not_a_folder" / "w.png")


def test_without_matplotlib_the_message_names_the_extra(tmp_path, monkeypatch):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    calls = [
        lambda: plots.plot_weights(np.ones((784, 2)), tmp_path / "w.png"),
        lambda: plots.plot_curves(metrics(), tmp_path / "c.png"),
        lambda: plots.plot_confusion(np.eye(10, dtype=int), tmp_path / "m.png"),
    ]
    for call in calls:
        with pytest.raises(MissingExtraError, match=r"anynet\[plot\]") as info:
            call()
        assert "matplotlib" in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- weights


def test_weights_one_image_per_unit_with_a_shared_symmetric_scale(tmp_path, figures):
    W1 = np.random.default_rng(1).normal(size=(784, 6))
    W1[3, 2] = -7.0  # the largest magnitude sets the scale for every unit
    plots.plot_weights(W1, tmp_path / "w.png")
    (figure,) = figures
    axes = [ax for ax in image_axes(figure) if ax.get_title().startswith("unit")]
    assert [ax.get_title() for ax in axes] == [f"unit {j}" for j in range(6)]
    for j, ax in enumerate(axes):
        (picture,) = ax.get_images()
        np.testing.assert_array_equal(picture.get_array(), W1[:, j].reshape(28, 28))
        assert picture.get_clim() == (-7.0, 7.0)
    assert "all 6 hidden units" in figure.get_suptitle()
    colorbar_labels = [ax.get_ylabel() for ax in figure.get_axes()]
    assert any("weight" in label for label in colorbar_labels)


def test_weights_of_any_square_input(tmp_path, figures):
    W1 = np.arange(100 * 2, dtype=float).reshape(100, 2)  # 10x10 pictures
    plots.plot_weights(W1, tmp_path / "w.png")
    first = image_axes(figures[0])[0].get_images()[0].get_array()
    np.testing.assert_array_equal(first, W1[:, 0].reshape(10, 10))
    assert "each as a 10x10 image" in figures[0].get_suptitle()


def test_weights_max_units(tmp_path, figures):
    W1 = np.arange(784 * 40, dtype=float).reshape(784, 40)
    plots.plot_weights(W1, tmp_path / "w.png", max_units=9)
    (figure,) = figures
    pictures = [ax for ax in image_axes(figure) if ax.get_title().startswith("unit")]
    assert len(pictures) == 9
    last = pictures[-1].get_images()[0].get_array()
    np.testing.assert_array_equal(last, W1[:, 8].reshape(28, 28))
    assert "the first 9 of 40" in figure.get_suptitle()


def test_weights_of_wrong_shape_are_user_errors(tmp_path):
    for W1 in (np.ones((101, 3)), np.ones(784), np.ones((784, 0))):  # 101 is not a square
        with pytest.raises(UserError, match=r"cannot draw|must be"):
            plots.plot_weights(W1, tmp_path / "w.png")
    with pytest.raises(UserError, match="max_units"):
        plots.plot_weights(np.ones((784, 3)), tmp_path / "w.png", max_units=0)
    assert not (tmp_path / "w.png").exists()


def test_all_zero_or_non_finite_weights_still_draw(tmp_path):
    plots.plot_weights(np.zeros((784, 2)), tmp_path / "zero.png")
    W1 = np.ones((784, 2))
    W1[0, 0] = np.nan
    plots.plot_weights(W1, tmp_path / "nan.png")
    assert (tmp_path / "zero.png").stat().st_size > 0 and (tmp_path / "nan.png").stat().st_size > 0


# ----------------------------------------------------------------------------- curves


def test_curves_plot_the_numbers_of_the_metrics(tmp_path, figures):
    document = metrics(n_epochs=4)
    document["epochs"][1]["val_loss"] = None  # skipped, not drawn as zero
    plots.plot_curves(document, tmp_path / "c.png")
    (figure,) = figures
    ax_loss, ax_acc = figure.get_axes()
    lines = {line.get_label(): line for line in ax_loss.get_lines()}
    np.testing.assert_allclose(lines["train"].get_xdata(), [1, 2, 3, 4])
    np.testing.assert_allclose(lines["train"].get_ydata(), [1.0, 0.5, 1 / 3, 0.25])
    np.testing.assert_allclose(lines["validation"].get_xdata(), [1, 3, 4])
    np.testing.assert_allclose(lines["test (0.250)"].get_ydata(), [0.25, 0.25])
    accuracy = {line.get_label(): line for line in ax_acc.get_lines()}
    assert set(accuracy) == {"validation (last 94.00%)", "test (92.50%)"}  # no train accuracy
    np.testing.assert_allclose(accuracy["validation (last 94.00%)"].get_ydata(), [91, 92, 93, 94])
    assert ax_acc.get_ylabel() == "accuracy (%)" and ax_loss.get_xlabel() == "epoch"
    assert figure.get_suptitle() == (
        "Training curves: hidden=30, lr=0.5, batch_size=64, backend=numpy"
    )


def test_curves_without_accuracy_say_so(tmp_path, figures):
    document = metrics(test_accuracy=None)
    for row in document["epochs"]:
        row["val_accuracy"] = None
    plots.plot_curves(document, tmp_path / "c.png")
    ax_acc = figures[0].get_axes()[1]
    assert ax_acc.get_lines() == []
    assert [t.get_text() for t in ax_acc.texts] == ["nothing recorded"]


def test_curves_skip_non_finite_values(tmp_path, figures):
    document = metrics()
    document["epochs"][2]["train_loss"] = math.inf
    plots.plot_curves(document, tmp_path / "c.png")
    train = next(x for x in figures[0].get_axes()[0].get_lines() if x.get_label() == "train")
    np.testing.assert_allclose(train.get_xdata(), [1, 2])


@pytest.mark.parametrize(
    "document, message",
    [
        ([1, 2], "not an anynet metrics file"),
        ({"epochs": []}, "not an anynet metrics file"),
        (metrics(format="something-else"), "not an anynet metrics file"),
        (metrics(version=2), "version 2 is not supported"),
        (metrics(n_epochs=0), "no epochs"),
        (metrics(epochs=[{"train_loss": 1.0}]), "epoch entry 0"),
        (metrics(epochs=[{"epoch": True}]), "epoch entry 0"),
        (metrics(epochs=[{"epoch": 1, "val_loss": "low"}]), "val_loss must be a number"),
        (metrics(test_accuracy="97%"), "test_accuracy must be a number"),
    ],
)
def test_metrics_that_do_not_fit_are_user_errors(tmp_path, document, message):
    with pytest.raises(UserError, match=message) as info:
        plots.check_metrics(document, source="run.json")
    assert str(info.value).startswith("run.json: ")
    with pytest.raises(UserError, match=message):
        plots.plot_curves(document, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


# ----------------------------------------------------------------------------- confusion


def confusion_matrix():
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 6, size=(10, 10))
    np.fill_diagonal(counts, rng.integers(900, 1100, size=10))
    return counts


def test_confusion_shows_counts_on_a_log_scale(tmp_path, figures):
    counts = confusion_matrix()
    plots.plot_confusion(counts, tmp_path / "m.png")
    (figure,) = figures
    (ax,) = image_axes(figure)
    picture = ax.get_images()[0]
    data = picture.get_array()
    np.testing.assert_array_equal(data.filled(0), counts)
    np.testing.assert_array_equal(data.mask, counts == 0)  # zeros are left white
    assert type(picture.norm).__name__ == "LogNorm"
    # Each count is written in its cell: text at (x = predicted, y = true).
    labels = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
              for t in ax.texts}
    expected = {(t, p): str(counts[t, p]) for t in range(10) for p in range(10) if counts[t, p]}
    assert labels == expected
    total, right = counts.sum(), np.trace(counts)
    assert ax.get_title() == (
        f"Confusion matrix: {right:,} of {total:,} right ({100 * right / total:.2f}%)"
    )
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")


def test_confusion_with_most_confidently_wrong_images(tmp_path, figures):
    rng = np.random.default_rng(3)
    wrong = [
        {
            "image": rng.integers(0, 256, 784).astype(np.uint8),
            "label": k % 10,
            "predicted": (k + 5) % 10,
            "probability": 0.99 - 0.01 * k,
        }
        for k in range(12)
    ]
    plots.plot_confusion(confusion_matrix(), tmp_path / "m.png", wrong=wrong)
    (figure,) = figures
    strip = [ax for ax in image_axes(figure) if ax.get_title().startswith("true")]
    assert [ax.get_title() for ax in strip][:2] == ["true 0 -> 5\n(0.99)", "true 1 -> 6\n(0.98)"]
    assert len(strip) == 12
    fifth = strip[4].get_images()[0].get_array()
    np.testing.assert_array_equal(fifth, wrong[4]["image"].reshape(28, 28))


def test_confusion_rejects_what_is_not_a_confusion_matrix(tmp_path):
    not_square, fractional = np.ones((10, 9), int), np.ones((10, 10)) * 0.5
    for bad in (not_square, fractional, -np.eye(10, dtype=int), np.ones(10, int)):
        with pytest.raises(ValueError, match="confusion matrix"):
            plots.plot_confusion(bad, tmp_path / "m.png")
    with pytest.raises(ValueError, match="lacks"):
        plots.plot_confusion(np.eye(10, dtype=int), tmp_path / "m.png", wrong=[{"image": None}])
    assert not (tmp_path / "m.png").exists()


def test_confusion_all_zero_draws(tmp_path):
    plots.plot_confusion(np.zeros((10, 10), dtype=np.int64), tmp_path / "m.svg")
    assert (tmp_path / "m.svg").read_bytes().startswith(b"<?xml")


# ----------------------------------------------------------------------------- anynet plot


def cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `anynet argv...` through anynet.cli.main."""
    from anynet.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(result, pattern: str) -> None:
    code, out, err = result
    assert code == 2, err
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("anynet: error: "), err
    assert re.search(pattern, lines[0]), lines[0]


def write_model(path, n_in=784, n_hidden=5):
    from anynet.modelio import save_model
    from anynet.network import TwoLayerNet

    save_model(path, TwoLayerNet(n_in=n_in, n_hidden=n_hidden, seed=3), {})
    return path


def test_cli_plot_weights(capsys, tmp_path, figures):
    from anynet.modelio import load_model

    model = write_model(tmp_path / "m.npz")
    code, out, err = cli(capsys, "plot", "weights", model, "--out", tmp_path / "hidden.png")
    assert (code, err) == (0, "")
    assert out == f"wrote {tmp_path / 'hidden.png'}: input weights of 5 of 5 hidden units\n"
    assert (tmp_path / "hidden.png").read_bytes().startswith(b"\x89PNG")
    W1 = load_model(model)[0].host_params()["W1"]
    units = [ax for ax in image_axes(figures[0]) if ax.get_title().startswith("unit")]
    np.testing.assert_array_equal(units[4].get_images()[0].get_array(), W1[:, 4].reshape(28, 28))


def test_cli_plot_weights_max_units(capsys, tmp_path, figures):
    model = write_model(tmp_path / "m.npz", n_hidden=30)
    code, out, _ = cli(capsys, "plot", "weights", model, "--out", tmp_path / "w.svg",
                       "--max-units", "4")
    assert code == 0 and "4 of 30 hidden units" in out
    assert len([ax for ax in image_axes(figures[0]) if ax.get_title().startswith("unit")]) == 4
    assert (tmp_path / "w.svg").read_bytes().startswith(b"<?xml")


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_cli_plot_weights_bad_max_units(capsys, tmp_path, value):
    model = write_model(tmp_path / "m.npz")
    code, out, err = cli(capsys, "plot", "weights", model, "--out", tmp_path / "w.png",
                         "--max-units", value)
    assert code == 2 and out == "" and "--max-units" in err and "positive integer" in err
    assert not (tmp_path / "w.png").exists()


def test_cli_plot_weights_mistakes(capsys, tmp_path):
    model = write_model(tmp_path / "m.npz")
    assert_one_line_error(cli(capsys, "plot", "weights", tmp_path / "none.npz", "--out",
                              tmp_path / "w.png"), r"none\.npz does not exist")
    # The suffix is checked first, before the model is even read.
    assert_one_line_error(cli(capsys, "plot", "weights", tmp_path / "none.npz", "--out",
                              tmp_path / "w.jpg"), r"w\.jpg: a plot file must end in \.png")
    odd = write_model(tmp_path / "odd.npz", n_in=101)
    assert_one_line_error(cli(capsys, "plot", "weights", odd, "--out", tmp_path / "w.png"),
                          r"odd\.npz: the model takes 101 inputs")
    (tmp_path / "text.npz").write_text("hello")
    assert_one_line_error(cli(capsys, "plot", "weights", tmp_path / "text.npz", "--out",
                              tmp_path / "w.png"),
                          r"text\.npz is not an anynet model file: not an \.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "odd.npz", "text.npz"]
    assert model.exists()


def test_cli_plot_needs_out_and_a_kind(capsys, tmp_path):
    model = write_model(tmp_path / "m.npz")
    code, out, err = cli(capsys, "plot", "weights", model)
    assert code == 2 and out == "" and "--out" in err
    code, out, err = cli(capsys, "plot")
    assert code == 2 and "WHAT" in err
    code, out, err = cli(capsys, "plot", "histogram", model)
    assert code == 2 and "invalid choice: 'histogram'" in err


def test_cli_plot_help(capsys):
    code, out, _ = cli(capsys, "plot", "--help")
    assert code == 0 and "weights" in out and "curves" in out
    code, out, _ = cli(capsys, "plot", "weights", "--help")
    assert code == 0 and "--max-units" in out and "--out" in out


def test_cli_plot_curves(capsys, tmp_path, figures):
    (tmp_path / "run.json").write_text(json.dumps(metrics(n_epochs=5)))
    code, out, err = cli(capsys, "plot", "curves", tmp_path / "run.json", "--out",
                         tmp_path / "curves.pdf")
    assert (code, err) == (0, "")
    assert out == f"wrote {tmp_path / 'curves.pdf'}: curves of 5 epochs\n"
    assert (tmp_path / "curves.pdf").read_bytes().startswith(b"%PDF")
    train = figures[0].get_axes()[0].get_lines()[0]
    np.testing.assert_allclose(train.get_ydata(), [1 / e for e in range(1, 6)])


@pytest.mark.parametrize(
    "content, pattern",
    [
        (None, r"nothing\.json: no such file"),
        ("{not json", r"bad\.json: not valid JSON \(Expecting property name"),
        (b"\xff\xfe\x00binary", r"bad\.json: not a metrics file \(not UTF-8"),
        ('{"format": "anynet-model"}', r"bad\.json: not an anynet metrics file"),
        (json.dumps(metrics(version=7)), r"bad\.json: metrics format version 7"),
        (json.dumps(metrics(n_epochs=0)), r"bad\.json: the metrics file has no epochs"),
    ],
)
def test_cli_plot_curves_mistakes(capsys, tmp_path, content, pattern):
    name = "nothing.json" if content is None else "bad.json"
    if isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    elif content is not None:
        (tmp_path / name).write_text(content)
    assert_one_line_error(
        cli(capsys, "plot", "curves", tmp_path / name, "--out", tmp_path / "c.png"), pattern
    )
    assert not (tmp_path / "c.png").exists()


def test_cli_plot_curves_folder(capsys, tmp_path):
    assert_one_line_error(cli(capsys, "plot", "curves", tmp_path, "--out", tmp_path / "c.png"),
                          "is a folder")


def test_cli_without_matplotlib(capsys, tmp_path, monkeypatch):
    (tmp_path / "run.json").write_text(json.dumps(metrics()))
    model = write_model(tmp_path / "m.npz")
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for argv in (("weights", model), ("curves", tmp_path / "run.json")):
        assert_one_line_error(
            cli(capsys, "plot", *argv, "--out", tmp_path / "p.png"),
            r"Plotting needs matplotlib, which is not installed: pip install 'anynet\[plot\]'",
        )
    assert not (tmp_path / "p.png").exists()


def test_plot_weights_of_a_100_input_model_draws_10x10_squares(tmp_path, capsys, figures):
    from anynet.modelio import save_model
    from anynet.network import TwoLayerNet

    save_model(tmp_path / "m100.npz", TwoLayerNet(100, 3, 10), {})
    code, out, _ = cli(capsys, "plot", "weights", tmp_path / "m100.npz", "--out",
                       tmp_path / "w.png")
    assert code == 0 and "input weights of 3 of 3 hidden units" in out
    picture = image_axes(figures[0])[0].get_images()[0].get_array()
    assert picture.shape == (10, 10)
    assert "each as a 10x10 image" in figures[0].get_suptitle()

    save_model(tmp_path / "m50.npz", TwoLayerNet(50, 3, 10), {})
    assert_one_line_error(
        cli(capsys, "plot", "weights", tmp_path / "m50.npz", "--out", tmp_path / "w50.png"),
        r"takes 50 inputs, which do not form a square image; plot weights draws square inputs")


# ----------------------------------------------------------------------------- distortions


def test_distortions_one_row_per_digit_original_first(tmp_path, figures):
    rng = np.random.default_rng(0)
    originals, distorted = rng.random((3, 784)), rng.random((3, 4, 784))
    plots.plot_distortions(originals, distorted, tmp_path / "d.png", labels=[7, 1, 4],
                           title="a title")
    axes = image_axes(figures[0])
    assert len(axes) == 3 * 5
    for i in range(3):
        np.testing.assert_array_equal(axes[5 * i].get_images()[0].get_array(),
                                      originals[i].reshape(28, 28))
        assert axes[5 * i].get_ylabel() == str([7, 1, 4][i])
        for j in range(4):
            np.testing.assert_array_equal(axes[5 * i + 1 + j].get_images()[0].get_array(),
                                          distorted[i, j].reshape(28, 28))
    assert figures[0].get_suptitle() == "a title"
    assert (tmp_path / "d.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("originals, distorted", [
    ((3, 784), (2, 4, 784)), ((3, 784), (3, 4, 100)), ((3, 50), (3, 4, 50)),
    ((0, 784), (0, 4, 784)), ((784,), (1, 4, 784)),
])
def test_distortions_of_wrong_shapes_are_refused(tmp_path, originals, distorted):
    with pytest.raises(ValueError):
        plots.plot_distortions(np.zeros(originals), np.zeros(distorted), tmp_path / "d.png")
    assert not (tmp_path / "d.png").exists()


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    """Synthetic MNIST-format files (not genuine MNIST: the commands run with --no-verify)."""
    from data_helpers import make_mnist_dir

    return make_mnist_dir(tmp_path_factory.mktemp("mnist"), n_train=200, n_test=20, seed=0)


def test_cli_plot_augment(capsys, tmp_path, figures, synthetic_dir):
    from anynet.augment import Distorter, Distortion
    from anynet.data import load_mnist

    code, out, err = cli(capsys, "plot", "augment", "--out", tmp_path / "a.png", "--rows", 3,
                         "--columns", 4, "--seed", 5, "--kind", "elastic", "--alpha", 20,
                         "--data-dir", synthetic_dir, "--no-verify")
    assert (code, err) == (0, "")
    assert out == (f"wrote {tmp_path / 'a.png'}: 3 digits, each with 4 distortions "
                   "(elastic (alpha 20 px, sigma 4 px))\n")
    mnist = load_mnist(synthetic_dir, verify=False)
    train = mnist.train_images.astype(np.float32) / 255
    axes = image_axes(figures[0])
    assert len(axes) == 3 * 5
    originals = np.stack([axes[5 * i].get_images()[0].get_array().reshape(784)
                          for i in range(3)]).astype(np.float32)
    for i, image in enumerate(originals):  # row i: a training digit of class i
        matches = np.flatnonzero((np.abs(train - image) < 1e-6).all(axis=1))
        assert matches.size and (mnist.train_labels[matches] == i).all()
        assert axes[5 * i].get_ylabel() == str(i)
    distort = Distorter(Distortion("elastic", alpha=20), "numpy", seed=5)
    expected = distort(np.repeat(originals, 4, axis=0), (0,)).reshape(3, 4, 784)
    for i in range(3):
        for j in range(4):
            np.testing.assert_allclose(axes[5 * i + 1 + j].get_images()[0].get_array(),
                                       expected[i, j].reshape(28, 28), rtol=0, atol=1e-6)
    assert "elastic (alpha 20 px, sigma 4 px)" in figures[0].get_suptitle()


def test_cli_plot_augment_without_distortion_draws_the_digits_again(capsys, tmp_path, figures,
                                                                    synthetic_dir):
    code, out, _ = cli(capsys, "plot", "augment", "--out", tmp_path / "a.svg", "--rows", 2,
                       "--columns", 3, "--kind", "affine", "--rotate", 0, "--scale", 0,
                       "--shear", 0, "--shift", 0, "--data-dir", synthetic_dir, "--no-verify")
    assert code == 0 and "2 digits, each with 3 distortions" in out
    axes = image_axes(figures[0])
    for i in range(2):
        original = axes[4 * i].get_images()[0].get_array()
        for j in range(1, 4):
            np.testing.assert_array_equal(axes[4 * i + j].get_images()[0].get_array(), original)
    assert (tmp_path / "a.svg").read_bytes().startswith(b"<?xml")


def test_cli_plot_augment_mistakes(capsys, tmp_path, synthetic_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(cli(capsys, "plot", "augment", "--out", tmp_path / "a.png",
                              "--data-dir", empty), r"data dir .*empty: no train-images")
    assert_one_line_error(cli(capsys, "plot", "augment", "--out", tmp_path / "a.jpg",
                              "--data-dir", empty), r"a\.jpg: a plot file must end in \.png")
    for option, value, words in [("--sigma", "0", "> 0 and <= 100"), ("--scale", "1", "<= 0.99"),
                                 ("--rotate", "nan", "finite"), ("--kind", "blur", "invalid"),
                                 ("--sigma", "1e9", "<= 100"), ("--shear", "1e308", "<= 28"),
                                 ("--alpha", "1e308", "<= 10000"),
                                 ("--rows", "0", "positive"), ("--columns", "31", "at most")]:
        code, out, err = cli(capsys, "plot", "augment", "--out", tmp_path / "a.png", option,
                             value, "--data-dir", synthetic_dir, "--no-verify")
        assert code == 2 and out == "" and option in err and words in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_cli_plot_augment_help(capsys):
    code, out, _ = cli(capsys, "plot", "--help")
    assert code == 0 and "augment" in out
    code, out, _ = cli(capsys, "plot", "augment", "--help")
    for option in ("--kind", "--rows", "--columns", "--seed", "--rotate", "--scale", "--shear",
                   "--shift", "--alpha", "--sigma", "--out", "--data-dir"):
        assert option in out


def test_cli_plot_augment_without_matplotlib(capsys, tmp_path, monkeypatch, synthetic_dir):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert_one_line_error(
        cli(capsys, "plot", "augment", "--out", tmp_path / "p.png", "--data-dir", synthetic_dir,
            "--no-verify"),
        r"Plotting needs matplotlib, which is not installed: pip install 'anynet\[plot\]'",
    )
    assert not (tmp_path / "p.png").exists()
