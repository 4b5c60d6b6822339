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
with the grid (at most 100,000 runs).

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
from pathlib import Path

from anynet.commands._common import (
    MAX_HIDDEN,
    add_backend_option,
    add_data_dir_option,
    add_no_verify_option,
    at_most,
    positive_float,
    positive_int,
)
from anynet.sweep import SWEEPABLE, option_name, parse_values

MAX_WAIT_S = 7 * 24 * 3600  # --wait-for-workers: a week is a plan; more is a typo
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
    g.add_argument("--workers", type=positive_int, metavar="N",
                   help="worker processes of the local cluster (default and most: one per core "
                   "and per 400 MB available)")
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
    g.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="plot accuracy against the swept options (needs anynet[plot])")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")


def run(args) -> int:
    from anynet.errors import UserError

    if args.summary is not None:
        asked = [option_name(f) for f in SWEEPABLE if getattr(args, f) is not None]
        if asked or args.out is not None or args.scheduler or args.recipe:
            raise UserError("--summary DIR prints an earlier sweep's results and trains nothing; "
                            f"leave out {', '.join(asked) or '--out/--scheduler/--recipe'}")
        _check_plot(args.plot)
        return _print_summary(args.summary, args.plot)
    if args.out is None:
        raise UserError("name the sweep's folder with --out DIR (e.g. --out sweep1/)")
    if args.scheduler is not None and args.workers is not None:
        raise UserError("--workers sizes the local cluster; a --scheduler's cluster has its own "
                        "workers. Give one of them")
    if args.scheduler is None:
        from anynet.backend import require
        from anynet.sweep_cluster import local_worker_limit

        # the local workers import what this process can: a missing library is one line now,
        # not a traceback in every run (a --scheduler's workers may have what the client lacks)
        require(args.backend)

        limit, why = local_worker_limit()
        if args.workers is not None and args.workers > limit:
            raise UserError(f"--workers {args.workers}: at most {limit} local worker process"
                            f"{'es' if limit != 1 else ''} ({why}); give --workers {limit} or "
                            "fewer, or run on a cluster with --scheduler")
        args.workers = args.workers or limit
    runs = _grid(args)
    _check_plot(args.plot)
    from anynet.sweep_cluster import check_scheduler_address

    if args.scheduler is not None:
        check_scheduler_address(args.scheduler)  # before any file is made
    return _sweep(args, runs)


