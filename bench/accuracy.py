"""LeCun's table for a 784-800-10 network, reproduced: anynet's recipes beside the published errors.

    python bench/accuracy.py                               # every recipe, seed 0
    python bench/accuracy.py --recipes default h800 --seeds 0-2
    python bench/accuracy.py --recipes h800-elastic --backend torch

Each run is the command a user types, `anynet train --recipe NAME --seed S` (in a subprocess,
its model written to --models), timed by the wall clock; its test error is then recomputed
from the saved model file by `anynet evaluate --json`, so the table shows what the file holds.
The published rows are Simard, Steinkraus & Platt (ICDAR 2003) as LeCun's MNIST page lists them
for "2-layer NN, 800 HU, cross-entropy loss": 1.6% without distortions, 1.1% with affine ones,
0.7% with elastic ones. A recipe that distils (`best`) has its teachers trained first, once,
their time shown beside its own. Prints a table (mean and sample standard deviation over
seeds) and writes every run to JSON (atomically).
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

from anynet.recipes import TEACHERS  # noqa: E402 (after the checkout is on the path)

# error rates (%) in LeCun's table for the same architecture, and this project's targets
PUBLISHED = {"default": None, "h800": 1.6, "h800-affine": 1.1, "h800-elastic": 0.7}
TARGET_ERROR = {"default": 2.5, "h800": 1.4, "h800-affine": 1.0, "h800-elastic": 0.7,
                "best-plain": 1.25, "speed-98": 2.0, "speed-99": 1.0, "best": 0.6}


def seeds(text: str) -> list[int]:
    from anynet.sweep import parse_values

    try:
        return parse_values("seed", text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv):
    from anynet.recipes import RECIPES

    p = argparse.ArgumentParser(prog="python bench/accuracy.py", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES),
                   metavar="NAME", help=f"recipes to run (default: all: {', '.join(RECIPES)})")
    p.add_argument("--seeds", type=seeds, default=[0], metavar="LIST",
                   help="seeds of each recipe, e.g. 0-2 (default: 0)")
    p.add_argument("--backend", default="numpy", help="anynet's --backend (default: numpy)")
    p.add_argument("--threads", type=int, default=None,
                   help="anynet's --threads (default: anynet's default)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="genuine MNIST (default: $ANYNET_DATA_DIR, else anynet's cache)")
    p.add_argument("--models", default=str(BENCH_DIR / "results" / "models"), metavar="DIR",
                   help="where the models go (default: bench/results/models)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="JSON results (default: bench/results/accuracy-<host>-<date>.json)")
    return p.parse_args(argv)


def anynet(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    return subprocess.run([sys.executable, "-m", "anynet", *args], capture_output=True,
                          text=True, env=env)


def model_path(name: str, seed: int, args) -> Path:
    return Path(args.models) / f"{name}-seed{seed}.npz"


def run_one(name: str, seed: int, args, teachers: list[dict] | None = None) -> dict:
    """Train recipe `name` with `seed` through the CLI (distilling `teachers`, runs of
    `run_one`, where the recipe has them), then score the saved model."""
    model = model_path(name, seed, args)
    train = ["train", "--recipe", name, "--seed", str(seed), "--out", str(model), "--force",
             "--quiet", "--backend", args.backend]
    if teachers:
        if any(t["status"] != "ok" for t in teachers):
            return {"recipe": name, "seed": seed, "status": "failed", "wall_s": 0.0,
                    "reason": "a teacher failed"}
        train += ["--teacher", *(str(model_path(t["recipe"], t["seed"], args))
                                 for t in teachers)]
    if args.threads:
        train += ["--threads", str(args.threads)]
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    t0 = time.perf_counter()
    proc = anynet(*train, *data)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"recipe": name, "seed": seed, "status": "failed", "wall_s": wall,
                "reason": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    scored = anynet("evaluate", str(model), "--json", "--backend", args.backend, *data)
    if scored.returncode != 0:
        return {"recipe": name, "seed": seed, "status": "failed", "wall_s": wall,
                "reason": (scored.stderr.strip().splitlines() or ["no output"])[-1]}
    result = json.loads(scored.stdout)
    from anynet.modelio import load_model

    _, record = load_model(model)
    metrics = record.get("metrics", {})
    return {"recipe": name, "seed": seed, "status": "ok", "wall_s": wall,
            **({"teachers_train_s": sum(t["train_s"] for t in teachers)} if teachers else {}),
            "train_s": metrics.get("train_seconds"), "epochs": metrics.get("epochs"),
            "test_accuracy": result["accuracy"], "test_error_pct": 100 * (1 - result["accuracy"]),
            "test_loss": result["loss"], "backend": record.get("backend"),
            "threads": record.get("threads"), "config": record["config"],
            "model": _shown(model)}


def _shown(path: Path) -> str:
    """`path` as the JSON records it: relative to the checkout when inside it, so a results
    file names no machine's folders."""
    path = path.resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else path.name


