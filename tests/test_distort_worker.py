"""The distortion worker (anynet.distort_worker): a second process that distorts the next chunk
while this one trains. It must change the time and nothing else: the same images bit for bit,
with a resume mid-epoch, and when the worker dies; and it must leave no process or shared
memory behind."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from multiprocessing import shared_memory

import numpy as np
import pytest
from data_helpers import make_mnist_dir

from anynet import distort_worker as dw
from anynet.augment import Distortion
from anynet.backend import probe as dw_probe
from anynet.cli import main
from anynet.config import TrainConfig
from anynet.modelio import load_checkpoint, load_model
from anynet.training import Callback, Trainer


def learnable(n=3000, seed=3):
    """n images: 1024 rows a chunk at batch 32, so three chunks an epoch (the last short)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 784), dtype=np.uint8)
    return images, (images[:, :10].argmax(axis=1)).astype(np.uint8)


CONFIG = TrainConfig(hidden=8, epochs=2, batch_size=32, lr=0.1, momentum=0.5, val_size=0,
                     augment="affine", backend="numpy")


@pytest.fixture
def workers(monkeypatch):
    """Every DistortionWorker the test makes, with how many chunks each handed over."""
    made = []

    class Counting(dw.DistortionWorker):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.handed = 0
            made.append(self)

        def result(self, epoch, chunk):
            rows = super().result(epoch, chunk)
            self.handed += rows is not None
            return rows

    monkeypatch.setattr(dw, "DistortionWorker", Counting)
    return made


POSIX_SIGNALS = pytest.mark.skipif(sys.platform == "win32", reason="sends POSIX signals")


def params(result):
    return {k: np.array(v) for k, v in result.state.params.items()}


def assert_same(a, b):
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bit for bit


@pytest.mark.parametrize("setting, backend, kind, threads, free, expected", [
    ("auto", "numpy", "affine", None, 2, (True, 1)),     # a quiet 2-core machine
    ("auto", "numpy", "affine", None, 8, (True, 7)),
    ("auto", "numpy", "affine", None, 1, (False, None)),  # no core to spare
    ("auto", "numpy", "affine", 1, 2, (True, 1)),          # --threads 1 leaves one
    ("auto", "numpy", "affine", 2, 2, (False, 2)),         # --threads 2 leaves none
    ("on", "numpy", "affine", 2, 2, (True, 2)),            # asked for: taken anyway
    ("on", "numpy", "affine", None, 1, (True, 1)),
    ("auto", "numpy", "none", None, 2, (False, None)),     # nothing to distort
    ("on", "torch", "affine", None, 2, (False, None)),     # NumPy only
    ("off", "numpy", "affine", None, 2, (False, None)),
])
def test_plan(setting, backend, kind, threads, free, expected):
    assert dw.plan(setting, backend, kind, threads, free) == expected


def test_plan_refuses_an_unknown_setting():
    with pytest.raises(ValueError, match="auto, on, off"):
        dw.plan("sometimes", "numpy", "affine", None, 2)


def test_the_worker_trains_on_the_same_images_bit_for_bit(workers):
    images, labels = learnable()
    alone = Trainer(CONFIG, images, labels).fit()
    assert not workers
    ahead = Trainer(CONFIG, images, labels, distort_worker=True).fit()
    assert_same(params(alone), params(ahead))
    assert [h["train_loss"] for h in alone.state.history] == \
        [h["train_loss"] for h in ahead.state.history]
    (worker,) = workers
    assert worker.alive and worker.handed == 6  # every chunk of both epochs came from it
    assert worker._proc.poll() == 0             # and it ended when training did


def test_elastic_and_float64_are_the_same_too(workers):
    images, labels = learnable(n=1500)
    cfg = TrainConfig(hidden=8, epochs=1, batch_size=32, lr=0.1, val_size=0,
                      augment="affine+elastic", dtype="float64", backend="numpy")
    alone = Trainer(cfg, images, labels).fit()
    ahead = Trainer(cfg, images, labels, distort_worker=True).fit()
    assert_same(params(alone), params(ahead))
    assert workers[0].handed == 2


def test_no_worker_where_it_cannot_serve(workers):
    images, labels = learnable(n=600)
    Trainer(TrainConfig(hidden=8, epochs=1, val_size=0, backend="numpy"), images, labels,
            distort_worker=True).fit()                                   # no distortions
    Trainer(CONFIG, images.astype(np.float32) / 255, labels,
            distort_worker=True).fit()                                   # not uint8 pixels
    assert not workers


class StopAt(Callback):
    """Ask the trainer to stop once batch `batch` of epoch `epoch` is reported."""

    def __init__(self, epoch, batch):
        self.at, self.trainer = (epoch, batch), None

    def on_train_begin(self, trainer, state):
        self.trainer = trainer

    def on_batch_end(self, epoch, batch, loss):
        if (epoch, batch) >= self.at:
            self.trainer.request_stop("test")