def _check_plot(path: Path | None) -> None:
    if path is None:
        return
    from anynet.errors import MissingExtraError, UserError
    from anynet.fileio import output_problem
    from anynet.plots import figure_format

    figure_format(path)
    problem = output_problem(path)
    if problem:
        raise UserError(f"--plot {path}: {problem}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtraError("matplotlib", "plot", "sweep --plot") from None


def recipe_base(name: str) -> dict:
    """The settings of recipe `name` (`anynet.recipes`): the base every run of the grid
    starts from."""
    from anynet.errors import UserError
    from anynet.recipes import RECIPES, recipe

    if name not in RECIPES:
        raise UserError(f"--recipe: unknown recipe {name!r}; choose one of: "
                        f"{', '.join(RECIPES)}")
    return recipe(name)


def _grid(args) -> list:
    from anynet.errors import UserError
    from anynet.sweep import expand_grid

    base = recipe_base(args.recipe) if args.recipe else {}
    base["backend"] = args.backend
    swept = {field: getattr(args, field) for field in SWEEPABLE
             if getattr(args, field) is not None}
    try:
        return expand_grid(base, swept, train_size=args.train_size, threads=args.threads)
    except ValueError as e:
        raise UserError(str(e)) from None


# --- OUT -----------------------------------------------------------------------------------------


def _own_names() -> set[str]:
    from anynet.fileio import lock_path_for
    from anynet.sweep import MANIFEST_NAME, RESULTS_NAME, RUNS_FOLDER

    return {MANIFEST_NAME, RESULTS_NAME, RUNS_FOLDER, lock_path_for(Path(MANIFEST_NAME)).name}


def _prepare_out(out: Path) -> None:
    """Make OUT, or accept it as an earlier sweep's folder; refuse anything else (exit 2)."""
    import json

    from anynet.errors import UserError
    from anynet.fileio import atomic_write_text, reason
    from anynet.sweep import MANIFEST_FORMAT, MANIFEST_NAME

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; name a folder for the sweep (new or empty)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        entries = {e.name for e in os.scandir(out)}
    except OSError as e:
        raise UserError(f"--out {out}: cannot make or read the folder ({reason(e)})") from None
    manifest = out / MANIFEST_NAME
    if MANIFEST_NAME in entries:
        try:
            ours = json.loads(manifest.read_text()).get("format") == MANIFEST_FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise UserError(f"--out {out}: {manifest} is not an anynet sweep's; choose another "
                            "folder")
        return
    foreign = sorted(n for n in entries if n not in _own_names() and not n.endswith(".tmp"))
    if foreign:
        raise UserError(f"--out {out} holds files that are not an anynet sweep's "
                        f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
                        "choose a new or empty folder")
    from anynet import __version__

    try:
        atomic_write_text(manifest, json.dumps({"format": MANIFEST_FORMAT, "version": 1,
                                                "anynet_version": __version__}) + "\n")
    except OSError as e:
        raise UserError(f"--out {out}: cannot write in it ({reason(e)})") from None


def _sweep(args, runs: list) -> int:
    import contextlib

    from anynet.errors import UserError
    from anynet.fileio import LockedError, exclusive_lock, reason
    from anynet.sweep import MANIFEST_NAME

    out = args.out
    _prepare_out(out)
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
    import time

    from anynet.errors import MissingExtraError
    from anynet.fileio import atomic_write_bytes, remove_stale_temporaries
    from anynet.sweep import (
        FINISHED,
        RESULTS_NAME,
        RUNS_FOLDER,
        latest_by_run,
    )

    say = (lambda *a, **k: None) if args.quiet else print
    results_path = out / RESULTS_NAME
    skipped: list = []
    records, complete = _read(results_path, skipped)
    _warn_skipped(results_path, skipped, ("its run counts", "their runs count"), "as not done")
    if results_path.exists() and complete < results_path.stat().st_size:
        # a line torn by a killed client: cut it off, so the next line starts on its own
        atomic_write_bytes(results_path, results_path.read_bytes()[:complete])
    (out / RUNS_FOLDER).mkdir(exist_ok=True)
    # what a killed client's writes left behind
    remove_stale_temporaries(out, [RESULTS_NAME], older_than=time.time())
    remove_stale_temporaries(out / RUNS_FOLDER, [f"{run.id}.npz" for run in runs],
                             older_than=time.time())
    done = latest_by_run(records)

    def finished(run) -> bool:
        record = done.get(run.id)
        return (record is not None and record.get("status") in FINISHED
                and (record["status"] != "ok" or (out / RUNS_FOLDER / f"{run.id}.npz").exists()))

    todo = [run for run in runs if not finished(run)]
    del records  # read again at the end: never two copies of a large file's records at once
    done.clear()
    say(f"anynet sweep: {len(runs)} run{'s' if len(runs) != 1 else ''} into {out}: "
        f"{len(runs) - len(todo)} done before, {len(todo)} to train")
    failed = 0
    if todo:
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise MissingExtraError("dask[distributed]", "sweep", "anynet sweep") from None
        try:
            failed = _run_on_dask(args, todo, out, results_path, stack, say)
        except _Stopped as e:
            return e.exit_code
    wanted = {run.id for run in runs}
    records, _ = _read(results_path, [])
    _print_table([r for r in records if r["run_id"] in wanted], args.plot, say=print)
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


def _run_on_dask(args, todo: list, out: Path, results_path: Path, stack, say) -> int:
    """Train `todo` on the cluster, recording each run as it finishes; return how many failed.

    The runs go to the cluster a few at a time (IN_FLIGHT_PER_WORKER per worker, at least
    MIN_IN_FLIGHT), more as each finishes: the client's memory and the scheduler's stay the
    same for 10 runs or 100,000. Every POLL_S the cluster is looked at; one that can no longer
    run anything (`anynet.sweep_cluster.cluster_problem`) ends the sweep with one line, exit 2,
    every run recorded so far kept.
    """
    import signal
    import time

    from distributed import as_completed

    from anynet.errors import UserError
    from anynet.fileio import reason, remedy
    from anynet.progress import Progress
    from anynet.sweep_cluster import (
        cluster_problem,
        no_workers_message,
        start_cluster,
        train_run,
        worker_count,
    )

    client = start_cluster(stack, args.scheduler, args.workers, say, args.wait_for_workers)
    data_dir = os.path.abspath(args.data_dir) if args.data_dir is not None else None
    pending = iter(todo)
    by_key: dict = {}  # the runs on the cluster now: key -> (run, future)
    queue = as_completed()

    def submit_more() -> None:
        workers = worker_count(client) if args.scheduler else args.workers
        wanted = max(MIN_IN_FLIGHT, IN_FLIGHT_PER_WORKER * (workers or 0))
        while len(by_key) < wanted:
            run = next(pending, None)
            if run is None:
                return
            future = client.submit(train_run, run.to_dict(), data_dir, not args.no_verify,
                                   key=f"anynet-run-{run.id}")
            by_key[future.key] = (run, future)
            queue.add(future)

    # A signal stops the sweep, but never between a run's model and its line: it waits for both.
    state = {"writing": False, "signal": None}

    def on_signal(signum, frame):
        state["signal"] = signum
        if not state["writing"]:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    failed = finished = 0
    progress = _Silent() if args.quiet else Progress(len(todo), "sweep", unit="runs",
                                                     interval=0.0, leave=True)
    where = args.scheduler or "the local cluster"

    def lost(cause: str) -> str:
        return (f"{cause}; {_runs(finished)} finished here and kept in {out}; run the same "
                f"command again to train the other {len(todo) - finished}")

    since: dict = {}
    looked = 0.0
    try:
        submit_more()
        while by_key:
            if not queue.has_ready():
                if time.monotonic() - looked >= POLL_S:
                    looked = time.monotonic()
                    problem = cluster_problem(client, args.scheduler, since,
                                              args.wait_for_workers)
                    if problem is not None:
                        raise UserError(lost(
                            f"lost the Dask scheduler at {where}" if problem == "lost"
                            else no_workers_message(where, args.wait_for_workers, started=True)))
                time.sleep(0.05)
                continue
            for future in queue.next_batch(block=False):
                if future.key not in by_key:
                    continue
                outcome = _outcome(future, client)
                if outcome is None:  # cancelled with the scheduler's loss: not a result
                    raise UserError(lost(f"lost the Dask scheduler at {where}"))
                run, _ = by_key.pop(future.key)
                future.release()  # the parameters are ours now: the cluster may forget them
                state["writing"] = True
                try:
                    record = _record(run, outcome, out)
                    _append(results_path, record)
                except OSError as e:  # a full disk: every run recorded so far stays
                    raise UserError(f"cannot write run {run.id}'s results into {out} "
                                    f"({reason(e)}); {remedy(e)}, then run the same command "
                                    f"again: the {finished} runs recorded here are kept") \
                        from None
                state["writing"] = False
                finished += 1
                failed += record["status"] == "error"
                if record["status"] == "error":
                    print(f"run {run.id} failed: {record['message']}", file=sys.stderr)
                progress.set_postfix(_describe(run, record))
                progress.update(1)
                if state["signal"] is not None:
                    raise KeyboardInterrupt
            submit_more()
    except KeyboardInterrupt:
        progress.close()
        _cancel(client, by_key)
        signum = state["signal"] or signal.SIGINT
        print(f"anynet sweep: interrupted ({signal.Signals(signum).name}): {finished} of "
              f"{len(todo)} runs finished here and are kept in {out}; run the same command "
              "again to train the rest", file=sys.stderr)
        raise _Stopped(128 + signum) from None
    except UserError:
        progress.close()
        _cancel(client, by_key)
        raise
    finally:
        progress.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return failed


def _runs(n: int) -> str:
    return f"{n} run{'s' if n != 1 else ''}"


IN_FLIGHT_PER_WORKER = 2  # one running and one waiting on each worker: none idles between runs
MIN_IN_FLIGHT = 2
POLL_S = 1.0  # how often a sweep waiting for results looks at the cluster


def _cancel(client, by_key: dict) -> None:
    """Cancel the runs still on the cluster, if the cluster is still there to hear it."""
    if client.status == "running":
        try:
            client.cancel([f for _, f in by_key.values()])
        except Exception:  # the scheduler went away meanwhile: nothing left to cancel
            pass


class _Silent:
    """A Progress that shows nothing (--quiet)."""

    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, text: str) -> None: ...
    def close(self) -> None: ...


