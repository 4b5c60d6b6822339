"""Timing on a shared machine: how busy the other processes kept the cores, and re-timing.

One way of reading the machine's load, `anynet.backend.threads.machine_busy_s` (/proc/stat: the
busy CPU seconds since boot, steal included): the cores other processes took during a span are
the machine's busy time over that span minus our own CPU time, per second of wall time.

    with LoadMeter(own_cpu_s) as load:       # own_cpu_s: this process's, or its children's
        ...
    load.others_cores                         # None where there is no /proc/stat

An epoch during which others took >= NOISY_CORES cores is disturbed. `time_epochs` times the
epochs a run asks for; `retime` then adds up to `extra` epochs (about `budget_s` seconds of them)
while fewer than that many are undisturbed, and `summary` takes the median over the undisturbed
ones (over all, flagged, when too few are).
"""

from __future__ import annotations

import resource
import statistics
import time

from anynet.backend.threads import machine_busy_s

NOISY_CORES = 0.25   # others took this many cores during an epoch: it is disturbed
MIN_JUDGED_S = 0.2   # /proc/stat counts 10 ms ticks: shorter spans are not judged


def process_cpu_s() -> float:
    return time.process_time()


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class LoadMeter:
    """The cores other processes kept busy during a `with` block (`others_cores`; None where
    it cannot be told: no /proc/stat, or a span too short to judge)."""

    def __init__(self, own_cpu_s=process_cpu_s):
        self.own_cpu_s = own_cpu_s
        self.others_cores = None

    def __enter__(self):
        self.start = time.perf_counter(), machine_busy_s(), self.own_cpu_s()
        return self

    def __exit__(self, *exc):
        t0, busy0, own0 = self.start
        self.wall = time.perf_counter() - t0
        busy1 = machine_busy_s()
        if busy0 is not None and busy1 is not None and self.wall >= MIN_JUDGED_S:
            own = self.own_cpu_s() - own0
            self.others_cores = max(0.0, busy1 - busy0 - own) / self.wall


def wait_until_quiet(limit_s: float) -> float:
    """Sleep until others use under NOISY_CORES cores (1 s samples), at most `limit_s` seconds;
    the seconds waited."""
    waited = 0.0
    while waited < limit_s:
        with LoadMeter() as load:
            time.sleep(1.0)
        waited += 1.0
        if load.others_cores is None or load.others_cores < NOISY_CORES:
            break
    return waited


def quiet(others_cores: float | None) -> bool:
    return others_cores is None or others_cores < NOISY_CORES


def time_epochs(epoch, n: int, scale: float = 1.0) -> list[tuple[float, float | None]]:
    """Run `epoch()` n times: (seconds x scale, others' cores) for each."""
    out = []
    for _ in range(n):
        with LoadMeter() as load:
            epoch()
        out.append((load.wall * scale, load.others_cores))
    return out


def retime(epochs: list, epoch, want: int, extra: int, budget_s: float,
           scale: float = 1.0) -> int:
    """Append timed epochs to `epochs` while fewer than `want` are undisturbed, at most `extra`
    of them and about `budget_s` seconds; how many were added."""
    added, spent = 0, 0.0
    while sum(quiet(o) for _, o in epochs) < want and added < extra and spent < budget_s:
        epochs += time_epochs(epoch, 1, scale)
        added, spent = added + 1, spent + epochs[-1][0]
    return added


def summary(epochs: list, want: int) -> dict:
    """Median, min and max over the undisturbed epochs when at least min(3, want) are, else
    over all of them (and `median_of` says so)."""
    quiet_s = [s for s, o in epochs if quiet(o)]
    basis = quiet_s if len(quiet_s) >= min(3, want) else [s for s, _ in epochs]
    return {"median_s": statistics.median(basis), "min_s": min(basis), "max_s": max(basis),
            "median_of": "quiet epochs" if basis is quiet_s else "all epochs (too few quiet)",
            "quiet_epochs": len(quiet_s), "epoch_s": [s for s, _ in epochs],
            "epoch_others_cores": [o for _, o in epochs]}

