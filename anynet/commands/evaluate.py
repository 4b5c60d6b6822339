"""Evaluate a model on the MNIST test set: accuracy, per-class accuracy, the confusion matrix,
and the test images it gets most confidently wrong (drawn with --plot)."""

from __future__ import annotations

import argparse
from pathlib import Path

from anynet.commands._common import (
    add_backend_option,
    add_data_dir_option,
    add_force_option,
    add_no_verify_option,
    at_most,
    check_output,
    open_backend,
    positive_int,
)
from anynet.plots import MAX_DRAWN  # matplotlib itself is imported only to draw

HELP = "test accuracy, per-class accuracy and confusion matrix of a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, metavar="MODEL", help="a model file from anynet train")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="draw the confusion matrix and the most confidently wrong images")
    add_force_option(parser, "the --plot file")
    parser.add_argument("--wrong", type=at_most(positive_int, MAX_DRAWN), default=20,
                        metavar="N", help=f"how many confidently wrong images to list and draw, "
                        f"at most {MAX_DRAWN} (default: 20)")
    add_backend_option(parser)
    add_data_dir_option(parser)
    add_no_verify_option(parser, "accept MNIST-format files that are not genuine MNIST")


def run(args) -> int:
    import json
    import math

    from anynet.data import load_mnist
    from anynet.errors import UserError
    from anynet.evaluation import evaluate
    from anynet.modelio import load_model

    if args.plot is not None:
        from anynet.plots import figure_format

        figure_format(args.plot)
        check_output("--plot", args.plot, force=args.force, example="confusion.png")
    net, record = load_model(args.model, backend=open_backend(args))
    mnist = load_mnist(args.data_dir, verify=not args.no_verify)
    D, H, K = net.sizes
    if D != mnist.test_images.shape[1] or K != 10:
        raise UserError(f"{args.model} is a {D}-{H}-{K} network, but MNIST has "
                        f"{mnist.test_images.shape[1]} pixels per image and 10 classes")
    result = evaluate(net, mnist.test_images, mnist.test_labels, confusion=True,
                      n_wrong=args.wrong)
    if not math.isfinite(result.loss):
        raise UserError(f"{args.model} gives non-finite outputs (its weights are too large for "
                        f"{net.dtype}): the model is unusable; train it again")

    assert result.confusion is not None  # asked for above
    if args.json:
        print(json.dumps({
            "model": str(args.model), "backend": net.backend.name, "data": mnist.source,
            "examples": result.examples, "accuracy": result.accuracy, "loss": result.loss,
            "wrong": result.wrong,
            "per_class_accuracy": result.per_class_accuracy.tolist(),
            "confusion": result.confusion.tolist(),
        }, indent=2))
    else:
        print(format_report(args.model, record, result))
    if args.plot is not None:
        from anynet.plots import plot_confusion

        wrong = [{**w, "image": mnist.test_images[w["index"]]} for w in result.wrong]
        plot_confusion(result.confusion, args.plot, wrong=wrong)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0


def format_report(model_path, record: dict, r) -> str:
    """The human report of an `anynet.evaluation.Evaluation` `r` of the model at model_path."""
    arch = record.get("architecture", {})
    lines = [
        f"{model_path}: {arch.get('inputs')}-{arch.get('hidden')}-{arch.get('classes')} network, "
        f"{record.get('dtype')}, trained with anynet {record.get('anynet_version')} on "
        f"{record.get('backend', '?')}",
        f"test accuracy {100 * r.accuracy:.2f}% ({round(r.accuracy * r.examples)}"
        f"/{r.examples}), loss {r.loss:.4f}",
        "",
        "per-class accuracy:",
        *("  " + "  ".join(f"{k}: {100 * r.per_class_accuracy[k]:5.2f}%" for k in half)
          for half in (range(0, 5), range(5, 10))),
        "",
        "confusion matrix (rows: true digit, columns: predicted):",
        "       " + "".join(f"{k:>6}" for k in range(r.confusion.shape[1])),
    ]
    for k, row in enumerate(r.confusion):
        lines.append(f"  {k:>3}  " + "".join(f"{v:>6}" for v in row))
    if r.wrong:
        lines += ["", "most confidently wrong (test index: true -> predicted, probability):"]
        lines += [f"  #{w['index']:<5} {w['label']} -> {w['predicted']}  {w['probability']:.3f}"
                  for w in r.wrong]
    return "\n".join(lines)
