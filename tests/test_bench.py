"""Tests for the benchmark harness in bench/: its arithmetic, its data reader, every peer's
training interface, and one real end-to-end run of `bench/epoch.py --quick`."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import epoch  # noqa: E402
from data_helpers import make_mnist_dir  # noqa: E402


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """Synthetic MNIST-format files (not genuine MNIST: the harness runs with --no-verify),
    as many images as --quick uses: the harness end to end, on any machine, in seconds."""
    return make_mnist_dir(tmp_path_factory.mktemp("mnist"), n_train=2000, n_test=1000, seed=0)


# --- arithmetic --------------------------------------------------------------------------------


def test_epoch_flops_counts_forward_and_backward_products():
    # H = 800 over 60,000 images: forward 2*784*800 + 2*800*10, backward twice the W1 product
    # (dW1 only) and three H x K products: 60000 * (4*784*800 + 6*800*10) = 153,408,000,000.
    assert epoch.epoch_flops(800, 60000) == 153_408_000_000
    assert epoch.epoch_flops(30, 1) == 4 * 784 * 30 + 6 * 30 * 10


def test_ratio_reference_prefers_fastest_anynet_backend():
    row = {
        "anynet-numpy": {"status": "ok", "median_s": 0.30},
        "anynet-torch": {"status": "ok", "median_s": 0.20},
        "anynet-jax": {"status": "failed"},
        "numpy-naive": {"status": "ok", "median_s": 0.10},
    }
    assert epoch.ratio_reference(row) == ("anynet-torch", 0.20)


def test_ratio_reference_falls_back_to_numpy_naive_without_anynet():
    row = {"numpy-naive": {"status": "ok", "median_s": 0.17},
           "torch-module": {"status": "ok", "median_s": 0.27}}
    assert epoch.ratio_reference(row) == ("numpy-naive", 0.17)
    assert epoch.ratio_reference({"torch-module": {"status": "failed"}}) == (None, None)


def test_table_shows_ratio_floor_and_noise_mark():
    results = [
        {"impl": "anynet-numpy", "hidden": 30, "batch": 64, "status": "ok", "median_s": 0.09,
         "test_accuracy": 0.96, "peak_rss_mb": 150.0, "others_cores": 0.0},
        {"impl": "numpy-naive", "hidden": 30, "batch": 64, "status": "ok", "median_s": 0.18,
         "test_accuracy": 0.955, "peak_rss_mb": 460.0, "others_cores": 1.2,
         "median_of": "all epochs (too few quiet)"},
    ]
    meta = {"train_images": 60000, "test_images": 10000, "epochs": 5, "warmup": 1, "lr": 0.1,
            "threads": 2, "device": "cpu"}
    table = epoch.format_tables(results, ["anynet-numpy", "numpy-naive"], [(30, 64)],
                                400.0, "numpy", meta)
    row = next(line for line in table.splitlines() if line.strip().startswith("30"))
    assert "0.090 x1.00" in row
    assert "0.180 x2.00!" in row                       # twice as slow, and flagged noisy
    assert row.rstrip().endswith("| 0.014")            # 5.7528e9 FLOPs / 400 GFLOP/s
    assert "0.9550" in table and "460" in table
    assert "! = too few epochs of that run were undisturbed" in table


# --- data -------------------------------------------------------------------------------------


def test_bad_data_dir_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\0\0\x08\x01not mnist")
    code = epoch.main(["--quick", "--impl", "numpy-naive", "--data-dir", str(tmp_path),
                       "--out", str(tmp_path / "out.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("epoch.py: error: ") and "\n" not in err
    assert not (tmp_path / "out.json").exists()


# --- every implementation trains through the common interface ---------------------------------


def _toy_problem(n: int, seed: int = 0):
    """uint8 'images' whose class k lights up pixel block k: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 784)).astype(np.uint8)
    for k in range(10):
        images[labels == k, 78 * k:78 * k + 78] = 255
    return images, labels


PEERS = {
    "impl_numpy_naive": None,
    "impl_sklearn": "sklearn",
    "impl_nielsen": None,
    "impl_torch_module": "torch",
    "impl_torch_noautograd": "torch",
    "impl_jax_jit": "jax",
}