def test_a_run_stopped_mid_epoch_resumes_bit_for_bit_with_the_worker(tmp_path, workers):
    images, labels = learnable()
    whole = Trainer(CONFIG, images, labels).fit()
    ckpt = tmp_path / "run.checkpoint.npz"
    first = Trainer(CONFIG, images, labels, checkpoint_path=ckpt, callbacks=[StopAt(0, 40)],
                    distort_worker=True).fit()
    assert first.status == "stopped"
    p, v, record = load_checkpoint(ckpt)
    assert record["epoch"] == 0 and 40 <= record["batch"] < 94  # in the second chunk or after
    trainer = Trainer(CONFIG, images, labels, checkpoint_path=ckpt, distort_worker=True)
    resumed = trainer.fit(trainer.state_from_checkpoint(p, v, record))
    assert resumed.status == "finished"
    assert_same(params(whole), params(resumed))
    assert all(w._proc.poll() is not None for w in workers)


class KillWorker(Callback):
    """Kill the worker process once batch `batch` of the first epoch is reported."""

    def __init__(self, workers, batch):
        self.workers, self.batch = workers, batch

    def on_batch_end(self, epoch, batch, loss):
        if batch == self.batch and epoch == 0:
            self.workers[0]._proc.send_signal(signal.SIGKILL)


@POSIX_SIGNALS
def test_a_worker_that_dies_changes_nothing_but_the_time(workers, capsys):
    images, labels = learnable()
    alone = Trainer(CONFIG, images, labels).fit()
    ahead = Trainer(CONFIG, images, labels, callbacks=[KillWorker(workers, 10)],
                    distort_worker=True).fit()
    assert_same(params(alone), params(ahead))
    (worker,) = workers
    assert not worker.alive and worker.handed < 6
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anynet: the distortion worker stopped (")
    assert "distorting in this process from here on" in err[0]


def test_the_worker_checks_what_it_is_asked(capsys):
    images = np.zeros((10, 784), np.uint8)
    worker = dw.DistortionWorker(images, Distortion("affine"), seed=0, dtype="float32",
                                 rows=64)
    try:
        worker.request(0, 0, np.array([0, 3, 9]))
        rows = worker.result(0, 0)
        assert rows is not None and rows.shape == (3, 784) and worker.alive
        assert worker.result(0, 1) is None  # nothing was asked for
        worker.request(0, 1, np.array([0, 10]))  # a row that is not there
        assert worker.result(0, 1) is None and not worker.alive
        assert "a row index outside the training images" in worker.failure
        with pytest.raises(ValueError, match="65 rows"):
            worker.request(0, 2, np.zeros(65, np.int64))
    finally:
        worker.close()
    assert capsys.readouterr().err.count("the distortion worker stopped") == 1


def test_close_ends_the_process_and_frees_the_memory():
    worker = dw.DistortionWorker(np.zeros((4, 784), np.uint8), Distortion("affine"), seed=0,
                                 dtype="float32", rows=32)
    names = [seg.name for seg in worker._segments]
    worker.request(0, 0, np.arange(4))
    worker.close()
    worker.close()  # twice is fine
    assert worker._proc.poll() is not None
    for name in names:
        with pytest.raises(FileNotFoundError):
            shared_memory.SharedMemory(name=name)


@pytest.mark.parametrize("header", ["not json\n", json.dumps({"n": 1}) + "\n", "",
                                    json.dumps({"anynet": "/elsewhere/anynet/x.py"}) + "\n"])
def test_the_worker_answers_a_bad_start_with_one_error_line(header):
    out = io.StringIO()
    assert dw.serve(io.StringIO(header), out) == 2
    assert out.getvalue().startswith("error: could not start (")
    assert out.getvalue().count("\n") == 1


def test_train_distort_worker_option(tmp_path, capsys):
    data = make_mnist_dir(tmp_path / "data", n_train=1100, n_test=100, seed=0)
    base = ["train", "--data-dir", str(data), "--no-verify", "--hidden", "8", "--epochs", "1",
            "--batch-size", "32", "--augment", "affine", "--threads", "1", "--val-size", "0"]
    assert main([*base, "--out", str(tmp_path / "on.npz"), "--distort-worker", "on"]) == 0
    assert "affine (" in (out := capsys.readouterr().out)
    assert "made ahead in a second process" in out
    assert main([*base, "--out", str(tmp_path / "off.npz"), "--distort-worker", "off"]) == 0
    assert "made ahead" not in capsys.readouterr().out
    (on, _), (off, _) = load_model(tmp_path / "on.npz"), load_model(tmp_path / "off.npz")
    assert_same(on.params, off.params)
    assert main([*base, "--distort-worker", "maybe"]) == 2
    assert "--distort-worker: invalid choice: 'maybe'" in capsys.readouterr().err
    if not dw_probe("cupy"):
        return  # (here auto would choose CuPy, which has no worker)
    assert main([*base, "--backend", "auto", "--out", str(tmp_path / "auto.npz"),
                 "--distort-worker", "on"]) == 0
    assert "made ahead in a second process" in capsys.readouterr().out


def test_a_worker_that_cannot_start_changes_nothing_but_the_time(workers, monkeypatch, capsys):
    images, labels = learnable(n=1500)
    alone = Trainer(CONFIG, images, labels).fit()
    monkeypatch.setattr(dw.sys, "executable", "false")  # a "Python" that exits 1 at once
    ahead = Trainer(CONFIG, images, labels, distort_worker=True).fit()
    assert_same(params(alone), params(ahead))
    assert workers[0].handed == 0
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("anynet: the distortion worker stopped (it ended with exit code 1")


def test_no_shared_memory_means_no_worker_and_the_same_run(workers, monkeypatch, capsys):
    images, labels = learnable(n=1500)
    alone = Trainer(CONFIG, images, labels).fit()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dw.shared_memory, "SharedMemory", full)
    ahead = Trainer(CONFIG, images, labels, distort_worker=True).fit()
    assert_same(params(alone), params(ahead))
    assert not workers  # never made
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == ("anynet: no distortion worker ([Errno 28] No space left on device); "
                    "distorting in this process")


