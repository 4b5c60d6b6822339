"""The `anynet` command line: argparse subcommands, one module each in `anynet.commands`.

Each command module has `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`, and
imports its heavy dependencies inside `run`, so `anynet --help` is instant. `main` turns a
`UserError` into one line on stderr and its exit code (2; 3 for divergence); any other exception
is a bug and keeps its traceback.

Exit codes: 0 success, 1 a check failed (gradcheck) or runs of a sweep failed, 2 a user's
mistake or bad input, 3 training diverged, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from anynet import __version__
from anynet.errors import UserError

COMMANDS = ["train", "evaluate", "predict", "data", "examples", "gradcheck", "plot", "serve",
            "export", "sweep"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """argparse's own usage errors: one line, exit 2, as ours (--help shows the usage)."""
        message = " ".join(message.split())  # some of argparse's messages span lines
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="anynet",
        description="A two-layer neural network for MNIST on any Array API backend.",
        epilog="Run 'anynet COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"anynet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"anynet.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with `argv` (default: sys.argv[1:]); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return int(e.code or 0)
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"anynet: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("anynet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (anynet ... | head): not an error of ours; silence the final flush
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
