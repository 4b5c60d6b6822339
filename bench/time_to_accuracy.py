"""Time to 98% and to 99%: anynet's speed recipes beside PyTorch nn.Module and the straightforward
NumPy loop, trained with the same options in the same run.

    python bench/time_to_accuracy.py                          # speed-98 and speed-99
    python bench/time_to_accuracy.py --recipes speed-98 --impls anynet torch_module
    python bench/time_to_accuracy.py --threads 1 --seeds 0-2

Each (recipe, implementation, seed) trains in a fresh process (one BLAS library per process),
on all 60,000 training images, with the recipe's options: hidden width, batch size, SGD with
its momentum, Nesterov and weight decay, the learning rate at every step from anynet's schedule
(`anynet.optim.make_schedule`), the recipe's epochs, and, where the recipe distorts the training
images, the same distortions (`anynet.augment.Distorter`, on the implementation's own arrays:
the peers get anynet's distortions for free, as torchvision's would cost them more). After every
epoch the test accuracy on the 10,000 test images is measured, untimed; the time to an accuracy
is the training time summed over the epochs up to the first one that reaches it.

  anynet        `anynet.fit.train_model`, what `anynet train --recipe NAME` runs, on --backend;
                where the recipe distorts, with its distortion worker (`--distort-worker auto`,
                anynet.distort_worker) on one of the --threads cores and BLAS on the others,
                as `anynet train` does on a quiet machine (`--distort-worker off`: without)
  torch_module  nn.Sequential, CrossEntropyLoss, torch.optim.SGD, autograd (bench/impl_torch_module)
  numpy_naive   the loop a student writes in NumPy (bench/impl_numpy_naive), with a velocity

Prints one table (time to each accuracy, final accuracy, anynet's time as a fraction of
PyTorch's) and writes every epoch of every run to JSON (atomically). Timings compare only
within one run: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(BENCH_DIR))

IMPLS = ("anynet", "torch_module", "numpy_naive")
ACCURACIES = (0.98, 0.99)
SPEED_RECIPES = ("speed-98", "speed-99")


def parse_args(argv):
    from accuracy import seeds

    from anynet.recipes import RECIPES

    p = argparse.ArgumentParser(prog="python bench/time_to_accuracy.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(SPEED_RECIPES),
                   metavar="NAME", help="recipes (default: speed-98 speed-99)")
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS), metavar="IMPL",
                   help=f"implementations (default: {' '.join(IMPLS)})")
    p.add_argument("--seeds", type=seeds, default=[0], metavar="LIST",
                   help="seeds of each run, e.g. 0-2 (default: 0)")
    p.add_argument("--backend", default="numpy", help="anynet's --backend (default: numpy)")
    p.add_argument("--threads", type=int, default=2, help="threads of every library (default: 2)")
    p.add_argument("--distort-worker", choices=["auto", "on", "off"], default="auto",
                   help="anynet's distortion worker, as `anynet train --distort-worker` with "
                   "--threads cores free (default: auto)")
    p.add_argument("--epochs", type=int, default=None,
                   help="train this many epochs instead of the recipe's (schedule included)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="genuine MNIST (default: $ANYNET_DATA_DIR, else anynet's cache)")
    p.add_argument("--no-verify", action="store_true",
                   help="accept MNIST-format files that are not genuine MNIST (as anynet's)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="JSON results (default: bench/results/time-to-accuracy-<host>-<date>.json)")
    return p.parse_args(argv)


# --- one run, in its own process ---------------------------------------------------------------

def _anynet_epochs(cfg, config, data) -> list[dict]:
    """anynet's own loop: the test set stands in for the validation set, so each epoch's
    validation accuracy (measured after the epoch's timer stopped) is the test accuracy."""
    from anynet.backend import get_backend
    from anynet.fit import train_model

    trained = train_model(config, data.train_images, data.train_labels, data.test_images,
                          data.test_labels, backend=get_backend(cfg["backend"]),
                          distort_worker=cfg["worker"])
    return [{"seconds": m["seconds"], "accuracy": m["val_accuracy"]}
            for m in trained.state.history]


def _peer_epochs(cfg, config, data) -> list[dict]:
    """A peer's loop: its `epoch(lrs, distort)` timed by the wall clock, then its accuracy."""
    import numpy as np

    from anynet.optim import make_schedule

    impl = __import__(f"impl_{cfg['impl']}")
    trainer = impl.make(config.hidden, config.batch_size, config.lr, config.seed,
                        data.train_images, data.train_labels, threads=cfg["threads"],
                        momentum=config.momentum, nesterov=config.nesterov,
                        weight_decay=config.weight_decay)
    n_batches = -(-data.train_images.shape[0] // config.batch_size)
    schedule = make_schedule(config.schedule, config.lr, config.epochs * n_batches)
    distort = _distorter(cfg, config, impl)
    out = []
    for epoch in range(config.epochs):
        lrs = np.array([schedule(epoch * n_batches + i) for i in range(n_batches)])
        started = time.perf_counter()
        trainer.epoch(lrs=lrs, distort=None if distort is None else
                      (lambda X, i, e=epoch: distort(X, (e, i))))
        seconds = time.perf_counter() - started
        out.append({"seconds": seconds,
                    "accuracy": trainer.accuracy(data.test_images, data.test_labels)})
    return out


def _distorter(cfg, config, impl):
    """anynet's Distorter on the peer's own arrays (torch tensors, NumPy arrays), or None."""
    if config.augment == "none":
        return None
    from anynet.augment import Distorter
    from anynet.backend import get_backend

    return Distorter(config.distortion(), get_backend(impl.ANYNET_BACKEND), config.seed)


def run_worker(cfg: dict) -> dict:
    from anynet.backend import parse_spec
    from anynet.backend.threads import set_threads
    from anynet.config import TrainConfig
    from anynet.data import load_mnist
    from anynet.distort_worker import plan
    from anynet.recipes import recipe

    backend = cfg["backend"] if cfg["impl"] == "anynet" else (
        "torch" if cfg["impl"] == "torch_module" else "numpy")
    epochs = {"epochs": cfg["epochs"]} if cfg.get("epochs") else {}
    config = TrainConfig(**{**recipe(cfg["recipe"]), **epochs, "seed": cfg["seed"],
                            "val_size": 0, "backend": backend})
    cfg["worker"], blas = False, cfg["threads"]
    if cfg["impl"] == "anynet":  # the cores --threads gives, shared out as anynet train would
        cfg["worker"], planned = plan(cfg.get("distort_worker", "auto"),
                                      parse_spec(backend)[0], config.augment, None,
                                      cfg["threads"])
        blas = planned or cfg["threads"]
    threads = set_threads(backend, blas)
    data = load_mnist(cfg["data_dir"], verify=not cfg.get("no_verify"), progress=False)
    history = (_anynet_epochs if cfg["impl"] == "anynet" else _peer_epochs)(cfg, config, data)
    return {**cfg, "threads": threads, "config": config.to_dict(), "epochs": history}


# --- the table -------------------------------------------------------------------------------

def time_to(epochs: list[dict], accuracy: float) -> float | None:
    """Training seconds summed up to the first epoch whose test accuracy reaches `accuracy`."""
    total = 0.0
    for e in epochs:
        total += e["seconds"]
        if e["accuracy"] >= accuracy:
            return total
    return None


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def table(runs: list[dict]) -> str:
    head = f"{'recipe':<10}{'implementation':<16}" + "".join(
        f"{f'to {100 * a:.0f}%':>9}" for a in ACCURACIES) + f"{'final':>9}{'epochs':>8}" + \
        f"{'x PyTorch':>11}"
    lines = [head]
    for name in dict.fromkeys(r["recipe"] for r in runs):
        torch_s = _mean(time_to(r["epochs"], min(ACCURACIES)) if r["status"] == "ok" else None
                        for r in runs if r["recipe"] == name and r["impl"] == "torch_module")
        for impl in dict.fromkeys(r["impl"] for r in runs):
            ok = [r for r in runs if r["recipe"] == name and r["impl"] == impl
                  and r["status"] == "ok"]
            if not ok:
                lines.append(f"{name:<10}{impl:<16}failed")
                continue
            cells = []
            for a in ACCURACIES:
                t = _mean(time_to(r["epochs"], a) for r in ok)
                cells.append(f"{t:>8.1f}s" if t is not None else f"{'-':>9}")
            final = _mean(r["epochs"][-1]["accuracy"] for r in ok)
            own = _mean(time_to(r["epochs"], min(ACCURACIES)) for r in ok)
            ratio = f"{own / torch_s:>10.2f}x" if own and torch_s else f"{'-':>11}"
            lines.append(f"{name:<10}{impl:<16}{''.join(cells)}{100 * final:>8.2f}%"
                         f"{len(ok[0]['epochs']):>8}{ratio}")
    return "\n".join(lines) + ("\n(times: training seconds, mean over seeds; 'x PyTorch': "
                               "time to the first accuracy over nn.Module's)")


def run_one(cfg: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {**cfg, "status": "failed",
                "reason": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "status": "ok"}


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["--worker"]:
        print(json.dumps(run_worker(json.loads(sys.argv[2]))))
        return 0
    from anynet.fileio import atomic_write_text

    args = parse_args(argv)
    out = Path(args.out or BENCH_DIR / "results" /
               f"time-to-accuracy-{socket.gethostname()}-{dt.date.today().isoformat()}.json")
    runs = []
    for name in args.recipes:
        for impl in args.impls:
            for seed in args.seeds:
                r = run_one({"recipe": name, "impl": impl, "seed": seed, "backend": args.backend,
                             "threads": args.threads, "data_dir": args.data_dir,
                             "distort_worker": args.distort_worker,
                             "epochs": args.epochs, "no_verify": args.no_verify})
                runs.append(r)
                worker = " (BLAS on 1 thread fewer, a distortion worker)" \
                    if r.get("worker") else ""
                print(f"{name} {impl}{worker} seed {seed}: " + (
                    ", ".join(f"{e['accuracy']:.2%} {e['seconds']:.2f} s" for e in r["epochs"])
                    if r["status"] == "ok" else f"failed: {r['reason']}"),
                    file=sys.stderr, flush=True)
    text = table(runs)
    print(text)
    atomic_write_text(out, json.dumps({
        "schema": "anynet-bench-time-to-accuracy/1",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(), "runs": runs, "table": text}, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0 if all(r["status"] == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