def test_a_full_shared_memory_folder_is_an_error_not_a_crash(workers, monkeypatch, capsys):
    """Writing into a segment that a full tmpfs cannot back is a SIGBUS, the end of the
    process without a word: the room is reserved first, and no room means no worker."""
    import os

    if not hasattr(os, "posix_fallocate"):
        pytest.skip("no posix_fallocate on this system: nothing to reserve segments with")
    images, labels = learnable(n=1500)
    alone = Trainer(CONFIG, images, labels).fit()
    made = []
    real = dw.shared_memory.SharedMemory

    def remembered(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dw.shared_memory, "SharedMemory", remembered)
    monkeypatch.setattr(dw.os, "posix_fallocate", full)
    ahead = Trainer(CONFIG, images, labels, distort_worker=True).fit()
    assert_same(params(alone), params(ahead))
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == ("anynet: no distortion worker ([Errno 28] no room for 1,176,000 bytes of "
                    "shared memory: No space left on device); distorting in this process")
    for seg in made:  # the segment made before the refusal is gone again
        with pytest.raises(FileNotFoundError):
            real(name=seg.name)


@POSIX_SIGNALS
def test_a_worker_that_stops_answering_is_left_behind_in_bounded_time(workers, monkeypatch,
                                                                      capsys):
    images, labels = learnable()
    alone = Trainer(CONFIG, images, labels).fit()
    monkeypatch.setattr(dw, "REPLY_TIMEOUT_S", 0.5)

    class Freeze(Callback):
        def on_batch_end(self, epoch, batch, loss):
            if (epoch, batch) == (0, 10):
                workers[0]._proc.send_signal(signal.SIGSTOP)

    ahead = Trainer(CONFIG, images, labels, callbacks=[Freeze()], distort_worker=True).fit()
    assert_same(params(alone), params(ahead))
    assert workers[0]._proc.poll() == -signal.SIGKILL  # killed, not left stopped
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("anynet: the distortion worker stopped (no answer in 0.5 s)")


@POSIX_SIGNALS
def test_a_ctrl_c_is_the_training_s_to_handle_not_the_worker_s(workers, capsys):
    """A Ctrl-C at a terminal goes to the whole foreground process group: training stops and
    checkpoints on it (anynet.callbacks.StopOnSignals) and then ends the worker. The worker
    runs in a session of its own and ignores SIGINT, so it does not die mid-chunk."""
    images, labels = learnable()

    class Interrupt(Callback):
        def on_batch_end(self, epoch, batch, loss):
            if (epoch, batch) == (0, 10):
                workers[0]._proc.send_signal(signal.SIGINT)

    Trainer(CONFIG, images, labels, callbacks=[Interrupt()], distort_worker=True).fit()
    assert workers[0].alive and workers[0].handed == 6
    assert capsys.readouterr().err == ""
    assert workers[0]._proc.poll() == 0


def test_the_worker_imports_the_parent_s_anynet_whatever_the_folder(tmp_path, monkeypatch):
    """`python -c` would put the current folder first on the worker's path: another anynet
    there must not be the one it runs."""
    (tmp_path / "anynet").mkdir()
    (tmp_path / "anynet" / "__init__.py").write_text("raise ImportError('the wrong anynet')\n")
    monkeypatch.chdir(tmp_path)
    worker = dw.DistortionWorker(np.zeros((4, 784), np.uint8), Distortion("affine"), seed=0,
                                 dtype="float32", rows=32)
    try:
        worker.request(0, 0, np.arange(4))
        assert worker.result(0, 0) is not None and worker.alive, worker.failure
    finally:
        worker.close()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file limits")
def test_a_parent_with_many_files_open_still_waits_with_a_time_limit(workers):
    """select() takes no descriptor above 1023: the answers are read by a thread instead."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if max(soft, hard) < 1200 and hard != resource.RLIM_INFINITY:
        pytest.skip(f"this process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = []
    try:
        while len(held) < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        images, labels = learnable()
        Trainer(CONFIG, images, labels, distort_worker=True).fit()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert workers[0].alive and workers[0].handed == 6
