"""Evaluate a model on the MNIST test set: accuracy, per-class accuracy, the confusion matrix,
and the test images it gets most confidently wrong (drawn with --plot).

Several model files form a committee (anynet.committee): each example gets the mean of the
members' class probabilities, and its class is the most probable one. The report gives each
member's accuracy alone, then the committee's, its test error beside the best member's, and the
committee's per-class accuracy, confusion matrix and mistakes. Members may differ in hidden
units, dtype and training, but not in inputs or classes."""

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
from anynet.committee import MAX_MEMBERS
from anynet.plots import MAX_DRAWN  # matplotlib itself is imported only to draw

HELP = "test accuracy, per-class accuracy and confusion matrix of a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", type=Path, nargs="+", metavar="MODEL",
                        help="a model file from anynet train; several (at most "
                        f"{MAX_MEMBERS}) form a committee that averages their class probabilities")
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

    from anynet.committee import evaluate_committee, load_committee
    from anynet.data import load_mnist
    from anynet.errors import UserError

    if args.plot is not None:
        from anynet.plots import figure_format

        figure_format(args.plot)
        check_output("--plot", args.plot, force=args.force, example="confusion.png")
    committee = load_committee(args.models, backend=open_backend(args))
    mnist = load_mnist(args.data_dir, verify=not args.no_verify)
    D, H, K = committee.members[0].sizes
    if D != mnist.test_images.shape[1] or K != 10:
        raise UserError(f"{args.models[0]} is a {D}-{H}-{K} network, but MNIST has "
                        f"{mnist.test_images.shape[1]} pixels per image and 10 classes")
    found = evaluate_committee(committee, mnist.test_images, mnist.test_labels, confusion=True,
                               n_wrong=args.wrong)
    _check_finite(committee, found)
    result = found.committee
    assert result.confusion is not None  # asked for above
    if args.json:
        print(json.dumps(_json(args.models, committee, found, mnist.source), indent=2))
    elif len(committee) == 1:
        print(format_report(args.models[0], committee.about[0].record, result))
    else:
        print(format_committee_report(committee, found))
    if args.plot is not None:
        from anynet.plots import plot_confusion

        wrong = [{**w, "image": mnist.test_images[w["index"]]} for w in result.wrong]
        plot_confusion(result.confusion, args.plot, wrong=wrong)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0


def _check_finite(committee, found) -> None:
    """Refuse a model (a member) whose outputs overflow: its loss is not finite."""
    import math

    from anynet.errors import UserError

    for net, about, result in zip(committee.members, committee.about, found.members,
                                  strict=True):
        if not math.isfinite(result.loss):
            raise UserError(f"{about.name} gives non-finite outputs (its weights are too large "
                            f"for {net.dtype}): the model is unusable; train it again")
    if not math.isfinite(found.committee.loss):  # finite members give a finite log-mean
        raise UserError("the committee gives non-finite outputs; evaluate its members alone")


def _json(models: list, committee, found, source: str) -> dict:
    """The --json document: one model's as it always was; a committee's adds its members."""
    r = found.committee
    document = {
        "model": str(models[0]), "backend": committee.backend.name, "data": source,
        "examples": r.examples, "accuracy": r.accuracy, "loss": r.loss, "wrong": r.wrong,
        "per_class_accuracy": r.per_class_accuracy.tolist(),
        "confusion": r.confusion.tolist(),
    }
    if len(committee) == 1:
        return document
    del document["model"]
    members = [{"model": about.name, "architecture": _architecture(about.record),
                "dtype": about.record.get("dtype"), "seed": _seed(about.record),
                "accuracy": alone.accuracy, "loss": alone.loss}
               for about, alone in zip(committee.about, found.members, strict=True)]
    return {"models": [str(m) for m in models], **document, "members": members}


def _architecture(record: dict) -> str:
    arch = record.get("architecture", {})
    return f"{arch.get('inputs')}-{arch.get('hidden')}-{arch.get('classes')}"


def _seed(record: dict) -> int | None:
    config = record.get("config")
    seed = config.get("seed") if isinstance(config, dict) else None
    return seed if type(seed) is int else None


def _preprocessed(record: dict) -> str:
    """", images preprocessed: deslant" where the record names a preprocessing (load_model
    checked it), else nothing."""
    text = record.get("preprocessing", "none")
    return f", images preprocessed: {text}" if text != "none" else ""


def format_report(model_path, record: dict, r) -> str:
    """The human report of an `anynet.evaluation.Evaluation` `r` of the model at model_path."""
    return "\n".join([
        f"{model_path}: {_architecture(record)} network, "
        f"{record.get('dtype')}, trained with anynet {record.get('anynet_version')} on "
        f"{record.get('backend', '?')}" + _preprocessed(record),
        *_report_lines(r),
    ])


def format_committee_report(committee, found) -> str:
    """The human report of a committee's `anynet.committee.CommitteeEvaluation`: each member's
    accuracy alone, then the committee's, its error beside the members', and the usual report."""
    r = found.committee
    lines = [f"committee of {len(committee)} models on {committee.backend.name}, voting with "
             "the mean of their class probabilities:"]
    width = min(40, max(len(name) for name in committee.names))
    for about, alone in zip(committee.about, found.members, strict=True):
        seed = _seed(about.record)
        lines.append(f"  {about.name + ':':<{width + 1}} {_architecture(about.record)}, "
                     f"{about.record.get('dtype')}{'' if seed is None else f', seed {seed}'}: "
                     f"test accuracy {100 * alone.accuracy:.2f}%, loss {alone.loss:.4f}")
    errors = [1 - alone.accuracy for alone in found.members]
    first, *rest = _report_lines(r)
    return "\n".join([
        *lines, first,
        f"test error {100 * (1 - r.accuracy):.2f}%: its best member's {100 * min(errors):.2f}%, "
        f"the members' mean {100 * sum(errors) / len(errors):.2f}%",
        *rest,
    ])


def _report_lines(r) -> list[str]:
    """The report of an Evaluation `r`, from its accuracy line to the confidently wrong."""
    lines = [
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
    return lines
