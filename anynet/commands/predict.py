"""Predict the digit in pictures with a trained model: anynet predict MODEL [MODEL...] IMAGE...

Each picture (PNG, JPEG, BMP or .npy, any size, dark ink on light paper or light ink on dark) is
made to look like an MNIST digit first: grey, white ink on black, cropped to the ink, the longer
side scaled to 20 pixels, centred by its centre of mass in 28x28. The network then gives each
class a probability; the most probable few are printed, or written as JSON with --json. Use
--show to see the 28x28 image the network was given.

Model files (.npz, .safetensors) named right after MODEL join it in a committee
(anynet.committee): each picture gets the mean of the members' class probabilities. Where the
members' own answers differ, the line says what each member read.
"""

from __future__ import annotations

import argparse

from anynet.commands._common import add_backend_option, open_backend, positive_int
from anynet.committee import MAX_MEMBERS

HELP = "predict the digit in PNG/JPEG/BMP/.npy pictures with a trained model"

MODEL_SUFFIXES = (".npz", ".safetensors")  # arguments after MODEL that are models, not pictures
UNSURE_BELOW = 0.5  # a top probability under this is marked "unsure" in the human output
_SHADES = " .:-=+*#%@"  # ASCII, dark to bright, for --show (works in any terminal encoding)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the docstring's lines
    parser.usage = ("%(prog)s [-h] [--top K] [--json] [--show] [--backend NAME[:DEVICE]] "
                    "[--threads N]\n       MODEL [MODEL ...] IMAGE [IMAGE ...]")
    parser.add_argument("model", metavar="MODEL", help="model file written by anynet train")
    parser.add_argument(
        "images", metavar="IMAGE", nargs="+",
        help="pictures of one digit each: PNG, JPEG, BMP (needs the 'image' extra) or .npy; "
        f"model files (.npz, .safetensors) right after MODEL, at most {MAX_MEMBERS} in all, "
        "join it in a committee that averages their class probabilities",
    )
    parser.add_argument(
        "--top", metavar="K", type=positive_int, default=3,
        help="how many of the most probable classes to show (default: 3)",
    )
    parser.add_argument(
        "--json", action="store_true",
        help="print one JSON document: a list of {file, prediction, top: [{class, probability}]} "
        "(a committee's also has members: [{model, prediction, probability}])",
    )
    parser.add_argument(
        "--show", action="store_true",
        help="also draw, as text, the 28x28 image the network sees (not with --json)",
    )
    add_backend_option(parser)


def run(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from anynet.committee import load_committee, rank_pictures
    from anynet.errors import UserError
    from anynet.evaluation import NonFiniteOutputs
    from anynet.images import FIELD, preprocess_digit, read_image

    if args.json and args.show:
        raise UserError("--show draws text pictures and cannot be combined with --json")
    models, images = split_models(args.model, args.images)
    committee = load_committee(models, backend=open_backend(args))
    n_in, _n_hidden, n_classes = committee.sizes
    if n_in != FIELD * FIELD:
        raise UserError(
            f"{models[0]}: the model takes {n_in} inputs, but a picture becomes "
            f"{FIELD * FIELD} ({FIELD}x{FIELD}) pixels"
        )
    if args.top > n_classes:
        raise UserError(f"--top {args.top}: the model has only {n_classes} classes")

    # Read every picture before printing anything, so a bad file fails the whole run cleanly.
    pixels = np.stack([preprocess_digit(read_image(p), source=p) for p in images])
    try:
        ranked, alone = rank_pictures(committee, pixels)
    except NonFiniteOutputs as e:
        raise UserError(
            f"{committee.names[e.member]}: the model's outputs for {images[e.row]} are "
            "not finite (nan/inf): its weights are too large to compute with; retrain it"
        ) from None
    results = [{"file": str(name), "prediction": classes[0]["class"], "top": classes[: args.top]}
               for name, classes in zip(images, ranked, strict=True)]
    if len(committee) > 1:  # what each member read alone: its class and that probability
        for i, result in enumerate(results):
            result["members"] = [{"model": name, "prediction": member[i][0]["class"],
                                  "probability": member[i][0]["probability"]}
                                 for name, member in zip(committee.names, alone, strict=True)]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    if len(committee) > 1:
        print(f"committee of {len(committee)} models (the mean of their class probabilities): "
              + ", ".join(committee.names))
    width = min(40, max(len(r["file"]) for r in results))
    from anynet.preprocess import as_seen_by

    for result, image in zip(results, as_seen_by(committee, pixels), strict=True):
        if args.show:
            print(_ascii_picture(image.reshape(FIELD, FIELD)))
        print(_human_line(result, width))
    return 0


def split_models(model: str, rest: list[str]) -> tuple[list[str], list[str]]:
    """(model files, pictures) of `anynet predict MODEL [MODEL...] IMAGE...`: MODEL and the
    arguments after it that end in a model file's suffix, then the pictures (at least one)."""
    from anynet.committee import check_count
    from anynet.errors import UserError

    count = 0
    while count < len(rest) and rest[count].lower().endswith(MODEL_SUFFIXES):
        count += 1
    check_count(1 + count)
    if count == len(rest):
        raise UserError("no picture to read: name at least one picture (PNG, JPEG, BMP or .npy) "
                        "after the model files")
    return [model, *rest[:count]], rest[count:]


def _human_line(result: dict, width: int) -> str:
    """'digit.png: 7 (98.1%)   then 9 (1.2%), 2 (0.4%)', the file names padded to `width`."""
    best, *rest = result["top"]
    line = f"{result['file'] + ':':<{width + 1}}  {best['class']} ({_percent(best['probability'])})"
    if rest:
        line += "   then " + ", ".join(
            f"{r['class']} ({_percent(r['probability'])})" for r in rest
        )
    if best["probability"] < UNSURE_BELOW:
        line += "   (unsure)"
    votes = [m["prediction"] for m in result.get("members", [])]
    if len(set(votes)) > 1:
        line += "   (members: " + " ".join(str(k) for k in votes) + ")"
    return line


def _percent(p: float) -> str:
    """A probability as a short percentage that never rounds to a false 0% or 100%."""
    if p < 0.0005:
        return "<0.1%"
    if p > 0.9995:
        return ">99.9%"
    return f"{100 * p:.1f}%"


def _ascii_picture(image) -> str:
    """A (28, 28) uint8 image as 28 lines of ASCII, each pixel two characters wide."""
    levels = len(_SHADES)
    return "\n".join(
        "".join(2 * _SHADES[int(v) * levels // 256] for v in row) for row in image
    )
