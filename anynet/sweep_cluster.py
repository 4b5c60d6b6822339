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

`RunQueue` keeps a few of a sweep's runs on the cluster at a time and hands back each outcome;
`InProcessQueue` trains them here instead, one after another, without Dask (--workers 0).
`start_cluster` opens a LocalCluster of worker processes bound to 127.0.0.1 (no dashboard), at
most `local_worker_limit()` of them, or connects to a running scheduler and waits a bounded time
for a worker there. `cluster_problem` says when a cluster can no longer run anything (the
scheduler gone, or no worker for that long). This module imports Dask only inside its
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
WAIT_FOR_WORKERS_S = 60.0  # default of --wait-for-workers: a `dask worker` starts in seconds
# What one local worker process needs: a worker that trained a 784-800-10 network on all of
# MNIST peaked at 357 MB (Python, NumPy and distributed 61 MB, MNIST as floats, the batches).
WORKER_MEMORY_MB = 400

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
    "record" (the model record of `anynet.fit.train_model`), its metrics ("test_loss",
    "test_accuracy", "val_loss", "val_accuracy", "train_loss", "epochs", "train_seconds": the
    epochs' time), "history" and "data"}.
    """
    from anynet.backend.threads import set_threads
    from anynet.config import TrainConfig
    from anynet.data.mnist import K
    from anynet.fit import describe_data, train_model

    outcome = {"worker": _worker_name(), "threads": run["threads"], "seconds": None}
    started = time.perf_counter()
    try:
        config = TrainConfig.from_dict(run["config"])
        outcome["threads"] = set_threads(config.backend, run["threads"])
        mnist = _load(data_dir, verify)
        data = _run_data(mnist, config, run["train_size"])
        trained = train_model(config, *data, test=(mnist.test_images, mnist.test_labels),
                              data=describe_data(mnist), n_classes=K)
    except DivergenceError as e:
        return {**outcome, "status": "diverged", "message": str(e),
                "seconds": time.perf_counter() - started}
    except (UserError, ValueError) as e:
        where = f"worker {outcome['worker']}"
        return {**outcome, "status": "error", "message": f"{where}: {e}",
                "seconds": time.perf_counter() - started}
    record = trained.record
    return {
        **outcome, "status": "ok", "message": "", "params": trained.net.host_params(),
        "record": record, **record["metrics"], "history": record["history"],
        "data": record["data"],
        "seconds": time.perf_counter() - started,  # the whole task: data, training, scoring
    }


def _run_data(mnist, config, train_size: int | None) -> tuple:
    """(train images, train labels, val images, val labels) of a run: its validation split
    (None without one), then its first `train_size` training examples."""
    from anynet.data import split_validation

    train_images, train_labels = mnist.train_images, mnist.train_labels
    val_images = val_labels = None
    if config.val_size:
        train_images, train_labels, val_images, val_labels = split_validation(
            train_images, train_labels, config.val_size, config.seed)
    if train_size is not None:
        train_images, train_labels = train_images[:train_size], train_labels[:train_size]
    return train_images, train_labels, val_images, val_labels


def available_memory_mb() -> int | None:
    """MemAvailable of /proc/meminfo in MB (the memory new processes can have without swapping);
    None where there is no such file."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS says; else all)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def local_worker_limit() -> tuple[int, str]:
    """The most worker processes a LocalCluster here may have, and why: one per core (a run
    uses one thread, so more workers only share the cores, each holding its own MNIST), and
    no more than WORKER_MEMORY_MB each of the memory available now. At least 1."""
    cores = usable_cores()
    limit, why = cores, f"one per core: {cores} core{'s' if cores != 1 else ''} here"
    memory = available_memory_mb()
    if memory is not None and memory // WORKER_MEMORY_MB < limit:
        limit = max(1, memory // WORKER_MEMORY_MB)
        why = (f"each needs about {WORKER_MEMORY_MB} MB and {memory:,} MB are available "
               f"({cores} cores)")
    return limit, why


def local_workers(requested: int | None) -> int:
    """The size of a local cluster: `requested` (--workers), or `local_worker_limit()` when
    None; UserError when more are requested than that limit allows."""
    limit, why = local_worker_limit()
    if requested is not None and requested > limit:
        raise UserError(f"--workers {requested}: at most {limit} local worker process"
                        f"{'es' if limit != 1 else ''} ({why}); give --workers {limit} or "
                        "fewer, or run on a cluster with --scheduler")
    return requested or limit


def check_scheduler_address(address: str) -> None:
    """Refuse, at once, a scheduler address that is malformed or where nothing listens."""
    expected = ("expected tcp://HOST:PORT with a port of 1-65535 (what 'dask scheduler' prints "
                "as its address)")
    try:
        parts = urlsplit(address)
        host, port = parts.hostname, parts.port  # ValueError: "tcp://[::1", port 99999
    except ValueError as e:
        raise UserError(f"--scheduler {address}: {e}; {expected}") from None
    if parts.scheme not in ("tcp", "tls") or not host or not port:
        raise UserError(f"--scheduler {address}: {expected}")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except (OSError, ValueError) as e:  # ValueError: UnicodeError of a host name IDNA refuses
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e)
        raise UserError(f"no Dask scheduler answers at {address} ({detail}); start one "
                        "with 'dask scheduler' and workers with 'dask worker ADDRESS', or leave "
                        "out --scheduler to run on this machine") from None


def worker_count(client) -> int | None:
    """How many workers the client's scheduler has now; None if it cannot be asked."""
    if client.status != "running":
        return None
    try:
        count = client.scheduler_info(n_workers=0).get("n_workers")
        return None if count is None else int(count)  # None: a Dask that does not say
    except Exception:  # the scheduler went away between the look and the question
        return None


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


def start_cluster(stack: ExitStack, scheduler: str | None, workers: int, say,
                  wait_s: float = WAIT_FOR_WORKERS_S) -> object:
    """A dask.distributed Client, closed (with its LocalCluster) when `stack` closes.

    `scheduler`: the address of a running cluster, where the sweep waits up to `wait_s` seconds
    for a first worker (saying so) and raises UserError if none comes; else a LocalCluster of
    `workers` processes with one thread each, scheduler and workers on 127.0.0.1 and no
    dashboard.
    """
    import logging

    from distributed import Client, LocalCluster

    quiet_dask()
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
        count = worker_count(client) or 0
        if count == 0:
            say(f"waiting up to {wait_s:g} s for a Dask worker to join {scheduler} "
                f"(start one with 'dask worker {scheduler}')", flush=True)
            try:
                client.wait_for_workers(1, timeout=wait_s)
            except Exception:  # dask's TimeoutError, or the scheduler gone while waiting
                raise UserError(no_workers_message(scheduler, wait_s)) from None
            count = worker_count(client) or 1
        say(f"on the Dask cluster at {scheduler}: {count} worker{'s' if count != 1 else ''}")
        return client
    try:
        with _workers_ignore_ctrl_c():
            cluster = stack.enter_context(LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, silence_logs=logging.CRITICAL,
            ))
        client = stack.enter_context(Client(cluster))
    except Exception as e:  # workers that cannot start (no memory, no processes left)
        detail = " ".join(str(e).split())[:160]
        raise UserError(f"could not start a local Dask cluster of {workers} worker process"
                        f"{'es' if workers != 1 else ''} ({type(e).__name__}: {detail}); try "
                        "fewer --workers") from None
    say(f"on a local Dask cluster: {workers} worker process{'es' if workers != 1 else ''}, "
        "one thread each")
    return client


