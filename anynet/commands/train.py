"""Train the network on MNIST with mini-batch SGD, then report test accuracy and save the model.

Prints the resolved configuration, one line per epoch (train loss, validation accuracy, time),
a progress bar within each epoch on a terminal, and the test accuracy at the end. A checkpoint
is written every epoch beside the model (MODEL.checkpoint.npz) and when the run is interrupted
(Ctrl-C or SIGTERM); `--resume CHECKPOINT` continues it, ending with the same model as an
uninterrupted run, and writes to the model file the checkpoint records unless --out says
otherwise. After a kill -9, resume from the last epoch's checkpoint the same way.

Files: every output (model, metrics, plot) is checked before the data is even loaded, and a
missing parent folder is created. An existing model, metrics or plot file is never replaced
unless --force says so. One run at a time per model file: a second run naming the same --out is
refused while the first holds the lock `.MODEL.lock` beside the model. Every write is atomic
(complete or absent); a write that fails (a full disk) is one line, and the checkpoint, which
still holds the trained parameters, is removed only once the model, metrics and plot are all
written.

Exit codes: 0 trained; 2 a bad option, file or data, or a file that cannot be written; 3 training
diverged (lower --lr); 130/143 interrupted by SIGINT/SIGTERM, with a checkpoint written."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from anynet.commands._common import (
    MAX_HIDDEN,
    add_backend_option,
    add_data_dir_option,
    add_distort_worker_option,
    add_distortion_options,
    add_lever_options,
    add_no_verify_option,
    add_plot_option,
    add_preprocess_option,
    at_most,
    check_output,
    check_plot_option,
    check_teacher_options,
    nonnegative_float,
    nonnegative_int,
    open_backend,
    open_teacher,
    plan_training_threads,
    positive_float,
    positive_int,
)
from anynet.config import MAX_BATCH_UNITS, MAX_EPOCHS, TrainConfig

if TYPE_CHECKING:  # imported where used: `anynet train --help` stays fast
    from anynet.backend import Backend
    from anynet.committee import Committee
    from anynet.data.mnist import MNIST
    from anynet.fit import Trained
    from anynet.modelio.checkpoints import Checkpoint

Say = Callable[[str], None]  # print, or nothing with --quiet

HELP = "train the network on MNIST and save the model"
DEFAULTS = TrainConfig()
DEFAULT_OUT = Path("model.npz")
# Upper bounds that no run that learns comes near; above them a value is a typo. A rate above
# about 10 already diverges on pixels in [0, 1] (exit 3, with advice); 1e6 leaves room for such
# experiments while lr x gradient stays far from float32's 3.4e38. Weight decays that help are
# 1e-5 to 1e-2; at 1 the decay alone removes a third of every weight per step at the default lr.
MAX_LR = 1e6
MAX_WEIGHT_DECAY = 1.0


def _file_name(text: str) -> Path:
    """An argparse type: a path naming a file (not empty, not ending in a slash)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a file name, got {text!r}")
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"expected a file name, got the folder {text!r}")
    return Path(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    # Hyperparameter options default to None so that --resume can tell what was asked for.
    g = parser.add_argument_group("network and optimizer")
    g.add_argument("--hidden", type=at_most(positive_int, MAX_HIDDEN), metavar="H",
                   help=f"hidden units, at most {MAX_HIDDEN:,} (default: {d.hidden})")
    g.add_argument("--epochs", type=at_most(positive_int, MAX_EPOCHS),
                   help=f"passes over the data, at most {MAX_EPOCHS:,} (default: {d.epochs})")
    g.add_argument("--batch-size", type=positive_int, metavar="N",
                   help=f"examples per SGD step; batch size x hidden units at most "
                   f"{MAX_BATCH_UNITS:,} (default: {d.batch_size})")
    g.add_argument("--lr", type=at_most(positive_float, MAX_LR),
                   help=f"learning rate, at most {MAX_LR:g} (default: {d.lr})")
    g.add_argument("--momentum", type=nonnegative_float,
                   help=f"momentum in [0, 1) (default: {d.momentum}, plain SGD)")
    g.add_argument("--nesterov", action="store_true", default=None,
                   help="use Nesterov momentum (needs --momentum > 0)")
    g.add_argument("--weight-decay", type=at_most(nonnegative_float, MAX_WEIGHT_DECAY),
                   metavar="L2", help=f"L2 weight decay, at most {MAX_WEIGHT_DECAY:g} "
                   f"(default: {d.weight_decay})")
    g.add_argument("--schedule", choices=["constant", "step", "cosine"],
                   help=f"learning-rate schedule (default: {d.schedule})")
    g.add_argument("--seed", type=nonnegative_int, help="seed of weights, shuffling, validation "
                   f"split, an integer >= 0 (default: {d.seed})")
    g.add_argument("--val-size", type=nonnegative_int, metavar="N",
                   help=f"training examples held out for validation (default: {d.val_size})")
    g.add_argument("--dtype", choices=["float32", "float64"], help=f"default: {d.dtype}")
    from anynet.recipes import DESCRIPTIONS, RECIPES

    g.add_argument("--recipe", choices=list(RECIPES), metavar="NAME",
                   help="start from a named set of hyperparameters (options given override "
                   "it): " + "; ".join(f"{name}: {DESCRIPTIONS[name]}" for name in RECIPES)
                   .replace("%", "%%"))  # argparse formats help with %
    add_distortion_options(parser, kind=None, kind_option="--augment")
    add_preprocess_option(parser)
    add_lever_options(parser)
    add_distort_worker_option(add_backend_option(parser, default=None))
    g = parser.add_argument_group("data and files")
    add_data_dir_option(g)
    add_no_verify_option(g)
    g.add_argument("--out", type=_file_name, metavar="MODEL",
                   help=f"where to write the model (default: {DEFAULT_OUT}; with --resume, the "
                   "checkpoint's own)")
    g.add_argument("--force", action="store_true",
                   help="replace the model, metrics and plot files if they exist (without it, "
                   "an existing one stops the run before it starts)")
    g.add_argument("--metrics", type=_file_name, metavar="FILE.json",
                   help="write per-epoch metrics as JSON (for anynet plot curves)")
    add_plot_option(g, "the training curves", type=_file_name)
    g.add_argument("--resume", type=_file_name, metavar="CHECKPOINT",
                   help="continue an interrupted run from its checkpoint")
    parser.add_argument("--quiet", action="store_true", help="print only the final result")


def _requested(args: argparse.Namespace) -> dict:
    """The hyperparameters asked for: a --recipe's, overridden by those given on the command
    line (not the defaults)."""
    from anynet.config import DEFAULT_DISTILL
    from anynet.recipes import recipe

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if getattr(args, "teacher", None) and "distill" not in given and args.resume is None:
        given["distill"] = DEFAULT_DISTILL
    return {**(recipe(args.recipe) if getattr(args, "recipe", None) else {}), **given}


def _config(args: argparse.Namespace, checkpoint_record: dict | None) -> TrainConfig:
    from anynet.errors import UserError
    from anynet.training import resumed_config

    asked = _requested(args)
    try:
        if checkpoint_record is None:
            return TrainConfig.from_dict(asked)
        return resumed_config(checkpoint_record["config"], asked)
    except ValueError as e:
        raise UserError(str(e)) from None


def _model_path(args: argparse.Namespace, record: dict | None) -> Path:
    """--out, else (resuming) the model file the checkpoint records, else model.npz."""
    if args.out is not None:
        return args.out
    if record is not None and isinstance(record.get("out"), str) and record["out"]:
        recorded = os.path.relpath(record["out"])  # the absolute path, shown short if it can be
        return Path(record["out"] if recorded.startswith("..") else recorded)
    if record is not None and args.resume.name.endswith(".checkpoint.npz"):  # an older checkpoint
        return args.resume.with_name(args.resume.name[: -len(".checkpoint.npz")] + ".npz")
    return DEFAULT_OUT


def _check_outputs(args: argparse.Namespace, out: Path, checkpoint: Path) -> None:
    """Refuse, before any slow work, every output that could not be written (one line, exit 2).

    The model's own checks (exists without --force) come later, under the run's lock."""
    from anynet.errors import UserError

    named = [("--out", out), ("--metrics", args.metrics), ("--plot", args.plot)]
    examples = {"--out": DEFAULT_OUT.name, "--metrics": "metrics.json", "--plot": "curves.png"}
    for option, path in named:
        if path is not None:  # the model's own "exists" is checked under the run's lock
            check_output(option, path, force=args.force or option == "--out",
                         example=examples[option])
    seen = {_same_file_key(checkpoint): "the checkpoint"}
    for option, path in named:
        if path is None:
            continue
        key = _same_file_key(path)
        if key in seen:
            raise UserError(f"{option} {path} names the same file as {seen[key]}; "
                            "give each output its own name")
        seen[key] = option


def _same_file_key(path: Path) -> str:
    return os.path.normcase(os.path.abspath(path))


def _must_force(args: argparse.Namespace, out: Path) -> bool:
    """Whether the command that resumes this run needs --force: an output it will write exists
    (the model, or the metrics or plot that this run was told to replace)."""
    return out.exists() or any(p is not None and p.exists() for p in (args.metrics, args.plot))


def _resume_command(args: argparse.Namespace, checkpoint: Path, *, force: bool) -> str:
    """The command that continues this run from `checkpoint`: everything it needs, no more
    (the checkpoint records the configuration and the model file)."""
    words = ["anynet", "train", "--resume", str(checkpoint)]
    if args.data_dir is not None:
        words += ["--data-dir", str(args.data_dir)]
    if args.no_verify:
        words.append("--no-verify")
    for option, value in (("--metrics", args.metrics), ("--plot", args.plot)):
        if value is not None:
            words += [option, str(value)]
    if force:
        words.append("--force")
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import time

    from anynet.errors import UserError
    from anynet.fileio import LockedError, exclusive_lock, reason, remove_stale_temporaries
    from anynet.modelio import load_checkpoint
    from anynet.training import checkpoint_path_for

    started = time.time()
    record: dict | None = None
    loaded: Checkpoint | None = None
    if args.resume is not None:
        loaded = load_checkpoint(args.resume)   # (params, velocity, record), and .average
        record = loaded[2]
    out = _model_path(args, record)
    config = _config(args, record)
    checkpoint = args.resume if args.resume is not None else checkpoint_path_for(out)
    _check_outputs(args, out, checkpoint)
    if args.plot is not None:  # find out now, not after the training
        check_plot_option(args.plot, "train --plot")

    # One run per model file (and per checkpoint, when resuming one kept elsewhere).
    locked = [out] + ([checkpoint] if checkpoint != checkpoint_path_for(out) else [])
    with contextlib.ExitStack() as stack:
        for path in locked:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)  # the lock lives beside the file
                stack.enter_context(exclusive_lock(path))
            except LockedError as e:
                raise UserError(
                    f"another anynet train (pid {e.pid if e.pid is not None else 'unknown'}) is "
                    f"writing {path}; wait for it to end, or choose another --out") from None
            except OSError as e:
                raise UserError(f"--out {out}: cannot write in {path.parent} ({reason(e)})") \
                    from None
        check_output("--out", out, force=args.force, example=DEFAULT_OUT.name)
        if args.resume is None and checkpoint.exists() and not args.force:
            # an interrupted run's checkpoint: a new run would write over it and delete it
            raise UserError(f"--out {out}: an interrupted run's checkpoint {checkpoint} is "
                            f"beside it; resume it with --resume {checkpoint}, or use --force "
                            "to start a new run over it")
        outputs = [p for p in (out, checkpoint_path_for(out), checkpoint, args.metrics, args.plot)
                   if p is not None]
        for folder in {p.parent for p in outputs}:  # what a killed run's writes left behind
            remove_stale_temporaries(folder, [p.name for p in outputs], older_than=started)
        return _train(args, config, out, checkpoint, record, loaded)