@pytest.mark.backend_library
@pytest.mark.parametrize("module", list(PEERS))
def test_peer_learns_a_toy_problem(module):
    if PEERS[module]:
        pytest.importorskip(PEERS[module])
    if PEERS[module] == "jax":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    impl = importlib.import_module(module)
    train_x, train_y = _toy_problem(640)
    test_x, test_y = _toy_problem(200, seed=1)
    trainer = impl.make(16, 32, 0.1, 0, train_x, train_y, device="cpu", threads=1)
    trainer.epoch()
    first = trainer.accuracy(test_x, test_y)
    for _ in range(2):
        trainer.epoch()
    after = trainer.accuracy(test_x, test_y)
    assert 0 <= first <= 1
    assert after > 0.9, f"{module}: accuracy {first:.2f} after 1 epoch, {after:.2f} after 3"


def test_nielsen_scales_time_by_its_subset():
    import impl_nielsen

    train_x, train_y = _toy_problem(300)
    trainer = impl_nielsen.NielsenNet(8, 10, 0.1, 0, train_x, train_y, subset=100)
    assert trainer.timed_images == 100 and trainer.epoch_time_scale == 3.0
    assert len(trainer.training_data) == 100


# --- the worker: timing, re-timing disturbed epochs, accuracy after a fixed count -------------

FAKE_IMPL = """
class Sleeper:
    clock = None                                        # the test's clock, set before training

    def __init__(self):
        self.epochs = 0

    def epoch(self):
        self.epochs += 1
        self.clock.sleep(0.4 if self.epochs == 3 else 0.2)   # the 2nd timed epoch: disturbed

    def accuracy(self, images, labels):
        return self.epochs / 10                         # tells how many epochs came before it

def make(hidden, batch, lr, seed, train_images, train_labels, *, device="cpu", threads=2):
    return Sleeper()
"""


