"""Check backpropagation against central differences in float64, for every parameter.

Builds a network (784 inputs, --hidden units, 10 classes) and a random batch, and compares the
analytic gradient of each parameter with (J(w + eps) - J(w - eps)) / 2 eps, entry by entry.
Prints the largest relative error per parameter; exits 1 if any exceeds the tolerance (1e-6)."""

from __future__ import annotations

from anynet.commands._common import add_backend_option, positive_float, positive_int

HELP = "check the analytic gradients against central differences (float64)"


def add_arguments(parser) -> None:
    parser.add_argument("--hidden", type=positive_int, default=5,
                        help="hidden units of the network checked (default: 5)")
    parser.add_argument("--batch-size", type=positive_int, default=8,
                        help="examples in the random batch (default: 8)")
    parser.add_argument("--entries", type=positive_int, default=None, metavar="N",
                        help="check a random sample of N entries per parameter (default: all)")
    parser.add_argument("--eps", type=positive_float, default=None,
                        help="finite-difference step (default: 1e-5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the network and batch")
    add_backend_option(parser)


def run(args) -> int:
    import numpy as np

    from anynet.gradcheck import DEFAULT_EPS, TOLERANCE, check_gradients
    from anynet.network import TwoLayerNet

    net = TwoLayerNet(n_hidden=args.hidden, backend=args.backend, dtype="float64", seed=args.seed)
    rng = np.random.default_rng(args.seed)
    X = rng.random((args.batch_size, 784))
    labels = rng.integers(0, 10, args.batch_size)
    eps = args.eps or DEFAULT_EPS
    D, H, K = net.sizes
    scope = "all entries" if args.entries is None else f"{args.entries} random entries each"
    print(f"gradcheck: {D}-{H}-{K} network, batch of {args.batch_size}, float64, "
          f"{net.backend.describe()}, eps {eps:g}, {scope}")
    errors = check_gradients(net, X, labels, eps=eps, max_entries=args.entries, seed=args.seed)
    for name, err in errors.items():
        shape = "x".join(str(s) for s in net.params[name].shape)
        print(f"  {name:3s} ({shape:>7s})  largest relative error {err:.2e}  "
              f"{'ok' if err <= TOLERANCE else 'FAIL'}")
    worst = max(errors.values())
    if worst > TOLERANCE:
        print(f"FAILED: largest relative error {worst:.2e} > {TOLERANCE:.0e}")
        return 1
    print(f"passed: every relative error <= {TOLERANCE:.0e}")
    return 0