def _train(args: argparse.Namespace, config: TrainConfig, out: Path, checkpoint: Path,
           record: dict | None, loaded: Checkpoint | None) -> int:
    import time

    from anynet.data import load_mnist
    from anynet.errors import DataError, UserError
    from anynet.training import ConsoleReporter, StopOnSignals

    check_teacher_options(args, config, record)
    worker = plan_training_threads(args, config, record)
    backend = open_backend(args, config.backend, announce=False)
    config = dataclasses.replace(config, backend=backend.spec)
    say: Say = (lambda *a: None) if args.quiet else print
    teacher, teacher_files = open_teacher(args, config, record, backend)

    mnist = load_mnist(args.data_dir, val_size=config.val_size, val_seed=config.seed,
                       verify=not args.no_verify)
    if record is not None and record.get("data_sha256") and record["data_sha256"] != mnist.sha256:
        raise UserError(f"{args.resume} was trained on other data than {mnist.source}; resume "
                        "it with the same --data-dir")
    if mnist.test_images.shape[0] == 0:
        raise DataError(f"{mnist.source} has no test examples to measure the model on; use a "
                        "data folder whose t10k files hold at least one")

    say(_describe(config, backend, mnist, out, checkpoint, args.threads, worker))
    reporter = ConsoleReporter(config.epochs, quiet=args.quiet, resumed_from=args.resume)
    recipe = args.recipe or (record or {}).get("recipe")
    # Installed until the end: a signal while the outputs are written lets them complete.
    with StopOnSignals() as stopper:
        started = time.perf_counter()
        try:
            trained = _fit(args, config, mnist, backend, out, checkpoint, loaded,
                           [reporter, stopper], recipe, (teacher, teacher_files), worker)
        finally:
            reporter.close()
        elapsed = time.perf_counter() - started
        if trained.status == "stopped":
            state = trained.state
            print(f"interrupted ({trained.stop_reason}) at epoch {state.epoch + 1}, batch "
                  f"{state.batch}/{trained.n_batches}; checkpoint written to {checkpoint}\n"
                  f"resume with: {_resume_command(args, checkpoint, force=_must_force(args, out))}")
            return 128 + stopper.received[0] if stopper.received else 130
        _report(trained, elapsed, resumed=record is not None)
        _save_outputs(args, trained, out, checkpoint, say)
        return 0


