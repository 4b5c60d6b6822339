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
from fuzz_helpers import assert_clean_ending
from hypothesis import given, settings
from hypothesis import strategies as st

from anynet.cli import main

NUMERIC = ["--lr", "--momentum", "--weight-decay", "--seed", "--epochs", "--batch-size",
           "--hidden", "--val-size", "--threads"]
PATHS = ["--out", "--metrics", "--plot", "--resume", "--data-dir"]
CHOICES = {"--schedule": ["constant", "step", "cosine", "linear", ""],
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
