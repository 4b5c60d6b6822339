"""The training loop: exact resume from any checkpoint, losses read a window at a time, every
batch reported, divergence judged per window."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anynet.config import TrainConfig
from anynet.errors import DivergenceError
from anynet.modelio import load_checkpoint
from anynet.training import SYNC_EVERY, Callback, Trainer


def learnable(n=600, seed=2):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 784), dtype=np.uint8)
    return images, (images[:, :10].argmax(axis=1)).astype(np.uint8)


class StopAtEpochEnd(Callback):
    """Ask the trainer to stop at the end of epoch `epoch` (0-based)."""

    def __init__(self, epoch):
        self.epoch, self.trainer = epoch, None

    def on_train_begin(self, trainer, state):
        self.trainer = trainer

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.epoch:
            self.trainer.request_stop("test")


class _Wrapped:
    """A training step that calls `hook` instead of itself, and otherwise is `step`."""

    def __init__(self, step, hook):
        self._step, self._hook = step, hook

    def __call__(self, batch, lr):
        return self._hook(batch, lr)

    def __getattr__(self, name):
        return getattr(self._step, name)


def stop_during_step(monkeypatch, trainer_of, n: int) -> None:
    """Make the n-th training step (1-based, counted over the run) ask its trainer to stop, as
    a signal handler would: from inside the step, whatever the window."""
    import anynet.training as training

    make = training.make_train_step

    def make_interrupted(*args, **kwargs):
        step, seen = make(*args, **kwargs), []

        def hook(batch, lr):
            seen.append(batch)
            if len(seen) == n:
                trainer_of().request_stop("test")
            return step(batch, lr)

        return _Wrapped(step, hook)

    monkeypatch.setattr(training, "make_train_step", make_interrupted)


def host(params):
    from anynet.backend import to_numpy

    return {k: to_numpy(v) for k, v in params.items()}


@pytest.mark.parametrize("momentum, augment", [(0.0, "none"), (0.5, "none"),
                                               (0.5, "affine+elastic")])
@pytest.mark.parametrize("stop_epoch, stop_batch", [(0, 0), (1, 0), (1, 7), (0, 18)])
def test_resume_from_any_checkpoint_equals_the_uninterrupted_run(tmp_path, backend, momentum,
                                                                augment, stop_epoch, stop_batch,
                                                                monkeypatch):
    images, labels = learnable()
    cfg = TrainConfig(hidden=8, epochs=3, batch_size=32, lr=0.1, momentum=momentum, val_size=0,
                      augment=augment)
    whole = Trainer(cfg, images, labels, backend=backend).fit()

    ckpt = tmp_path / "run.checkpoint.npz"
    if stop_batch:  # mid-epoch, 19 batches an epoch
        stop_during_step(monkeypatch, lambda: first_trainer, stop_epoch * 19 + stop_batch)
        callbacks = []
    else:
        callbacks = [StopAtEpochEnd(stop_epoch)]
    first_trainer = Trainer(cfg, images, labels, backend=backend, checkpoint_path=ckpt,
                            callbacks=callbacks)
    first = first_trainer.fit()
    monkeypatch.undo()
    assert first.status == "stopped"
    params, velocity, record = load_checkpoint(ckpt)
    # an epoch's end (batch 0) was where every end-of-epoch resume used to replay epoch 1's
    # shuffle
    assert (record["epoch"], record["batch"]) == ((stop_epoch + 1, 0) if stop_batch == 0
                                                   else (stop_epoch, stop_batch))
    trainer = Trainer(cfg, images, labels, backend=backend, checkpoint_path=ckpt)
    resumed = trainer.fit(trainer.state_from_checkpoint(params, velocity, record))
    assert resumed.status == "finished"
    a, b = host(whole.state.params), host(resumed.state.params)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bit for bit
    assert [h["train_loss"] for h in whole.state.history] == \
        [h["train_loss"] for h in resumed.state.history]


class Recorder(Callback):
    def __init__(self):
        self.batches = []

    def on_batch_end(self, epoch, batch, loss):
        self.batches.append((epoch, batch, loss))


def test_callbacks_see_every_batch_and_its_loss_in_order(backend):
    images, labels = learnable(n=1000)
    cfg = TrainConfig(hidden=6, epochs=2, batch_size=8, lr=0.05, val_size=0)
    rec = Recorder()
    result = Trainer(cfg, images, labels, backend=backend, callbacks=[rec]).fit()
    n_batches = 125
    assert [(e, b) for e, b, _ in rec.batches] == [(e, b) for e in range(2)
                                                  for b in range(1, n_batches + 1)]
    assert all(isinstance(loss, float) and math.isfinite(loss) for *_, loss in rec.batches)
    for epoch in range(2):
        mean = sum(loss for e, _, loss in rec.batches if e == epoch) / n_batches
        assert result.state.history[epoch]["train_loss"] == pytest.approx(mean, rel=1e-12)


def test_divergence_names_the_batch_and_window_and_keeps_the_checkpoint(tmp_path, backend):
    images, labels = learnable()
    ckpt = tmp_path / "run.checkpoint.npz"
    calm = TrainConfig(hidden=8, epochs=1, batch_size=10, lr=0.1, val_size=0,
                       schedule="constant")
    Trainer(calm, images, labels, backend=backend, checkpoint_path=ckpt).fit()
    before = ckpt.read_bytes()
    wild = TrainConfig(hidden=8, epochs=2, batch_size=10, lr=1e4, val_size=0,
                       schedule="constant")
    with pytest.raises(DivergenceError) as caught:
        Trainer(wild, images, labels, backend=backend, checkpoint_path=ckpt).fit()
    message = str(caught.value)
    assert "epoch 1, batch " in message and f"batches 1-{SYNC_EVERY}" in message
    assert "Lower the learning rate" in message and str(ckpt) in message
    assert ckpt.read_bytes() == before  # the last good checkpoint is untouched


def test_the_host_reads_the_device_once_per_window(monkeypatch):
    """On PyTorch, count every way a tensor's value reaches the host during training."""
    torch = pytest.importorskip("torch", reason="counts PyTorch's host reads; torch absent")
    reads = []
    for name in ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    images, labels = learnable(n=1200)
    epochs, batch = 2, 10
    n_batches = 1200 // batch
    for momentum in (0.0, 0.5):
        reads.clear()
        cfg = TrainConfig(hidden=6, epochs=epochs, batch_size=batch, lr=0.05, val_size=0,
                          momentum=momentum)
        Trainer(cfg, images, labels, backend="torch").fit()
        # per epoch: one read per window of losses, and one per evaluation for the epoch's
        # metrics; once per run, the fused step's taking over of the four parameters (and as
        # many velocities)
        limit = epochs * (math.ceil(n_batches / SYNC_EVERY) + 2) + 8
        assert 0 < len(reads) <= limit, (momentum, len(reads), reads[:20])