def _fit(args: argparse.Namespace, config: TrainConfig, mnist: MNIST, backend: Backend,
         out: Path, checkpoint: Path, resume: Checkpoint | None, callbacks: list,
         recipe: str | None, teacher: tuple[Committee | None, list[dict] | None],
         distort_worker: bool) -> Trained:
    """`anynet.fit.train_model` on MNIST, with a failed checkpoint write as one line."""
    from anynet.data.mnist import K
    from anynet.errors import UserError
    from anynet.fileio import reason, remedy
    from anynet.fit import describe_data, train_model

    extra = {"threads": args.threads, "recipe": recipe}
    committee, files = teacher
    if committee is not None:  # each file with its SHA-256, which --resume checks
        extra["teacher"] = files
    try:
        return train_model(
            config, mnist.train_images, mnist.train_labels, mnist.val_images, mnist.val_labels,
            test=(mnist.test_images, mnist.test_labels), data=describe_data(mnist),
            resume=resume, record=extra, n_classes=K, backend=backend,
            checkpoint_path=checkpoint, callbacks=callbacks, data_sha256=mnist.sha256,
            record_extra={"out": os.path.abspath(out), **extra}, teacher=committee,
            distort_worker=distort_worker)
    except BrokenPipeError:
        raise
    except OSError as e:  # training's only writes are checkpoints
        kept = (f"the previous checkpoint is kept: {remedy(e)}, then resume with: "
                f"{_resume_command(args, checkpoint, force=_must_force(args, out))}"
                if checkpoint.exists()
                else f"no checkpoint was written: {remedy(e)}, then run again")
        raise UserError(f"training stopped: cannot write the checkpoint {checkpoint} "
                        f"({reason(e)}); {kept}") from None


