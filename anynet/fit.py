"""The library path from a `TrainConfig` and data to a trained network and its model file.

    from anynet.fit import describe_data, train_model, write_model

    mnist = anynet.data.load_mnist()
    trained = train_model(TrainConfig(), mnist.train_images, mnist.train_labels,
                          mnist.val_images, mnist.val_labels,
                          test=(mnist.test_images, mnist.test_labels), data=describe_data(mnist))
    print(trained.metrics["test_accuracy"])
    write_model("model.npz", trained.net, trained.record)

`train_model` builds a `Trainer` (anynet.training), runs it from the start or from a checkpoint,
checks that the weights stayed finite, scores the network on the test set (when given) and
returns a `Trained`: the network, the final training state and the record a model file keeps
(config, data, final metrics, per-epoch history, when it was trained). `write_model` writes a
network with that record (`anynet.modelio.save_model`); `metrics_document` is the JSON that
`anynet train --metrics` writes and `anynet plot curves` reads. `anynet train`, the sweep's
workers (anynet.sweep_cluster) and `anynet.sklearn.TwoLayerClassifier` all train through here.

It is not for the command line's concerns: options, messages, locks and exit codes stay in
anynet/commands; progress goes through callbacks (`anynet.training.Callback`, such as
`anynet.training.ConsoleReporter`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from anynet.config import TrainConfig
from anynet.errors import DivergenceError
from anynet.network import TwoLayerNet
from anynet.training import Trainer, TrainState, loss_and_accuracy


@dataclass
class Trained:
    """What `train_model` returns: the network, its final state, how the run ended ("finished",
    or "stopped" on request with a checkpoint written) and, once finished, the model file's
    record (`record["metrics"]`: the final metrics). `n_batches`: batches per epoch."""

    net: TwoLayerNet
    state: TrainState
    record: dict
    status: str = "finished"
    stop_reason: str = ""
    n_batches: int = 0

    @property
    def metrics(self) -> dict:
        return self.record["metrics"]


def utc_timestamp(when: datetime | None = None) -> str:
    """`when` (default: now) in UTC, to the second, as records write it: 2026-01-31T12:00:00Z."""
    when = datetime.now(timezone.utc) if when is None else when.astimezone(timezone.utc)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def describe_data(dataset: Any) -> dict:
    """What a record says of a dataset (an `anynet.data.MNIST`): its source, its files' SHA-256
    and whether they are genuine MNIST."""
    return {"source": dataset.source, "sha256": dataset.sha256, "genuine": dataset.all_genuine}


def check_finite_weights(net: TwoLayerNet, lr: float) -> None:
    """DivergenceError if a weight overflowed to inf or nan (every loss can stay finite while
    the weights blow up: ReLUs that died pass nothing on)."""
    if not all(np.all(np.isfinite(v)) for v in net.host_params().values()):
        raise DivergenceError(f"training diverged: the weights overflowed to inf/nan with "
                              f"learning rate {lr:g} although every loss was finite. Lower the "
                              f"learning rate (try --lr {lr / 10:g})")


def final_metrics(net: TwoLayerNet, history: list[dict], test: tuple | None = None) -> dict:
    """The run's final figures: test loss and accuracy (None without `test`, a pair of images
    (N, D) and labels (N,)), the last epoch's validation and training figures, the number of
    epochs and the seconds they took."""
    test_loss = test_accuracy = None
    if test is not None:
        test_loss, test_accuracy = loss_and_accuracy(net, *test)
    last = history[-1] if history else {}
    return {"test_loss": test_loss, "test_accuracy": test_accuracy,
            "val_loss": last.get("val_loss"), "val_accuracy": last.get("val_accuracy"),
            "train_loss": last.get("train_loss"), "epochs": len(history),
            "train_seconds": sum(h["seconds"] for h in history)}


def train_model(config: TrainConfig, train_images: np.ndarray, train_labels: np.ndarray,
                val_images: np.ndarray | None = None, val_labels: np.ndarray | None = None, *,
                test: tuple | None = None, data: dict | None = None,
                resume: TrainState | tuple | None = None, record: dict | None = None,
                **trainer_options: Any) -> Trained:
    """Train a network as `config` says on host NumPy images (N, D) and labels (N,).

    test: (images, labels) to score the finished network on. data: what the record says of the
    data (`describe_data`); the numbers of training and validation examples are added.
    resume: a `TrainState` to continue from, or a checkpoint as
    `anynet.modelio.load_checkpoint` returns it (params, velocity, record, with the averaged
    weights as `.average` where the run averages them). record: entries the
    model record adds (threads, recipe). trainer_options: `Trainer`'s keywords (backend,
    checkpoint_path, callbacks, data_sha256, record_extra, fast, n_classes, teacher,
    distort_worker).
    Raises DivergenceError when the loss or the weights blow up.
    """
    trainer = Trainer(config, train_images, train_labels, val_images, val_labels,
                      **trainer_options)
    state = resume if isinstance(resume, TrainState) else None
    if isinstance(resume, tuple):
        params, velocity, checkpoint_record = resume
        state = trainer.state_from_checkpoint(params, velocity, checkpoint_record,
                                              average=getattr(resume, "average", None))
    # a run that blows up is judged from its losses and weights, not warned about by NumPy
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        result = trainer.fit(resume=state)
        if result.status != "finished":
            return Trained(result.net, result.state, {}, result.status, result.stop_reason,
                           trainer.n_batches)
        check_finite_weights(result.net, config.lr)
        metrics = final_metrics(result.net, result.state.history, test)
    if data is not None:
        data = {**data, "train_examples": int(train_images.shape[0]),
                "val_examples": 0 if val_images is None else int(val_images.shape[0])}
    model_record = {"config": config.to_dict(), "seed": config.seed, "backend": config.backend,
                    **(record or {}), "trained_at": utc_timestamp(), "data": data,
                    "metrics": metrics, "history": result.state.history}
    return Trained(result.net, result.state, model_record, n_batches=trainer.n_batches)


def write_model(path: str | Path, net: TwoLayerNet, record: dict, **extra: Any) -> None:
    """Write `net` with its record (a `Trained.record`) and `extra` entries to a model file,
    atomically (`anynet.modelio.save_model`; OSError when it cannot be written)."""
    from anynet.modelio import save_model

    save_model(path, net, {**record, **extra})


def metrics_document(record: dict) -> dict:
    """The metrics file of a trained model's record (what `anynet plot curves` draws)."""
    from anynet.plots import METRICS_FORMAT, METRICS_VERSION

    metrics = record["metrics"]
    return {"format": METRICS_FORMAT, "version": METRICS_VERSION, "config": record["config"],
            "epochs": record["history"], "test_loss": metrics["test_loss"],
            "test_accuracy": metrics["test_accuracy"]}
