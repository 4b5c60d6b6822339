"""How many CPU threads should anynet use? Epochs with 1, 2, ... threads, quiet and loaded.

    python bench/threads.py                                   # the grid of bench/README.md
    python bench/threads.py --case anynet-numpy:30:64 --threads 1 2 --epochs 3

For every case (implementation:H:batch), load (quiet, then with one CPU-bound process beside,
`python -c 'while True: pass'`, started and stopped here) and thread count, a fresh worker
(`bench/_worker.py`, the same as `bench/epoch.py`'s) sets the threads through
`anynet.backend.threads.set_threads`, trains `--warmup` untimed and `--epochs` timed epochs on
MNIST and reports the median epoch. The table gives each median and, per thread count, the
loaded/quiet ratio: the number `anynet.backend.threads.DEFAULT_THREADS` was chosen by.

A measuring tool, not a test. Runs are short (a few epochs) because the machine may be shared;
the per-run `others_cores` (cores other processes took, the spinner included) is in the JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _load  # bench/_load.py: the load meter
import epoch  # bench/epoch.py: IMPLS, the worker runner, data

DEFAULT_CASES = ["anynet-numpy:30:32", "anynet-numpy:30:64", "anynet-numpy:800:64",
                 "anynet-torch:800:64", "torch-module:800:64"]
LOADS = ("quiet", "loaded")


def parse_case(text: str) -> tuple[str, int, int]:
    try:
        impl, hidden, batch = text.split(":")
        if impl not in epoch.IMPLS:
            raise ValueError(f"unknown implementation {impl!r}")
        return impl, int(hidden), int(batch)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: want IMPL:H:BATCH ({e})") from None


class Spinner:
    """One CPU-bound process beside the measurement, for the 'loaded' runs."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.3)  # let it start spinning
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()


def measure(impl: str, hidden: int, batch: int, threads: int, load: str, args, env,
            data_dir: str) -> dict:
    cfg = {"kind": "train", "impl": epoch.IMPLS[impl].module,
           "library": epoch.IMPLS[impl].library, "options": epoch.IMPLS[impl].options,
           "hidden": hidden, "batch": batch, "lr": 0.1, "seed": 0, "epochs": args.epochs,
           "warmup": args.warmup, "retime": 0, "retime_budget_s": 0, "device": "cpu",
           "threads": threads, "data_dir": data_dir}
    if args.wait_quiet:  # before the spinner starts: the load is ours only
        _load.wait_until_quiet(args.wait_quiet)
    with _load.LoadMeter(_load.children_cpu_s) as meter:
        if load == "loaded":
            with Spinner():
                r = epoch.run_worker(cfg, env, args.timeout)
        else:
            r = epoch.run_worker(cfg, env, args.timeout)
    r.update(impl=impl, hidden=hidden, batch=batch, threads_asked=threads, load=load,
             others_cores=meter.others_cores)
    return r


def format_table(results: list[dict], threads: list[int]) -> str:
    by = {(r["impl"], r["hidden"], r["batch"], r["threads_asked"], r["load"]): r
          for r in results}
    cols = [f"{load} {t}t" for load in LOADS for t in threads] + [f"x {t}t" for t in threads]
    head = f"{'case':<22}" + "".join(f"{c:>11}" for c in cols)
    lines = ["Seconds per epoch (median), quiet and beside one CPU-bound process; "
             "x = loaded / quiet", head]
    for case in dict.fromkeys((r["impl"], r["hidden"], r["batch"]) for r in results):
        cells = []
        for load in LOADS:
            for t in threads:
                r = by.get((*case, t, load))
                cells.append(epoch._secs(r["median_s"]) if r and r["status"] == "ok" else "-")
        for t in threads:
            q, lo = by.get((*case, t, "quiet")), by.get((*case, t, "loaded"))
            ok = q and lo and q["status"] == lo["status"] == "ok"
            cells.append(f"{lo['median_s'] / q['median_s']:.2f}" if ok else "-")
        name = f"{case[0]} H={case[1]} b={case[2]}"
        lines.append(f"{name:<22}" + "".join(f"{c:>11}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/threads.py", description=__doc__.split("\n")[0])
    p.add_argument("--case", nargs="+", type=parse_case, default=None, metavar="IMPL:H:BATCH",
                   help=f"what to train (default: {' '.join(DEFAULT_CASES)})")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], metavar="N",
                   help="thread counts to compare (default: 1 2)")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per run (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs first (default: 1)")
    p.add_argument("--train-images", type=int, default=60000, metavar="N",
                   help="train on the first N images (default: all 60,000)")
    p.add_argument("--wait-quiet", type=float, default=20, metavar="S",
                   help="before each run wait up to S s for a quiet machine (default: 20)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per run (default: 600)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="the four MNIST files (default: $ANYNET_DATA_DIR, cache, download)")
    p.add_argument("--no-verify", action="store_true",
                   help="accept MNIST-format files that are not genuine MNIST (tests)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="JSON results (default: bench/results/threads-<host>-<date>.json)")
    args = p.parse_args(argv)
    cases = args.case or [parse_case(c) for c in DEFAULT_CASES]
    args.test_images, args.quick = 1000, False
    out = Path(args.out or epoch.BENCH_DIR / "results" /
               f"threads-{socket.gethostname()}-{dt.date.today().isoformat()}.json")
    env = epoch.child_env("cpu")
    results = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="anynet-threads-") as tmp:
        epoch.prepare_data(args, Path(tmp))
        for impl, hidden, batch in cases:
            for load in LOADS:
                for t in args.threads:
                    r = measure(impl, hidden, batch, t, load, args, env, tmp)
                    results.append(r)
                    text = (f"{r['median_s']:.3f} s [{', '.join(f'{s:.3f}' for s in r['epoch_s'])}]"
                            f", pools {r.get('thread_pools')}" if r["status"] == "ok"
                            else f"{r['status']}: {r.get('reason')}")
                    print(f"{impl} H={hidden} b={batch} {load} {t} threads: {text}, others "
                          f"{r['others_cores']:.2f} cores", file=sys.stderr, flush=True)
    table = format_table(results, args.threads)
    print(table)
    ratios = {}
    for t in args.threads:
        xs = [lo["median_s"] / q["median_s"] for q in results for lo in results
              if q["load"] == "quiet" and lo["load"] == "loaded" and q["threads_asked"] == t
              and lo["threads_asked"] == t and q["status"] == lo["status"] == "ok"
              and (q["impl"], q["hidden"], q["batch"]) == (lo["impl"], lo["hidden"], lo["batch"])]
        ratios[t] = max(xs) if xs else None
    report = {"schema": "anynet-bench-threads/1",
              "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": epoch.machine_info(None),
              "config": {"epochs": args.epochs, "warmup": args.warmup,
                         "train_images": args.train_images, "threads": args.threads},
              "worst_loaded_over_quiet": ratios,
              "results": results, "table": table, "wall_s": time.perf_counter() - started}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {out} ({(time.perf_counter() - started) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
