"""One module per `anynet` subcommand: `HELP`, `add_arguments(parser)`, `run(args) -> int`.

Command modules stay light at import time (argparse only); each imports what it needs in `run`.
"""
