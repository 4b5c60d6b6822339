"""Train the network on MNIST with mini-batch SGD, then report test accuracy and save the model.

Prints the resolved configuration, one line per epoch (train loss, validation accuracy, time),
a progress bar within each epoch on a terminal, and the test accuracy at the end. A checkpoint
is written every epoch beside the model (MODEL.checkpoint.npz) and when the run is interrupted
(Ctrl-C or SIGTERM); `--resume CHECKPOINT` continues it, ending with the same model as an
uninterrupted run. The checkpoint is removed once the model is saved.

Exit codes: 0 trained; 2 a bad option, file or data; 3 training diverged (lower --lr); 130/143
interrupted by SIGINT/SIGTERM, with a checkpoint written."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from anynet.commands._common import (
    add_backend_option,
    add_data_dir_option,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from anynet.config import TrainConfig

HELP = "train the network on MNIST and save the model"
DEFAULTS = TrainConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    # Hyperparameter options default to None so that --resume can tell what was asked for.
    g = parser.add_argument_group("network and optimizer")
    g.add_argument("--hidden", type=positive_int, metavar="H",
                   help=f"hidden units (default: {d.hidden})")
    g.add_argument("--epochs", type=positive_int,
                   help=f"passes over the data (default: {d.epochs})")
    g.add_argument("--batch-size", type=positive_int, metavar="N",
                   help=f"examples per SGD step (default: {d.batch_size})")
    g.add_argument("--lr", type=positive_float, help=f"learning rate (default: {d.lr})")
    g.add_argument("--momentum", type=nonnegative_float,
                   help=f"momentum in [0, 1) (default: {d.momentum}, plain SGD)")
    g.add_argument("--nesterov", action="store_true", default=None,
                   help="use Nesterov momentum (needs --momentum > 0)")
    g.add_argument("--weight-decay", type=nonnegative_float, metavar="L2",
                   help=f"L2 weight decay (default: {d.weight_decay})")
    g.add_argument("--schedule", choices=["constant", "step", "cosine"],
                   help=f"learning-rate schedule (default: {d.schedule})")
    g.add_argument("--seed", type=int, help=f"seed of weights, shuffling, validation split "
                   f"(default: {d.seed})")
    g.add_argument("--val-size", type=nonnegative_int, metavar="N",
                   help=f"training examples held out for validation (default: {d.val_size})")
    g.add_argument("--dtype", choices=["float32", "float64"], help=f"default: {d.dtype}")
    add_backend_option(parser, default=None)
    g = parser.add_argument_group("data and files")
    add_data_dir_option(g)
    g.add_argument("--no-verify", action="store_true",
                   help="accept MNIST-format files that are not genuine MNIST (own IDX files)")
    g.add_argument("--out", type=Path, default=Path("model.npz"), metavar="MODEL",
                   help="where to write the model (default: model.npz)")
    g.add_argument("--metrics", type=Path, metavar="FILE.json",
                   help="write per-epoch metrics as JSON (for anynet plot curves)")
    g.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="plot the training curves (needs matplotlib: anynet[plot])")
    g.add_argument("--resume", type=Path, metavar="CHECKPOINT",
                   help="continue an interrupted run from its checkpoint")
    parser.add_argument("--quiet", action="store_true", help="print only the final result")


def _requested(args) -> dict:
    """The hyperparameters given on the command line (not the defaults)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def _config(args, checkpoint_record: dict | None) -> TrainConfig:
    from anynet.errors import UserError

    asked = _requested(args)
    if checkpoint_record is None:
        config = dataclasses.replace(DEFAULTS, **asked)
    else:
        config = TrainConfig.from_dict(checkpoint_record["config"])
        # a resumed run is the same run: only where it computes may change
        differing = [f"--{k.replace('_', '-')} {v} (checkpoint: {getattr(config, k)})"
                     for k, v in asked.items() if k != "backend" and getattr(config, k) != v]
        if differing:
            raise UserError("a resumed run keeps its checkpoint's configuration; these options "
                            f"differ: {', '.join(differing)}. Drop them, or start a new run")
        if "backend" in asked:
            config = dataclasses.replace(config, backend=asked["backend"])
    try:
        from anynet.optim import SGD

        SGD(lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
            weight_decay=config.weight_decay)
    except ValueError as e:
        raise UserError(str(e)) from None
    return config


def checkpoint_path_for(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + ".checkpoint.npz")


