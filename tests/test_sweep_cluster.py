"""`anynet sweep` on real Dask clusters on this machine: a `dask scheduler` and two `dask worker`
processes on 127.0.0.1 (one killed mid-sweep), and the default LocalCluster (Ctrl-C, divergence).

The sweeps run as `python -m anynet sweep` subprocesses, on the synthetic MNIST-format data of
tests/data_helpers.py (--data-dir DIR --no-verify, as the train tests do); the workers read it
from that folder themselves. Every result line is checked against its saved model, scored again
here with anynet.evaluation. Nothing asserts a time: waits are generous and only bound a hang.
Skips, saying why, where dask[distributed] is not installed (the nox session 'sweep' has it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from data_helpers import make_mnist_dir
from fuzz_helpers import assert_clean_ending, bounded_cli_argv, read_peak_mb, run_cli_bounded

from anynet.data import load_mnist
from anynet.evaluation import evaluate
from anynet.modelio import load_model

pytest.importorskip("distributed", reason="needs dask[distributed]: pip install 'anynet[sweep]' "
                    "(the nox session 'sweep' installs it)")


REPO = Path(__file__).resolve().parents[1]
WAIT_S = 120  # bounds a hang only; a sweep here takes seconds even on a busy machine
pytestmark = pytest.mark.slow


def child_env() -> dict[str, str]:
    """This checkout's anynet for every child (client, scheduler, workers), and quiet Python."""
    paths = [str(REPO), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "PYTHONWARNINGS": "ignore"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    # big enough that a run takes a while (a worker is killed during one), small enough that it
    # takes about a second: 2000 examples, 784-256-10, 16 epochs of batch 16 (see GRID)
    return make_mnist_dir(tmp_path_factory.mktemp("synth"), n_train=2000, n_test=300, seed=0)


@pytest.fixture
def cluster(tmp_path):
    """A `dask scheduler` and two `dask worker` processes (no nanny: killing one kills the worker)
    on 127.0.0.1; yields (scheduler address, {worker address: process}); all torn down after."""
    from distributed import Client

    processes = []
    logs = open(tmp_path / "dask.log", "wb")  # closed below, after the processes
    try:
        address = f"tcp://127.0.0.1:{free_port()}"
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port",
             address.rsplit(":", 1)[1], "--no-dashboard"],
            env=child_env(), stdout=logs, stderr=subprocess.STDOUT, cwd=tmp_path))
        workers = {}
        for name in ("w1", "w2"):
            port = free_port()
            workers[f"tcp://127.0.0.1:{port}"] = process = subprocess.Popen(
                [sys.executable, "-m", "dask", "worker", address, "--host", "127.0.0.1",
                 "--worker-port", str(port), "--nthreads", "1", "--no-nanny", "--no-dashboard",
                 "--name", name],
                env=child_env(), stdout=logs, stderr=subprocess.STDOUT, cwd=tmp_path)
            processes.append(process)
        with Client(address, timeout=WAIT_S) as client:
            client.wait_for_workers(2, timeout=WAIT_S)
            assert set(client.scheduler_info(n_workers=-1)["workers"]) == set(workers)
        yield address, workers
    finally:
        for process in reversed(processes):
            stop(process)
        logs.close()


def sweep(*argv: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "anynet", "sweep", *argv], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the sweep hung; stdout: {out[-2000:]} stderr: {err[-2000:]}")
    return process.returncode, out, err