def no_workers_message(scheduler: str, wait_s: float, started: bool = False) -> str:
    """Why a sweep gave up waiting for workers: none joined at the start, or (`started`) all
    left mid-sweep."""
    what = (f"the Dask cluster at {scheduler} has had no worker for {wait_s:g} s" if started
            else f"no Dask worker joined the scheduler at {scheduler} within {wait_s:g} s")
    return (f"{what}; start workers with 'dask worker {scheduler}' (a restarted scheduler has "
            "none: workers exit with theirs), or wait longer with --wait-for-workers SECONDS")


def quiet_dask() -> None:
    """Silence distributed's logging: it reports a worker's death, a lost scheduler and the
    client's shutdown as warnings and tracebacks (dozens of lines); the sweep reports what
    matters itself, in one line (a rescheduled run still finishes)."""
    import logging

    roots = ("distributed", "tornado", "asyncio", "bokeh")
    # a level on "distributed" is not enough: dask's logging config gives some child loggers
    # (distributed.client, tornado.application) handlers and levels of their own
    names = [name for name in list(logging.root.manager.loggerDict)
             if name in roots or name.startswith(tuple(root + "." for root in roots))]
    for name in {*roots, *names}:
        logger = logging.getLogger(name)
        logger.handlers = [logging.NullHandler()]
        logger.setLevel(logging.CRITICAL + 1)
        logger.propagate = False


def cluster_problem(client, scheduler: str | None, since: dict, wait_s: float) -> str | None:
    """Why the cluster cannot finish the sweep, or None while it can: the scheduler lost for
    more than CONNECT_TIMEOUT_S, or no worker at all for more than `wait_s` seconds (every
    worker killed, or gone with a killed scheduler). `since` is the caller's memory between
    calls: when each condition was first seen."""
    now = time.monotonic()
    if client.status not in ("running", "connecting", "newly-created"):
        return "lost"
    if client.status == "connecting":  # the scheduler went away; Dask tries to reconnect
        if now - since.setdefault("lost", now) > CONNECT_TIMEOUT_S:
            return "lost"
        return None
    since.pop("lost", None)
    count = worker_count(client)
    if count == 0:
        if now - since.setdefault("no_workers", now) > wait_s:
            return "no workers"
    else:
        since.pop("no_workers", None)
    return None


