"""Options that several commands share, defined once so their help and checks agree."""

from __future__ import annotations

import argparse

BACKENDS = ["numpy", "cupy", "torch", "jax", "array-api-strict", "auto"]


def add_backend_option(parser: argparse.ArgumentParser, default: str = "numpy") -> None:
    parser.add_argument(
        "--backend", choices=BACKENDS, default=default,
        help=f"array library to compute with (default: {default}; auto = cupy if a GPU answers, "
        "else numpy)",
    )


def add_data_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", metavar="DIR", default=None,
        help="folder holding the four MNIST files, gzip'd or raw (default: $ANYNET_DATA_DIR, "
        "else the cache, else download)",
    )


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