def table(runs: list[dict], recipes: list[str]) -> str:
    w = max([14, *(len(name) + 1 for name in recipes)])  # the recipe column
    lines = [f"{'recipe':<{w}}{'published':>10}{'target':>8}{'anynet (test error %)':>24}"
             f"{'seeds':>6}{'epochs':>7}{'train s':>9}  backend"]
    for name in recipes:
        ok = [r for r in runs if r["recipe"] == name and r["status"] == "ok"]
        pub = PUBLISHED.get(name)
        pub_text = f"{pub:.1f}" if pub is not None else "-"
        target = f"<= {TARGET_ERROR[name]:g}" if name in TARGET_ERROR else "-"
        if not ok:
            lines.append(f"{name:<{w}}{pub_text:>10}{target:>8}{'failed':>24}")
            continue
        errors = [r["test_error_pct"] for r in ok]
        text = f"{statistics.mean(errors):.2f}"
        if len(errors) > 1:
            text += (f" ± {statistics.stdev(errors):.2f} ({min(errors):.2f}-"
                     f"{max(errors):.2f})")
        train_s = statistics.mean(r["train_s"] for r in ok)
        lines.append(f"{name:<{w}}{pub_text:>10}{target:>8}{text:>24}{len(ok):>6}"
                     f"{ok[0]['epochs']:>7}{train_s:>9.0f}  {ok[0]['backend']}, "
                     f"{ok[0]['threads']} threads")
        if "teachers_train_s" in ok[0]:
            lines.append(f"{'':<{w}}(and {ok[0]['teachers_train_s']:.0f} s training its "
                         f"teachers, {TEACHERS[name][0]} seeds "
                         f"{', '.join(map(str, TEACHERS[name][1]))})")
    return "\n".join(lines)


def main(argv=None) -> int:
    from anynet.fileio import atomic_write_text

    args = parse_args(argv)
    out = Path(args.out or BENCH_DIR / "results" /
               f"accuracy-{socket.gethostname()}-{dt.date.today().isoformat()}.json")
    done: dict[tuple[str, int], dict] = {}  # every run, in the order trained

    def run(name: str, seed: int, teachers: list[dict] | None = None) -> dict:
        # a run is trained once: `--recipes h800-affine best` has best's teachers already
        if (name, seed) in done:
            return done[name, seed]
        r = done[name, seed] = run_one(name, seed, args, teachers)
        summary = (f"test error {r['test_error_pct']:.2f}% in {r['train_s']:.0f} s of "
                   f"training" if r["status"] == "ok" else f"failed: {r['reason']}")
        print(f"{name} seed {seed}: {summary}", file=sys.stderr, flush=True)
        return r

    shown = []
    for name in args.recipes:
        teachers = None
        if name in TEACHERS:  # its committee first, trained once for all its seeds
            teacher_recipe, teacher_seeds = TEACHERS[name]
            teachers = [run(teacher_recipe, s) for s in teacher_seeds]
            shown.append(teacher_recipe)
        for seed in args.seeds:
            run(name, seed, teachers)
        shown.append(name)
    runs = list(done.values())
    text = table(runs, list(dict.fromkeys(shown)))
    print(text)
    atomic_write_text(out, json.dumps({
        "schema": "anynet-bench-accuracy/1",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(), "published_error_pct": PUBLISHED,
        "target_error_pct": TARGET_ERROR, "runs": runs, "table": text}, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0 if all(r["status"] == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