def results(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {WAIT_S} s for {what}")
        time.sleep(0.02)


def check_models(out: Path, records: list[dict], synth: Path) -> None:
    """Each trained run's line agrees with its model file, scored again here."""
    mnist = load_mnist(synth, verify=False)
    for record in records:
        if record["status"] != "ok":
            assert record["model"] is None
            continue
        net, meta = load_model(out / record["model"])
        assert record["model"] == f"runs/{record['run_id']}.npz"
        assert meta["config"] == record["config"] and meta["sweep"]["run_id"] == record["run_id"]
        scored = evaluate(net, mnist.test_images, mnist.test_labels)
        assert scored.accuracy == record["test_accuracy"]
        assert scored.loss == pytest.approx(record["test_loss"], rel=1e-5)


# about a second a run: a worker is killed while it holds one
GRID = ["--hidden", "256", "--lr", "0.1,0.2", "--seeds", "0-3", "--epochs", "16",
        "--batch-size", "16", "--val-size", "200"]


def test_a_sweep_on_a_cluster_survives_a_killed_worker(tmp_path, cluster, synth):
    from distributed import Client

    address, workers = cluster
    out = tmp_path / "sweep1"
    argv = [*GRID, "--data-dir", str(synth), "--no-verify", "--scheduler", address,
            "--out", str(out)]
    client_process = sweep(*argv)
    with Client(address, timeout=WAIT_S) as observer:
        # kill a worker while it holds a run: after the first result, so runs are under way
        wait_for(lambda: results(out) or client_process.poll() is not None, "a first result")
        victim, held = None, []

        def a_worker_holds_a_run() -> bool:
            nonlocal victim, held
            processing = observer.processing()
            victim = next((w for w in workers if processing.get(w)), None)
            held = list(processing.get(victim, ())) if victim else []
            return bool(held) or client_process.poll() is not None

        wait_for(a_worker_holds_a_run, "a worker running a run")
        assert victim is not None, "the sweep ended before a worker could be killed"
        done_before_kill = {r["run_id"] for r in results(out)}
        workers[victim].kill()
        workers[victim].wait()
        rc, stdout, stderr = finish(client_process)

    assert rc == 0, stderr
    records = results(out)
    assert len(records) == 8 and {r["status"] for r in records} == {"ok"}
    assert len({r["run_id"] for r in records}) == 8
    assert {r["worker"] for r in records} <= set(workers)
    # the runs the killed worker held were rescheduled and finished on the other worker (one
    # may have ended in the instant between the look and the kill: not all need have moved)
    held_runs = [r for r in records if f"anynet-run-{r['run_id']}" in held]
    assert held_runs and any(r["worker"] != victim for r in held_runs)
    assert not {r["run_id"] for r in held_runs} & done_before_kill
    assert all(r["threads"] == 1 and r["epochs"] == 16 and r["anynet_version"] for r in records)
    assert all(r["data_genuine"] is False and r["val_accuracy"] > 0.5 for r in records)
    check_models(out, records, synth)
    assert "8 runs into" in stdout and "0 done before, 8 to train" in stdout
    table = stdout.split("s/run", 1)[1].splitlines()[1:3]
    assert [line.split()[:2] for line in table] in ([["0.2", "4/4"], ["0.1", "4/4"]],
                                                    [["0.1", "4/4"], ["0.2", "4/4"]])

    # the same command again trains nothing, and leaves the results as they were
    before = (out / "results.jsonl").read_bytes()
    rc, stdout, stderr = finish(sweep(*argv))
    assert rc == 0, stderr
    assert "8 done before, 0 to train" in stdout
    assert (out / "results.jsonl").read_bytes() == before

    # a worker without the data: one clear error per run in the results, exit 1, retried later
    missing = tmp_path / "no-mnist-here"
    rc, stdout, stderr = finish(sweep("--seeds", "0-1", "--epochs", "1", "--data-dir",
                                      str(missing), "--scheduler", address, "--out",
                                      str(tmp_path / "sweep2")))
    assert rc == 1
    failed = results(tmp_path / "sweep2")
    assert [r["status"] for r in failed] == ["error", "error"]
    assert all(str(missing) in r["message"] and r["message"].startswith("worker tcp://")
               for r in failed)
    assert "2 runs failed" in stderr.splitlines()[-1]


def test_local_cluster_ctrl_c_keeps_finished_runs_and_divergence_is_recorded(tmp_path, synth):
    out = tmp_path / "local"
    # lr 1e4 diverges at once; the others train
    argv = ["--hidden", "128", "--lr", "0.1,1e4", "--seeds", "0-4", "--epochs", "8",
            "--batch-size", "16", "--val-size", "200", "--data-dir", str(synth), "--no-verify",
            "--workers", "2", "--out", str(out)]
    first = sweep(*argv, start_new_session=True)
    wait_for(lambda: results(out) or first.poll() is not None, "a first result")
    os.killpg(first.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the client and its workers
    rc, stdout, stderr = finish(first)
    assert rc == 130, stderr
    assert "interrupted (SIGINT)" in stderr and "run the same command again" in stderr
    assert "Traceback" not in stderr  # the local workers ignore it; the client stops them
    kept = results(out)
    assert 1 <= len(kept) < 10
    check_models(out, kept, synth)
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        f"{r['run_id']}.npz" for r in kept if r["status"] == "ok")

    rc, stdout, stderr = finish(sweep(*argv))
    assert rc == 0, stderr
    assert f"{len(kept)} done before, {10 - len(kept)} to train" in stdout
    assert "local Dask cluster: 2 worker processes" in stdout
    records = results(out)
    assert len(records) == 10 and len({r["run_id"] for r in records}) == 10
    by_lr = {lr: [r for r in records if r["config"]["lr"] == lr] for lr in (0.1, 1e4)}
    assert {r["status"] for r in by_lr[0.1]} == {"ok"}
    assert {r["status"] for r in by_lr[1e4]} == {"diverged"}
    assert all("training diverged" in r["message"] and r["test_accuracy"] is None
               for r in by_lr[1e4])
    assert all(r["worker"].startswith("tcp://127.0.0.1:") for r in records)
    check_models(out, records, synth)
    lines = stdout.split("s/run", 1)[1].splitlines()[1:3]
    assert lines[0].split()[:2] == ["0.1", "5/5"] and lines[1].split()[:2] == ["10000", "0/5"]

    # diverged runs are done: the same command again trains nothing
    rc, stdout, _ = finish(sweep(*argv))
    assert rc == 0 and "10 done before, 0 to train" in stdout


# --- a cluster that cannot run anything, and sizes that cost memory: bounded, one line, exit 2 ---


def start_scheduler(folder: Path, port: int | None = None) -> tuple[str, subprocess.Popen]:
    """A `dask scheduler` on 127.0.0.1 (at `port`, else a free one); (address, process), once it
    answers."""
    port = port or free_port()
    log = open(folder / f"scheduler-{port}.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--no-dashboard"], env=child_env(), stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    log.close()  # the child has its own copy

    def answers() -> bool:
        assert process.poll() is None, "the scheduler exited"
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(answers, "the scheduler to listen")
    return f"tcp://127.0.0.1:{port}", process


def start_worker(address: str, folder: Path) -> subprocess.Popen:
    """A `dask worker` with a nanny (as users start them), one thread."""
    log = open(folder / "worker.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "dask", "worker", address, "--host", "127.0.0.1", "--nthreads",
         "1", "--no-dashboard"], env=child_env(), stdout=log, stderr=subprocess.STDOUT,
        cwd=folder, start_new_session=True)
    log.close()
    return process


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("anynet: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_workers_beyond_the_machine_are_refused_at_once(tmp_path):
    # before: accepted, and the client built nanny after nanny (1.7 GB at 120 s, nothing trained)
    out = tmp_path / "sweep"
    started = time.monotonic()
    result = run_cli_bounded(["sweep", "--workers", "100000", "--seeds", "0", "--out", str(out)],
                             timeout=60)
    assert_clean_ending(result)
    assert result.returncode == 2 and time.monotonic() - started < 30
    line = one_line(result.stderr)
    assert "--workers 100000: at most" in line and "local worker process" in line
    assert not out.exists()


def test_malformed_scheduler_addresses_are_one_line(tmp_path):
    # before: ValueError tracebacks from urllib
    for address, words in (("tcp://[::1", "Invalid IPv6 URL"),
                           ("tcp://127.0.0.1:99999", "Port out of range")):
        result = run_cli_bounded(["sweep", "--scheduler", address, "--seeds", "0", "--out",
                                  str(tmp_path / "sweep")], timeout=60)
        assert_clean_ending(result)
        assert result.returncode == 2 and words in one_line(result.stderr)
    assert not (tmp_path / "sweep").exists()


def test_a_scheduler_without_workers_is_waited_for_a_bounded_time(tmp_path):
    # before: the sweep waited silently forever
    address, scheduler = start_scheduler(tmp_path)
    try:
        started = time.monotonic()
        result = run_cli_bounded(["sweep", "--scheduler", address, "--wait-for-workers", "2",
                                  "--seeds", "0-1", "--out", str(tmp_path / "sweep")],
                                 timeout=90)
        took = time.monotonic() - started
    finally:
        stop(scheduler)
    assert_clean_ending(result)
    assert result.returncode == 2 and took < 45, took
    assert f"waiting up to 2 s for a Dask worker to join {address}" in result.stdout
    line = one_line(result.stderr)
    assert f"no Dask worker joined the scheduler at {address} within 2 s" in line
    assert "--wait-for-workers" in line


def test_a_killed_scheduler_ends_the_sweep_in_one_line_and_keeps_its_runs(tmp_path, synth):
    # before: 57 lines of distributed's tracebacks; and the re-run, against a restarted
    # scheduler, waited forever for the workers that had exited with the old one
    address, scheduler = start_scheduler(tmp_path)
    worker = start_worker(address, tmp_path)
    out = tmp_path / "sweep"
    argv = [*GRID, "--data-dir", str(synth), "--no-verify", "--scheduler", address,
            "--wait-for-workers", "3", "--quiet", "--out", str(out)]
    restarted = None
    try:
        client_process = sweep(*argv)
        wait_for(lambda: results(out) or client_process.poll() is not None, "a first result")
        scheduler.kill()
        scheduler.wait()
        killed_at = time.monotonic()
        rc, _, stderr = finish(client_process)
        took = time.monotonic() - killed_at
        assert rc == 2, stderr
        line = one_line(stderr)
        assert f"lost the Dask scheduler at {address}" in line
        assert "finished here and kept in" in line and "run the same command again" in line
        assert took < 45, took  # the client's reconnection attempts are bounded
        kept = results(out)
        assert 1 <= len(kept) < 8 and {r["status"] for r in kept} == {"ok"}
        check_models(out, kept, synth)
        before = (out / "results.jsonl").read_bytes()

        # a new scheduler at the same address, without workers: bounded, one line, exit 2
        worker.wait(timeout=WAIT_S)  # it exits with its scheduler (after its reconnection tries)
        _, restarted = start_scheduler(tmp_path, port=int(address.rsplit(":", 1)[1]))
        started = time.monotonic()
        rc, _, stderr = finish(sweep(*argv))
        assert rc == 2 and time.monotonic() - started < 45
        assert "no Dask worker joined the scheduler" in one_line(stderr)
        assert (out / "results.jsonl").read_bytes() == before
    finally:
        for process in (worker, scheduler, restarted):
            if process is not None:
                stop(process)


def test_a_huge_grid_holds_little_memory_in_the_client(tmp_path):
    # before: the client submitted every run at once: 1.78 GB for 100,000 runs before the first
    # result. Now a few per worker are on the cluster at a time. The runs fail at once here (no
    # data): what is measured is the client, not training.
    out = tmp_path / "sweep"
    report = tmp_path / "peak"
    process = subprocess.Popen(
        bounded_cli_argv(["sweep", "--workers", "1", "--seeds", "0-99999", "--epochs", "1",
                          "--data-dir", str(tmp_path / "no-data"), "--quiet", "--out", str(out)],
                         3072, report),
        env={**child_env(), "OPENBLAS_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    started = time.monotonic()
    try:
        wait_for(lambda: len(results(out)) >= 20 or process.poll() is not None,
                 "20 results of the 100,000-run grid")
        first_results = time.monotonic() - started
        if process.returncode is not None:  # poll() above reaped it: it ended by itself
            pytest.fail(f"the sweep ended (exit {process.returncode}) before 20 results: "
                        f"{process.stderr.read()[-2000:]}")
        os.killpg(process.pid, signal.SIGINT)
        deadline = time.monotonic() + WAIT_S
        try:  # a client that does not stop fails the test
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the sweep did not stop within {WAIT_S} s of SIGINT")
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    stderr = process.stderr.read()
    process.stderr.close()
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted (SIGINT)" in stderr and "Traceback" not in stderr
    peak_mb = read_peak_mb(report)  # the client's own (VmHWM as it exited)
    assert peak_mb < 600, peak_mb
    assert first_results < 90, first_results
    records = results(out)
    assert len(records) >= 20 and {r["status"] for r in records} == {"error"}


# --- a finished run's result, fetched (no cluster: the client and future are stand-ins) -------


class _Client:
    def __init__(self, workers: int):
        self.status, self.workers = "running", workers

    def scheduler_info(self, n_workers=0):
        return {"n_workers": self.workers}


class _Future:
    """A future whose result first times out `lost` times (its data went with a killed
    worker, so Dask computes it again), then holds `value` or raises it."""

    def __init__(self, lost: int, value):
        self.status, self.lost, self.value, self.waits = "finished", lost, value, 0

    def result(self, timeout=None):
        assert timeout is not None  # every wait is bounded, so a dead scheduler is noticed
        self.waits += 1
        if self.waits <= self.lost:
            self.status = "lost"
            raise TimeoutError(f"timed out after {timeout} s")
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


def test_a_result_lost_with_its_worker_is_waited_for_while_it_is_computed_again():
    from anynet.sweep_cluster import outcome_of

    done = {"status": "ok", "test_accuracy": 0.97}
    future = _Future(lost=3, value=done)
    assert outcome_of(future, _Client(workers=1)) == done and future.waits == 4
    # with no worker left to compute it, the wait ends, and the run is recorded as an error
    outcome = outcome_of(_Future(lost=1, value=done), _Client(workers=0))
    assert outcome["status"] == "error" and outcome["message"] == (
        "TimeoutError: timed out after 30 s")


def test_a_run_dask_gave_up_on_is_an_error_saying_why():
    from anynet.sweep_cluster import outcome_of

    KilledWorker = type("KilledWorker", (Exception,), {})
    outcome = outcome_of(_Future(lost=0, value=KilledWorker("x")), _Client(workers=2))
    assert outcome == {"status": "error", "message": "the workers running it died again and "
                       "again (killed? out of memory?); Dask gave up on it", "worker": None,
                       "seconds": None, "threads": None}
    outcome = outcome_of(_Future(lost=0, value=ImportError("no module named anynet")),
                         _Client(workers=2))
    assert outcome["message"] == "ImportError: no module named anynet"
