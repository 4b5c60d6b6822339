"""Export a model for tools outside anynet: anynet export MODEL --format FORMAT --out FILE

  onnx          an ONNX graph traced from anynet's own forward pass by ndonnx (opset 21): input
                'pixels' (N, 784) uint8 0..255 (--input float32: floats in [0, 1]), outputs
                'probabilities' (N, 10) and 'label' (N,) int64; the model's record (anynet
                version, architecture, hyperparameters, test accuracy) in its metadata
                properties. Needs the 'onnx' extra (ndonnx, onnx).
  safetensors   W1, b1, W2, b2 and the record as one JSON string in the header's
                __metadata__ ('anynet'); anynet evaluate and predict read it as a model file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anynet.commands._common import add_force_option, check_output, output_error

HELP = "write a model as ONNX or safetensors, for other tools"

FORMATS = {"onnx": ".onnx", "safetensors": ".safetensors"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the docstring's lines
    parser.add_argument("model", type=Path, metavar="MODEL",
                        help="a model file from anynet train (.npz or .safetensors)")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS),
                        help="what to write: onnx or safetensors")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE",
                        help="where to write it (FILE.onnx or FILE.safetensors)")
    add_force_option(parser, "--out")
    parser.add_argument("--input", choices=("uint8", "float32"), default="uint8",
                        help="ONNX only: the graph's input, uint8 pixels 0..255 (default) or "
                        "float32 pixels already in [0, 1]")


def run(args) -> int:
    from anynet.errors import UserError
    from anynet.modelio import load_model, model_record, save_model_safetensors

    suffix = FORMATS[args.format]
    if args.out.suffix.lower() != suffix:
        raise UserError(f"--out {args.out}: --format {args.format} writes files named "
                        f"*{suffix}")
    if args.input != "uint8" and args.format != "onnx":
        raise UserError("--input is for --format onnx only")
    check_output("--out", args.out, force=args.force, example=f"model{suffix}")
    net, record = load_model(args.model)
    # the record as trained, with the format fields of the file being written
    extra = {k: v for k, v in record.items() if k not in model_record(net)}
    try:
        if args.format == "onnx":
            from anynet.export import save_onnx

            save_onnx(args.out, net, model_record(net, **extra), input=args.input)
        else:
            save_model_safetensors(args.out, net, extra)
    except OSError as e:  # written atomically: whatever was there is untouched
        raise output_error("--out", args.out, e) from None
    D, H, K = net.sizes
    print(f"wrote {args.out}: {args.format}, the {D}-{H}-{K} network of {args.model}")
    return 0