def run(args) -> int:
    import json
    import signal
    import time

    from anynet.backend import get_namespace
    from anynet.data import load_mnist
    from anynet.errors import MissingExtraError, UserError
    from anynet.fileio import atomic_write_text
    from anynet.modelio import load_checkpoint, save_model
    from anynet.training import Trainer, evaluate

    record = params = velocity = None
    if args.resume is not None:
        params, velocity, record = load_checkpoint(args.resume)
    config = _config(args, record)
    if args.plot is not None:  # find out now, not after the training
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise MissingExtraError("matplotlib", "plot", "train --plot") from None
        from anynet.plots import figure_format

        figure_format(args.plot)
    backend = get_namespace(config.backend)
    config = dataclasses.replace(config, backend=backend.name)
    say = (lambda *a: None) if args.quiet else print

    mnist = load_mnist(args.data_dir, val_size=config.val_size, val_seed=config.seed,
                       verify=not args.no_verify)
    if record is not None and record.get("data_sha256") and record["data_sha256"] != mnist.sha256:
        raise UserError(f"{args.resume} was trained on other data than {mnist.source}; resume "
                        "it with the same --data-dir")

    checkpoint = args.resume if args.resume is not None else checkpoint_path_for(args.out)
    say(_describe(config, backend, mnist, args, checkpoint))
    reporter = ConsoleReporter(config.epochs, quiet=args.quiet)
    trainer = Trainer(config, mnist.train_images, mnist.train_labels, mnist.val_images,
                      mnist.val_labels, backend=backend, checkpoint_path=checkpoint,
                      callbacks=[reporter], data_sha256=mnist.sha256)
    resume_state = None
    if record is not None:
        resume_state = trainer.state_from_checkpoint(params, velocity, record)
        say(f"resuming from {args.resume}: epoch {resume_state.epoch + 1}, "
            f"batch {resume_state.batch}/{trainer.n_batches}")

    received = []

    def on_signal(signum, frame):
        if received:  # a second Ctrl-C: stop now, without waiting for the batch
            raise KeyboardInterrupt
        received.append(signum)
        trainer.request_stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.perf_counter()
    try:
        result = trainer.fit(resume=resume_state)
    finally:
        reporter.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    elapsed = time.perf_counter() - started

    if result.status == "stopped":
        state = result.state
        print(f"interrupted ({result.stop_reason}) at epoch {state.epoch + 1}, batch "
              f"{state.batch}/{trainer.n_batches}; checkpoint written to {checkpoint}\n"
              f"resume with: anynet train --resume {checkpoint}")
        return 128 + received[0] if received else 130

    test_loss, test_acc = evaluate(result.net, mnist.test_images, mnist.test_labels)
    history = result.state.history
    final = {"test_loss": test_loss, "test_accuracy": test_acc,
             "val_accuracy": history[-1]["val_accuracy"], "train_loss": history[-1]["train_loss"],
             "epochs": len(history), "train_seconds": sum(h["seconds"] for h in history)}
    save_model(args.out, result.net, {
        "config": config.to_dict(), "seed": config.seed, "backend": backend.name,
        "data": {"source": mnist.source, "sha256": mnist.sha256, "genuine": mnist.all_genuine,
                 "train_examples": int(mnist.train_images.shape[0]),
                 "val_examples": int(mnist.val_images.shape[0])},
        "metrics": final, "history": history,
    })
    spent = (f"{final['train_seconds']:.1f} s of training ({elapsed:.1f} s in all)"
             if record is None else f"{final['train_seconds']:.1f} s of training over both "
             f"runs (this one took {elapsed:.1f} s)")
    print(f"test accuracy {100 * test_acc:.2f}% (loss {test_loss:.4f}) after {len(history)} "
          f"epochs, {spent}")
    print(f"model written to {args.out}")
    if checkpoint.exists() and checkpoint != args.out:
        checkpoint.unlink()  # the model now holds everything the checkpoint did
    metrics_doc = {"format": "anynet-metrics", "version": 1, "config": config.to_dict(),
                   "epochs": history, "test_loss": test_loss, "test_accuracy": test_acc}
    if args.metrics is not None:
        atomic_write_text(args.metrics, json.dumps(metrics_doc, indent=2) + "\n")
        say(f"metrics written to {args.metrics}")
    if args.plot is not None:
        from anynet.plots import plot_curves

        plot_curves(metrics_doc, args.plot)
        say(f"curves plotted to {args.plot}")
    return 0


def _describe(config: TrainConfig, backend, mnist, args, checkpoint: Path) -> str:
    c = config
    opt = "plain SGD" if c.momentum == 0 else (
        f"SGD, {'Nesterov ' if c.nesterov else ''}momentum {c.momentum:g}")
    if c.weight_decay:
        opt += f", weight decay {c.weight_decay:g}"
    genuine = "genuine MNIST" if mnist.all_genuine else "MNIST-format data (not genuine MNIST)"
    return "\n".join([
        f"anynet train: 784-{c.hidden}-10 network, {c.dtype}, on {backend.describe()}",
        f"  optimizer: {opt}, learning rate {c.lr:g} ({c.schedule} schedule), "
        f"batch size {c.batch_size}, {c.epochs} epochs, seed {c.seed}",
        f"  data: {genuine} from {mnist.source}: {mnist.train_images.shape[0]:,} train, "
        f"{mnist.val_images.shape[0]:,} validation, {mnist.test_images.shape[0]:,} test",
        f"  model: {args.out}  (checkpoints: {checkpoint})",
    ])


class ConsoleReporter:
    """Turns training callbacks into a progress bar per epoch and one line per finished epoch."""

    def __init__(self, epochs: int, quiet: bool = False):
        self.epochs, self.quiet = epochs, quiet
        self.bar = None
        self.running = 0.0

    def on_train_begin(self, trainer, state) -> None:
        pass

    def on_epoch_begin(self, epoch: int, n_batches: int, first_batch: int) -> None:
        if self.quiet:
            return
        from anynet.progress import Progress

        self.bar = Progress(n_batches, f"epoch {epoch + 1}/{self.epochs}", unit="batch")
        self.bar.update(first_batch)
        self.running = 0.0

    def on_batch_end(self, epoch: int, batch: int, loss: float) -> None:
        if self.bar is None:
            return
        # an exponential moving average: a steady figure to watch, cheap to keep
        self.running = loss if self.running == 0.0 else 0.98 * self.running + 0.02 * loss
        self.bar.update(1)
        if batch % 50 == 0:
            self.bar.set_postfix(f"loss {self.running:.4f}")

    def on_epoch_end(self, epoch: int, m: dict) -> None:
        self.close()
        if self.quiet:
            return
        val = (f"val acc {100 * m['val_accuracy']:.2f}%" if m["val_accuracy"] is not None
               else f"train acc {100 * m['train_accuracy']:.2f}%")
        print(f"epoch {epoch + 1:>3}/{self.epochs}  train loss {m['train_loss']:.4f}  {val}  "
              f"lr {m['lr']:.3g}  {m['seconds']:.2f} s", flush=True)

    def on_checkpoint(self, path, state) -> None:
        pass

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
