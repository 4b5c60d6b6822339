"""Options that several commands share, defined once so their help and checks agree."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Protocol

# Threads beyond the cores only wait, and each costs a stack: PyTorch's OpenMP pool failed to
# start 20,000 (a libgomp message, exit 1) and crashed at 100,000 (SIGSEGV). 1,024 is more than
# the hardware threads of any machine anynet is meant for, and starts in a second.
MAX_THREADS = 1024


class Options(Protocol):
    """Where an option is declared: a parser, or one of its argument groups or mutually
    exclusive groups (argparse gives them no public base class)."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action: ...


def backend_spec(text: str) -> str:
    """An argparse type: a backend spec NAME[:DEVICE], its form checked by the backend seam."""
    from anynet.backend import parse_spec
    from anynet.errors import BackendError

    try:
        parse_spec(text)
    except BackendError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text.strip()


def add_backend_option(parser: argparse.ArgumentParser, default: str | None = "numpy") -> Any:
    """--backend NAME[:DEVICE] and --threads N, for every command that computes; returns their
    argument group ("computation")."""
    from anynet.backend import SPEC_HELP

    g = parser.add_argument_group("computation")
    g.add_argument(
        "--backend", type=backend_spec, default=default, metavar="NAME[:DEVICE]",
        help=f"array library and device to compute with: {SPEC_HELP} (default: "
        f"{default or 'numpy'}; auto = cupy if a GPU answers, else numpy)",
    )
    g.add_argument(
        "--threads", type=at_most(positive_int, MAX_THREADS), default=None, metavar="N",
        help=f"CPU threads for the array library, at most {MAX_THREADS:,} (default: one per "
        "core that no other process keeps busy, sampled at start; pin it for bit-identical "
        "reruns)",
    )
    return g


def open_backend(args: argparse.Namespace, spec: str | None = None, *, announce: bool = True):
    """The Backend a command computes with: `spec` (default: --backend), its CPU threads set to
    --threads (None: the default). Afterwards `args.threads` holds the count in effect. With
    `announce`, what `auto` chose is said on stderr (stdout may be JSON)."""
    import sys

    from anynet.backend import get_backend, require
    from anynet.backend.threads import set_threads

    spec = spec if spec is not None else args.backend or "numpy"
    require(spec)  # a library that is not installed: one line naming it, before any import
    asked = getattr(args, "threads", None)
    if spec == "auto":
        backend = get_backend(spec)
        args.threads = set_threads(backend, asked)
    else:
        args.threads = set_threads(spec, asked)  # before it opens: JAX sizes its pool then
        backend = get_backend(spec)
    if announce and backend.note:
        print(f"anynet: {backend.note}", file=sys.stderr)
    return backend


def add_distort_worker_option(parser: Any) -> None:
    """--distort-worker auto|on|off: distortions made ahead in a second process."""
    parser.add_argument(
        "--distort-worker", choices=["auto", "on", "off"], default="auto",
        help="distort the next images in a second process while these train (NumPy only; the "
        "same images, bit for bit). auto: where a core is free for it, and then training takes "
        "one thread fewer (default: auto)")


def plan_training_threads(args: argparse.Namespace, config: Any, record: dict | None) -> bool:
    """`args.threads` for `anynet train`, and whether it distorts in a worker: a resumed run
    keeps the count its checkpoint `record` holds (it computes as it did: the same sums), unless
    --threads says otherwise; then `anynet.distort_worker.plan`, which, where the run takes a
    worker and no count is set, trains with one thread fewer than the cores free."""
    from anynet.backend import parse_spec, probe
    from anynet.distort_worker import may_serve, plan

    recorded = (record or {}).get("threads")
    if (args.threads is None and isinstance(recorded, int) and not isinstance(recorded, bool)
            and 1 <= recorded <= MAX_THREADS):
        args.threads = recorded
    name, kind = parse_spec(config.backend)[0], config.augment
    if name == "auto" and kind != "none":  # as get_backend will choose it
        name = "numpy" if probe("cupy") else "cupy"
    if not may_serve(args.distort_worker, name, kind):
        return False  # (no need to watch the machine for 0.1 s)
    from anynet.backend.threads import default_threads

    free = default_threads()
    worker, threads = plan(args.distort_worker, name, kind, args.threads, free)
    args.threads = threads if threads is not None else free  # (not watched a second time)
    return worker


