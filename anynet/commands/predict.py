"""Predict the digit in pictures with a trained model: anynet predict MODEL IMAGE...

Each picture (PNG, JPEG, BMP or .npy, any size, dark ink on light paper or light ink on dark) is
made to look like an MNIST digit first: grey, white ink on black, cropped to the ink, the longer
side scaled to 20 pixels, centred by its centre of mass in 28x28. The network then gives each
class a probability; the most probable few are printed, or written as JSON with --json. Use
--show to see the 28x28 image the network was given.
"""

from __future__ import annotations

import argparse

from anynet.commands._common import add_backend_option, open_backend, positive_int

HELP = "predict the digit in PNG/JPEG/BMP/.npy pictures with a trained model"

UNSURE_BELOW = 0.5  # a top probability under this is marked "unsure" in the human output
_SHADES = " .:-=+*#%@"  # ASCII, dark to bright, for --show (works in any terminal encoding)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the docstring's lines
    parser.add_argument("model", metavar="MODEL", help="model file written by anynet train")
    parser.add_argument(
        "images", metavar="IMAGE", nargs="+",
        help="pictures of one digit each: PNG, JPEG, BMP (needs the 'image' extra) or .npy",
    )
    parser.add_argument(
        "--top", metavar="K", type=positive_int, default=3,
        help="how many of the most probable classes to show (default: 3)",
    )
    parser.add_argument(
        "--json", action="store_true",
        help="print one JSON document: a list of {file, prediction, top: [{class, probability}]}",
    )
    parser.add_argument(
        "--show", action="store_true",
        help="also draw, as text, the 28x28 image the network sees (not with --json)",
    )
    add_backend_option(parser)


def run(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from anynet.errors import UserError
    from anynet.evaluation import NonFiniteOutputs, ranked_classes
    from anynet.images import FIELD, preprocess_digit, read_image
    from anynet.modelio import load_model

    if args.json and args.show:
        raise UserError("--show draws text pictures and cannot be combined with --json")
    net, _metadata = load_model(args.model, backend=open_backend(args))
    n_in, _n_hidden, n_classes = net.sizes
    if n_in != FIELD * FIELD:
        raise UserError(
            f"{args.model}: the model takes {n_in} inputs, but a picture becomes "
            f"{FIELD * FIELD} ({FIELD}x{FIELD}) pixels"
        )
    if args.top > n_classes:
        raise UserError(f"--top {args.top}: the model has only {n_classes} classes")

    # Read every picture before printing anything, so a bad file fails the whole run cleanly.
    pixels = np.stack([preprocess_digit(read_image(p), source=p) for p in args.images])
    try:
        ranked = ranked_classes(net, pixels)
    except NonFiniteOutputs as e:
        raise UserError(
            f"{args.model}: the model's outputs for {args.images[e.row]} are "
            "not finite (nan/inf): its weights are too large to compute with; retrain it"
        ) from None
    results = [{"file": str(name), "prediction": classes[0]["class"], "top": classes[: args.top]}
               for name, classes in zip(args.images, ranked, strict=True)]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    width = min(40, max(len(r["file"]) for r in results))
    for result, image in zip(results, pixels, strict=True):
        if args.show:
            print(_ascii_picture(image.reshape(FIELD, FIELD)))
        print(_human_line(result, width))
    return 0


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
