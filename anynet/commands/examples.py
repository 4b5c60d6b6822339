"""Print the assignment's worked examples (ReLU, softmax, the loss 9.4518, the gradient table),
computed by anynet on the chosen backend, beside the expected values. Exits 1 if any disagrees."""

from __future__ import annotations

from anynet.commands._common import add_backend_option, open_backend

HELP = "print the assignment's worked examples computed on a backend, beside the expected values"


def add_arguments(parser) -> None:
    add_backend_option(parser)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args) -> int:
    import json

    from anynet.examples import format_results, run_examples

    backend = open_backend(args)
    results = run_examples(backend)
    if args.json:
        print(json.dumps({
            "backend": backend.name,
            "examples": [
                {"name": r.name, "ok": r.ok, "error": r.error, "tolerance": r.tolerance,
                 "measure": r.measure, "computed": r.computed.tolist(),
                 "expected": r.expected.tolist()}
                for r in results
            ],
        }, indent=2))
    else:
        print(format_results(results, backend.describe()))
    return 0 if all(r.ok for r in results) else 1