def add_data_dir_option(parser: Options) -> None:
    parser.add_argument(
        "--data-dir", metavar="DIR", default=None,
        help="folder holding the four MNIST files, gzip'd or raw (default: $ANYNET_DATA_DIR, "
        "else the cache, else download)",
    )


def add_no_verify_option(parser, help: str | None = None) -> None:
    """--no-verify: accept MNIST-format files that are not genuine MNIST (`help` says more)."""
    parser.add_argument("--no-verify", action="store_true", help=help or (
        "accept MNIST-format files that are not genuine MNIST (own IDX files)"))


def add_plot_option(group, what: str, type=Path) -> None:
    """--plot FILE.png: a figure of `what` (needs matplotlib: anynet[plot]);
    `check_plot_option` checks it before the work."""
    group.add_argument("--plot", type=type, metavar="FILE.png",
                       help=f"plot {what} (needs matplotlib: anynet[plot])")


def check_plot_option(path, command: str) -> None:
    """Refuse now, not after the work, a plot that could not be drawn: a file name without a
    figure's suffix (`anynet.plots.figure_format`), or no matplotlib (MissingExtraError naming
    `command`, e.g. "train --plot")."""
    from anynet.errors import MissingExtraError
    from anynet.plots import figure_format

    figure_format(path)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtraError("matplotlib", "plot", command) from None


def add_force_option(parser: Options, what: str = "the output file") -> None:
    """--force: replace `what` if it exists (without it, an existing file stops the command)."""
    parser.add_argument("--force", action="store_true",
                        help=f"replace {what} if it exists (without it, an existing file stops "
                        "the command before it starts)")


def check_output(option: str, path, *, force: bool, example: str | None = None) -> None:
    """Refuse, before any slow work and in one line, an output file `option` PATH that could not
    be written (a folder, a parent that is a file, a folder that takes no new files, a name too
    long), or that exists and `force` is not given: nothing already saved is replaced unasked.
    `example` ("model.npz") completes the advice when PATH is a folder."""
    from anynet.errors import UserError
    from anynet.fileio import output_problem

    path = Path(path)
    problem = output_problem(path)
    if problem == "is a folder, not a file":
        advice = f"; name a file, e.g. {path / example}" if example else "; name a file"
        raise UserError(f"{option} {path} is a folder{advice}")
    if problem:
        raise UserError(f"{option} {path}: {problem}")
    if path.exists() and not force:
        raise UserError(f"{option} {path} exists; use --force to replace it, or {option} "
                        "another name")


def output_error(option: str, path, error: OSError):
    """The one-line UserError for an output that failed while being written (a full disk)."""
    from anynet.errors import UserError
    from anynet.fileio import reason, remedy

    return UserError(f"{option} {path}: cannot write it ({reason(error)}); {remedy(error)}, then "
                     "run the command again (nothing was replaced)")


