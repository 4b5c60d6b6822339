"""The training loop: mini-batch SGD over MNIST, with checkpoints, resume and divergence checks.

Each epoch shuffles the training set with a seeded NumPy Generator on the host, then for each
batch: gather the uint8 pixels on the backend, compute the loss and gradients
(`TwoLayerNet.loss_and_grads_array`), and let the optimizer step (`SGD.step`); `anynet.steps`
holds that step, and NumPy's faster arrangement of the same math. Pixels stay uint8 on the
device; each batch becomes floats only when it is used.

The loop reports through callbacks (`Callback`, anynet.callbacks) and never prints;
`ConsoleReporter` is the callback that prints (a progress bar per epoch, a line per epoch). It
writes a checkpoint at the end of every epoch and when asked to stop (`Trainer.request_stop`;
`StopOnSignals` asks on Ctrl-C or SIGTERM), at the exact batch it reached; `fit(resume=...)`
continues from one, and the finished model equals that of an uninterrupted run. The rules of
resuming sit here too: a checkpoint's position must fit the data
(`Trainer.state_from_checkpoint`), a resumed run keeps its checkpoint's config
(`resumed_config`), and checkpoints go beside the model (`checkpoint_path_for`). Turning a
finished run into a model file is anynet.fit's.

The batch losses stay on the device and are read a window of SYNC_EVERY batches at a time (and
at epoch ends, checkpoints and stop requests): one synchronisation per window instead of one per
batch. Callbacks see every batch and its loss, a window late.

Training's levers (anynet.levers): the steps apply dropout, label smoothing, a teacher's targets
(anynet.distill; `Trainer(..., teacher=)`) and the EMA of the weights; the loop takes the SWA's
snapshot at each epoch's end, and reports, checkpoints and returns the averaged weights beside
the trained ones (`TrainState.average`).

Divergence: a batch loss that is not finite, or above DIVERGENCE_LOSS, stops training with a
`DivergenceError` when its window is read, naming the batch and the window, and leaving the last
checkpoint as it was (checkpoints are only written after a window is read and judged). The bound
is needed because the loss is computed stably (log-sum-exp): a far too large learning rate
rarely overflows it; it blows up to 1e7 or more, the ReLUs die, and the run would crawl on at
chance level.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anynet import evaluation, levers
from anynet.backend import Backend, get_backend, is_named, parse_spec
from anynet.batches import check_classes
from anynet.callbacks import Callback, ConsoleReporter, StopOnSignals  # noqa: F401 (re-exported)
from anynet.config import TrainConfig, short_repr
from anynet.errors import DivergenceError, ModelFileError
from anynet.modelio import save_checkpoint
from anynet.network import TwoLayerNet
from anynet.optim import SGD, make_schedule
from anynet.preprocess import SIDE
from anynet.steps import HeldInterrupts, TrainStep, make_train_step

if TYPE_CHECKING:
    from anynet.distill import Teacher

TRAIN_ACCURACY_SAMPLE = 10_000  # training examples scored at each epoch's end
# A mean cross-entropy of 100 gives the true class probability e^-100 on average; a uniform guess
# scores log(10) = 2.3, and no healthy run comes near. Above it, the run has blown up.
DIVERGENCE_LOSS = 100.0
# The loop reads the batch losses from the device once per window of this many batches (and at
# epoch ends, checkpoints and stop requests), so a GPU never waits for the host after a batch.
SYNC_EVERY = 50


@dataclass
class TrainState:
    """Everything that determines the rest of a run: what a checkpoint holds.

    `epoch` is the current epoch (0-based) and `batch` the next batch in it; `rng_state` is the
    shuffling Generator's state before it drew the current epoch's permutation (at an epoch's
    end: before the next epoch's), so that permutation can be drawn again; `loss_sum` sums the
    current epoch's batch losses so far. `extra` holds entries the caller adds to every
    checkpoint's record (the command line records the run's output path there). `average`: the
    weight averaging's state ({} without one): the EMA's m, or the SWA's mean so far.
    """

    params: dict
    velocity: dict
    epoch: int = 0
    batch: int = 0
    step: int = 0
    rng_state: dict | None = None
    loss_sum: float = 0.0
    history: list[dict] = field(default_factory=list)
    average: dict = field(default_factory=dict)

    def record(self, config: TrainConfig, data_sha256: dict, extra: dict | None = None) -> dict:
        return {**(extra or {}), "config": config.to_dict(), "epoch": self.epoch,
                "batch": self.batch, "step": self.step, "rng_state": self.rng_state,
                "loss_sum": self.loss_sum, "history": self.history, "data_sha256": data_sha256}


@dataclass
class FitResult:
    """How `fit` ended ("finished" or "stopped"), the network, and the final state. `net` is
    the network the run reports: its averaged weights where the config averages them (and an
    average has begun), else the trained ones (`state.params` holds those in any case)."""

    status: str
    net: TwoLayerNet
    state: TrainState
    stop_reason: str = ""


def loss_and_accuracy(net: TwoLayerNet, images: Any, labels: Any) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `net` on a dataset (`anynet.evaluation.evaluate`).

    images uint8 (N, D), labels (N,), host or backend arrays -> (loss, accuracy in [0, 1]).
    """
    result = evaluation.evaluate(net, images, labels)
    return result.loss, result.accuracy