def test_a_stop_during_the_last_batch_lets_the_run_finish(monkeypatch):
    # before: "stopped" at epoch 2, batch 0 of 2 epochs: the CLI exited 130 and wrote no model
    images, labels = learnable(n=64)
    trainer = None
    stop_during_step(monkeypatch, lambda: trainer, 8)  # the last of 2 epochs x 4 batches
    trainer = Trainer(TrainConfig(hidden=4, epochs=2, batch_size=16, val_size=0), images, labels)
    result = trainer.fit()
    assert (result.status, result.state.epoch, result.state.batch) == ("finished", 2, 0)


@pytest.mark.parametrize("change, words", [
    (lambda t, v: (t, np.full_like(v, 9)), "the validation labels run from 9 to 9, outside "
                                           "the network's classes 0..4"),
    (lambda t, v: (t, v - 1), "the validation labels run from -1 to"),
    (lambda t, v: (t.astype(np.float64) + 0.5, v), "the training labels are float64, not "
                                                   "integer classes"),
])
def test_labels_that_are_not_the_network_s_classes_are_refused(change, words):
    # before: validation labels out of range gave val_loss 0.0; float labels were truncated
    images, labels = learnable(n=80)
    train, val = change((labels[:64] % 5).astype(np.int64), (labels[64:] % 5).astype(np.int64))
    config = TrainConfig(hidden=4, epochs=1, batch_size=16, val_size=0)
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(".", r"\.")):
        Trainer(config, images[:64], train, images[64:], val, n_classes=5)
