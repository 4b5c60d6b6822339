"""Draw a trained model's hidden units, or the curves of a training run, to an image file.

  anynet plot weights MODEL --out hidden.png [--max-units N]
      each hidden unit's input weights as a square image, 28x28 for MNIST's 784 inputs (red: ink
      there excites the unit, blue: inhibits it), one shared colour scale
  anynet plot curves METRICS.json --out curves.png
      train and validation loss, and accuracy, per epoch, from anynet train --metrics
  anynet plot augment --out augment.png [--kind affine+elastic] [--rows R] [--columns C]
      training digits of MNIST, each followed by several of its random distortions
      (anynet.augment: the distortions training can apply)

The format follows the suffix of --out: .png, .svg or .pdf. Needs matplotlib (the 'plot'
extra: pip install 'anynet[plot]').
"""

from __future__ import annotations

import argparse
import math

from anynet.commands._common import (
    add_data_dir_option,
    add_distortion_options,
    add_force_option,
    add_no_verify_option,
    at_most,
    check_output,
    nonnegative_int,
    positive_int,
)
from anynet.plots import MAX_DRAWN  # matplotlib itself is imported only to draw

HELP = ("plot a model's hidden-unit weights, a training run's curves, or distorted digits "
        "(needs the 'plot' extra)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the docstring's lines
    kinds = parser.add_subparsers(dest="what", metavar="WHAT")
    kinds.required = True

    weights = kinds.add_parser(
        "weights", help="each hidden unit's input weights as a square image",
        description="Draw each hidden unit's input weights as a square image (28x28 for MNIST's "
        "784 inputs), in a grid.",
    )
    weights.add_argument("model", metavar="MODEL", help="model file written by anynet train")
    _add_out_option(weights, "hidden.png")
    weights.add_argument(
        "--max-units", metavar="N", type=at_most(positive_int, MAX_DRAWN), default=None,
        help=f"draw only the first N hidden units, at most {MAX_DRAWN} (default: all, or the "
        f"first {MAX_DRAWN})",
    )
    weights.set_defaults(_plot=_plot_weights)

    curves = kinds.add_parser(
        "curves", help="loss and accuracy per epoch of a training run",
        description="Draw train/validation loss and accuracy per epoch from a metrics file.",
    )
    curves.add_argument(
        "metrics", metavar="METRICS.json", help="metrics file written by anynet train --metrics",
    )
    _add_out_option(curves, "curves.png")
    curves.set_defaults(_plot=_plot_curves)

    augment = kinds.add_parser(
        "augment", help="training digits, each followed by several of its distortions",
        description="Draw rows of MNIST training digits (row i: a digit of class i mod 10, "
        "chosen by --seed), each followed by --columns random distortions of it, as training "
        "with distortions draws them (anynet.augment).",
    )
    _add_out_option(augment, "augment.png")
    augment.add_argument("--rows", type=at_most(positive_int, 50), default=6, metavar="R",
                         help="how many digits (default: 6)")
    augment.add_argument("--columns", type=at_most(positive_int, 30), default=8, metavar="C",
                         help="how many distortions of each (default: 8)")
    augment.add_argument("--seed", type=nonnegative_int, default=0, metavar="N",
                         help="chooses the digits and draws the distortions (default: 0)")
    add_distortion_options(augment, kind="affine+elastic")
    add_data_dir_option(augment)
    add_no_verify_option(augment, "accept MNIST-format files that are not genuine MNIST")
    augment.set_defaults(_plot=_plot_augment)


def _add_out_option(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument(
        "--out", metavar="FILE", required=True,
        help=f"image file to write, .png, .svg or .pdf (e.g. {example})",
    )
    add_force_option(parser, "--out")


def run(args: argparse.Namespace) -> int:
    from anynet.plots import figure_format

    figure_format(args.out)  # a wrong suffix fails before any slow work
    check_output("--out", args.out, force=args.force, example="plot.png")
    return args._plot(args)


def _plot_weights(args: argparse.Namespace) -> int:
    from anynet.errors import UserError
    from anynet.modelio import load_model
    from anynet.plots import plot_weights

    net, _metadata = load_model(args.model, backend="numpy")
    W1 = net.host_params()["W1"]  # (784, H)
    side = math.isqrt(W1.shape[0])
    if side * side != W1.shape[0]:
        raise UserError(
            f"{args.model}: the model takes {W1.shape[0]} inputs, which do not form a square "
            "image; plot weights draws square inputs only (784 = 28x28 for MNIST)"
        )
    plot_weights(W1, args.out, max_units=args.max_units)
    shown = min(W1.shape[1], MAX_DRAWN if args.max_units is None else args.max_units)
    print(f"wrote {args.out}: input weights of {shown} of {W1.shape[1]} hidden units")
    return 0


def _plot_curves(args: argparse.Namespace) -> int:
    from anynet.plots import check_metrics, plot_curves

    metrics = check_metrics(_read_json(args.metrics), source=args.metrics)
    plot_curves(metrics, args.out)
    print(f"wrote {args.out}: curves of {len(metrics['epochs'])} epochs")
    return 0


def _plot_augment(args: argparse.Namespace) -> int:
    import numpy as np

    from anynet.augment import Distorter
    from anynet.backend import to_numpy
    from anynet.commands._common import distortion_from_args
    from anynet.data import load_mnist
    from anynet.errors import UserError
    from anynet.network import pixels_to_inputs
    from anynet.plots import plot_distortions

    try:
        distortion = distortion_from_args(args)
    except ValueError as e:
        raise UserError(str(e)) from None
    mnist = load_mnist(args.data_dir, verify=not args.no_verify)
    images, labels = mnist.train_images, mnist.train_labels
    rng = np.random.default_rng(args.seed)
    chosen = []
    for row in range(args.rows):
        candidates = np.flatnonzero(labels == row % 10)
        if candidates.size == 0:
            raise UserError(f"the training set ({mnist.source}) has no digit {row % 10}")
        chosen.append(int(rng.choice(candidates)))
    originals = pixels_to_inputs(images[chosen], np.float32)  # (R, 784) in [0, 1]
    repeated = np.repeat(originals, args.columns, axis=0)     # (R C, 784): row i's C copies
    distort = Distorter(distortion, "numpy", seed=args.seed)
    distorted = to_numpy(distort(repeated, (0,)))
    distorted = distorted.reshape(args.rows, args.columns, -1)  # (R, C, 784)
    title = f"MNIST training digits, then distortions of each:\n{distortion.describe()}"
    plot_distortions(originals, distorted, args.out, labels=labels[chosen], title=title)
    print(f"wrote {args.out}: {args.rows} digits, each with {args.columns} distortions "
          f"({distortion.describe()})")
    return 0


def _read_json(path: str) -> object:
    """The JSON document in `path`; UserError (one line) if it is missing or not JSON."""
    import json

    from anynet.errors import UserError
    from anynet.fileio import input_error

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise input_error(path, e, "a metrics file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a metrics file (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
