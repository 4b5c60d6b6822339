"""Sweeps on Dask: the task a worker runs, and the cluster the client talks to.

`train_run` is what a Dask worker executes for one run of a sweep: it loads MNIST from the
worker's own disk (its --data-dir, ANYNET_DATA_DIR or cache, verified by SHA-256 as anynet
always does; kept in memory for the worker's next runs), trains on one BLAS thread, scores the
model on the validation and test sets and returns the parameters as NumPy arrays with the
metrics. The client writes every file (anynet/commands/sweep.py), so OUT need not be on a
file system the workers share; a model of 784-800-10 is 2.5 MB to send back, far less than the
55 MB of MNIST the workers read themselves.

A run that diverges returns status "diverged"; a worker without MNIST (or any other problem a
user fixes) returns status "error" and the one-line message: both are results, not exceptions,
so Dask does not retry them. A worker that dies mid-run (killed, out of memory) is Dask's to
handle: the scheduler gives its runs to another worker, up to `distributed.scheduler.
allowed-failures` times.

`start_cluster` opens a LocalCluster of worker processes bound to 127.0.0.1 (no dashboard), or
connects to a running scheduler, within a bounded time. This module imports Dask only inside its
functions; a worker imports it anyway.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from contextlib import ExitStack, contextmanager
from urllib.parse import urlsplit

from anynet.errors import DivergenceError, UserError

CONNECT_TIMEOUT_S = 20.0  # a scheduler on a busy machine can take seconds to answer

# MNIST as a worker process last loaded it: (data_dir, verify) -> MNIST without validation split.
_LOADED: dict = {}


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):  # not inside a Dask worker: a direct call
        return f"{socket.gethostname()}:{os.getpid()}"


def _load(data_dir: str | None, verify: bool):
    from anynet.data import load_mnist

    key = (data_dir, verify)
    if key not in _LOADED:
        _LOADED.clear()  # one dataset at a time: a worker's memory is for training
        # no download: N workers fetching at once from a mirror is rude, and a cluster node is
        # often offline; the error says how to put MNIST there instead
        _LOADED[key] = load_mnist(data_dir, verify=verify, download=False, progress=False)
    return _LOADED[key]


def train_run(run: dict, data_dir: str | None = None, verify: bool = True) -> dict:
    """Train one run (`anynet.sweep.Run.to_dict()`) here; return its outcome as a dict.

    Always returns: {"status": "ok" | "diverged" | "error", "message", "worker", "seconds" (the
    task's time here), "threads", and for "ok": "params" (host NumPy arrays W1, b1, W2, b2),
    "history", "test_loss", "test_accuracy", "val_loss", "val_accuracy", "train_loss", "epochs",
    "train_seconds" (the epochs' time), "data"}.
    """
    import numpy as np

    from anynet.backend.threads import set_threads
    from anynet.config import TrainConfig
    from anynet.data import split_validation
    from anynet.training import Trainer, evaluate

    outcome = {"worker": _worker_name(), "threads": run["threads"], "seconds": None}
    started = time.perf_counter()
    try:
        config = TrainConfig.from_dict(run["config"])
        outcome["threads"] = set_threads(config.backend, run["threads"])
        mnist = _load(data_dir, verify)
        train_images, train_labels = mnist.train_images, mnist.train_labels
        val_images = val_labels = None
        if config.val_size:
            train_images, train_labels, val_images, val_labels = split_validation(
                train_images, train_labels, config.val_size, config.seed)
        if run["train_size"] is not None:
            train_images = train_images[: run["train_size"]]
            train_labels = train_labels[: run["train_size"]]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            trainer = Trainer(config, train_images, train_labels, val_images, val_labels)
            result = trainer.fit()
            params = result.net.host_params()
            if not all(np.all(np.isfinite(v)) for v in params.values()):
                raise DivergenceError(f"the weights overflowed to inf/nan with learning rate "
                                      f"{config.lr:g} although every loss was finite")
            test_loss, test_accuracy = evaluate(result.net, mnist.test_images, mnist.test_labels)
    except DivergenceError as e:
        return {**outcome, "status": "diverged", "message": str(e),
                "seconds": time.perf_counter() - started}
    except (UserError, ValueError) as e:
        where = f"worker {outcome['worker']}"
        return {**outcome, "status": "error", "message": f"{where}: {e}",
                "seconds": time.perf_counter() - started}
    history = result.state.history
    return {
        **outcome, "status": "ok", "message": "", "params": params, "history": history,
        "test_loss": test_loss, "test_accuracy": test_accuracy,
        "val_loss": history[-1]["val_loss"], "val_accuracy": history[-1]["val_accuracy"],
        "train_loss": history[-1]["train_loss"], "epochs": len(history),
        "train_seconds": sum(h["seconds"] for h in history),
        "seconds": time.perf_counter() - started,  # the whole task: data, training, scoring
        "data": {"source": mnist.source, "sha256": mnist.sha256, "genuine": mnist.all_genuine,
                 "train_examples": int(train_images.shape[0]),
                 "val_examples": 0 if val_images is None else int(val_images.shape[0])},
    }


def check_scheduler_address(address: str) -> None:
    """Refuse, at once, a scheduler address that is malformed or where nothing listens."""
    parts = urlsplit(address)
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or parts.port is None:
        raise UserError(f"--scheduler {address}: expected tcp://HOST:PORT (what 'dask scheduler' "
                        "prints as its address)")
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise UserError(f"no Dask scheduler answers at {address} ({e.strerror or e}); start one "
                        "with 'dask scheduler' and workers with 'dask worker ADDRESS', or leave "
                        "out --scheduler to run on this machine") from None


@contextmanager
def _workers_ignore_ctrl_c():
    """Start processes that ignore SIGINT: a Ctrl-C on a terminal reaches the whole process
    group, and the local workers would die with a traceback each. The client stops them when it
    ends. (An ignored signal stays ignored in a child, and Python keeps it so.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def start_cluster(stack: ExitStack, scheduler: str | None, workers: int, say) -> object:
    """A dask.distributed Client, closed (with its LocalCluster) when `stack` closes.

    `scheduler`: the address of a running cluster, else a LocalCluster of `workers` processes
    with one thread each, scheduler and workers on 127.0.0.1 and no dashboard.
    """
    import logging

    from distributed import Client, LocalCluster

    # Dask logs a worker's death and the client's shutdown as warnings and tracebacks; the sweep
    # reports what matters itself (a rescheduled run still finishes).
    for name in ("distributed", "tornado"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if scheduler is not None:
        check_scheduler_address(scheduler)
        try:
            client = stack.enter_context(Client(scheduler, timeout=CONNECT_TIMEOUT_S))
        except Exception as e:  # whatever answers there (garbage, an HTTP server) is no scheduler
            import distributed

            detail = " ".join(str(e).split())[:120]
            raise UserError(f"no Dask scheduler answered at {scheduler} within "
                            f"{CONNECT_TIMEOUT_S:g} s ({type(e).__name__}: {detail}); is it a "
                            f"Dask scheduler, of this Dask version ({distributed.__version__})?") \
                from None
        say(f"on the Dask cluster at {scheduler}: "
            f"{len(client.scheduler_info(n_workers=-1)['workers'])} workers")
        return client
    with _workers_ignore_ctrl_c():
        cluster = stack.enter_context(LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, silence_logs=logging.CRITICAL,
        ))
    client = stack.enter_context(Client(cluster))
    say(f"on a local Dask cluster: {workers} worker process{'es' if workers != 1 else ''}, "
        "one thread each")
    return client
