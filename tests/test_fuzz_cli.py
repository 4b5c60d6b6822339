"""Hostile command lines for `anynet train`: whatever the options, a clean ending.

Random options and values (numbers out of range, huge, negative, nan/inf, not numbers, empty,
unknown options, paths that are folders, missing, inside a file, or damaged checkpoints) are
given to `anynet.cli.main` in-process, on tiny synthetic data, one epoch of a 784-4-10 network.
Each case must end in exit 0, 2 (one line on stderr) or 3 (divergence, one line), never a
traceback, and leave no lock file or temporary behind. Depth: the hypothesis profiles of
tests/fuzz_helpers.py (ci: seeded, a few dozen cases; ANYNET_FUZZ=deep: thousands).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import make_mnist_dir
from fuzz_helpers import assert_clean_ending, run_cli_bounded
from hypothesis import given, settings
from hypothesis import strategies as st

from anynet.cli import main

NUMERIC = ["--lr", "--momentum", "--weight-decay", "--seed", "--epochs", "--batch-size",
           "--hidden", "--val-size", "--threads",
           "--rotate", "--scale", "--shear", "--shift", "--alpha", "--sigma"]
PATHS = ["--out", "--metrics", "--plot", "--resume", "--data-dir"]
CHOICES = {"--schedule": ["constant", "step", "cosine", "linear", ""],
           "--augment": ["none", "affine", "elastic", "affine+elastic", "swirl"],
           "--dtype": ["float32", "float64", "float16", "int8"],
           "--backend": ["numpy", "numpy:cpu", "nump", "numpy:gpu:7", "", "auto:x"]}
FLAGS = ["--nesterov", "--force", "--quiet", "--no-verify", "--bogus", "--lrr", "-x", "--"]

ODD_TEXT = ["", " ", "nan", "NaN", "inf", "-inf", "+inf", "1e308", "-1e308", "1e-320", "-0",
            "0", "-1", "0x10", "1_000", " 3", "3 ", "1e", "abc", "--", "-", "1.5", "0.999999",
            "2**31", "9" * 40, "\u0663", "１"]
PATH_KINDS = ["", "folder", "folder/", "missing/deeper/m.npz", "file.txt/m.npz", "file.txt",
              "garbage.npz", "m.npz", "m.json", "curves.png", "curves.txt", "m.checkpoint.npz",
              "data", "no-such-dir"]


def _number_text(name: str):
    # sizes that would take long to train (many epochs) or allocate gigabytes that may succeed
    # (a hidden layer of a million units) are left out; absurd ones that fail at once stay in
    if name in ("--epochs", "--hidden"):
        ints = st.integers(-10, 3) | st.integers(10**10, 10**30)
    else:
        ints = st.integers(-(10**30), 10**30)
    floats = st.floats(allow_nan=True, allow_infinity=True).map(repr)
    return ints.map(str) | floats | st.sampled_from(ODD_TEXT) | st.text(max_size=6)


@st.composite
def train_options(draw) -> list[str]:
    argv = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["number", "path", "choice", "flag"]))
        if kind == "number":
            name = draw(st.sampled_from(NUMERIC))
            argv += [name, draw(_number_text(name))]
        elif kind == "path":
            argv += [draw(st.sampled_from(PATHS)), draw(st.sampled_from(PATH_KINDS))]
        elif kind == "choice":
            name = draw(st.sampled_from(sorted(CHOICES)))
            argv += [name, draw(st.sampled_from(CHOICES[name]))]
        else:
            argv.append(draw(st.sampled_from(FLAGS)))
    return argv


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_mnist_dir(tmp_path_factory.mktemp("fuzz-data"), n_train=120, n_test=30, seed=3)


@pytest.fixture
def workdir(tmp_path, tiny, monkeypatch) -> Path:
    """A working folder with the paths the cases name: a folder, a file, a damaged checkpoint,
    and `data`, the tiny data set."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("not a folder")
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 but not really")
    (tmp_path / "data").symlink_to(tiny, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@settings(max_examples=4 * settings().max_examples)  # ci: 100 cases, about 10 s
@given(options=train_options())
def test_fuzz_train_options_end_cleanly(workdir, capsys, options):
    base = ["train", "--data-dir", "data", "--no-verify", "--epochs", "1", "--hidden", "4",
            "--batch-size", "16", "--val-size", "10", "--out", "m.npz", "--force", "--quiet"]
    code = main(base + options)  # later options override the base's
    out, err = capsys.readouterr()
    assert "Traceback" not in out
    assert_clean_ending((code, err), allowed=(0, 2, 3))
    leftovers = sorted(p.name for p in workdir.rglob(".*") if p.suffix in (".lock", ".tmp"))
    assert leftovers == [], f"anynet {' '.join(base + options)} left {leftovers}"


@given(argv=st.lists(st.sampled_from(ODD_TEXT + NUMERIC + PATHS + FLAGS + ["train"]),
                     max_size=5))
def test_fuzz_any_words_after_train_end_cleanly(workdir, capsys, argv):
    # no data folder given: anything that gets as far as loading data stops there (exit 2)
    code = main(["train", "--data-dir", "no-such-dir", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out
    assert_clean_ending((code, err), allowed=(0, 2, 3))


# --- option extremes, every command: refused in one line before they cost anything -------------

EXTREMES = [
    # (argv, words of the refusal); before: 57 s and 18.9 GB at --sigma 1e8, a MemoryError at
    # 1e9, an OverflowError at --shear 1e308, an IndexError at --alpha 1e308
    (["train", "--augment", "elastic", "--sigma", "1e8"], "--sigma: expected a finite number"),
    (["train", "--augment", "elastic", "--sigma", "1e300"], "> 0 and <= 100"),
    (["train", "--augment", "affine", "--shear", "1e308"], "--shear: expected"),
    (["train", "--augment", "elastic", "--alpha", "1e308"], "--alpha: expected"),
    (["train", "--epochs", "1000000000"], "--epochs: expected at most 10000"),
    (["train", "--hidden", "100000", "--batch-size", "1000"], "batch_size x hidden"),
    (["plot", "augment", "--out", "a.png", "--sigma", "1e8"], "--sigma: expected"),
    (["plot", "augment", "--out", "a.png", "--alpha", "1e308"], "--alpha: expected"),
    (["sweep", "--augment", "elastic", "--sigma", "4,1e8", "--out", "runs"], "sigma"),
    (["sweep", "--epochs", "1,1000000", "--out", "runs"], "epochs must be at most"),
    # before: torch's thread pool crashed (SIGSEGV) at 100,000, failed at 20,000 (exit 1)
    (["train", "--threads", "100000"], "--threads: expected at most 1024"),
    (["predict", "m.npz", "x.png", "--threads", "100000"], "--threads: expected at most 1024"),
    (["gradcheck", "--batch-size", "1000000000"], "--batch-size: expected at most"),
    (["gradcheck", "--hidden", "100000"], "multiply-adds one check may cost"),  # before: days
    (["evaluate", "m.npz", "--wrong", "1000000000"], "--wrong: expected at most 100"),
    (["plot", "weights", "m.npz", "--out", "w.png", "--max-units", "1000000000"],
     "--max-units: expected at most 100"),
]


@pytest.mark.parametrize("argv, words", EXTREMES, ids=[
    " ".join(w for w in a if w not in ("--out", "a.png", "w.png", "runs", "m.npz", "x.png",
                                       "--augment"))
    for a, _ in EXTREMES])
def test_option_extremes_are_refused_at_once(tmp_path, argv, words):
    argv = [*argv, "--data-dir", str(tmp_path / "no-data")] if argv[0] in (
        "train", "sweep") or argv[:2] == ["plot", "augment"] else argv
    result = run_cli_bounded(argv, cwd=tmp_path, timeout=30)
    assert_clean_ending(result)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert result.peak_mb < 300, f"{result.peak_mb:.0f} MB"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, nothing started


def test_plot_weights_of_a_wide_model_draws_at_most_100_units(tmp_path):
    # each unit is a matplotlib axes: 400 took 18 s, 2,000 took 277 s and 670 MB
    pytest.importorskip("matplotlib")
    from anynet.modelio import save_model
    from anynet.network import TwoLayerNet

    save_model(tmp_path / "m.npz", TwoLayerNet(n_hidden=300))
    result = run_cli_bounded(["plot", "weights", "m.npz", "--out", "w.png"], cwd=tmp_path)
    assert_clean_ending(result)
    assert result.returncode == 0 and "100 of 300 hidden units" in result.stdout, result.stderr


# --- outputs: nothing already saved is replaced without --force, and every refusal is one line --


@pytest.fixture
def saved(tmp_path, tiny, monkeypatch) -> Path:
    """A folder holding precious files, a trained model among them, and the tiny data set."""
    from anynet.modelio import save_model
    from anynet.network import TwoLayerNet

    monkeypatch.chdir(tmp_path)
    save_model(tmp_path / "model.npz", TwoLayerNet(n_hidden=4, seed=1))
    for name in ("precious.npz", "photo.png", "victim.safetensors", "victim.onnx"):
        (tmp_path / name).write_bytes(b"precious " + name.encode())
    (tmp_path / "data").symlink_to(tiny, target_is_directory=True)
    return tmp_path


TRAIN = ["train", "--data-dir", "data", "--no-verify", "--epochs", "1", "--hidden", "4",
         "--val-size", "10", "--quiet", "--out", "new.npz"]
OUTPUTS = [
    # before: train --metrics turned a trained model into JSON, the others replaced their file
    ([*TRAIN, "--metrics", "precious.npz"], "--metrics precious.npz exists"),
    ([*TRAIN, "--plot", "photo.png"], "--plot photo.png exists"),
    (["export", "model.npz", "--format", "safetensors", "--out", "victim.safetensors"],
     "--out victim.safetensors exists"),
    (["export", "model.npz", "--format", "onnx", "--out", "victim.onnx"],
     "--out victim.onnx exists"),
    (["evaluate", "model.npz", "--data-dir", "data", "--no-verify", "--plot", "photo.png"],
     "--plot photo.png exists"),
    (["plot", "weights", "model.npz", "--out", "photo.png"], "--out photo.png exists"),
    (["sweep", "--summary", "earlier", "--plot", "photo.png"], "--plot photo.png exists"),
    (["sweep", "--out", "sweep1", "--lr", "0.1,0.2", "--data-dir", "data", "--no-verify",
      "--plot", "photo.png"], "--plot photo.png exists"),
]


@pytest.mark.parametrize("argv, words", OUTPUTS, ids=[" ".join(a[:1] + a[-2:])
                                                      for a, _ in OUTPUTS])
def test_no_existing_file_is_replaced_without_force(saved, capsys, argv, words):
    before = {p.name: p.read_bytes() for p in saved.iterdir() if p.is_file()}
    code = main(argv)
    err = capsys.readouterr().err
    assert_clean_ending((code, err))
    assert code == 2 and words in err and "use --force to replace it" in err, err
    assert {p.name: p.read_bytes() for p in saved.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("argv, target", [
    (["export", "model.npz", "--format", "safetensors", "--out", "victim.safetensors",
      "--force"], "victim.safetensors"),
    (["plot", "weights", "model.npz", "--out", "photo.png", "--force"], "photo.png"),
])
def test_force_replaces(saved, capsys, argv, target):
    if argv[0] == "plot":
        pytest.importorskip("matplotlib")
    assert main(argv) == 0, capsys.readouterr().err
    assert not (saved / target).read_bytes().startswith(b"precious")


@pytest.mark.parametrize("out, words", [
    ("m.onnx", "--out m.onnx is a folder; name a file, e.g. m.onnx/model.onnx"),
    ("file.txt/m.onnx", "file.txt is a file, not a folder"),
    ("a" * 300 + ".onnx", "the name is too long for the file system"),
    ("missing/deeper/" + "b" * 250 + ".onnx", "the name is too long"),
])
def test_export_out_that_cannot_be_written_is_one_line(saved, capsys, out, words):
    # before: IsADirectoryError, NotADirectoryError, OSError tracebacks
    (saved / "m.onnx").mkdir()
    (saved / "file.txt").write_text("a file")
    code = main(["export", "model.npz", "--format", "onnx", "--out", out])
    err = capsys.readouterr().err
    assert_clean_ending((code, err))
    assert code == 2 and words in err, err


def test_export_to_a_full_disk_is_one_line_and_keeps_the_old_file(saved, capsys, monkeypatch):
    import errno
    import os

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code = main(["export", "model.npz", "--format", "safetensors", "--out",
                 "victim.safetensors", "--force"])
    err = capsys.readouterr().err
    assert_clean_ending((code, err))
    assert code == 2 and "No space left on device); free some space" in err, err
    assert (saved / "victim.safetensors").read_bytes() == b"precious victim.safetensors"
    assert sorted(p.name for p in saved.iterdir() if p.name.startswith(".")) == []


def test_export_to_a_read_only_folder_is_one_line(saved, capsys, monkeypatch):
    import errno
    import os
    import tempfile

    real = tempfile.mkstemp

    def read_only(*a, dir=None, **kw):
        if Path(dir or ".").resolve() == (saved / "ro").resolve():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    (saved / "ro").mkdir()
    code = main(["export", "model.npz", "--format", "safetensors", "--out",
                 "ro/m.safetensors"])
    err = capsys.readouterr().err
    assert_clean_ending((code, err))
    assert code == 2 and "cannot write in ro (Read-only file system)" in err, err