def _outcome(future, client) -> dict | None:
    """What a finished future holds: train_run's dict, or an error for a run Dask gave up on;
    None for a run cancelled because the scheduler was lost (not a result: it is not recorded,
    and the sweep ends saying the scheduler is gone)."""
    if future.status == "cancelled" and client.status != "running":
        return None
    try:
        return future.result(timeout=30)
    except Exception as e:  # the task itself failed: a worker killed too often, anynet missing
        name = type(e).__name__
        if client.status != "running":
            return None
        if name == "KilledWorker":
            message = ("the workers running it died again and again (killed? out of memory?); "
                       "Dask gave up on it")
        else:
            message = f"{name}: {' '.join(str(e).split())[:300]}"
        return {"status": "error", "message": message, "worker": None, "seconds": None,
                "threads": None}


def _record(run, outcome: dict, out: Path) -> dict:
    """Write the run's model (if it trained) and return its results.jsonl record."""
    from datetime import datetime, timezone

    from anynet import __version__
    from anynet.modelio import save_model
    from anynet.network import TwoLayerNet
    from anynet.sweep import RUNS_FOLDER

    now = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    record = {"run_id": run.id, "status": outcome["status"], "message": outcome["message"],
              "config": run.config.to_dict(), "train_size": run.train_size,
              "threads": outcome["threads"], "worker": outcome["worker"],
              "seconds": outcome["seconds"], "anynet_version": __version__, "finished_at": now,
              "model": None}
    metric_names = ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_loss",
                    "epochs", "train_seconds")
    for name in metric_names:
        record[name] = outcome.get(name)
    if outcome["status"] != "ok":
        return record
    model = Path(RUNS_FOLDER) / f"{run.id}.npz"
    net = TwoLayerNet.from_params(outcome["params"], backend="numpy")
    metrics = {name: outcome[name] for name in metric_names}
    save_model(out / model, net, {
        "config": run.config.to_dict(), "seed": run.config.seed, "backend": run.config.backend,
        "threads": outcome["threads"], "trained_at": now,
        "data": outcome["data"], "metrics": metrics,
        "history": outcome["history"],
        "sweep": {"run_id": run.id, "train_size": run.train_size, "worker": outcome["worker"]},
    })
    record["model"] = model.as_posix()
    record["data_genuine"] = outcome["data"]["genuine"]
    return record


