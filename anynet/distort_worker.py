"""Distortions made ahead, in a second process: while the training step works through one chunk
of batches on NumPy, a worker process gathers and distorts the next (`DistortionWorker`).

Why a process: distorting MNIST's 60,000 images with affine maps takes NumPy about 0.65 s an
epoch on this project's 2-core machine, next to 0.7-1.4 s of training, one after the other. A
thread cannot do it alongside: both halves are short NumPy calls that take turns at the GIL
(measured: 1.33-1.37 s an epoch against 1.40-1.49 in one thread). A process has its own. The
training then runs its BLAS on one thread fewer (`worker_threads`), so that the two never wait
for each other's cores.

The worker computes exactly what the step would: the chunk's rows gathered and scaled by
NumPy's `UfuncOps.load_rows`, then the same `anynet.augment.Distorter` with the same seed and
key (epoch, chunk). So a run trains on the same images, bit for bit, with or without it; if
the worker stops, the step distorts in its own process from then on and nothing changes but
the time. Only for NumPy (on other libraries the step's own Distorter would round
differently) and for uint8 training images.

How they talk, without pickle: the parent puts the training images, the chunk's row indices
and the result in `multiprocessing.shared_memory` segments; the worker, `python -m
anynet.distort_worker`, reads one JSON line (the segments' names, sizes, the distortion, seed,
dtype), then one line per chunk, "epoch chunk n", for which the indices are already in their
segment; it answers "done epoch chunk" when the result segment holds the n distorted rows,
or "error: ..." and ends.
"""

from __future__ import annotations

import errno
import json
import os
import select
import subprocess
import sys
import tempfile
import weakref
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

from anynet.augment import Distortion
from anynet.backend import is_host_numpy

# How long the step waits for one chunk before it gives up on the worker (a chunk takes
# 10-20 ms; a machine loaded enough to take a minute has other troubles).
REPLY_TIMEOUT_S = 60.0


SETTINGS = ("auto", "on", "off")


def plan(setting: str, backend: str, kind: str, threads: int | None,
         free: int) -> tuple[bool, int | None]:
    """Whether a run distorts in a worker, and the BLAS threads it trains with then.

    setting: "on", "off" or "auto" (on where it pays); backend: the library's name (only NumPy
    has the worker, `is_host_numpy`); kind: the distortion kind ("none": nothing); threads: the
    count asked for (None: the default); free: the cores no other process keeps busy. Returns
    (worker, threads): with a worker and no count asked for, one thread fewer than `free`
    (at least 1), so that training and the worker never wait for each other's cores; "auto"
    takes the worker only where a core is left for it (free > threads)."""
    if setting not in SETTINGS:
        raise ValueError(f"--distort-worker must be one of {', '.join(SETTINGS)}, not "
                         f"{setting!r}")
    if setting == "off" or not is_host_numpy(backend) or kind == "none":
        return False, threads
    if threads is None:
        if setting == "on" or free >= 2:
            return True, max(1, free - 1)
        return False, threads
    return setting == "on" or free > threads, threads


def start_for(step: Any, images: Any, distortion: Distortion, seed: int,
              dtype: str) -> DistortionWorker | None:
    """A DistortionWorker making the chunks of `step` (which trains on `images` with
    `distortion`, `seed`, `dtype`), attached to it, where one can serve: NumPy's fused step on
    uint8 images, distortions drawn. Else None, or where it cannot start (no shared memory, no
    process) one line on stderr and None: the step distorts, as it always could."""
    from anynet.fused import FusedStep

    if not (distortion.kind != "none" and type(step) is FusedStep
            and is_host_numpy(step.net.backend.name) and isinstance(images, np.ndarray)
            and images.dtype == np.uint8):
        return None
    try:
        worker = DistortionWorker(images, distortion, seed, dtype,
                                  step.batches_per_chunk * step.B)
    except OSError as e:
        print(f"anynet: no distortion worker ({e}); distorting in this process",
              file=sys.stderr)
        return None
    step.distort_ahead(worker)
    return worker


