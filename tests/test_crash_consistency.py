"""Crash consistency: `anynet train` killed at random moments leaves only complete files, and the
next run ends with exactly the model of an uninterrupted run.

Each trial starts a short training run in a child process, waits for a sign of progress on its
stdout (the configuration line, or the line of epoch 1, 2 or 3: each printed after that epoch's
checkpoint was written), waits a further random few milliseconds, and sends SIGINT, SIGTERM or
SIGKILL. Then:
  - the model and checkpoint on disk, if any, load (complete files: old or new, never half);
  - the next run (`--resume CHECKPOINT` if there is one, else the same command again) ends with
    W1, b1, W2, b2 equal bit for bit to a reference run's;
  - it leaves no checkpoint, no lock file and no temporary (`.*.tmp`) behind: what a SIGKILL
    left mid-write is removed by that next run.
The kill moments are drawn from a seeded generator and anchored on the child's own progress, so
a busy machine shifts nothing that is asserted; it only changes which moments get exercised.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from data_helpers import make_mnist_dir

from anynet.modelio import load_checkpoint, load_model

REPO = Path(__file__).resolve().parents[1]
TRIALS = 12  # per signal; each trial is two short child runs (about 0.3 s each when idle)
ANCHORS = ("anynet train:", "epoch   1/3", "epoch   2/3", "epoch   3/3")
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
       "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_mnist_dir(tmp_path_factory.mktemp("crash-data"), n_train=600, n_test=100,
                          seed=0)


def command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "anynet", "train", "--data-dir", str(data), "--no-verify",
            "--hidden", "8", "--epochs", "3", "--batch-size", "10", "--val-size", "20",
            "--threads", "1", "--out", str(out)]  # the count the machine's load would pick
    # changes the last bits, and these runs are compared bit for bit


def run(argv: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return result


def params(path: Path) -> dict:
    net, _ = load_model(path)
    return net.host_params()


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("crash-reference") / "m.npz"
    run(command(data, out))
    return params(out)


def interrupt(argv: list[str], signum: int, anchor: str, delay: float) -> int:
    """Run `argv`, send `signum` `delay` seconds after it prints a line starting with `anchor`
    (or never, if it ends first); return its exit status."""
    child = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True)
    try:
        for line in child.stdout:
            if line.startswith(anchor):
                time.sleep(delay)
                child.send_signal(signum)
                break
        child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode


def files_left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_killed_at_random_moments_then_resumed_equals_uninterrupted(tmp_path, data, reference,
                                                                    signum):
    rng = random.Random(f"crash-{signum}")
    resumed = 0
    for trial in range(TRIALS):
        folder = tmp_path / f"trial{trial}"
        folder.mkdir()
        out, ckpt = folder / "m.npz", folder / "m.checkpoint.npz"
        anchor = rng.choice(ANCHORS)
        delay = rng.uniform(0.0, 0.03)
        where = (f"trial {trial}: {signal.Signals(signum).name} {delay * 1000:.0f} ms after "
                 f"{anchor!r}")
        status = interrupt(command(data, out), signum, anchor, delay)
        assert status in (0, -signum, 128 + signum), f"{where}: exit {status}"

        # whatever is on disk is complete
        if out.exists():
            for k, v in params(out).items():
                assert np.array_equal(v, reference[k]), f"{where}: a model that differs"
        if ckpt.exists():
            load_checkpoint(ckpt)
        elif anchor != ANCHORS[0] and not out.exists():
            pytest.fail(f"{where}: an epoch line was printed, yet no checkpoint or model")

        # the next run finishes the job, exactly
        if ckpt.exists():
            resumed += 1
            run([*command(data, out)[:4], "--resume", str(ckpt), "--data-dir", str(data),
                 "--no-verify", *(["--force"] if out.exists() else [])])
        elif not out.exists():
            run(command(data, out))
        else:  # it had finished; a further run in the folder must refuse to replace the model
            refused = subprocess.run(command(data, out), env=ENV, capture_output=True, text=True,
                                     timeout=120)
            assert refused.returncode == 2 and "exists; use --force" in refused.stderr, where
        for k, v in params(out).items():
            assert np.array_equal(v, reference[k]), f"{where}: the resumed model differs in {k}"
        assert files_left(folder) == ["m.npz"], f"{where}: left {files_left(folder)}"
    assert resumed > 0  # epoch lines are printed after their checkpoint: some trials resume


def test_a_stale_temporary_is_removed_by_the_next_run(tmp_path, data, reference):
    """What SIGKILL in the middle of a write leaves, made on purpose: temporaries of the model and
    the checkpoint named with a dead pid. The next run removes them; a live writer's it keeps."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".m.npz.{dead.pid}.abcd1234.tmp",
             tmp_path / f".m.checkpoint.npz.{dead.pid}.efgh5678.tmp"]
    live = tmp_path / f".m.npz.{os.getpid()}.ijkl9012.tmp"
    for p in (*stale, live):
        p.write_bytes(b"half a file")
        os.utime(p, (time.time() - 60, time.time() - 60))
    run(command(data, tmp_path / "m.npz"))
    assert files_left(tmp_path) == sorted(["m.npz", live.name])
    for k, v in params(tmp_path / "m.npz").items():
        assert np.array_equal(v, reference[k])