def _report(trained: Trained, elapsed: float, resumed: bool) -> None:
    final = trained.metrics
    spent = (f"{final['train_seconds']:.1f} s of training ({elapsed:.1f} s in all)"
             if not resumed else f"{final['train_seconds']:.1f} s of training over both "
             f"runs (this one took {elapsed:.1f} s)")
    print(f"test accuracy {100 * final['test_accuracy']:.2f}% (loss {final['test_loss']:.4f}) "
          f"after {final['epochs']} epochs, {spent}")


def _save_outputs(args: argparse.Namespace, trained: Trained, out: Path, checkpoint: Path,
                  say: Say) -> None:
    """Write the model, metrics and plot; then (only then) remove the checkpoint, which holds
    the trained parameters until every output is written."""
    from anynet.errors import UserError
    from anynet.fileio import reason, remedy
    from anynet.fit import write_model

    try:
        write_model(out, trained.net, trained.record)
    except OSError as e:
        raise UserError(f"cannot write the model to {out} ({reason(e)}); the checkpoint "
                        f"{checkpoint} holds the trained model: {remedy(e)}, then finish with: "
                        f"{_resume_command(args, checkpoint, force=False)}") from None
    print(f"model written to {out}")
    _save_curves(args, trained.record, out, checkpoint, say)
    if checkpoint.exists() and checkpoint != out:
        try:
            checkpoint.unlink()  # the model now holds everything the checkpoint did
        except OSError as e:
            say(f"note: could not remove the checkpoint {checkpoint} ({reason(e)})")