IN_FLIGHT_PER_WORKER = 2  # one running and one waiting on each worker: none idles between runs
MIN_IN_FLIGHT = 2


class RunQueue:
    """A sweep's runs on a Dask cluster, a few at a time: IN_FLIGHT_PER_WORKER per worker (at
    least MIN_IN_FLIGHT), more as each finishes, so the client's memory and the scheduler's
    stay the same for 10 runs or 100,000. `workers`: the local cluster's size (None: ask the
    scheduler). Each run is `train_run` on a worker, with `data_dir` and `verify`."""

    def __init__(self, client, runs: list, data_dir: str | None, verify: bool,
                 workers: int | None):
        from distributed import as_completed

        self.client, self.total = client, len(runs)
        self._pending = iter(runs)
        self._task = (data_dir, verify)
        self._workers = workers
        self._by_key: dict = {}  # the runs on the cluster now: key -> (run, future)
        self._queue = as_completed()

    @property
    def busy(self) -> bool:
        """Whether some run is still on the cluster."""
        return bool(self._by_key)

    def has_ready(self) -> bool:
        return self._queue.has_ready()

    def submit_more(self) -> None:
        workers = self._workers if self._workers is not None else worker_count(self.client)
        wanted = max(MIN_IN_FLIGHT, IN_FLIGHT_PER_WORKER * (workers or 0))
        while len(self._by_key) < wanted:
            run = next(self._pending, None)
            if run is None:
                return
            future = self.client.submit(train_run, run.to_dict(), *self._task,
                                        key=f"anynet-run-{run.id}")
            self._by_key[future.key] = (run, future)
            self._queue.add(future)

    def finished(self):
        """Yield (run, outcome) for each run finished now (`outcome_of`); an outcome of None
        (the scheduler lost) leaves the run on the queue, to be cancelled."""
        for future in self._queue.next_batch(block=False):
            if future.key not in self._by_key:
                continue
            outcome = outcome_of(future, self.client)
            if outcome is None:
                yield self._by_key[future.key][0], None
                continue
            run, _ = self._by_key.pop(future.key)
            future.release()  # the parameters are ours now: the cluster may forget them
            yield run, outcome

    def cancel(self) -> None:
        """Cancel the runs still on the cluster, if the cluster is still there to hear it."""
        if self.client.status == "running":
            try:
                self.client.cancel([f for _, f in self._by_key.values()])
            except Exception:  # the scheduler went away meanwhile: nothing left to cancel
                pass


class InProcessQueue:
    """A sweep's runs trained in this process, one after another (`anynet sweep --workers 0`):
    no Dask. RunQueue's interface, so the client's loop is the same; each `finished()` trains
    the next run here (`train_run`, MNIST loaded once) and yields its outcome."""

    client = None

    def __init__(self, runs: list, data_dir: str | None, verify: bool):
        from collections import deque

        self.total = len(runs)
        self._pending = deque(runs)
        self._task = (data_dir, verify)

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def has_ready(self) -> bool:
        return self.busy

    def submit_more(self) -> None:
        pass

    def finished(self):
        run = self._pending.popleft()
        yield run, train_run(run.to_dict(), *self._task)

    def cancel(self) -> None:
        self._pending.clear()


RESULT_WAIT_S = 30  # one wait for a finished run's result (repeated while it is computed again)


def outcome_of(future, client) -> dict | None:
    """What a finished future holds: train_run's dict, or an error for a run Dask gave up on;
    None for a run cancelled because the scheduler was lost (not a result: it is not recorded,
    and the sweep ends saying the scheduler is gone). A result lost with its worker (killed
    after the run ended, before its result was fetched) is computed again by Dask on another
    worker: that is waited for, as long as a worker is there to do it, however busy."""
    if future.status == "cancelled" and client.status != "running":
        return None
    while True:
        try:
            return future.result(timeout=RESULT_WAIT_S)
        except Exception as e:  # the task failed: a worker killed too often, anynet missing
            if client.status != "running":
                return None
            if (type(e).__name__ == "TimeoutError" and future.status in ("lost", "pending")
                    and worker_count(client)):
                continue  # its result went with a killed worker: it is being computed again
            return _error_outcome(e)


def _error_outcome(e: Exception) -> dict:
    """The outcome recorded for a run whose task failed with `e`."""
    name = type(e).__name__
    if name == "KilledWorker":
        message = ("the workers running it died again and again (killed? out of memory?); "
                   "Dask gave up on it")
    else:
        message = f"{name}: {' '.join(str(e).split())[:300]}"
    return {"status": "error", "message": message, "worker": None, "seconds": None,
            "threads": None}