def resumed_config(checkpoint_config: dict, asked: dict) -> TrainConfig:
    """The config a run resumed from a checkpoint trains with: the checkpoint's own. A resumed
    run is the same run, so only where it computes (`backend`) may differ from what `asked`
    (the options given, by field name) says; ValueError names the options that differ."""
    config = TrainConfig.from_dict(checkpoint_config)
    if "backend" not in asked and not is_named(parse_spec(config.backend)[0]):
        # a module name read from a file is never imported (that would run the file's choice
        # of code); the user names it
        name = short_repr(config.backend)
        raise ValueError(f"the checkpoint was trained on the backend {name}, which anynet "
                         f"imports only when asked: give --backend {name} to resume on it")
    differing = [f"--{k.replace('_', '-')} {v} (checkpoint: {getattr(config, k)})"
                 for k, v in asked.items() if k != "backend" and getattr(config, k) != v]
    if differing:
        raise ValueError("a resumed run keeps its checkpoint's configuration; these options "
                         f"differ: {', '.join(differing)}. Drop them, or start a new run")
    return replace(config, backend=asked["backend"]) if "backend" in asked else config


def _check_labels(name: str, labels: Any, n_classes: int) -> None:
    """Host labels must be integer classes 0..n_classes-1 (ValueError): a float label would be
    truncated, and one out of range gives a loss of 0 where it should give an error."""
    if not isinstance(labels, np.ndarray) or labels.size == 0:
        return  # backend arrays are the caller's; the fused step checks its own on the device
    if labels.dtype.kind not in "iu":
        raise ValueError(f"the {name} labels are {labels.dtype}, not integer classes")
    check_classes(name, labels, n_classes)