def _save_curves(args: argparse.Namespace, record: dict, out: Path, checkpoint: Path,
                 say: Say) -> None:
    """The --metrics and --plot files; a failure keeps the checkpoint and says how to finish."""
    import json

    from anynet.errors import UserError
    from anynet.fileio import atomic_write_text, reason, remedy
    from anynet.fit import metrics_document

    def kept(problem: str, fix: str) -> UserError:
        return UserError(f"the model is written to {out}, but {problem}; the checkpoint "
                         f"{checkpoint} is kept: {fix}, then write it with: "
                         f"{_resume_command(args, checkpoint, force=True)}")

    document = metrics_document(record)
    if args.metrics is not None:
        try:
            atomic_write_text(args.metrics, json.dumps(document, indent=2) + "\n")
        except OSError as e:
            raise kept(f"cannot write the metrics to {args.metrics} ({reason(e)})",
                       remedy(e)) from None
        say(f"metrics written to {args.metrics}")
    if args.plot is not None:
        from anynet.plots import plot_curves

        try:
            plot_curves(document, args.plot)
        except UserError as e:  # the plot's own one-line error for a failed write
            cause = e.__context__
            raise kept(str(e), remedy(cause) if isinstance(cause, OSError) else "fix that") \
                from None
        say(f"curves plotted to {args.plot}")


def _describe(config: TrainConfig, backend: Backend, mnist: MNIST, out: Path, checkpoint: Path,
              threads: int, worker: bool) -> str:
    c = config
    opt = "plain SGD" if c.momentum == 0 else (
        f"SGD, {'Nesterov ' if c.nesterov else ''}momentum {c.momentum:g}")
    if c.weight_decay:
        opt += f", weight decay {c.weight_decay:g}"
    genuine = "genuine MNIST" if mnist.all_genuine else "MNIST-format data (not genuine MNIST)"
    from anynet.levers import describe

    lines = []
    if c.augment != "none":
        lines.append(f"  distortions: {c.distortion().describe()}"
                     + (", made ahead in a second process" if worker else ""))
    if c.preprocess != "none":
        lines.append(f"  preprocessing: {c.preprocess} (every image; the model applies it too)")
    if describe(c):
        lines.append(f"  levers: {describe(c)}")
    return "\n".join([
        f"anynet train: 784-{c.hidden}-10 network, {c.dtype}, on {backend.describe()}, "
        f"{threads} CPU thread{'s' if threads != 1 else ''}",
        f"  optimizer: {opt}, learning rate {c.lr:g} ({c.schedule} schedule), "
        f"batch size {c.batch_size}, {c.epochs} epochs, seed {c.seed}",
        f"  data: {genuine} from {mnist.source}: {mnist.train_images.shape[0]:,} train, "
        f"{mnist.val_images.shape[0]:,} validation, {mnist.test_images.shape[0]:,} test",
        *lines,
        f"  model: {out}  (checkpoints: {checkpoint})",
    ])