def _number(kind: type, minimum: float, strict: bool, wording: str):
    """An argparse type: a finite `kind` (int or float) above `minimum` (or equal, if not
    `strict`), rejecting anything else with a message that says what was expected."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wording}, got {text!r}") from None
        if not (value > minimum if strict else value >= minimum) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {wording}, got {text}")
        return value

    parse.__name__ = wording  # argparse names the type in some messages
    return parse


positive_int = _number(int, 0, True, "a positive integer")
nonnegative_int = _number(int, 0, False, "an integer >= 0")
positive_float = _number(float, 0, True, "a positive finite number")
nonnegative_float = _number(float, 0, False, "a finite number >= 0")


def at_most(parse, maximum: float):
    """An argparse type: `parse`, then no more than `maximum`."""
    def checked(text: str):
        value = parse(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"expected at most {maximum:g}, got {text}")
        return value

    checked.__name__ = parse.__name__
    return checked


# A model file holds at most 10**8 parameters (anynet.modelio.MAX_PARAM_ELEMENTS); a 784-H-10
# network has 795 H + 10 of them. 100,000 hidden units (318 MB in float32) stays inside.
MAX_HIDDEN = 100_000


def add_distortion_options(parser: argparse.ArgumentParser, kind: str | None = "none",
                           kind_option: str = "--kind") -> None:
    """The kind and the ranges of anynet.augment's distortions (`kind_option`, --rotate,
    --scale, --shear, --shift, --alpha, --sigma). `kind` is the kind's default; with None, every
    option defaults to None, so that a command can tell what was given (train: over a recipe,
    or against a checkpoint), and the help shows `Distortion`'s defaults.
    `distortion_from_args` turns them into a `Distortion`."""
    from anynet.augment import KINDS, LIMITS, Distortion

    d = Distortion()
    given = kind is None

    def default(value):
        return None if given else value

    g = parser.add_argument_group("distortions of the training images (anynet.augment; each "
                                  "image drawn uniformly within the ranges)")
    g.add_argument(kind_option, choices=KINDS, default=kind, metavar="KIND",
                   help=f"{', '.join(KINDS)} (default: {kind or d.kind})")
    for name, (metavar, text) in _DISTORTION_HELP.items():
        value = getattr(d, name)
        g.add_argument(f"--{name}", type=distortion_value(name), default=default(value),
                       metavar=metavar, help=text.format(
                           most=f"{LIMITS[name][2]:g}", d=f"{value:g}",
                           low=f"{1 - value:g}", high=f"{1 + value:g}"))


# Each range option's metavar and help: {most} its bound, {d} its default (for scale, {low} to
# {high} the sizes that default allows).
_DISTORTION_HELP = {
    "rotate": ("DEG", "largest rotation either way, degrees, at most {most} (default: {d})"),
    "scale": ("F", "largest relative change of size, at most {most} (default: {d}: {low} to "
                   "{high})"),
    "shear": ("K", "largest slant k, columns shifted k pixels per row, at most {most} "
                   "(default: {d})"),
    "shift": ("PX", "largest shift along each axis, pixels, at most {most} (default: {d})"),
    "alpha": ("PX", "elastic strength, pixels, at most {most} (default: {d}, Simard 2003)"),
    "sigma": ("PX", "elastic smoothness, pixels, above 0 and at most {most} (default: {d}, "
                    "Simard 2003)"),
}


def distortion_value(name: str):
    """An argparse type: a number in the range of distortion option `name`
    (anynet.augment.LIMITS, the one table of those ranges)."""
    from anynet.augment import check_option, range_text

    return _checked_number(lambda value: check_option(name, value),
                           f"a finite number {range_text(name)}", f"a number {range_text(name)}")


def _checked_number(check, expected: str, shown: str):
    """An argparse type: float(text) through `check` (a ValueError for a value out of range);
    a bad value is "expected EXPECTED, got 'TEXT'"; `shown` names the type in argparse's own
    messages."""

    def parse(text: str) -> float:
        try:
            return check(float(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None

    parse.__name__ = shown
    return parse


def distortion_from_args(args: argparse.Namespace):
    """The `anynet.augment.Distortion` that `add_distortion_options`' options name."""
    from anynet.augment import Distortion

    return Distortion(kind=args.kind, rotate=args.rotate, scale=args.scale, shear=args.shear,
                      shift=args.shift, alpha=args.alpha, sigma=args.sigma)


def add_preprocess_option(parser: argparse.ArgumentParser) -> None:
    """--preprocess KIND (default None, so a command can tell what was given), checked and made
    canonical by `anynet.preprocess.Preprocessing.parse`."""
    from anynet.preprocess import Preprocessing

    def preprocessing(text: str) -> str:
        try:
            return str(Preprocessing.parse(text))
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    g = parser.add_argument_group("preprocessing of every image (anynet.preprocess; the model "
                                  "file records it, and the model applies it wherever used)")
    g.add_argument("--preprocess", type=preprocessing, metavar="KIND",
                   help="deslant: undo each digit's slant (from its moments); width:W: stretch "
                   "or squeeze each digit's bounding box to W pixels, 8-24 (ones excepted); "
                   "deslant+width:W: both (default: none)")


