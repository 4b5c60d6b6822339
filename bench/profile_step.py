"""Where one training step's time goes, and the ceiling of each part, on one backend.

    python bench/profile_step.py --backend numpy --hidden 30         # NumPy, H = 30, batch 64
    python bench/profile_step.py --backend torch --hidden 800 --threads 1
    python bench/profile_step.py --backend jax --hidden 800
    python bench/profile_step.py --hidden 800 --momentum 0.9 --nesterov --weight-decay 1e-4

For the fused step (NumPy, PyTorch): the step's time from whole epochs, then every in-place
primitive timed as the step calls it (each call wrapped, so the sum runs a little over the
plain step), per step. For the compiled step (JAX): the step, one jitted call that does nothing
(the cost of a call), and the two large products jitted alone. For every backend the ceilings:
the two large products (X W1 and X^T dZ1, 2 B D H FLOPs each) alone at their best layout, and
the FLOP floor of the step at the library's 2048 x 2048 matmul rate. Synthetic uint8 pixels (the
speed does not depend on them), one library per process. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

D, K, N = 784, 10, 60000


def best_of(fn, repeats: int, rounds: int = 5) -> float:
    """Seconds per call of fn(): the best of `rounds` means over `repeats` calls."""
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        times.append((time.perf_counter() - t0) / repeats)
    return min(times)


def main(argv=None) -> int:
    import numpy as np

    p = argparse.ArgumentParser(prog="python bench/profile_step.py", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--backend", default="numpy", help="numpy, torch or jax (default: numpy)")
    p.add_argument("--hidden", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="default: anynet's default")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (default: 3)")
    p.add_argument("--momentum", type=float, default=0.0, help="SGD's momentum (default: 0)")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    p.add_argument("--weight-decay", type=float, default=0.0, help="SGD's (default: 0)")
    args = p.parse_args(argv)

    from anynet.backend import get_backend
    from anynet.backend.threads import default_threads, set_threads

    threads = set_threads(args.backend, args.threads or default_threads())
    backend = get_backend(args.backend)
    from anynet.network import TwoLayerNet
    from anynet.optim import SGD
    from anynet.steps import make_train_step

    H, B = args.hidden, args.batch
    rng = np.random.default_rng(0)
    images = backend.asarray(rng.integers(0, 256, (N, D), dtype=np.uint8))
    labels = backend.asarray(rng.integers(0, 10, N), "int64")
    net = TwoLayerNet(n_hidden=H, backend=backend, seed=0)
    opt = SGD(lr=0.01, momentum=args.momentum, nesterov=args.nesterov,
              weight_decay=args.weight_decay)
    step = make_train_step(net, opt, images, labels, B, opt.init(net.params))
    n_batches = -(-N // B)

    def epoch():
        step.begin_epoch(rng.permutation(N), np.full(n_batches, 0.01))
        for i in range(n_batches):
            step(i, 0.01)
        for array in step.params.values():
            backend.sync(array)

    epoch()
    epochs = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        epoch()
        epochs.append(time.perf_counter() - t0)
    epoch_s = statistics.median(epochs)
    step_us = epoch_s / n_batches * 1e6
    rows = [("the step (whole epochs / batches)", step_us)]

    ops = getattr(step, "ops", None)
    if ops is not None:  # the fused step: time each primitive as the step calls it
        spent, calls = collections.defaultdict(float), collections.Counter()

        def timed(name, fn):
            def call(*a, **k):
                t0 = time.perf_counter()
                out = fn(*a, **k)
                spent[name] += time.perf_counter() - t0
                calls[name] += 1
                return out
            return call

        plain_mm = ops.mm
        big = {(B, D), (D, B)}

        def mm(a, b, out):
            name = "mm: X W1 (the large forward product)" if tuple(a.shape) in big else \
                f"mm: small, {tuple(a.shape)} x {tuple(b.shape)}"
            t0 = time.perf_counter()
            plain_mm(a, b, out=out)
            spent[name] += time.perf_counter() - t0
            calls[name] += 1

        for name in [n for n in dir(ops) if not n.startswith("_") and n != "mm"]:
            if callable(getattr(ops, name)):
                setattr(ops, name, timed(name, getattr(ops, name)))
        ops.mm = mm
        epoch()
        instrumented = sum(spent.values())
        for name in sorted(spent, key=spent.get, reverse=True):
            if calls[name] < n_batches / 100:  # the short last batch's own calls
                continue
            rows.append((f"  {name} ({calls[name] / n_batches:.2f} calls a step)",
                         spent[name] / n_batches * 1e6))
        rows.append(("  Python around the calls (the rest of the step)",
                     max(0.0, step_us - instrumented / n_batches * 1e6)))

    # Ceilings: the two large products alone, in the layouts the step uses, and the FLOP floor.
    xp = backend.xp
    X = backend.asarray(rng.random((B, D), dtype=np.float32))
    W1 = backend.asarray(rng.random((D, H), dtype=np.float32))
    dZ1 = backend.asarray(rng.random((B, H), dtype=np.float32))
    if backend.compiles:
        products = backend.compile(lambda X, W1, dZ1: (X @ W1, xp.matrix_transpose(X) @ dZ1))
        nothing = backend.compile(lambda X: X)
        rows.append(("ceiling: one compiled call that does nothing",
                     best_of(lambda: backend.sync(nothing(X)), 2000) * 1e6))
        two = best_of(lambda: [backend.sync(a) for a in products(X, W1, dZ1)], 500)
    else:
        two = best_of(lambda: backend.sync(X @ W1), 500) + best_of(
            lambda: backend.sync(xp.matrix_transpose(X) @ dZ1), 500)
    rows.append(("ceiling: the two large products alone (X W1, X^T dZ1)", two * 1e6))
    n = 2048
    A = backend.asarray(rng.random((n, n), dtype=np.float32))
    rate = 2 * n ** 3 / best_of(lambda: backend.sync(A @ A), 3) / 1e9
    flops = B * (4 * D * H + 6 * H * K)
    rows.append((f"floor: the step's FLOPs at the 2048^2 matmul rate ({rate:.0f} GFLOP/s)",
                 flops / (rate * 1e9) * 1e6))
    optimizer = (f", momentum {args.momentum}" + (" Nesterov" if args.nesterov else "")
                 if args.momentum else "") + (f", weight decay {args.weight_decay}"
                                              if args.weight_decay else "")
    print(f"{args.backend}, H = {H}, batch {B}{optimizer}, {threads} threads, "
          f"{type(step).__name__}: "
          f"{epoch_s:.3f} s an epoch of {n_batches} steps")
    width = max(len(r[0]) for r in rows)
    for label, us in rows:
        print(f"{label:<{width}}  {us:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
