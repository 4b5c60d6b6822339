"""How long does distorting an epoch's images take, beside the training epoch they feed?

    python bench/augment.py                       # numpy: affine, elastic, affine+elastic
    python bench/augment.py --backend torch       # one array library per process
    python bench/augment.py --quick               # smoke run: 4,096 images, H 30, 1 epoch each

In one process with one array library (`--backend`, `--device cpu|cuda` as in bench/epoch.py)
and its threads set through anynet's seam: MNIST's 60,000 training images cross to the backend
once as uint8 and become float chunks of `--chunk` (1024) rows, as training will hand them over.
Then, for each kind of distortion, a `Distorter` distorts every chunk of an epoch (key (epoch,
first row)), `--warmup` untimed epochs then `--epochs` timed ones, device synchronised, and the
median is reported; the host's share (drawing the random numbers) is timed apart. Beside it,
anynet's own training step, exactly as `bench/epoch.py` times it (`bench/impl_anynet.py`:
the fused step where there is one), H = 800 and batch 64 by default: the target is that
distorting an epoch costs at most one training epoch.

Each epoch also records how many cores other processes took meanwhile (bench/_load.py, as
bench/epoch.py does); the machine may be shared. A measuring tool, not a test: it asserts
nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from functools import partial
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

import epoch as bench_epoch  # noqa: E402  (machine_info)
from _load import LoadMeter  # noqa: E402
from _worker import backend_spec  # noqa: E402

KINDS = ("affine", "elastic", "affine+elastic")


def timed(fn, backend) -> tuple[float, float | None]:
    """(wall seconds of fn(), cores other processes took meanwhile or None), the device
    synchronised on what fn returns."""
    with LoadMeter() as load:
        backend.sync(fn())
    return load.wall, load.others_cores


def summary(runs: list[tuple[float, float | None]]) -> dict:
    seconds = [s for s, _ in runs]
    others = [o for _, o in runs if o is not None]
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "epoch_s": seconds,
            "others_cores": max(others) if others else None}


def measure_distortions(args, backend, images) -> dict:
    """Seconds per epoch of each kind of distortion over `images` (uint8 (N, 784), host)."""
    from anynet.augment import Distorter, Distortion
    from anynet.network import pixels_to_inputs

    on_device = backend.asarray(images)
    starts = range(0, len(images), args.chunk)
    chunks = [pixels_to_inputs(on_device[i:i + args.chunk, ...], backend.dtype(args.dtype))
              for i in starts]
    results = {}
    for kind in args.kinds:
        distort = Distorter(Distortion(kind), backend, seed=0, dtype=args.dtype)
        for e in range(args.warmup):
            distort_epoch(distort, starts, chunks, e)
        runs = [timed(partial(distort_epoch, distort, starts, chunks, e), backend)
                for e in range(args.warmup, args.warmup + args.epochs)]
        draws = [timed(partial(draw_epoch, distort, starts, chunks, e), backend)[0]
                 for e in range(args.epochs)]
        results[kind] = {**summary(runs), "host_draw_s": statistics.median(draws)}
    return results


def distort_epoch(distort, starts, chunks, e: int):
    """Every chunk of epoch e through the Distorter, as training will; the last result."""
    out = None
    for start, X in zip(starts, chunks, strict=True):
        out = distort(X, (e, start))
    return out


def draw_epoch(distort, starts, chunks, e: int) -> None:
    """Only the host's part of distort_epoch: drawing each chunk's random numbers."""
    for start, X in zip(starts, chunks, strict=True):
        distort.draw(X.shape[0], (e, start))


def measure_training(args, images, labels) -> dict:
    """Seconds per epoch of anynet's training step (bench/impl_anynet.py), as bench/epoch.py."""
    import impl_anynet

    trainer = impl_anynet.make(args.hidden, args.batch, 0.1, 0, images, labels,
                               device=args.device, backend=args.backend)
    for _ in range(args.warmup):
        trainer.epoch()
    runs = [timed(trainer.epoch, trainer.backend) for _ in range(args.train_epochs)]
    return {"hidden": args.hidden, "batch": args.batch, **summary(runs)}


def format_report(meta: dict, distortions: dict, training: dict | None) -> str:
    lines = [f"distorting {meta['images']:,} images in chunks of {meta['chunk']} on "
             f"{meta['backend']}, {meta['dtype']}, {meta['threads']} threads; "
             f"{meta['machine']['cpu']} ({meta['machine']['cpus']} CPUs)",
             f"median of {meta['epochs']} epochs after {meta['warmup']} warm-up",
             "",
             f"{'':26s}{'s/epoch':>9s}{'min':>8s}{'host draws':>12s}{'vs training':>13s}"
             f"{'others cores':>14s}"]
    train_s = training["median_s"] if training else None
    for kind, r in distortions.items():
        ratio = f"{r['median_s'] / train_s:.2f}x" if train_s else "-"
        others = "-" if r["others_cores"] is None else f"{r['others_cores']:.2f}"
        lines.append(f"{kind:26s}{r['median_s']:9.3f}{r['min_s']:8.3f}{r['host_draw_s']:12.3f}"
                     f"{ratio:>13s}{others:>14s}")
    if training:
        others = "-" if training["others_cores"] is None else f"{training['others_cores']:.2f}"
        name = f"training H={training['hidden']} b={training['batch']}"
        lines.append(f"{name:26s}{training['median_s']:9.3f}{training['min_s']:8.3f}"
                     f"{'':12s}{'1.00x':>13s}{others:>14s}")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="numpy",
                   help="anynet backend name: numpy, torch, jax, cupy (default: numpy)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: anynet's, one per core no other process keeps "
                        "busy)")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--chunk", type=int, default=1024, help="rows per chunk (default: 1024)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--epochs", type=int, default=5, help="timed epochs (default: 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs first (default: 1)")
    p.add_argument("--hidden", type=int, default=800)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--train-epochs", type=int, default=3,
                   help="timed training epochs (default: 3; 0 skips training)")
    p.add_argument("--images", type=int, default=60000, help="training images (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 4,096 images, 1 epoch each, H 30")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.epochs, args.warmup, args.train_epochs, args.hidden = 4096, 1, 1, 1, 30
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from anynet.backend import get_backend
    from anynet.backend.threads import set_threads
    from anynet.data import load_mnist

    spec = backend_spec(args.backend, args.device)
    threads = set_threads(spec, args.threads)  # before the library opens (JAX sizes its pool)
    backend = get_backend(spec)
    mnist = load_mnist(args.data_dir, verify=not args.no_verify)
    images, labels = mnist.train_images[:args.images], mnist.train_labels[:args.images]

    meta = {"backend": backend.describe(), "dtype": args.dtype, "threads": threads,
            "images": len(images), "chunk": args.chunk, "epochs": args.epochs,
            "warmup": args.warmup, "machine": bench_epoch.machine_info(threads)}
    distortions = measure_distortions(args, backend, images)
    training = measure_training(args, images, labels) if args.train_epochs else None
    print(format_report(meta, distortions, training))
    if args.json:
        from anynet.fileio import atomic_write_bytes

        document = {"meta": meta, "distortions": distortions, "training": training}
        atomic_write_bytes(args.json, json.dumps(document, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