def add_lever_options(parser: argparse.ArgumentParser) -> None:
    """Training's levers (anynet.levers): --dropout, --input-dropout, --label-smoothing and
    --average, each defaulting to None (so a command can tell what was given: over a recipe,
    or against a checkpoint), checked by the rules TrainConfig checks its fields with."""
    from anynet.config import (
        AVERAGE_FORMS,
        DEFAULT_DISTILL,
        LEVER_LIMITS,
        MAX_TEMPERATURE,
        check_temperature,
    )

    g = parser.add_argument_group("training levers (anynet.levers; each off by default; "
                                  "evaluation and the model file use the plain network)")
    helps = {
        "dropout": ("P", "drop each hidden unit with probability P in every training step, "
                         "scaling the kept ones by 1/(1-P)"),
        "input_dropout": ("P", "drop each input pixel with probability P in every training "
                               "step, scaling the kept ones by 1/(1-P)"),
        "label_smoothing": ("EPS", "train against the targets (1-EPS) one_hot + EPS/K, K = 10 "
                                   "classes"),
    }
    for name, (metavar, text) in helps.items():
        g.add_argument(f"--{name.replace('_', '-')}", type=lever_value(name), metavar=metavar,
                       help=f"{text}; at most {LEVER_LIMITS[name][0]:g} (default: 0, off)")
    g.add_argument("--average", type=average_value, metavar="KIND",
                   help=f"report and save averaged weights: {AVERAGE_FORMS}; ema: after every "
                   "step, bias-corrected; swa: the mean of the end-of-epoch weights (default: "
                   "none)")
    g.add_argument("--teacher", nargs="+", type=Path, metavar="MODEL",
                   help="distil: train on targets that mix in the mean probabilities of these "
                   "model files (a committee; anynet.distill), computed for every image as "
                   "the student sees it")
    g.add_argument("--distill", type=lever_value("distill"), metavar="ALPHA",
                   help=f"the teacher's share of every target; at most "
                   f"{LEVER_LIMITS['distill'][0]:g} (default with --teacher: "
                   f"{DEFAULT_DISTILL:g})")
    hottest = f"a number in (0, {MAX_TEMPERATURE:g}]"
    g.add_argument("--temperature", type=_checked_number(check_temperature, hottest, hottest),
                   metavar="T",
                   help="the teacher's softmax is taken of its logits / T: above 1, softer "
                   "targets (default: 1)")


def check_teacher_options(args: argparse.Namespace, config: Any, record: dict | None) -> None:
    """A distillation needs a teacher (--teacher, or the resumed checkpoint's), and a teacher a
    share of the targets: UserError otherwise, before anything is loaded."""
    from anynet.errors import UserError

    if config.distill and not (args.teacher or (record or {}).get("teacher")):
        from anynet.recipes import TEACHERS

        if getattr(args, "recipe", None) in TEACHERS and args.distill is None:
            name, seeds = TEACHERS[args.recipe]
            raise UserError(
                f"recipe {args.recipe} distils a committee of {name} networks: train them "
                f"first (anynet train --recipe {name} --seed S --out teacherS.npz, for S in "
                f"{', '.join(map(str, seeds))}), then add --teacher with their files")
        raise UserError(f"--distill {config.distill:g} needs --teacher MODEL [MODEL ...]: the "
                        "trained models whose probabilities it mixes into the targets")
    if args.teacher and not config.distill:
        raise UserError("--teacher with --distill 0 would not use the teacher: give --distill "
                        "in (0, 1], or drop --teacher")


def open_teacher(args: argparse.Namespace, config: Any, record: dict | None,
                 backend: Any) -> tuple[Any, list[dict] | None]:
    """(the teacher's committee on `backend`, its files with their SHA-256 for the run's
    record), (None, None) where the run distils none (`anynet.distill.load_teacher`: a resumed
    run reads the checkpoint's files and refuses any that changed)."""
    if not config.distill:
        return None, None
    from anynet.data.mnist import D, K
    from anynet.distill import load_teacher, preprocessing_mismatch
    from anynet.errors import UserError

    teacher, files = load_teacher(args.teacher, backend, (record or {}).get("teacher"))
    if teacher.sizes[0] != D or teacher.sizes[2] != K:
        raise UserError(f"the teacher takes {teacher.sizes[0]} inputs to {teacher.sizes[2]} "
                        f"classes; MNIST has {D} inputs and {K} classes: name models trained "
                        "on MNIST")
    problem = preprocessing_mismatch(teacher, config.preprocessing())
    if problem:
        raise UserError(problem)
    return teacher, files


def lever_value(name: str):
    """An argparse type: a number in lever `name`'s range (anynet.config.LEVER_LIMITS, the one
    table of those ranges)."""
    from anynet.config import LEVER_LIMITS, check_lever

    allowed = f"a number in [0, {LEVER_LIMITS[name][0]:g}]"
    return _checked_number(lambda value: check_lever(name, value), allowed, allowed)


def average_value(text: str) -> str:
    """An argparse type: a weight averaging as anynet.config.parse_average reads it, written
    one way ("ema:.999" -> "ema:0.999"); whether an SWA starts within the run is TrainConfig's
    to say (it knows the epochs)."""
    from anynet.config import AVERAGE_FORMS, parse_average

    try:
        kind, value = parse_average(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {AVERAGE_FORMS}, got {text!r}") from None
    return kind if value is None else f"{kind}:{value!r}"
