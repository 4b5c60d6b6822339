"""One benchmark measurement in a fresh process: `python bench/_worker.py '<json config>'`.

`bench/epoch.py` starts this script once per (implementation, H, batch), and once per array
library for the matrix-product rate, so each process loads exactly one numerical library and no
two BLAS thread pools fight over the cores. It prints one JSON object on its last stdout line.

The implementation interface (every `bench/impl_*.py` module):

    make(hidden, batch, lr, seed, train_images, train_labels, *, device="cpu", threads=2,
         **options) -> trainer
    trainer.epoch() -> None           # one pass over all training images, shuffle included;
                                      # returns when the device has finished the work
    trainer.accuracy(test_images, test_labels) -> float    # fraction correct, in [0, 1]

`train_images`/`test_images` are uint8 (N, 784), labels uint8 (N,): each implementation turns
them into what its users would hand their library (once, untimed, in `make`). A trainer may set
`epoch_time_scale` (and `timed_images`) when an epoch covers only part of the data (Nielsen).

Config keys, kind "train": impl (module name), library, options, hidden, batch, lr, seed, epochs,
warmup, retime, retime_budget_s, device, threads, data_dir (the folder of .npy files from
epoch.py).

Each timed epoch also records how many cores other processes took meanwhile (`_load`). After
the accuracy is measured (so it is always after exactly warmup + epochs epochs), up to `retime`
extra epochs replace disturbed ones, and the median is taken over the undisturbed epochs.

Config keys, kind "matmul": library, device, threads, size, repeats.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import statistics
import sys
import time

import _load


def _rss_now_mb() -> float | None:
    """Resident memory of this process now (Linux /proc), in MB; None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss: KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak / 1e3


def _versions() -> dict:
    """Versions of the numerical libraries this process has imported."""
    out = {"python": sys.version.split()[0]}
    for name in ("numpy", "torch", "jax", "jaxlib", "sklearn", "cupy", "anynet"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = getattr(module, "__version__", "?")
    return out


def backend_spec(library: str, device: str) -> str:
    """The anynet backend spec of `library` on bench's `device` ("cpu" or "cuda"): the seam
    knows each library's device names."""
    from anynet.backend import spec_for

    return spec_for(library, "gpu" if device == "cuda" else device)


def _device_problem(library: str, device: str) -> str | None:
    """Why `library` cannot compute on `device` here, or None when it can (anynet's probe, then
    opening the device through anynet's backend seam)."""
    from anynet.backend import get_backend, probe
    from anynet.errors import BackendError

    try:
        spec = backend_spec(library, device)
        reason = probe(library)
        if reason:
            return reason
        get_backend(spec)
    except BackendError as e:
        return str(e)
    return None


def _set_threads(library: str, device: str, threads: int) -> dict:
    """Limit the library's CPU threads through anynet's seam; what is in effect, for the JSON."""
    from anynet.backend.threads import set_threads, thread_counts

    n = set_threads(backend_spec(library, device), threads)
    return {"threads": n, "thread_pools": thread_counts()}


def train(cfg: dict) -> dict:
    import numpy as np

    # threads first: JAX sizes its CPU pool when its client starts (which the probe does)
    threads = _set_threads(cfg["library"], cfg["device"], cfg["threads"])
    problem = _device_problem(cfg["library"], cfg["device"])
    if problem:
        return {"status": "skipped", "reason": problem}
    data = {name: np.load(os.path.join(cfg["data_dir"], f"{name}.npy"), allow_pickle=False)
            for name in ("train_images", "train_labels", "test_images", "test_labels")}
    try:
        impl = importlib.import_module(cfg["impl"])
    except ImportError as e:
        return {"status": "skipped", "reason": f"{type(e).__name__}: {e}"}

    trainer = impl.make(cfg["hidden"], cfg["batch"], cfg["lr"], cfg["seed"],
                        data["train_images"], data["train_labels"], device=cfg["device"],
                        threads=cfg["threads"], **cfg["options"])
    # again: pools the implementation loaded (scikit-learn's, say) are limited too
    threads = _set_threads(cfg["library"], cfg["device"], cfg["threads"])
    rss_before = _rss_now_mb()
    scale = float(getattr(trainer, "epoch_time_scale", 1.0))

    warmup_s = [s for s, _ in _load.time_epochs(trainer.epoch, cfg["warmup"], scale)]
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    epochs = _load.time_epochs(trainer.epoch, cfg["epochs"], scale)
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    # Accuracy after exactly warmup + epochs epochs, whatever re-timing follows.
    accuracy = trainer.accuracy(data["test_images"], data["test_labels"])
    extra = _load.retime(epochs, trainer.epoch, cfg["epochs"], cfg["retime"],
                         cfg["retime_budget_s"], scale)
    out = {
        "status": "ok",
        **_load.summary(epochs, cfg["epochs"]),
        "warmup_s": warmup_s,
        "retimed_epochs": extra,
        "test_accuracy": accuracy,
        # Per timed epoch: CPU time in user and kernel mode, and minor page faults. Lots of
        # kernel time and faults mean memory freed to the OS and faulted back in every step.
        "user_s_per_epoch": (usage1.ru_utime - usage0.ru_utime) / cfg["epochs"],
        "sys_s_per_epoch": (usage1.ru_stime - usage0.ru_stime) / cfg["epochs"],
        "page_faults_per_epoch": (usage1.ru_minflt - usage0.ru_minflt) / cfg["epochs"],
        "epochs_trained": cfg["warmup"] + cfg["epochs"],
        "train_images": len(data["train_images"]),
        "test_images": len(data["test_images"]),
        "rss_before_training_mb": rss_before,
        "peak_rss_mb": _peak_rss_mb(),
        "versions": _versions(),
        **threads,
    }
    if scale != 1.0:
        out["epoch_time_scale"] = scale
        out["timed_images"] = int(getattr(trainer, "timed_images", 0))
    return out


def matmul(cfg: dict) -> dict:
    """The best rate of a float32 size x size matrix product, in GFLOP/s (2 n^3 FLOPs each),
    on one library, allocated and synchronised through anynet's backend seam."""
    import numpy as np

    from anynet.backend import get_backend

    library, device, n = cfg["library"], cfg["device"], cfg["size"]
    threads = _set_threads(library, device, cfg["threads"])
    problem = _device_problem(library, device)
    if problem:
        return {"status": "skipped", "reason": problem}
    backend = get_backend(backend_spec(library, device))
    rng = np.random.default_rng(0)
    a, b = (backend.asarray(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))

    def product():
        c = a @ b  # one operation: JAX dispatches it compiled, as jit would
        backend.sync(c)
        return c

    for _ in range(2):  # warm-up: thread pools, kernels, compilation
        product()
    times = []
    for _ in range(cfg["repeats"]):
        t0 = time.perf_counter()
        product()
        times.append(time.perf_counter() - t0)
    flops = 2 * n**3
    return {
        "status": "ok",
        "size": n,
        "dtype": "float32",
        "best_s": min(times),
        "gflops": flops / min(times) / 1e9,
        "median_gflops": flops / statistics.median(times) / 1e9,
        "versions": _versions(),
        **threads,
    }


def main() -> int:
    cfg = json.loads(sys.argv[1])
    result = train(cfg) if cfg["kind"] == "train" else matmul(cfg)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
