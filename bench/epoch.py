"""Time one training epoch of anynet against what users would otherwise pick, side by side.

    python bench/epoch.py                      # the full CPU grid: H 30 100 800 x batch 10 64 128
    python bench/epoch.py --hidden 800 --batch 64 --impl anynet-numpy torch-module
    python bench/epoch.py --quick              # smoke run: 2,000 images, H 30, batch 64
    python bench/epoch.py --device cuda        # GPU peers (cupy, torch-CUDA, JAX GPU)

For every (implementation, H, batch) a fresh subprocess (`bench/_worker.py`) loads the same
MNIST bytes (uint8, from `anynet.data.load_mnist`), imports one array library, trains
784 -> H ReLU -> 10 softmax with plain SGD at one learning rate for all (the +momentum and
+nesterov-wd columns: the same with momentum 0.9, or with the recipes' optimizer, Nesterov 0.9
and weight decay 1e-4: what the optimizer costs), runs `--warmup` untimed
epochs and `--epochs` timed ones (each includes its shuffle; `time.perf_counter`, device
synchronised), then measures test accuracy and peak RSS.
Another subprocess per library measures its float32 large-matrix-product rate, which gives each
row's FLOP floor: the FLOPs of one epoch (forward + backward, no gradient for the input)
divided by the best rate measured. The table shows the median epoch and each peer's ratio to
anynet's best backend; the JSON (written atomically) keeps every epoch's time.

This is a measuring tool, not a test: it asserts nothing about speed. See bench/README.md for the
method and a real run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(BENCH_DIR))

from _load import NOISY_CORES, LoadMeter, children_cpu_s, wait_until_quiet  # noqa: E402

D, K = 784, 10  # input pixels, classes


@dataclass(frozen=True)
class Impl:
    """One column of the table: which module trains, with which library, on which devices."""

    module: str
    library: str                       # whose matrix-product rate applies: numpy, torch, jax, cupy
    requires: tuple[str, ...]          # importable modules it needs (checked without importing)
    devices: tuple[str, ...] = ("cpu",)
    options: dict = field(default_factory=dict)
    hidden_only: tuple[int, ...] = ()  # if set, run only for these H
    note: str = ""
    optional: bool = False             # run only when named with --impl (CPU: slow to compile)


RECIPE_SGD = {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}  # the recipes' optimizer

IMPLS = {
    "anynet-numpy": Impl("impl_anynet", "numpy", ("anynet.network",), ("cpu",),
                         {"backend": "numpy"}),
    "anynet-torch": Impl("impl_anynet", "torch", ("anynet.network", "torch"), ("cpu", "cuda"),
                         {"backend": "torch"}),
    "anynet-jax": Impl("impl_anynet", "jax", ("anynet.network", "jax"), ("cpu", "cuda"),
                       {"backend": "jax"}),
    "anynet-cupy": Impl("impl_anynet", "cupy", ("anynet.network", "cupy"), ("cuda",),
                        {"backend": "cupy"}),
    "anynet-numpy+momentum": Impl("impl_anynet", "numpy", ("anynet.network",), ("cpu",),
                                  {"backend": "numpy", "momentum": 0.9}, optional=True),
    "anynet-torch+momentum": Impl("impl_anynet", "torch", ("anynet.network", "torch"),
                                  ("cpu", "cuda"), {"backend": "torch", "momentum": 0.9},
                                  optional=True),
    "anynet-jax+momentum": Impl("impl_anynet", "jax", ("anynet.network", "jax"),
                                ("cpu", "cuda"), {"backend": "jax", "momentum": 0.9},
                                optional=True),
    # the recipes' optimizer (every recipe above `default`): what it costs per epoch
    "anynet-numpy+nesterov-wd": Impl("impl_anynet", "numpy", ("anynet.network",), ("cpu",),
                                     {"backend": "numpy", **RECIPE_SGD}, optional=True),
    "anynet-torch+nesterov-wd": Impl("impl_anynet", "torch", ("anynet.network", "torch"),
                                     ("cpu", "cuda"), {"backend": "torch", **RECIPE_SGD},
                                     optional=True),
    "anynet-jax+nesterov-wd": Impl("impl_anynet", "jax", ("anynet.network", "jax"),
                                   ("cpu", "cuda"), {"backend": "jax", **RECIPE_SGD},
                                   optional=True),
    "anynet-cupy+nesterov-wd": Impl("impl_anynet", "cupy", ("anynet.network", "cupy"),
                                    ("cuda",), {"backend": "cupy", **RECIPE_SGD}),
    "numpy-naive": Impl("impl_numpy_naive", "numpy", ("numpy",)),
    "torch-module": Impl("impl_torch_module", "torch", ("torch",), ("cpu", "cuda")),
    "torch-compile": Impl("impl_torch_module", "torch", ("torch",), ("cpu", "cuda"),
                          {"compile": True}, optional=True,
                          note="torch.compile(nn.Module); the warm-up epoch compiles"),
    "torch-module+nesterov-wd": Impl("impl_torch_module", "torch", ("torch",), ("cpu", "cuda"),
                                     RECIPE_SGD, optional=True,
                                     note="torch.optim.SGD(momentum=0.9, nesterov=True, "
                                          "weight_decay=1e-4), its default (foreach) update"),
    "torch-noautograd": Impl("impl_torch_noautograd", "torch", ("torch",), ("cpu", "cuda")),
    "jax-jit": Impl("impl_jax_jit", "jax", ("jax",), ("cpu", "cuda")),
    "sklearn": Impl("impl_sklearn", "numpy", ("sklearn",)),
    "nielsen": Impl("impl_nielsen", "numpy", ("numpy",), hidden_only=(30,),
                    note="per-example loop; timed on <= 10,000 images, scaled to a full epoch"),
}

DEFAULT_HIDDEN = [30, 100, 800]
RETIME_BUDGET_S = 30  # at most about this many seconds of extra epochs per run to replace them
DEFAULT_BATCH = [10, 64, 128]


def epoch_flops(hidden: int, n_images: int) -> int:
    """FLOPs of one training epoch's matrix products, counting a multiply-add as 2.

    Per image: forward X @ W1 (2 D H) and A1 @ W2 (2 H K); backward dW2 = A1^T dZ2 (2 H K),
    dA1 = dZ2 W2^T (2 H K), dW1 = X^T dZ1 (2 D H); no dX, since nothing upstream needs it.
    Element-wise work (bias, ReLU, softmax, update) is left out: it is O(D H / batch) per image.
    """
    return n_images * (4 * D * hidden + 6 * hidden * K)


def available(impl: Impl) -> str | None:
    """Why `impl` cannot run here (a missing module), or None. Imports nothing heavy."""
    for name in impl.requires:
        try:
            if importlib.util.find_spec(name) is None:
                return f"{name} is not installed"
        except ImportError as e:  # the parent package of a submodule is missing
            return f"{name} is not installed ({e})"
    return None


def child_env(device: str) -> dict:
    """The workers' environment. Thread counts are not set here: each worker sets them through
    `anynet.backend.threads.set_threads`, as anynet's commands do, and records them."""
    env = dict(os.environ)
    if device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"  # a CPU run on a GPU machine must not land on the GPU
    env["PYTHONPATH"] = os.pathsep.join(
        [str(BENCH_DIR), str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_worker(cfg: dict, env: dict, timeout: float) -> dict:
    """Run one measurement in a fresh interpreter; return its JSON, or a failure record."""
    try:
        proc = subprocess.run(
            [sys.executable, str(BENCH_DIR / "_worker.py"), json.dumps(cfg)],
            env=env, capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"ran past the {timeout:.0f} s timeout"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    err = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return {"status": "failed",
            "reason": f"exit {proc.returncode}: {err[-1] if err else 'no output'}",
            "stderr_tail": "\n".join(err[-20:])}


def prepare_data(args, folder: Path) -> tuple[int, int]:
    """Write the (possibly subset) uint8 MNIST arrays as .npy files for the workers."""
    import numpy as np

    from anynet.data import load_mnist

    # checked; a DataError is one line for the user
    mnist = load_mnist(args.data_dir, verify=not getattr(args, "no_verify", False))
    n, m = args.train_images, args.test_images
    train_x, train_y = mnist.train_images[:n], mnist.train_labels[:n]
    test_x, test_y = mnist.test_images[:m], mnist.test_labels[:m]
    for name, array in (("train_images", train_x), ("train_labels", train_y),
                        ("test_images", test_x), ("test_labels", test_y)):
        np.save(folder / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
    return len(train_x), len(test_x)


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"host": socket.gethostname(), "cpu": cpu, "cpus": os.cpu_count(), "threads": threads,
            "platform": platform.platform(), "python": platform.python_version()}


# ---------------------------------------------------------------------------------------------
# The table


def ratio_reference(row: dict[str, dict]) -> tuple[str | None, float | None]:
    """The implementation every ratio in a row divides by: anynet's fastest backend, else
    numpy-naive (when no anynet result exists)."""
    ok = {name: r for name, r in row.items() if r.get("status") == "ok"}
    anynet = {name: r for name, r in ok.items() if name.startswith("anynet-")}
    pool = anynet or ({"numpy-naive": ok["numpy-naive"]} if "numpy-naive" in ok else {})
    if not pool:
        return None, None
    name = min(pool, key=lambda n: pool[n]["median_s"])
    return name, pool[name]["median_s"]


def _grid_table(grid: list[tuple[int, int]], impls: list[str], cell, extra=None) -> list[str]:
    """Rows 'H batch | one cell per implementation [| extra]', each column as wide as it needs.

    `cell(h, b, name) -> str`; `extra` = (title, function (h, b) -> str) for a last column.
    """
    rows = [[cell(h, b, n) for n in impls] for h, b in grid]
    widths = [max(len(n), *(len(row[i]) for row in rows)) + 2 for i, n in enumerate(impls)]
    head = f"{'H':>4} {'batch':>5} |" + "".join(f"{n:>{w}}" for n, w in zip(impls, widths,
                                                                               strict=True))
    lines = [head + (f" | {extra[0]}" if extra else "")]
    for (h, b), row in zip(grid, rows, strict=True):
        line = f"{h:>4} {b:>5} |" + "".join(f"{c:>{w}}" for c, w in zip(row, widths, strict=True))
        lines.append(line + (f" | {extra[1](h, b):>{len(extra[0])}}" if extra else ""))
    return lines


def format_tables(results: list[dict], impls: list[str], grid: list[tuple[int, int]],
                  floor_rate: float | None, rate_library: str | None, meta: dict) -> str:
    """The three tables (seconds per epoch with ratios and floor, accuracy, peak RSS) as text."""
    by_cell = {(r["hidden"], r["batch"], r["impl"]): r for r in results}
    refs = {(h, b): ratio_reference({n: by_cell.get((h, b, n), {}) for n in impls})
            for h, b in grid}
    ref_names = {name for name, _ in refs.values() if name}
    ref_text = ("anynet's fastest backend in the row" if all(n.startswith("anynet-")
                for n in ref_names) and ref_names else
                "numpy-naive (no anynet result)" if ref_names else "nothing (no result)")

    def ok(h, b, n):
        r = by_cell.get((h, b, n))
        return r if r and r.get("status") == "ok" else None

    def seconds(h, b, n):
        r = by_cell.get((h, b, n))
        if not ok(h, b, n):
            return "-" if r is None or r.get("status") == "n/a" else r["status"]
        ref_s = refs[(h, b)][1]
        ratio = f" x{r['median_s'] / ref_s:.2f}" if ref_s else ""
        return _secs(r["median_s"]) + ratio + ("!" if noisy_run(r) else "")

    def floor(h, b):
        return _secs(epoch_flops(h, meta["train_images"]) / (floor_rate * 1e9)) if floor_rate \
            else "-"

    lines = [
        f"Seconds per epoch ({meta['train_images']:,} images, shuffle included): median of "
        f"{meta['epochs']} after {meta['warmup']} warm-up"
        + (f", best of {meta['rounds']} interleaved rounds" if meta.get("rounds", 1) > 1 else "")
        + f"; lr {meta['lr']}, "
        f"{meta['threads']} threads, {meta['device']}",
        f"x = median / {ref_text}. floor = epoch FLOPs / best large-matmul rate"
        + (f" ({floor_rate:.0f} GFLOP/s, {rate_library})." if floor_rate else "."),
        *_grid_table(grid, impls, seconds, ("floor", floor)),
        "",
        f"Test accuracy after {meta['warmup'] + meta['epochs']} epochs "
        f"({meta['test_images']:,} test images)",
        *_grid_table(grid, impls, lambda h, b, n: f"{ok(h, b, n)['test_accuracy']:.4f}"
                     if ok(h, b, n) else "-"),
        "",
        "Peak RSS of the training process, MB (interpreter, library and data included)",
        *_grid_table(grid, impls, lambda h, b, n: f"{ok(h, b, n)['peak_rss_mb']:.0f}"
                     if ok(h, b, n) else "-"),
    ]
    notes = sorted({f"{n}: {IMPLS[n].note}" for n in impls if IMPLS[n].note})
    if any(noisy_run(r) for r in results if r.get("status") == "ok"):
        notes.append(f"! = too few epochs of that run were undisturbed (other processes took "
                     f">= {NOISY_CORES} cores): noisy")
    problems = sorted({f"{r['impl']}: {r['status']}: {r.get('reason', '')}" for r in results
                       if r.get("status") in ("skipped", "failed")})
    if notes or problems:
        lines += ["", *notes, *problems]
    return "\n".join(lines)


def noisy_run(r: dict) -> bool:
    """Whether a run's median had to include disturbed epochs (or, for a record without
    per-epoch figures, whether other processes were busy during the run)."""
    if "median_of" in r:
        return r["median_of"] != "quiet epochs"
    return (r.get("others_cores") or 0) >= NOISY_CORES


def _secs(s: float) -> str:
    """Seconds with three significant-ish digits: 0.0042, 0.171, 2.65, 12.3."""
    return f"{s:.4f}" if s < 0.01 else f"{s:.3f}" if s < 1 else f"{s:.2f}" if s < 10 else f"{s:.1f}"


# ---------------------------------------------------------------------------------------------


def parse_args(argv):
    from anynet.commands._common import positive_float, positive_int

    p = argparse.ArgumentParser(
        prog="python bench/epoch.py",
        description="Time one MNIST training epoch of anynet and its peers, one library per "
                    "process, and print a table (JSON saved too).",
    )
    p.add_argument("--hidden", type=positive_int, nargs="+", metavar="H",
                   help=f"hidden-layer sizes (default: {' '.join(map(str, DEFAULT_HIDDEN))}; "
                        "--quick: 30)")
    p.add_argument("--batch", type=positive_int, nargs="+", metavar="B",
                   help=f"mini-batch sizes (default: {' '.join(map(str, DEFAULT_BATCH))}; "
                        "--quick: 64)")
    p.add_argument("--impl", nargs="+", choices=list(IMPLS), metavar="NAME",
                   help=f"implementations to run (default: all that suit the device; on "
                        f"cpu not torch-compile and the +momentum and +nesterov-wd columns, "
                        f"which are slower to run); choose from: {', '.join(IMPLS)}")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="timed epochs per run; the median is reported (default: 5; --quick: 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs first (default: 1)")
    p.add_argument("--lr", type=positive_float, default=0.1,
                   help="SGD learning rate, the same for every implementation (default: 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed for init and shuffles (default: 0)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu: the CPU peers; cuda: cupy, torch-CUDA and JAX-GPU (default: cpu)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads per process, set in each worker through anynet's "
                        "set_threads (default: anynet's default, one per core no other process "
                        "keeps busy, decided once at start)")
    p.add_argument("--train-images", type=positive_int, default=None, metavar="N",
                   help="train on the first N images (default: all 60,000; --quick: 2,000)")
    p.add_argument("--test-images", type=positive_int, default=None, metavar="N",
                   help="test on the first N images (default: all 10,000; --quick: 1,000)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2,000 training and 1,000 test images, 2 timed epochs, and "
                        "(unless given) H 30, batch 64")
    p.add_argument("--matmul-size", type=positive_int, default=2048,
                   help="n of the n x n float32 product that measures the FLOP rate "
                        "(default: 2048)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder with the four MNIST files, gzip'd or raw (default: "
                        "$ANYNET_DATA_DIR, else anynet's cache, else download)")
    p.add_argument("--no-verify", action="store_true",
                   help="accept MNIST-format files in --data-dir that are not genuine MNIST "
                        "(the format is still checked): other data sets, tests")
    p.add_argument("--retime", type=int, default=None, metavar="N",
                   help=f"time up to N extra epochs (~{RETIME_BUDGET_S} s of them at most) to "
                        f"replace those during which other processes took >= {NOISY_CORES} cores "
                        "(default: as many as --epochs)")
    p.add_argument("--rounds", type=positive_int, default=1, metavar="N",
                   help="run the whole grid N times, interleaved (every cell once a round), and "
                        "report each cell's round with the lowest median: on a shared machine, "
                        "columns compared at like moments (default: 1)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                   help=f"before each run, wait up to S seconds for other processes to use under "
                        f"{NOISY_CORES} cores (default: 0, do not wait)")
    p.add_argument("--timeout", type=positive_float, default=900,
                   help="seconds before one run is abandoned (default: 900)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="JSON results (default: bench/results/epoch-<host>-<date>.json)")
    args = p.parse_args(argv)
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    args.hidden = args.hidden or ([30] if args.quick else DEFAULT_HIDDEN)
    args.batch = args.batch or ([64] if args.quick else DEFAULT_BATCH)
    args.epochs = args.epochs or (2 if args.quick else 5)
    args.retime = args.epochs if args.retime is None else max(0, args.retime)
    if args.threads is None:
        from anynet.backend.threads import default_threads

        args.threads = default_threads()
    args.train_images = args.train_images or (2000 if args.quick else 60000)
    args.test_images = args.test_images or (1000 if args.quick else 10000)
    if args.impl is None:
        args.impl = [n for n, impl in IMPLS.items() if args.device in impl.devices
                     and (not impl.optional or args.device == "cuda")]
    else:
        wrong = [n for n in args.impl if args.device not in IMPLS[n].devices]
        if wrong:
            p.error(f"{', '.join(wrong)} cannot run on --device {args.device}")
    return args


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds subprocess.run, which kills the running worker


def main(argv: list[str] | None = None) -> int:
    import signal

    from anynet.errors import UserError

    args = parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(args)
    except UserError as e:
        print(f"epoch.py: error: {e}", file=sys.stderr)
        return e.exit_code


def measure_matmul(library: str, args, env: dict) -> dict:
    """One library's float32 matmul rate, measured in its own process."""
    cfg = {"kind": "matmul", "library": library, "device": args.device, "threads": args.threads,
           "size": args.matmul_size, "repeats": 3 if args.quick else 10}
    if args.wait_quiet:
        wait_until_quiet(args.wait_quiet)
    with LoadMeter(children_cpu_s) as meter:
        m = run_worker(cfg, env, args.timeout)
    m["others_cores"] = meter.others_cores
    text = (f"{m['gflops']:.0f} GFLOP/s" if m["status"] == "ok"
            else f"{m['status']}: {m.get('reason')}")
    if (meter.others_cores or 0) >= NOISY_CORES:
        text += f" (noisy: others used {meter.others_cores:.2f} cores)"
    print(f"matmul {library} {args.matmul_size}^2 float32: {text}", file=sys.stderr)
    return m


def measure_cell(h: int, b: int, n: str, args, env: dict, data_dir: str) -> dict:
    """Train implementation `n` at (H, batch) in a fresh worker; its result record."""
    impl = IMPLS[n]
    if impl.hidden_only and h not in impl.hidden_only:
        return {"impl": n, "hidden": h, "batch": b, "status": "n/a",
                "reason": f"runs only for H in {list(impl.hidden_only)}"}
    cfg = {"kind": "train", "impl": impl.module, "library": impl.library,
           "options": impl.options, "hidden": h, "batch": b, "lr": args.lr, "seed": args.seed,
           "epochs": args.epochs, "warmup": args.warmup, "retime": args.retime,
           "retime_budget_s": RETIME_BUDGET_S, "device": args.device, "threads": args.threads,
           "data_dir": data_dir}
    waited = wait_until_quiet(args.wait_quiet) if args.wait_quiet else 0.0
    with LoadMeter(children_cpu_s) as meter:
        r = {"impl": n, "hidden": h, "batch": b, **run_worker(cfg, env, args.timeout)}
    r["wall_s"], r["others_cores"], r["waited_for_quiet_s"] = meter.wall, meter.others_cores, waited
    return r


def keep_best_round(kept: dict | None, new: dict) -> dict:
    """Of two runs of one cell in different rounds (`--rounds`), the one with the lower median;
    every round's median is kept in `round_medians_s`. Load on a shared machine only slows a
    run, so the best round is the closest to the machine's own speed."""
    medians = (kept or {}).get("round_medians_s", []) + (
        [new["median_s"]] if new.get("status") == "ok" else [])
    best = new
    if kept is not None and kept.get("status") == "ok" and (
            new.get("status") != "ok" or kept["median_s"] <= new["median_s"]):
        best = kept
    return {**best, "round_medians_s": medians} if medians else best


def _summary(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['status']}: {r.get('reason')}"
    rounds = r.get("round_medians_s", [])
    best = f" (best of rounds {' '.join(f'{m:.3f}' for m in rounds)})" if len(rounds) > 1 else ""
    text = (f"{r['median_s']:.3f} s/epoch{best} [{r['min_s']:.3f}-{r['max_s']:.3f}], accuracy "
            f"{r['test_accuracy']:.4f}, peak RSS {r['peak_rss_mb']:.0f} MB ({r['wall_s']:.0f} s")
    if r["others_cores"] is not None and r["others_cores"] >= NOISY_CORES:
        text += f", others used {r['others_cores']:.2f} cores"
    if r.get("retimed_epochs"):
        text += f", {r['retimed_epochs']} epochs re-timed, {r['quiet_epochs']} quiet"
    return text + ")"


def run(args: argparse.Namespace) -> int:
    from anynet.fileio import atomic_write_text

    started = time.perf_counter()
    out = Path(args.out or BENCH_DIR / "results" /
               f"epoch-{socket.gethostname()}-{dt.date.today().isoformat()}.json")
    env = child_env(args.device)
    grid = [(h, b) for h in args.hidden for b in args.batch]

    missing = {n: available(IMPLS[n]) for n in args.impl}
    impls = [n for n in args.impl if missing[n] is None]
    for n in args.impl:
        if missing[n]:
            print(f"skipping {n}: {missing[n]}", file=sys.stderr)
    cells = [(h, b, n) for h, b in grid for n in impls]
    libraries = sorted({IMPLS[n].library for n in impls})
    results = {(h, b, n): {"impl": n, "hidden": h, "batch": b, "status": "skipped",
                           "reason": missing[n]}
               for n in args.impl if missing[n] for h, b in grid}
    matmul: dict[str, dict] = {}

    with tempfile.TemporaryDirectory(prefix="anynet-bench-") as tmp:
        n_train, n_test = prepare_data(args, Path(tmp))
        meta = {"train_images": n_train, "test_images": n_test, "epochs": args.epochs,
                "warmup": args.warmup, "lr": args.lr, "threads": args.threads,
                "device": args.device, "rounds": args.rounds}
        print(f"config: H {args.hidden}, batch {args.batch}, {n_train:,} training / "
              f"{n_test:,} test images, {args.warmup} warm-up + {args.epochs} timed epochs, "
              f"lr {args.lr}, seed {args.seed}, {args.threads} threads, {args.device}, "
              f"{args.rounds} round(s); "
              f"implementations: {' '.join(impls)}", file=sys.stderr)
        interrupted = None
        try:
            for library in libraries:
                matmul[library] = measure_matmul(library, args, env)
            for round_ in range(1, args.rounds + 1):
                for i, (h, b, n) in enumerate(cells, 1):
                    r = keep_best_round(results.get((h, b, n)),
                                        measure_cell(h, b, n, args, env, tmp))
                    results[(h, b, n)] = r
                    if r["status"] != "n/a":
                        where = f"round {round_}/{args.rounds}, " if args.rounds > 1 else ""
                        print(f"[{where}{i}/{len(cells)}] {n} H={h} batch={b}: "
                              f"{_summary(r)}", file=sys.stderr, flush=True)
        except (KeyboardInterrupt, SystemExit) as e:  # Ctrl-C, or SIGTERM via _terminate
            # Keep what was measured.
            interrupted = 130 if isinstance(e, KeyboardInterrupt) else e.code

    order = {n: i for i, n in enumerate(args.impl)}
    results_list = sorted(results.values(), key=lambda r: (
        args.hidden.index(r["hidden"]), args.batch.index(r["batch"]), order[r["impl"]]))
    rates = {lib: m["gflops"] for lib, m in matmul.items() if m.get("status") == "ok"}
    rate_library = max(rates, key=rates.get) if rates else None
    floor_rate = rates.get(rate_library)
    for r in results_list:
        if floor_rate:
            r["flop_floor_s"] = epoch_flops(r["hidden"], n_train) / (floor_rate * 1e9)
        if r.get("status") == "ok":
            ref_name, ref_s = ratio_reference(
                {x["impl"]: x for x in results_list
                 if x["hidden"] == r["hidden"] and x["batch"] == r["batch"]})
            r["ratio_reference"] = ref_name
            r["ratio"] = r["median_s"] / ref_s if ref_s else None

    table = format_tables(results_list, args.impl, grid, floor_rate, rate_library, meta)
    print(table)
    wall = time.perf_counter() - started
    report = {
        "schema": "anynet-bench-epoch/1",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(args.threads),
        "config": {**meta, "hidden": args.hidden, "batch": args.batch, "impls": args.impl,
                   "seed": args.seed, "matmul_size": args.matmul_size, "quick": args.quick},
        "matmul": matmul,
        "floor_gflops": floor_rate,
        "floor_library": rate_library,
        "results": results_list,
        "table": table,
        "wall_s": wall,
    }
    if interrupted is not None:
        report["interrupted"] = True
    atomic_write_text(out, json.dumps(report, indent=1) + "\n")
    if interrupted is not None:
        print(f"\nepoch.py: interrupted after {wall / 60:.1f} min; the runs finished so far are in "
              f"{out}", file=sys.stderr)
        return interrupted
    print(f"\nwrote {out} ({wall / 60:.1f} min)")
    return 0 if any(r.get("status") == "ok" for r in results_list) else 1


if __name__ == "__main__":
    sys.exit(main())
