"""What does a Dask sweep buy on this machine? 16 small runs on a LocalCluster against one process.

    ANYNET_DATA_DIR=../shared/data/mnist python bench/sweep.py
    python bench/sweep.py --data-dir DIR --workers 2 --epochs 2

The same 16 runs (784-30-10 and 784-100-10, learning rates 0.1 and 0.3, seeds 0-3, one BLAS
thread each) are trained twice:

1. one after another in this process, through the worker's own task (`train_run`: MNIST loaded
   once, then train and score each run), no files written;
2. by `anynet sweep --workers N` into a fresh folder: the whole command, the LocalCluster's
   start-up, each worker loading MNIST, and the client writing 16 models and result lines
   (a LocalCluster's start-up alone is timed beforehand, to say how much of the overhead it is).

It prints both wall times, the speed-up (1 / 2) and the per-run overhead: the core-seconds the
sweep spent beyond the sequential work, (wall x workers - sequential) / runs. On N otherwise idle
cores the speed-up tends to N as runs grow longer; the overhead is what short runs pay. It also
prints the cores other processes kept busy before and after (anynet.backend.threads.busy_cores),
since a shared machine changes both numbers. A measuring tool, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anynet.backend.threads import busy_cores  # noqa: E402
from anynet.cli import main as anynet_main  # noqa: E402
from anynet.sweep import expand_grid  # noqa: E402
from anynet.sweep_cluster import start_cluster, train_run  # noqa: E402

GRID = {"hidden": [30, 100], "lr": [0.1, 0.3], "seed": [0, 1, 2, 3]}


def _cores(busy: float | None) -> str:
    return "?" if busy is None else f"{busy:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("ANYNET_DATA_DIR"),
                        help="genuine MNIST (default: $ANYNET_DATA_DIR, else the cache)")
    parser.add_argument("--no-verify", action="store_true", help="accept non-genuine files")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    runs = expand_grid({"epochs": args.epochs}, GRID)
    data_dir = os.path.abspath(args.data_dir) if args.data_dir else None
    before = busy_cores(1.0)
    print(f"{len(runs)} runs (hidden {GRID['hidden']}, lr {GRID['lr']}, seeds 0-3, "
          f"{args.epochs} epochs, 1 thread each); other processes kept "
          f"{_cores(before)} cores busy before", flush=True)

    started = time.perf_counter()
    task_seconds = []
    for run in runs:
        outcome = train_run(run.to_dict(), data_dir, not args.no_verify)
        if outcome["status"] != "ok":
            print(f"run failed: {outcome['message']}", file=sys.stderr)
            return 1
        task_seconds.append(outcome["seconds"])
    sequential = time.perf_counter() - started
    print(f"one process, one after another: {sequential:.1f} s "
          f"({sequential / len(runs):.2f} s a run, MNIST loaded once)", flush=True)

    started = time.perf_counter()  # the part of the overhead that is the cluster's start-up
    with contextlib.ExitStack() as stack:
        start_cluster(stack, None, args.workers, say=lambda *a: None)
        start_up = time.perf_counter() - started
    print(f"a LocalCluster of {args.workers} workers starts (and stops) in "
          f"{time.perf_counter() - started:.1f} s, ready after {start_up:.1f} s", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        argv = ["sweep", "--hidden", "30,100", "--lr", "0.1,0.3", "--seeds", "0-3",
                "--epochs", str(args.epochs), "--workers", str(args.workers),
                "--out", str(Path(folder) / "sweep"), "--quiet"]
        argv += ["--data-dir", data_dir] if data_dir else []
        argv += ["--no-verify"] if args.no_verify else []
        started = time.perf_counter()
        with open(os.devnull, "w") as quiet:
            stdout, sys.stdout = sys.stdout, quiet  # the summary table: not what is measured
            try:
                code = anynet_main(argv)
            finally:
                sys.stdout = stdout
        swept = time.perf_counter() - started
    if code != 0:
        print(f"anynet sweep failed (exit {code})", file=sys.stderr)
        return 1
    after = busy_cores(1.0)
    overhead = (swept * args.workers - sequential) / len(runs)
    print(f"anynet sweep, LocalCluster of {args.workers} workers: {swept:.1f} s "
          f"(start-up, data and files included)")
    print(f"speed-up {sequential / swept:.2f}x on {args.workers} workers; per-run overhead "
          f"{overhead:.2f} core-seconds ((wall x workers - sequential) / runs); other "
          f"processes kept {_cores(after)} cores busy after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
