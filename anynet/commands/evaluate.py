"""Evaluate a model on the MNIST test set: accuracy, per-class accuracy, the confusion matrix,
and the test images it gets most confidently wrong (drawn with --plot)."""

from __future__ import annotations

import argparse
from pathlib import Path

from anynet.commands._common import add_backend_option, add_data_dir_option, positive_int

HELP = "test accuracy, per-class accuracy and confusion matrix of a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, metavar="MODEL", help="a model file from anynet train")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="draw the confusion matrix and the most confidently wrong images")
    parser.add_argument("--wrong", type=positive_int, default=20, metavar="N",
                        help="how many confidently wrong images to list and draw (default: 20)")
    add_backend_option(parser)
    add_data_dir_option(parser)
    parser.add_argument("--no-verify", action="store_true",
                        help="accept MNIST-format files that are not genuine MNIST")


def evaluate_model(net, images, labels, n_wrong: int = 20) -> dict:
    """Predictions of `net` on a labelled set, summarised.

    images uint8 (N, D), labels (N,) host arrays -> a dict with accuracy, loss, per-class
    accuracy (K,), confusion (K, K) counts [true, predicted], and the `n_wrong` mistakes with the
    highest predicted probability (index, label, predicted, probability).
    """
    import numpy as np

    from anynet.backend import to_numpy
    from anynet.training import EVAL_CHUNK

    probs = np.concatenate([to_numpy(net.predict_proba(images[i:i + EVAL_CHUNK]))
                            for i in range(0, len(images), EVAL_CHUNK)]).astype(np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    K = probs.shape[1]
    predicted = probs.argmax(axis=1)
    confusion = np.zeros((K, K), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)
    picked = probs[np.arange(len(labels)), labels]
    loss = float(-np.mean(np.log(np.maximum(picked, np.finfo(np.float64).tiny))))
    wrong_idx = np.flatnonzero(predicted != labels)
    order = wrong_idx[np.argsort(-probs[wrong_idx, predicted[wrong_idx]], kind="stable")]
    wrong = [{"index": int(i), "label": int(labels[i]), "predicted": int(predicted[i]),
              "probability": float(probs[i, predicted[i]])} for i in order[:n_wrong]]
    return {"examples": len(labels), "accuracy": float(np.mean(predicted == labels)),
            "loss": loss, "per_class_accuracy": per_class, "confusion": confusion, "wrong": wrong}


def run(args) -> int:
    import json

    from anynet.data import load_mnist
    from anynet.errors import UserError
    from anynet.modelio import load_model

    if args.plot is not None:
        from anynet.plots import figure_format

        figure_format(args.plot)
    net, record = load_model(args.model, backend=args.backend)
    mnist = load_mnist(args.data_dir, verify=not args.no_verify)
    D, H, K = net.sizes
    if D != mnist.test_images.shape[1] or K != 10:
        raise UserError(f"{args.model} is a {D}-{H}-{K} network, but MNIST has "
                        f"{mnist.test_images.shape[1]} pixels per image and 10 classes")
    result = evaluate_model(net, mnist.test_images, mnist.test_labels, args.wrong)

    if args.json:
        print(json.dumps({
            "model": str(args.model), "backend": net.backend.name, "data": mnist.source,
            **{k: v for k, v in result.items() if k not in ("per_class_accuracy", "confusion")},
            "per_class_accuracy": result["per_class_accuracy"].tolist(),
            "confusion": result["confusion"].tolist(),
        }, indent=2))
    else:
        print(format_report(args.model, record, result))
    if args.plot is not None:
        from anynet.plots import plot_confusion

        wrong = [{**w, "image": mnist.test_images[w["index"]]} for w in result["wrong"]]
        plot_confusion(result["confusion"], args.plot, wrong=wrong)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0


def format_report(model_path, record: dict, r: dict) -> str:
    arch = record.get("architecture", {})
    lines = [
        f"{model_path}: {arch.get('inputs')}-{arch.get('hidden')}-{arch.get('classes')} network, "
        f"{record.get('dtype')}, trained with anynet {record.get('anynet_version')} on "
        f"{record.get('backend', '?')}",
        f"test accuracy {100 * r['accuracy']:.2f}% ({round(r['accuracy'] * r['examples'])}"
        f"/{r['examples']}), loss {r['loss']:.4f}",
        "",
        "per-class accuracy:",
        *("  " + "  ".join(f"{k}: {100 * r['per_class_accuracy'][k]:5.2f}%" for k in half)
          for half in (range(0, 5), range(5, 10))),
        "",
        "confusion matrix (rows: true digit, columns: predicted):",
        "       " + "".join(f"{k:>6}" for k in range(r["confusion"].shape[1])),
    ]
    for k, row in enumerate(r["confusion"]):
        lines.append(f"  {k:>3}  " + "".join(f"{v:>6}" for v in row))
    if r["wrong"]:
        lines += ["", "most confidently wrong (test index: true -> predicted, probability):"]
        lines += [f"  #{w['index']:<5} {w['label']} -> {w['predicted']}  {w['probability']:.3f}"
                  for w in r["wrong"][:10]]
    return "\n".join(lines)