class DistortionWorker:
    """A worker process that distorts chunks of `images` (n, D) uint8 for the training step.

    `request(epoch, chunk, idx)` hands it the rows `idx` of chunk `chunk`; `result(epoch,
    chunk)` waits for them and returns the distorted rows, a view into shared memory valid
    until the next request (None when that chunk was not asked for, or the worker failed:
    then the caller distorts the chunk itself, and `alive` is False from then on). `close()`
    ends the process and frees the memory (also done when the object is collected).
    """

    def __init__(self, images: np.ndarray, distortion: Distortion, seed: int, dtype: str,
                 rows: int) -> None:
        if images.dtype != np.uint8 or images.ndim != 2:
            raise ValueError(f"the distortion worker takes (n, D) uint8 images, not "
                             f"{images.dtype} {images.shape}")
        n, D = images.shape
        self.rows, self.dtype = rows, np.dtype(dtype)
        self.pending: tuple[int, int, int] | None = None
        self.failure: str | None = None
        self._segments: list[shared_memory.SharedMemory] = []
        self._procs: list[subprocess.Popen] = []
        # its errors go to a file, not a pipe: a pipe nobody reads fills, and the worker stops
        self._stderr = tempfile.TemporaryFile()
        self._finalizer = weakref.finalize(self, _shut_down, self._segments, self._procs,
                                           self._stderr)
        try:
            self.images = self._segment(images.shape, np.uint8)
            self.images[...] = images
            self.idx = self._segment((rows,), np.int64)
            self.out = self._segment((rows, D), self.dtype)
            header = {"images": self._segments[0].name, "idx": self._segments[1].name,
                      "out": self._segments[2].name, "n": n, "D": D, "rows": rows,
                      "dtype": self.dtype.name, "seed": int(seed),
                      "distortion": distortion.to_dict()}
            self._procs.append(subprocess.Popen(
                [sys.executable, "-m", "anynet.distort_worker"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=self._stderr, env=_worker_env(), text=True,
                # its own session: a Ctrl-C at the terminal reaches the training, which stops
                # and checkpoints (and ends the worker), not the worker in the middle of a chunk
                start_new_session=os.name != "nt"))
        except BaseException:
            self.close()
            raise
        self._proc = self._procs[0]
        self._send(json.dumps(header))

    def _segment(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A new shared segment for an array of `shape` and `dtype`, its room reserved."""
        size = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        seg = shared_memory.SharedMemory(create=True, size=size)
        self._segments.append(seg)
        # A segment is a file in a tmpfs (/dev/shm on Linux), its pages given on first write:
        # in a full one that write is a SIGBUS, the end of training without a word. Reserving
        # them now makes it an OSError here, and the run goes on without a worker.
        fd = getattr(seg, "_fd", -1)
        if hasattr(os, "posix_fallocate") and fd >= 0:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # (a tmpfs that cannot)
                    raise OSError(e.errno, f"no room for {size:,} bytes of shared memory: "
                                  f"{e.strerror}") from None
        return np.ndarray(shape, dtype=dtype, buffer=seg.buf)

    @property
    def alive(self) -> bool:
        return self.failure is None

    def _send(self, line: str) -> None:
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
        except (OSError, ValueError):  # its input is closed: it ended, or is ending
            self._fail(self._exit_text())

    def request(self, epoch: int, chunk: int, idx: np.ndarray) -> None:
        """Ask for chunk `chunk` of epoch `epoch`: the rows `idx` (int64, at most `rows`)."""
        n = len(idx)
        if n > self.rows:
            raise ValueError(f"a chunk of {n} rows, more than the worker's {self.rows}")
        if self.pending is not None and self.alive:  # one at a time: the one before, unread
            self._wait()
        if not self.alive:
            return
        self.idx[:n] = idx
        self.pending = (epoch, chunk, n)
        self._send(f"{epoch} {chunk} {n}")

    def result(self, epoch: int, chunk: int) -> np.ndarray | None:
        """The distorted rows of chunk `chunk` of epoch `epoch`, or None (see the class)."""
        if self.pending is None or not self.alive:
            return None
        asked = self.pending
        self._wait()
        if not self.alive or asked[:2] != (epoch, chunk):
            return None
        return self.out[:asked[2]]

    def _wait(self) -> None:
        """Read the worker's answer to the pending request."""
        assert self.pending is not None
        epoch, chunk, _ = self.pending
        self.pending = None
        stdout = self._proc.stdout
        assert stdout is not None
        # (Windows' select takes sockets only: there the wait has no time limit)
        ready = [stdout] if os.name == "nt" else select.select([stdout], [], [],
                                                               REPLY_TIMEOUT_S)[0]
        if not ready:
            self._proc.kill()  # stuck (stopped, swapped out): it is not waited for again
            self._fail(f"no answer in {REPLY_TIMEOUT_S:g} s")
            return
        line = stdout.readline().strip()
        if line != f"done {epoch} {chunk}":
            self._fail(line or self._exit_text())

    def _exit_text(self) -> str:
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "it stopped answering"
        try:
            self._stderr.seek(max(0, self._stderr.seek(0, os.SEEK_END) - 2000))
            err = self._stderr.read().decode(errors="replace").strip().splitlines()
        except (OSError, ValueError):
            err = []
        return f"it ended with exit code {code}" + (f": {err[-1]}" if err else "")

    def _fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = why
            print(f"anynet: the distortion worker stopped ({why}); distorting in this process "
                  "from here on (the same images, more slowly)", file=sys.stderr)
        self.pending = None
        self.close()

    def close(self) -> None:
        """End the worker and free the shared memory; safe to call twice."""
        self._finalizer()


def _worker_env() -> dict[str, str]:
    """The worker's environment: this one, one BLAS/OpenMP thread (the parent trains on the
    other cores), and anynet importable from where this process imported it."""
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _shut_down(segments: list, procs: list, stderr: Any) -> None:
    """End the worker (closing its input ends it; kill it if it does not go), unlink the
    segments and drop the worker's error file. A finalizer: it must not raise."""
    for proc in procs:
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for seg in segments:
        try:
            seg.unlink()  # the name goes now; the memory once nothing maps it any more
        except OSError:
            pass
        try:
            seg.close()
        except (OSError, BufferError):  # arrays still viewing it: they keep it mapped
            pass
    try:
        stderr.close()
    except OSError:
        pass


# --- the worker process ------------------------------------------------------------------------

def _attach(name: str, shape: tuple[int, ...], dtype: Any, keep: list) -> np.ndarray:
    """The parent's segment `name` as an array, mapped here. The parent owns it: it unlinks it
    when done, and if it is killed, its resource tracker does. So this process must not: before
    Python 3.13 attaching registers the segment with this process's own tracker, which would
    unlink it when this process ends; it is unregistered again."""
    try:
        seg = shared_memory.SharedMemory(name=name, track=False)  # type: ignore[call-arg]
    except TypeError:  # Python < 3.13
        seg = shared_memory.SharedMemory(name=name)
        if os.name != "nt":
            from multiprocessing import resource_tracker

            resource_tracker.unregister(seg._name, "shared_memory")  # type: ignore[attr-defined]
    keep.append(seg)
    return np.ndarray(shape, dtype=dtype, buffer=seg.buf)


def serve(stdin, stdout) -> int:
    """The worker's loop (see the module docstring); returns the exit code."""
    from anynet.augment import Distorter
    from anynet.backend import get_backend

    keep: list = []
    try:
        h = json.loads(stdin.readline())
        n, D, rows, dtype = int(h["n"]), int(h["D"]), int(h["rows"]), np.dtype(h["dtype"])
        images = _attach(h["images"], (n, D), np.uint8, keep)
        idx = _attach(h["idx"], (rows,), np.int64, keep)
        out = _attach(h["out"], (rows, D), dtype, keep)
        backend = get_backend("numpy")
        ops = backend.fused_ops()
        assert ops is not None, "NumPy has in-place primitives"
        distorter = Distorter(Distortion.from_dict(h["distortion"]), backend,
                              seed=int(h["seed"]), dtype=dtype.name)
        pixels = np.empty((rows, D), np.uint8)
        X = np.empty((rows, D), dtype)
    except Exception as e:  # anything: the parent reads one line and distorts itself
        print(f"error: could not start ({type(e).__name__}: {e})", file=stdout, flush=True)
        return 2
    for line in stdin:
        try:
            epoch, chunk, m = (int(x) for x in line.split())
            if not 0 <= m <= rows:
                raise ValueError(f"{m} rows asked for, room for {rows}")
            rows_idx = idx[:m]
            if m and (rows_idx.min() < 0 or rows_idx.max() >= n):
                raise ValueError("a row index outside the training images")
            ops.load_rows(images, rows_idx, X[:m], 1 / 255, pixels[:m])
            out[:m] = distorter(X[:m], (epoch, chunk))
        except Exception as e:
            print(f"error: {type(e).__name__}: {e}", file=stdout, flush=True)
            return 2
        print(f"done {epoch} {chunk}", file=stdout, flush=True)
    del images, idx, out
    for seg in keep:
        seg.close()
    return 0


if __name__ == "__main__":
    import signal

    # its life is its parent's: it ends when its input closes (the parent done, or killed)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(serve(sys.stdin, sys.stdout))
