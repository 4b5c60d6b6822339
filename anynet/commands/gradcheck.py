"""Check backpropagation against central differences in float64, for every parameter.

Builds a network (784 inputs, --hidden units, 10 classes) and a random batch, and compares the
analytic gradient of each parameter with (J(w + eps) - J(w - eps)) / 2 eps, entry by entry.
Prints the largest relative error per parameter; exits 1 if any exceeds the tolerance (1e-6) or
is not finite (nan: the differences overflowed or were undefined). A library whose float64 is
only float32-accurate (MLX) is checked with eps 3e-3 to a tolerance of 1e-3."""

from __future__ import annotations

import argparse
import math

from anynet.commands._common import (
    MAX_HIDDEN,
    add_backend_option,
    at_most,
    nonnegative_int,
    open_backend,
    positive_float,
    positive_int,
)

HELP = "check the analytic gradients against central differences (float64)"
# What one check may cost. Every entry checked costs two forward passes over the batch, each
# batch x (784 H + 10 H) multiply-adds, and about 0.2 ms of overhead: the default (784-5-10,
# a batch of 8, all 3,985 entries) is 2.5e8 multiply-adds, under a second. The bounds allow
# about a minute on one core, and keep the (batch, H) float64 arrays small.
MAX_ENTRIES = 100_000
MAX_MULTIPLY_ADDS = 2 * 10**10
MAX_BATCH = 1000


def finite_difference_step(text: str) -> float:
    """An argparse type: a step below 1 (beyond that it is no derivative) that still moves a
    weight of 1 in float64 (w + eps != w - eps: the default initial weights are near 1)."""
    value = positive_float(text)
    if not value < 1 or 1.0 + value == 1.0 - value:
        raise argparse.ArgumentTypeError(
            f"expected a step below 1 that moves a weight of 1 in float64 (from 5.6e-17; "
            f"1e-7 to 1e-4 work best), got {text}")
    return value


def add_arguments(parser) -> None:
    parser.add_argument("--hidden", type=at_most(positive_int, MAX_HIDDEN), default=5,
                        help="hidden units of the network checked (default: 5)")
    parser.add_argument("--batch-size", type=at_most(positive_int, MAX_BATCH), default=8,
                        help=f"examples in the random batch, at most {MAX_BATCH:,} (default: 8)")
    parser.add_argument("--entries", type=positive_int, default=None, metavar="N",
                        help="check a random sample of N entries per parameter (default: all)")
    parser.add_argument("--eps", type=finite_difference_step, default=None,
                        help="finite-difference step, below 1 (default: 1e-5)")
    parser.add_argument("--seed", type=nonnegative_int, default=0,
                        help="seed of the network and batch, an integer >= 0 (default: 0)")
    add_backend_option(parser)


def _check_cost(args) -> None:
    """Refuse, in one line, a check that would run past MAX_ENTRIES or MAX_MULTIPLY_ADDS."""
    from anynet.errors import UserError

    D, H, K = 784, args.hidden, 10
    sizes = (D * H, H, H * K, K)  # W1, b1, W2, b2
    entries = sum(sizes if args.entries is None else (min(args.entries, n) for n in sizes))
    work = 2 * entries * args.batch_size * (D * H + H * K)
    if entries > MAX_ENTRIES or work > MAX_MULTIPLY_ADDS:
        raise UserError(f"gradcheck of a {D}-{H}-{K} network on a batch of {args.batch_size}: "
                        f"{entries:,} entries, {work:.1e} multiply-adds, more than the "
                        f"{MAX_ENTRIES:,} entries and {MAX_MULTIPLY_ADDS:.0e} multiply-adds "
                        "one check may cost; give --entries N (e.g. 100), or a smaller "
                        "--hidden or --batch-size")


def run(args) -> int:
    import numpy as np

    from anynet.gradcheck import TOLERANCE as FLOAT64_TOLERANCE
    from anynet.gradcheck import check_gradients, eps_and_tolerance
    from anynet.network import TwoLayerNet

    _check_cost(args)
    net = TwoLayerNet(n_hidden=args.hidden, backend=open_backend(args), dtype="float64",
                      seed=args.seed)
    rng = np.random.default_rng(args.seed)
    X = rng.random((args.batch_size, 784))
    labels = rng.integers(0, 10, args.batch_size)
    default_eps, tolerance = eps_and_tolerance(net.backend)
    eps = args.eps or default_eps
    D, H, K = net.sizes
    scope = "all entries" if args.entries is None else f"{args.entries} random entries each"
    print(f"gradcheck: {D}-{H}-{K} network, batch of {args.batch_size}, float64, "
          f"{net.backend.describe()}, eps {eps:g}, {scope}")
    if tolerance != FLOAT64_TOLERANCE:
        print(f"  (this library computes float64 exp and log to float32 accuracy only: "
              f"tolerance {tolerance:.0e})")
    errors = check_gradients(net, X, labels, eps=eps, max_entries=args.entries, seed=args.seed)
    for name, err in errors.items():
        shape = "x".join(str(s) for s in net.params[name].shape)
        print(f"  {name:3s} ({shape:>7s})  largest relative error {err:.2e}  "
              f"{'ok' if err <= tolerance else 'FAIL'}")
    broken = [name for name, err in errors.items() if not math.isfinite(err)]
    if broken:
        print(f"FAILED: the relative error of {', '.join(broken)} is not finite: the finite "
              f"differences overflowed or were undefined at eps {eps:g}; try a smaller --eps")
        return 1
    worst = max(errors.values())
    if worst > tolerance:
        print(f"FAILED: largest relative error {worst:.2e} > {tolerance:.0e}")
        return 1
    print(f"passed: every relative error <= {tolerance:.0e}")
    return 0
