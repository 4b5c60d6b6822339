"""Train a grid of configurations on Dask: lists or ranges for any training option, over seeds.

    anynet sweep --hidden 30,100,800 --lr 0.1,0.3 --seeds 0-4 --epochs 10 --out sweep1/

The grid is the product of the values given (an option given once is the same for every run;
one left out takes train's default). By default the runs go to a Dask LocalCluster on this
machine: one worker process per core (--workers N, at most one per core and one per 400 MB
available), one BLAS thread each, everything bound to 127.0.0.1. --scheduler tcp://HOST:PORT
sends them to a running cluster instead; its workers need anynet and MNIST of their own
(--data-dir names a folder on the workers; without it each uses its ANYNET_DATA_DIR or cache).
The sweep waits --wait-for-workers seconds (60) for a worker there, and gives up (exit 2) when
the cluster has had no worker that long or its scheduler is lost, keeping every run recorded.
The client holds a few tasks per worker on the cluster at a time, so its memory does not grow
with the grid (at most 100,000 runs). --workers 0 trains in this process instead, one run
after another, without Dask (a few short runs: the N seeds of a committee).

As each run finishes, its model is written to OUT/runs/RUN_ID.npz (a normal model file:
anynet evaluate reads it) and then one JSON line to OUT/results.jsonl. RUN_ID is a hash of the
run's full configuration, so running the same command again skips the runs already done: after
Ctrl-C, a crash or a run that failed on a worker without MNIST. A run that diverges is recorded
(status "diverged") and not retried; a worker that dies mid-run has its run rescheduled by Dask.
The client writes every file, so OUT need not be shared with the workers. One sweep at a time
per OUT (a lock, OUT/.sweep.json.lock). At the end a table: each configuration's mean and
standard deviation over seeds, best first; `anynet sweep --summary OUT` prints it again. A line
of results.jsonl that is not a run's record (edited, or written by something else) is skipped
with one warning and left in the file; its run counts as not done.

Exit codes: 0 every run finished (trained or diverged); 1 some runs failed (results.jsonl says
why; run again to retry them); 2 a bad option or OUT, or a cluster that stopped working (finished
runs kept); 130/143 interrupted, finished runs kept.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from anynet.commands._common import (
    MAX_HIDDEN,
    add_backend_option,
    add_data_dir_option,
    add_force_option,
    add_no_verify_option,
    add_plot_option,
    at_most,
    check_output,
    check_plot_option,
    nonnegative_int,
    positive_float,
    positive_int,
)
from anynet.commands._sweep_results import print_summary, print_table, read, warn_skipped
from anynet.progress import NullProgress
from anynet.sweep import SWEEPABLE, option_name, parse_values

MAX_WAIT_S = 7 * 24 * 3600  # --wait-for-workers: a week is a plan; more is a typo
POLL_S = 1.0  # how often a sweep waiting for results looks at the cluster
HELP = "train a grid of configurations over seeds, on Dask (anynet[sweep])"
_VALUES_HELP = {
    "hidden": f"hidden units, e.g. 30,100,800 (at most {MAX_HIDDEN:,})",
    "epochs": "passes over the data, e.g. 10 or 5,10",
    "batch_size": "examples per SGD step, e.g. 32,64",
    "lr": "learning rates, e.g. 0.1,0.3",
    "momentum": "momenta in [0, 1), e.g. 0,0.9",
    "nesterov": "Nesterov momentum: false,true (true needs --momentum > 0)",
    "weight_decay": "L2 weight decays, e.g. 0,3e-4",
    "schedule": "learning-rate schedules: constant, step, cosine",
    "seed": "seeds, e.g. 0-4 (the runs of a configuration; the summary averages over them)",
    "val_size": "training examples held out for validation, e.g. 5000",
    "dtype": "float32, float64",
    "augment": "distortions of the training images: none, affine, elastic, affine+elastic",
    "rotate": "largest rotations, degrees, e.g. 10,15",
    "scale": "largest relative changes of size, e.g. 0.1,0.15",
    "shear": "largest slants, e.g. 0.2,0.3",
    "shift": "largest shifts, pixels, e.g. 2,3",
    "alpha": "elastic strengths, pixels, e.g. 34",
    "sigma": "elastic smoothness, pixels, e.g. 4,6",
    "dropout": "hidden units' dropout probabilities, e.g. 0,0.5",
    "input_dropout": "input pixels' dropout probabilities, e.g. 0,0.2",
    "label_smoothing": "label smoothings, e.g. 0,0.1",
    "average": "weight averagings: none, ema:DECAY, swa:START, e.g. none,ema:0.999",
    "preprocess": "preprocessings of the digits: none, deslant, width:W, deslant+width:W, "
                  "e.g. none,deslant,deslant+width:16",
}


def _values_type(field: str):
    def parse(text: str) -> list:
        try:
            values = parse_values(field, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if field == "hidden" and max(values) > MAX_HIDDEN:
            raise argparse.ArgumentTypeError(f"at most {MAX_HIDDEN:,} hidden units, "
                                             f"got {max(values)}")
        return values

    parse.__name__ = "list of values"
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("the grid (comma lists; integers also as ranges, 0-4)")
    for field in SWEEPABLE:
        g.add_argument(option_name(field), dest=field, type=_values_type(field),
                       metavar="LIST", help=_VALUES_HELP[field])
    g.add_argument("--recipe", metavar="NAME",
                   help="a named recipe (anynet train --help lists them) as the base of "
                   "every run; the swept options override it")
    g.add_argument("--train-size", type=positive_int, metavar="N",
                   help="train on the first N training examples only (default: all)")
    add_backend_option(parser, default="numpy")
    # One thread per run: a sweep uses the cores through its worker processes, and BLAS threads
    # beside busy workers collapse (anynet.backend.threads).
    parser.set_defaults(threads=1)
    for action in parser._actions:
        if action.dest == "threads":
            action.help = "CPU threads of each run (default: 1; the workers use the cores)"
    g = parser.add_argument_group("cluster")
    g.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="use this running Dask cluster (default: a local one)")
    g.add_argument("--workers", type=nonnegative_int, metavar="N",
                   help="worker processes of the local cluster (default and most: one per core "
                   "and per 400 MB available); 0 trains in this process, one run after another, "
                   "without Dask")
    g.add_argument("--wait-for-workers", type=at_most(positive_float, MAX_WAIT_S),
                   default=60.0, metavar="SECONDS",
                   help="give up when the --scheduler's cluster has had no worker for this long "
                   "(default: 60)")
    g = parser.add_argument_group("data and files")
    add_data_dir_option(g)
    add_no_verify_option(g)
    g.add_argument("--out", type=Path, metavar="DIR",
                   help="folder for results.jsonl and runs/ (new, empty, or an earlier sweep's)")
    g.add_argument("--summary", type=Path, metavar="DIR",
                   help="print the summary of the sweep in DIR and train nothing")
    add_plot_option(g, "accuracy against the swept options")
    add_force_option(g, "the --plot file")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")


def run(args) -> int:
    from anynet.errors import UserError

    if args.summary is not None:
        asked = [option_name(f) for f in SWEEPABLE if getattr(args, f) is not None]
        if asked or args.out is not None or args.scheduler or args.recipe:
            raise UserError("--summary DIR prints an earlier sweep's results and trains nothing; "
                            f"leave out {', '.join(asked) or '--out/--scheduler/--recipe'}")
        _check_plot(args.plot, args.force)
        return print_summary(args.summary, args.plot)
    if args.out is None:
        raise UserError("name the sweep's folder with --out DIR (e.g. --out sweep1/)")
    if args.scheduler is not None and args.workers is not None:
        raise UserError("--workers sizes the local cluster; a --scheduler's cluster has its own "
                        "workers. Give one of them")
    if args.scheduler is None:
        from anynet.backend import require
        from anynet.sweep_cluster import local_workers

        # the local workers import what this process can: a missing library is one line now,
        # not a traceback in every run (a --scheduler's workers may have what the client lacks)
        require(args.backend)
        if args.workers != 0:
            args.workers = local_workers(args.workers)
    runs = _grid(args)
    _check_plot(args.plot, args.force)
    from anynet.sweep_cluster import check_scheduler_address

    if args.scheduler is not None:
        check_scheduler_address(args.scheduler)  # before any file is made
    return _sweep(args, runs)


def _check_plot(path: Path | None, force: bool) -> None:
    if path is None:
        return
    check_plot_option(path, "sweep --plot")
    check_output("--plot", path, force=force)  # an existing picture is kept without --force


def _grid(args) -> list:
    from anynet.errors import UserError
    from anynet.recipes import RECIPES, recipe
    from anynet.sweep import expand_grid

    if args.recipe and args.recipe not in RECIPES:
        raise UserError(f"--recipe: unknown recipe {args.recipe!r}; choose one of: "
                        f"{', '.join(RECIPES)}")
    base = recipe(args.recipe) if args.recipe else {}  # the base every run starts from
    base["backend"] = args.backend
    swept = {field: getattr(args, field) for field in SWEEPABLE
             if getattr(args, field) is not None}
    try:
        return expand_grid(base, swept, train_size=args.train_size, threads=args.threads)
    except ValueError as e:
        raise UserError(str(e)) from None


# --- OUT -----------------------------------------------------------------------------------------


def _sweep(args, runs: list) -> int:
    import contextlib

    from anynet.errors import UserError
    from anynet.fileio import LockedError, exclusive_lock, reason
    from anynet.sweep import MANIFEST_NAME
    from anynet.sweep_folder import prepare_folder

    out = args.out
    prepare_folder(out)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(out / MANIFEST_NAME))
        except LockedError as e:
            holder = e.pid if e.pid is not None else "unknown"
            raise UserError(f"another anynet sweep (pid {holder}) is writing {out}; wait for it "
                            "to end, or choose another --out") from None
        except OSError as e:
            raise UserError(f"--out {out}: cannot write in it ({reason(e)})") from None
        return _train_missing(args, runs, out, stack)


def _train_missing(args, runs: list, out: Path, stack) -> int:
    from anynet.errors import MissingExtraError
    from anynet.sweep import RESULTS_NAME
    from anynet.sweep_folder import runs_to_train

    say = (lambda *a, **k: None) if args.quiet else print
    results_path = out / RESULTS_NAME
    skipped: list = []
    records, complete = read(results_path, skipped)
    warn_skipped(results_path, skipped, ("its run counts", "their runs count"), "as not done")
    todo = runs_to_train(out, runs, records, complete)
    del records  # read again at the end: never two copies of a large file's records at once
    say(f"anynet sweep: {len(runs)} run{'s' if len(runs) != 1 else ''} into {out}: "
        f"{len(runs) - len(todo)} done before, {len(todo)} to train")
    failed = 0
    if todo:
        try:
            if args.workers != 0:
                import distributed  # noqa: F401
        except ImportError:
            raise MissingExtraError("dask[distributed]", "sweep", "anynet sweep") from None
        try:
            failed = _run_on_dask(args, todo, out, results_path, stack, say)
        except _Stopped as e:
            return e.exit_code
    wanted = {run.id for run in runs}
    records, _ = read(results_path, [])
    print_table([r for r in records if r["run_id"] in wanted], args.plot, say=print)
    if failed:
        print(f"anynet sweep: {failed} run{'s' if failed != 1 else ''} failed (status \"error\" "
              f"in {results_path}); fix the cause, then run the same command again to retry",
              file=sys.stderr)
        return 1
    return 0


class _Stopped(Exception):
    """The sweep was interrupted by a signal; `exit_code` is 128 + its number."""

    def __init__(self, exit_code: int):
        super().__init__(exit_code)
        self.exit_code = exit_code


@dataclass
class _State:
    """What the signal handler shares with the loop that records the runs."""

    writing: bool = False       # between a run's model and its line: a signal waits for both
    signal: int | None = None   # the signal that asked the sweep to stop
    finished: int = 0           # runs recorded here
    failed: int = 0             # of which status "error"


def _run_on_dask(args, todo: list, out: Path, results_path: Path, stack, say) -> int:
    """Train `todo` on the cluster, recording each run as it finishes; return how many failed.

    The runs go to the cluster a few at a time (`anynet.sweep_cluster.RunQueue`), more as each
    finishes. Every POLL_S the cluster is looked at; one that can no longer run anything
    (`anynet.sweep_cluster.cluster_problem`) ends the sweep with one line, exit 2, every run
    recorded so far kept.
    """
    import signal

    from anynet.errors import UserError
    from anynet.progress import Progress
    from anynet.sweep_cluster import InProcessQueue, RunQueue, start_cluster

    data_dir = os.path.abspath(args.data_dir) if args.data_dir is not None else None
    queue: InProcessQueue | RunQueue
    if args.workers == 0:
        say("in this process, one run after another (--workers 0: no Dask)")
        queue = InProcessQueue(todo, data_dir, not args.no_verify)
    else:
        client = start_cluster(stack, args.scheduler, args.workers, say, args.wait_for_workers)
        queue = RunQueue(client, todo, data_dir, not args.no_verify,
                         workers=None if args.scheduler else args.workers)
    # A signal stops the sweep, but never between a run's model and its line: it waits for both.
    state = _State()

    def on_signal(signum, frame):
        state.signal = signum
        if not state.writing:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    progress = NullProgress() if args.quiet else Progress(len(todo), "sweep", unit="runs",
                                                     interval=0.0, leave=True)
    try:
        _collect(args, queue, out, results_path, progress, state)
    except KeyboardInterrupt:
        progress.close()
        queue.cancel()
        signum = state.signal or signal.SIGINT
        print(f"anynet sweep: interrupted ({signal.Signals(signum).name}): {state.finished} "
              f"of {len(todo)} runs finished here and are kept in {out}; run the same command "
              "again to train the rest", file=sys.stderr)
        raise _Stopped(128 + signum) from None
    except UserError:
        progress.close()
        queue.cancel()
        raise
    finally:
        progress.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return state.failed


def _collect(args, queue, out: Path, results_path: Path, progress, state: _State) -> None:
    """Keep the queue's runs going and record each as it finishes, until none is left;
    UserError when the cluster can no longer run anything."""
    import time

    from anynet.errors import UserError
    from anynet.sweep_cluster import cluster_problem, no_workers_message

    where = args.scheduler or "the local cluster"

    def lost(cause: str) -> str:
        return (f"{cause}; {_runs(state.finished)} finished here and kept in {out}; run the "
                f"same command again to train the other {queue.total - state.finished}")

    since: dict = {}
    looked = 0.0
    queue.submit_more()
    while queue.busy:
        if not queue.has_ready():
            if time.monotonic() - looked >= POLL_S:
                looked = time.monotonic()
                problem = cluster_problem(queue.client, args.scheduler, since,
                                          args.wait_for_workers)
                if problem is not None:
                    raise UserError(lost(
                        f"lost the Dask scheduler at {where}" if problem == "lost"
                        else no_workers_message(where, args.wait_for_workers, started=True)))
            time.sleep(0.05)
            continue
        for run, outcome in queue.finished():
            if outcome is None:  # cancelled with the scheduler's loss: not a result
                raise UserError(lost(f"lost the Dask scheduler at {where}"))
            _record(run, outcome, out, results_path, progress, state)
            if state.signal is not None:
                raise KeyboardInterrupt
        queue.submit_more()


def _runs(n: int) -> str:
    return f"{n} run{'s' if n != 1 else ''}"


def _record(run, outcome: dict, out: Path, results_path: Path, progress, state: _State) -> None:
    """Write a finished run's model and its results line (no signal stops between the two)."""
    from anynet.errors import UserError
    from anynet.fileio import reason, remedy
    from anynet.sweep_folder import append_result, run_record

    state.writing = True
    try:
        record = run_record(run, outcome, out)
        append_result(results_path, record)
    except OSError as e:  # a full disk: every run recorded so far stays
        raise UserError(f"cannot write run {run.id}'s results into {out} ({reason(e)}); "
                        f"{remedy(e)}, then run the same command again: the "
                        f"{state.finished} runs recorded here are kept") from None
    state.writing = False
    state.finished += 1
    state.failed += record["status"] == "error"
    if record["status"] == "error":
        print(f"run {run.id} failed: {record['message']}", file=sys.stderr)
    progress.set_postfix(_describe(run, record))
    progress.update(1)


def _describe(run, record: dict) -> str:
    c = run.config
    what = (f"test {100 * record['test_accuracy']:.2f}%" if record["status"] == "ok"
            else record["status"])
    return f"last: hidden {c.hidden}, lr {c.lr:g}, batch {c.batch_size}, seed {c.seed}: {what}"