class FakeClock:
    """The time module as bench/_load.py reads it, for a test: wall time moves only when an
    epoch "sleeps", so no epoch's time depends on how busy the machine is."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def process_time(self) -> float:
        return 0.0                                      # this process computes nothing


def test_worker_retimes_a_disturbed_epoch(tmp_path, monkeypatch):
    import _load
    import _worker

    (tmp_path / "impl_fake_sleeper.py").write_text(FAKE_IMPL)
    monkeypatch.syspath_prepend(str(tmp_path))
    clock = FakeClock()
    monkeypatch.setattr(_load, "time", clock)
    monkeypatch.setattr(importlib.import_module("impl_fake_sleeper").Sleeper, "clock", clock)
    for name, shape in (("train_images", (4, 784)), ("train_labels", (4,)),
                        ("test_images", (2, 784)), ("test_labels", (2,))):
        np.save(tmp_path / f"{name}.npy", np.zeros(shape, np.uint8))
    # The machine's busy CPU seconds, read at the start and end of each epoch: others burn
    # 2 CPU seconds during the second timed epoch only (warm-up, 3 timed, 1 re-timed).
    busy = iter([0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2])
    monkeypatch.setattr(_load, "machine_busy_s", lambda: next(busy))
    cfg = {"kind": "train", "impl": "impl_fake_sleeper", "library": "numpy", "options": {},
           "hidden": 8, "batch": 2, "lr": 0.1, "seed": 0, "epochs": 3, "warmup": 1,
           "retime": 3, "retime_budget_s": 30, "device": "cpu", "threads": 1,
           "data_dir": str(tmp_path)}
    r = _worker.train(cfg)
    assert r["status"] == "ok"
    assert r["test_accuracy"] == 0.4                     # after warm-up + 3, before re-timing
    assert r["retimed_epochs"] == 1 and r["quiet_epochs"] == 3 and len(r["epoch_s"]) == 4
    assert r["epoch_others_cores"][0] == 0 and r["epoch_others_cores"][1] > 4
    assert r["median_of"] == "quiet epochs"
    assert r["epoch_s"] == pytest.approx([0.2, 0.4, 0.2, 0.2])
    assert r["median_s"] == pytest.approx(0.2) and r["max_s"] == pytest.approx(0.2)  # 0.4 s: out


# --- the harness end to end --------------------------------------------------------------------


def test_quick_run_writes_json(tmp_path, mnist_dir):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        # --retime 0: the shared machine's load must not change how many epochs are timed
        [sys.executable, str(BENCH / "epoch.py"), "--quick", "--impl", "anynet-numpy",
         "numpy-naive", "--matmul-size", "512", "--data-dir", str(mnist_dir), "--no-verify",
         "--out", str(out), "--retime", "0", "--threads", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Seconds per epoch (2,000 images" in proc.stdout
    report = json.loads(out.read_text())
    assert report["schema"] == "anynet-bench-epoch/1"
    assert report["config"]["train_images"] == 2000 and report["config"]["epochs"] == 2
    assert report["config"]["threads"] == 1
    rate = report["matmul"]["numpy"]["gflops"]
    assert rate > 1 and report["floor_gflops"] == rate
    results = {r["impl"]: r for r in report["results"]}
    naive = results["numpy-naive"]
    assert naive["status"] == "ok", naive
    assert (naive["hidden"], naive["batch"]) == (30, 64)
    assert len(naive["epoch_s"]) == 2 and len(naive["warmup_s"]) == 1
    assert naive["retimed_epochs"] == 0
    assert naive["threads"] == 1                 # set through anynet.backend.threads, recorded
    if "openblas" in naive["thread_pools"]:
        assert naive["thread_pools"]["openblas"] == 1
    assert naive["min_s"] <= naive["median_s"] <= naive["max_s"] and naive["min_s"] > 0
    assert naive["median_s"] == pytest.approx(sum(naive["epoch_s"]) / 2)
    assert 0.6 < naive["test_accuracy"] <= 1     # 3 epochs on 2,000 synthetic images
    assert naive["test_images"] == 1000 and naive["epochs_trained"] == 3
    assert 30 < naive["peak_rss_mb"] < 2000
    assert naive["flop_floor_s"] == pytest.approx(epoch.epoch_flops(30, 2000) / (rate * 1e9))
    anynet = results["anynet-numpy"]
    if anynet["status"] == "ok":                 # the adapter may lag behind anynet's API
        assert naive["ratio_reference"] == "anynet-numpy"
        assert naive["ratio"] == pytest.approx(naive["median_s"] / anynet["median_s"])
    else:
        assert naive["ratio_reference"] == "numpy-naive" and naive["ratio"] == 1.0


def test_interrupted_run_keeps_finished_runs(tmp_path, mnist_dir, monkeypatch, capsys):
    out = tmp_path / "bench.json"
    real_measure = epoch.measure_cell

    def interrupted_at_second(h, b, n, *rest):
        if n == "numpy-naive":
            raise KeyboardInterrupt
        return real_measure(h, b, n, *rest)

    monkeypatch.setattr(epoch, "measure_cell", interrupted_at_second)
    argv = ["--quick", "--impl", "nielsen", "numpy-naive", "--matmul-size", "256",
            "--data-dir", str(mnist_dir), "--no-verify", "--retime", "0", "--threads", "1",
            "--out", str(out)]
    assert epoch.main(argv) == 130
    assert f"the runs finished so far are in {out}" in capsys.readouterr().err
    partial = json.loads(out.read_text())
    assert partial["interrupted"] is True
    assert [r["impl"] for r in partial["results"]] == ["nielsen"]


# --- bench/threads.py: 1 vs 2 threads, quiet vs loaded -----------------------------------------


def test_threads_table_gives_loaded_over_quiet_per_thread_count():
    import threads as bench_threads

    assert bench_threads.parse_case("anynet-torch:800:64") == ("anynet-torch", 800, 64)
    results = [{"impl": "anynet-numpy", "hidden": 30, "batch": 64, "threads_asked": t,
                "load": load, "status": "ok", "median_s": s}
               for t, load, s in ((1, "quiet", 0.10), (2, "quiet", 0.08), (1, "loaded", 0.11),
                                  (2, "loaded", 0.40))]
    table = bench_threads.format_table(results, [1, 2])
    row = table.splitlines()[-1].split()
    assert row[:3] == ["anynet-numpy", "H=30", "b=64"]
    assert row[3:] == ["0.100", "0.080", "0.110", "0.400", "1.10", "5.00"]


def test_worker_says_why_a_library_cannot_run_on_a_device():
    import _worker

    assert _worker._device_problem("numpy", "cpu") is None
    assert "GPU only" in _worker._device_problem("cupy", "cpu")
    assert _worker.backend_spec("torch", "cuda") == "torch:cuda"
    assert _worker.backend_spec("jax", "cuda") == "jax:gpu"
    assert _worker.backend_spec("numpy", "cpu") == "numpy"


def test_augment_quick_run_reports_distortions_beside_training(tmp_path, mnist_dir):
    out = tmp_path / "augment.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "augment.py"), "--quick", "--kinds", "affine", "elastic",
         "--data-dir", str(mnist_dir), "--no-verify", "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "distorting 2,000 images in chunks of 1024 on numpy" in proc.stdout
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines[-3:]] == ["affine", "elastic", "training"]
    report = json.loads(out.read_text())
    assert sorted(report["distortions"]) == ["affine", "elastic"]
    for r in [*report["distortions"].values(), report["training"]]:
        assert len(r["epoch_s"]) == 1 and 0 < r["min_s"] <= r["median_s"]
    assert report["training"]["hidden"] == 30 and report["meta"]["threads"] == 1


# --- time to accuracy (bench/time_to_accuracy.py) --------------------------------------------


def test_time_to_an_accuracy_sums_epochs_up_to_the_first_that_reaches_it():
    import time_to_accuracy as tta

    epochs = [{"seconds": 1.0, "accuracy": 0.97}, {"seconds": 2.0, "accuracy": 0.981},
              {"seconds": 4.0, "accuracy": 0.979}, {"seconds": 8.0, "accuracy": 0.99}]
    assert tta.time_to(epochs, 0.98) == 3.0
    assert tta.time_to(epochs, 0.99) == 15.0
    assert tta.time_to(epochs, 0.995) is None
    runs = [{"recipe": "r", "impl": "anynet", "status": "ok", "epochs": epochs},
            {"recipe": "r", "impl": "torch_module", "status": "ok",
             "epochs": [{"seconds": 6.0, "accuracy": 0.985}]}]
    lines = tta.table(runs).splitlines()
    assert lines[1].split() == ["r", "anynet", "3.0s", "15.0s", "99.00%", "4", "0.50x"]
    assert lines[2].split() == ["r", "torch_module", "6.0s", "-", "98.50%", "1", "1.00x"]


def test_naive_momentum_is_torch_s_sgd():
    """The straightforward loop's Nesterov momentum with weight decay is anynet's SGD (which
    tests/test_optim holds to torch.optim.SGD): same weights after three steps."""
    import impl_numpy_naive

    from anynet.network import loss_and_grads, pixels_to_inputs
    from anynet.optim import SGD

    images, labels = _toy_problem(96)
    naive = impl_numpy_naive.make(16, 32, 0.1, 0, images, labels, momentum=0.9, nesterov=True,
                                  weight_decay=1e-3)
    params = {k: getattr(naive, k).copy() for k in ("W1", "b1", "W2", "b2")}
    opt = SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    state = opt.init(params)
    X = pixels_to_inputs(images, "float32")
    Y = np.eye(10, dtype=np.float32)[labels]
    lrs = [0.1, 0.05, 0.02]
    for i, lr in enumerate(lrs):
        rows = slice(32 * i, 32 * (i + 1))
        _, grads = loss_and_grads(params, X[rows], labels[rows].astype(np.int64))
        params, state = opt.step(params, grads, state, lr=lr)
        naive.lr = np.float32(lr)
        naive.step(X[rows], Y[rows])
    for k in params:
        np.testing.assert_allclose(getattr(naive, k), params[k], rtol=1e-5, atol=1e-6)


@pytest.mark.backend_library
def test_time_to_accuracy_runs_each_implementation_in_its_own_process(tmp_path, mnist_dir):
    pytest.importorskip("torch")
    out = tmp_path / "tta.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "time_to_accuracy.py"), "--recipes", "default",
         "--epochs", "2", "--threads", "1", "--data-dir", str(mnist_dir), "--no-verify",
         "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["schema"] == "anynet-bench-time-to-accuracy/1"
    runs = {r["impl"]: r for r in report["runs"]}
    assert set(runs) == {"anynet", "torch_module", "numpy_naive"}
    for r in runs.values():
        assert r["status"] == "ok" and r["threads"] == 1
        assert r["config"]["hidden"] == 30 and r["config"]["epochs"] == 2
        assert len(r["epochs"]) == 2 and all(e["seconds"] > 0 for e in r["epochs"])
        assert r["epochs"][-1]["accuracy"] > 0.6, r    # 2 epochs on 2,000 synthetic images
    assert "default   anynet" in proc.stdout and "x PyTorch" in proc.stdout


@pytest.mark.parametrize("setting, worker, threads", [("auto", True, 1), ("off", False, 2)])
def test_time_to_accuracy_gives_anynet_its_distortion_worker_as_anynet_train_would(
        tmp_path, mnist_dir, setting, worker, threads):
    """Two cores given: a distorting recipe trains on one BLAS thread beside the worker (as
    `anynet train` on a quiet 2-core machine), or without it on both."""
    out = tmp_path / "tta.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "time_to_accuracy.py"), "--recipes", "speed-99",
         "--impls", "anynet", "--epochs", "1", "--threads", "2", "--distort-worker", setting,
         "--data-dir", str(mnist_dir), "--no-verify", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (run,) = json.loads(out.read_text())["runs"]
    assert (run["worker"], run["threads"]) == (worker, threads)
    assert run["config"]["augment"] == "affine" and len(run["epochs"]) == 1
    assert ("a distortion worker" in proc.stderr) == worker


# --- LeCun's table (bench/accuracy.py) ---------------------------------------------------------


def test_a_distilling_recipe_trains_its_teachers_once_then_each_seed(tmp_path, monkeypatch,
                                                                      capsys):
    import accuracy

    from anynet.recipes import TEACHERS

    teacher, seeds = TEACHERS["best"]
    assert teacher == "h800-affine-deslant" and seeds == (43, 45, 46)
    calls = []

    def fake_run_one(name, seed, args, teachers=None):
        calls.append((name, seed, [(t["recipe"], t["seed"]) for t in teachers or []]))
        run = {"recipe": name, "seed": seed, "status": "ok", "wall_s": 1.0, "epochs": 100,
               "train_s": 400.0 if name == teacher else 600.0, "backend": "numpy",
               "threads": 1, "test_error_pct": 0.6 if name == teacher else 0.5}
        if teachers:
            run["teachers_train_s"] = sum(t["train_s"] for t in teachers)
        return run

    monkeypatch.setattr(accuracy, "run_one", fake_run_one)
    out = tmp_path / "acc.json"
    assert accuracy.main(["--recipes", "best", "--seeds", "3-4", "--out", str(out)]) == 0
    teachers = [(teacher, s) for s in seeds]
    assert calls == [*[(n, s, []) for n, s in teachers], ("best", 3, teachers),
                     ("best", 4, teachers)]
    text = capsys.readouterr().out
    assert ("h800-affine-deslant          -       - 0.60 ± 0.00 (0.60-0.60)     3    100      "
            "400  numpy, 1 threads\nbest                         -  <= 0.6 0.50 ± 0.00 "
            "(0.50-0.50)     2    100      600  numpy, 1 threads\n                    (and 1200 "
            "s training its teachers, h800-affine-deslant seeds 43, 45, 46)") in text
    assert [r["recipe"] for r in json.loads(out.read_text())["runs"]] == [teacher] * 3 + [
        "best"] * 2


@pytest.mark.parametrize("order", [["h800-affine-deslant", "best"],
                                   ["best", "h800-affine-deslant"]])
def test_a_recipe_that_is_also_a_teacher_is_trained_once_per_seed(tmp_path, monkeypatch,
                                                                   capsys, order):
    import accuracy

    calls = []

    def fake_run_one(name, seed, args, teachers=None):
        calls.append((name, seed))
        return {"recipe": name, "seed": seed, "status": "ok", "wall_s": 1.0, "epochs": 100,
                "train_s": 400.0, "backend": "numpy", "threads": 1,
                "test_error_pct": 0.7 if name == "h800-affine-deslant" else 0.6}

    monkeypatch.setattr(accuracy, "run_one", fake_run_one)
    out = tmp_path / "acc.json"
    seeds = (43, 45, 46)  # best's teachers' (anynet.recipes.TEACHERS)
    assert accuracy.main(["--recipes", *order, "--seeds", "43,45,46", "--out", str(out)]) == 0
    assert sorted(calls) == [("best", s) for s in seeds] + [("h800-affine-deslant", s)
                                                             for s in seeds]
    runs = json.loads(out.read_text())["runs"]
    assert sorted((r["recipe"], r["seed"]) for r in runs) == sorted(calls)
    assert "h800-affine-deslant          -       - 0.70 ± 0.00 (0.70-0.70)     3" in \
        capsys.readouterr().out