def _append(path: Path, record: dict) -> None:
    """Append one line in one write, and flush it to disk: a line is there whole or not at all
    (a client killed mid-write can tear it; read_results drops a torn last line)."""
    from anynet.sweep import result_line

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, result_line(record).encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(run, record: dict) -> str:
    c = run.config
    what = (f"test {100 * record['test_accuracy']:.2f}%" if record["status"] == "ok"
            else record["status"])
    return f"last: hidden {c.hidden}, lr {c.lr:g}, batch {c.batch_size}, seed {c.seed}: {what}"


# --- summary -------------------------------------------------------------------------------------


def _print_summary(folder: Path, plot: Path | None) -> int:
    from anynet.errors import UserError
    from anynet.sweep import RESULTS_NAME

    path = folder / RESULTS_NAME
    if not path.is_file():
        raise UserError(f"--summary {folder}: no {RESULTS_NAME} there; name the --out folder of "
                        "an anynet sweep")
    skipped: list = []
    records, _ = _read(path, skipped)
    _warn_skipped(path, skipped, ("the summary leaves it", "the summary leaves them"), "out")
    _print_table(records, plot, say=print)
    return 0


def _read(path: Path, skipped: list) -> tuple[list, int]:
    """`anynet.sweep.read_results` of what the summary and a re-run need; UserError for a file
    that cannot be read (a folder of that name, no permission)."""
    from anynet.errors import UserError
    from anynet.fileio import reason
    from anynet.sweep import SUMMARY_FIELDS, read_results

    try:
        return read_results(path, skipped, keep=SUMMARY_FIELDS)
    except OSError as e:
        raise UserError(f"cannot read {path} ({reason(e)}); is it this sweep's results file?") \
            from None


def _warn_skipped(path: Path, skipped: list, subject: tuple[str, str], rest: str) -> None:
    """One line on stderr for the lines of results.jsonl that are not run records; `subject`
    (singular, plural) and `rest` say what follows for them."""
    if not skipped:
        return
    number, problem = skipped[0]
    many = len(skipped) > 1
    more = f" and {len(skipped) - 1} more" if many else ""
    print(f"anynet sweep: warning: skipped {len(skipped)} line{'s' if many else ''} of {path} "
          f"that {'are not run records' if many else 'is not a run record'} (line {number}: "
          f"{problem}{more}); {subject[many]} {rest}; the file is left as it is",
          file=sys.stderr)


def _print_table(records: list, plot: Path | None, say) -> None:
    from anynet.sweep import format_summary, summarize

    rows, ranked_by = summarize(records)
    say(format_summary(rows, ranked_by))
    if plot is not None and rows:
        from anynet.plots import plot_sweep

        plot_sweep(records, plot)
        say(f"plot written to {plot}")