def checkpoint_path_for(model_path: str | Path) -> Path:
    """Where the checkpoints of a run writing `model_path` go: MODEL.checkpoint.npz beside it."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".checkpoint.npz")


class Trainer:
    """Trains a `TwoLayerNet` as `config` says on the given training (and validation) data.

    images (N, D) (uint8 pixels, or features as floats) and labels (N,) in 0 .. K - 1 are host
    NumPy arrays; they are moved to the backend once. The network is D-H-K: D from the images,
    K = `n_classes` (None: the largest training label + 1). `config` is a `TrainConfig`, which
    checked itself when it was made. `checkpoint_path`: where checkpoints go (None: none are
    written). The config's preprocessing (`anynet.preprocess`) is applied to the images once,
    here; the network the run returns carries it, to apply to whatever it is given.
    `distort_worker`: distort the next chunk of images in a second process while this one
    trains (`anynet.distort_worker`; NumPy's fused step and uint8 images only, elsewhere
    ignored). It changes the time, never the result.
    """

    def __init__(self, config: TrainConfig, train_images: np.ndarray, train_labels: np.ndarray,
                 val_images: np.ndarray | None = None, val_labels: np.ndarray | None = None, *,
                 backend: str | Backend | None = None, checkpoint_path: str | Path | None = None,
                 callbacks: list[Callback] | tuple = (), data_sha256: dict | None = None,
                 record_extra: dict | None = None, fast: bool = True,
                 n_classes: int | None = None, teacher: Any = None,
                 distort_worker: bool = False):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config, self.fast, self.distort_worker = config, fast, distort_worker
        self.backend = get_backend(backend if backend is not None else config.backend)
        self.optimizer = SGD(lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                             weight_decay=config.weight_decay)
        self.n_train = int(train_images.shape[0])
        if self.n_train == 0:
            raise ValueError("no training examples")
        self.n_in = int(train_images.shape[1])
        self.preprocessing = config.preprocessing()  # of the images, here, once (below)
        if not self.preprocessing.is_none and self.n_in != SIDE * SIDE:
            raise ValueError(f"preprocess {self.preprocessing} reads {SIDE}x{SIDE} images "
                             f"({SIDE * SIDE} inputs); this data has {self.n_in}")
        self._classes_given = n_classes is not None
        self.n_classes = int(n_classes if n_classes is not None else np.max(train_labels) + 1)
        self.levers = levers.Levers.from_config(config, self._teacher(teacher))
        for name, labels in (("training", train_labels), ("validation", val_labels)):
            _check_labels(name, labels, self.n_classes)
        self.n_batches = math.ceil(self.n_train / config.batch_size)
        self.schedule = make_schedule(config.schedule, config.lr, config.epochs * self.n_batches)
        b = self.backend
        # on the device, preprocessed once: the networks trained here see them as they are,
        # and only the network the run returns carries the preprocessing (result_net)
        self.train_images = self.preprocessing(b.asarray(train_images))  # uint8 pixels
        self.train_labels = b.asarray(train_labels, "int64")
        self.val_images = (self.preprocessing(b.asarray(val_images)) if val_images is not None
                           else None)
        self.val_labels = b.asarray(val_labels, "int64") if val_labels is not None else None
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.callbacks = list(callbacks)
        self.data_sha256 = data_sha256 or {}
        self.record_extra = dict(record_extra or {})
        self._stop_reason = ""

    def _teacher(self, teacher: Any) -> Teacher | None:
        """The `anynet.distill.Teacher` of `teacher` (a Committee, a TwoLayerNet or a list of
        them, on this trainer's backend) with the config's weight and temperature; None without
        one. A teacher and `config.distill` > 0 go together; it must take this data's D inputs
        to its K classes."""
        from anynet.committee import Committee
        from anynet.distill import Teacher, preprocessing_mismatch

        if teacher is None:
            if self.config.distill:
                raise ValueError(f"distill {self.config.distill:g} needs a teacher: a committee "
                                 "of trained networks (Trainer's teacher=)")
            return None
        if not self.config.distill:
            raise ValueError("a teacher was given but distill is 0: set distill, the teacher's "
                             "share of the targets, in (0, 1]")
        if not isinstance(teacher, Committee):
            teacher = Committee(list(teacher) if isinstance(teacher, (list, tuple))
                                else [teacher])
        D, _, K = teacher.sizes
        if (D, K) != (self.n_in, self.n_classes):
            raise ValueError(f"the teacher takes {D} inputs to {K} classes; this data has "
                             f"{self.n_in} inputs and {self.n_classes} classes")
        if teacher.backend.spec != self.backend.spec:
            raise ValueError(f"the teacher computes on {teacher.backend.spec}, the training on "
                             f"{self.backend.spec}: load it on the training's backend")
        # The teacher reads the student's images, preprocessed once already: its members must
        # have been trained on images preprocessed alike, and do not preprocess them again.
        problem = preprocessing_mismatch(teacher, self.preprocessing)
        if problem:
            raise ValueError(problem)
        teacher = Committee([net.with_preprocessing(None) for net in teacher.members],
                            teacher.names)
        return Teacher(teacher, self.config.distill, self.config.temperature)

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to stop after the current batch, writing a checkpoint (signal-safe)."""
        self._stop_reason = reason

    # --- state ---------------------------------------------------------------------------------

    def initial_state(self) -> TrainState:
        net = TwoLayerNet(n_in=self.n_in, n_hidden=self.config.hidden, n_out=self.n_classes,
                          backend=self.backend,
                          dtype=self.config.dtype, seed=self.config.seed)
        return TrainState(params=net.params, velocity=self.optimizer.init(net.params),
                          average=levers.initial_average(self.config, net.params))

    def state_from_checkpoint(self, params: dict, velocity: dict, record: dict,
                              average: dict | None = None) -> TrainState:
        """The state a checkpoint (`anynet.modelio.load_checkpoint`, which checked every field)
        holds, on this trainer's backend; `average`, its averaged weights (the `average` of
        what load_checkpoint returns) where the config averages them. Its position must fit
        this data: a batch within an epoch of `n_batches`, and step = epoch * n_batches +
        batch."""
        epoch, batch, step = record["epoch"], record["batch"], record["step"]
        kind, _ = self.config.averaging()
        if (kind == "ema" or levers.swa_count(self.config, epoch) > 0) and not average:
            raise ModelFileError(f"the checkpoint's run averages its weights (average "
                                 f"{self.config.average}): resume with the averaged weights it "
                                 "holds (anynet.modelio.load_checkpoint(...).average)")
        D, K = params["W1"].shape[0], params["W2"].shape[1]
        # K inferred from the labels seen (no n_classes given) only says how many at least
        fits = K == self.n_classes or (not self._classes_given and K > self.n_classes)
        if D != self.n_in or not fits:
            raise ModelFileError(
                f"the checkpoint's network takes {D} inputs to {K} classes; this data has "
                f"{self.n_in} inputs and {self.n_classes} classes: resume with the data it was "
                "trained on")
        self.n_classes = K
        if batch >= self.n_batches or step != epoch * self.n_batches + batch:
            raise ModelFileError(
                f"the checkpoint's position (epoch {epoch + 1}, batch {batch}, step {step}) does "
                f"not fit this data ({self.n_batches} batches per epoch): resume with the data "
                "it was trained on")
        b = self.backend
        return TrainState(
            params={k: b.asarray(v) for k, v in params.items()},
            velocity={k: b.asarray(v) for k, v in velocity.items()},
            epoch=int(record["epoch"]), batch=int(record["batch"]), step=int(record["step"]),
            rng_state=record["rng_state"], loss_sum=float(record.get("loss_sum", 0.0)),
            history=list(record["history"]),
            average={k: b.asarray(v) for k, v in (average or {}).items()},
        )

    def write_checkpoint(self, state: TrainState) -> None:
        if self.checkpoint_path is None:
            return
        host = self.backend.to_numpy
        save_checkpoint(self.checkpoint_path, {k: host(v) for k, v in state.params.items()},
                        {k: host(v) for k, v in state.velocity.items()},
                        state.record(self.config, self.data_sha256, self.record_extra),
                        average={k: host(v) for k, v in state.average.items()})
        for cb in self.callbacks:
            cb.on_checkpoint(self.checkpoint_path, state)

    # --- the loop ------------------------------------------------------------------------------

    def fit(self, resume: TrainState | None = None) -> FitResult:
        """Train from the start, or from `resume`, to the configured number of epochs."""
        cfg, b = self.config, self.backend
        state = resume if resume is not None else self.initial_state()
        net = TwoLayerNet.from_params(state.params, backend=b)
        distortion = cfg.distortion()
        distorter = None
        if distortion.kind != "none":
            from anynet.augment import Distorter

            distorter = Distorter(distortion, b, seed=cfg.seed, dtype=cfg.dtype)
        step = make_train_step(net, self.optimizer, self.train_images, self.train_labels,
                               cfg.batch_size, state.velocity, fast=self.fast,
                               distorter=distorter, levers=self.levers, average=state.average)
        rng = np.random.default_rng([cfg.seed, 1])  # the shuffling stream, apart from the init's
        for cb in self.callbacks:
            cb.on_train_begin(self, state)

        if state.rng_state is None:
            state.rng_state = dict(rng.bit_generator.state)
        worker = None
        if self.distort_worker:
            from anynet.distort_worker import start_for

            worker = start_for(step, self.train_images, distortion, cfg.seed, cfg.dtype)
        held = HeldInterrupts.for_step(step)
        try:
            # a diverging run overflows: judged from the losses, not warned about by NumPy
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                return self._epochs(net, step, rng, state, held)
        finally:
            if held is not None:
                held.restore()
            if worker is not None:
                worker.close()

    def _epochs(self, net: TwoLayerNet, step: TrainStep, rng: np.random.Generator,
                state: TrainState, held: HeldInterrupts | None = None) -> FitResult:
        cfg = self.config
        keep = held if held is not None else contextlib.nullcontext()
        while state.epoch < cfg.epochs:
            assert state.rng_state is not None, "fit sets it before the first epoch"
            rng.bit_generator.state = state.rng_state
            first_step = state.step - state.batch  # the step number of this epoch's batch 0
            step.begin_epoch(rng.permutation(self.n_train),
                             np.array([self.schedule(first_step + i)
                                       for i in range(self.n_batches)]), epoch=state.epoch)
            for cb in self.callbacks:
                cb.on_epoch_begin(state.epoch, self.n_batches, state.batch)
            started = time.perf_counter()
            window = []  # this window's batch losses, 0-d arrays still on the device
            while state.batch < self.n_batches:
                with keep:  # a donating step's new state stored before any Ctrl-C acts
                    window.append(step(state.batch, self.schedule(state.step)))
                    state.params, state.velocity = step.params, step.velocity
                    if self.levers.ema:
                        state.average = step.average
                    state.batch += 1
                    state.step += 1
                if len(window) == SYNC_EVERY or state.batch == self.n_batches \
                        or self._stop_reason:
                    self._read_window(state, window)
                    window = []
                if self._stop_reason and state.batch < self.n_batches:
                    self.write_checkpoint(state)
                    return FitResult("stopped", self.result_net(net, state), state,
                                     self._stop_reason)
                # (a stop asked for during the last batch lets the epoch end, and stops there)
            self._end_epoch(net, state, rng, time.perf_counter() - started)
            if self._stop_reason and state.epoch < self.config.epochs:  # else: finished
                return FitResult("stopped", self.result_net(net, state), state,
                                 self._stop_reason)
        return FitResult("finished", self.result_net(net, state), state)

    def _end_epoch(self, net: TwoLayerNet, state: TrainState, rng: np.random.Generator,
                   seconds: float) -> None:
        """The SWA's snapshot (where the config takes one now), the epoch's metrics of the
        reported network, the state moved to the next epoch, its checkpoint, the callbacks."""
        n = levers.swa_count(self.config, state.epoch + 1)
        if n:
            state.average = levers.swa_update(state.average, state.params, n)
        metrics = self._epoch_metrics(self.reported_net(net, state, state.epoch + 1), state,
                                      seconds)
        state.history.append(metrics)
        state.epoch, state.batch, state.loss_sum = state.epoch + 1, 0, 0.0
        state.rng_state = dict(rng.bit_generator.state)  # the next epoch draws from here
        self.write_checkpoint(state)
        for cb in self.callbacks:
            cb.on_epoch_end(state.epoch - 1, metrics)

    def reported_net(self, net: TwoLayerNet, state: TrainState,
                     epochs_done: int | None = None) -> TwoLayerNet:
        """The network the run reports and saves after `epochs_done` epochs (default: the
        state's): `net` (the trained weights), or one holding the averaged weights where the
        config averages them and an average has begun."""
        done = state.epoch if epochs_done is None else epochs_done
        averaged = levers.reported_params(self.config, state.average, done, state.step)
        return net if averaged is None else TwoLayerNet.from_params(averaged,
                                                                    backend=net.backend)

    def result_net(self, net: TwoLayerNet, state: TrainState) -> TwoLayerNet:
        """The network a run returns: the reported one (`reported_net`), carrying the config's
        preprocessing, so that it reads raw images as the trained one read preprocessed ones."""
        return self.reported_net(net, state).with_preprocessing(self.preprocessing)

    def _epoch_metrics(self, net: TwoLayerNet, state: TrainState, seconds: float) -> dict:
        sample = min(self.n_train, TRAIN_ACCURACY_SAMPLE)
        _, train_acc = loss_and_accuracy(net, self.train_images[:sample, ...],
                                         self.train_labels[:sample])
        val_loss = val_acc = None
        if self.val_images is not None and self.val_images.shape[0] > 0:
            val_loss, val_acc = loss_and_accuracy(net, self.val_images, self.val_labels)
        return {"epoch": state.epoch + 1, "train_loss": state.loss_sum / self.n_batches,
                "train_accuracy": train_acc, "val_loss": val_loss, "val_accuracy": val_acc,
                "lr": self.schedule(max(state.step - 1, 0)), "seconds": seconds}

    def _read_window(self, state: TrainState, window: list) -> None:
        """Read a window of batch losses from the device at once (one synchronisation), judge
        divergence on them, add them to the epoch's sum in order, and report each batch."""
        losses = self.backend.to_numpy(self.backend.xp.stack(window)).tolist()
        first = state.batch - len(losses)  # the window's first batch, 0-based
        for i, loss in enumerate(losses):
            if not loss <= DIVERGENCE_LOSS:  # catches nan and inf too
                raise DivergenceError(self._divergence_message(state, loss, first, first + i))
        for i, loss in enumerate(losses):
            state.loss_sum += loss  # one batch at a time: the same sum however windows fall
            for cb in self.callbacks:
                cb.on_batch_end(state.epoch, first + i + 1, loss)

    def _divergence_message(self, state: TrainState, loss: float, first: int, at: int) -> str:
        where = (f"epoch {state.epoch + 1}, batch {at + 1} (in the window of batches "
                 f"{first + 1}-{state.batch} read together)")
        if self.checkpoint_path and self.checkpoint_path.exists():
            kept = f"the last good checkpoint, {self.checkpoint_path}, is kept"
        else:
            kept = "no checkpoint had been written yet"
        what = "not finite" if not math.isfinite(loss) else f"above {DIVERGENCE_LOSS:g}"
        return (f"training diverged at {where}: the loss became {loss:.3g} ({what}) with "
                f"learning rate {self.config.lr:g}. Lower the learning rate "
                f"(try --lr {self.config.lr / 10:g}); {kept}")
