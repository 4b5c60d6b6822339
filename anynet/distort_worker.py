"""Distortions made ahead, in a second process: while the training step works through one chunk
of batches on NumPy, a worker process gathers and distorts the next (`DistortionWorker`).

Why a process: distorting MNIST's 60,000 images with affine maps takes NumPy about 0.65 s an
epoch on this project's 2-core machine, next to 0.7-1.4 s of training, one after the other. A
thread cannot do it alongside: both halves are short NumPy calls that take turns at the GIL
(measured: 1.33-1.37 s an epoch against 1.40-1.49 in one thread). A process has its own. The
training then runs its BLAS on one thread fewer (`plan`), so that the two never wait for each
other's cores: `speed-99`'s epoch 0.83-0.93 s against 1.25-1.48 s.

The worker computes exactly what the step would, with the step's own code
(`anynet.fused.chunk_inputs`: the chunk's rows gathered and scaled by NumPy's
`UfuncOps.load_rows`, then distorted by an `anynet.augment.Distorter` with the same seed and
key (epoch, chunk)). So a run trains on the same images, bit for bit, with or without it; if
the worker stops, the step distorts in its own process from then on and nothing changes but
the time. Only for NumPy (on other libraries the step's own Distorter would round
differently) and for uint8 training images.

How they talk, without pickle: the parent puts the training images, the chunk's row indices
and the result in `multiprocessing.shared_memory` segments; the worker (this module's `main`,
started by the same interpreter with this anynet first on its path) reads one JSON line (the
segments' names, sizes, the distortion, seed, dtype, and which anynet the parent runs), then
one line per chunk, "epoch chunk n", for which the indices are already in their segment; it
answers "done epoch chunk" when the result segment holds the n distorted rows, or
"error: ..." and ends. It runs in a session of its own and ignores SIGINT: a Ctrl-C is the
training's to handle, which stops, checkpoints and closes the worker's input, which ends it.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
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


def may_serve(setting: str, backend: str, kind: str) -> bool:
    """Whether a worker is possible at all: `setting` not "off", the library (by name) NumPy,
    and distortions drawn (`kind` not "none"). ValueError for a setting not in SETTINGS."""
    if setting not in SETTINGS:
        raise ValueError(f"--distort-worker must be one of {', '.join(SETTINGS)}, not "
                         f"{setting!r}")
    return setting != "off" and is_host_numpy(backend) and kind != "none"


def plan(setting: str, backend: str, kind: str, threads: int | None,
         free: int) -> tuple[bool, int | None]:
    """Whether a run distorts in a worker, and the BLAS threads it trains with then.

    setting: "on", "off" or "auto" (on where it pays); backend: the library's name (only NumPy
    has the worker, `is_host_numpy`); kind: the distortion kind ("none": nothing); threads: the
    count asked for (None: the default); free: the cores no other process keeps busy. Returns
    (worker, threads): with a worker and no count asked for, one thread fewer than `free`
    (at least 1), so that training and the worker never wait for each other's cores; "auto"
    takes the worker only where a core is left for it (free > threads)."""
    if not may_serve(setting, backend, kind):
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
    if not sys.executable or getattr(sys, "frozen", False):
        return None  # no interpreter to start (embedded), or one that is the whole app
    try:
        worker = DistortionWorker(images, distortion, seed, dtype,
                                  step.batches_per_chunk * step.B)
    except Exception as e:  # whatever stops it starting: the step distorts, as it always could
        why = str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        print(f"anynet: no distortion worker ({why}); distorting in this process",
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
                      "distortion": distortion.to_dict(), "anynet": _HERE}
            self._procs.append(subprocess.Popen(
                [sys.executable, "-c", _BOOT, _ROOT], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=self._stderr, env=_worker_env(), text=True,
                # its own session: a Ctrl-C at the terminal reaches the training, which stops
                # and checkpoints (and ends the worker), not the worker in the middle of a chunk
                start_new_session=os.name != "nt"))
            self._proc = self._procs[0]
            # its answers, read by a thread: a wait with a time limit on every system (select
            # takes no pipes on Windows, and no descriptor above 1023 anywhere)
            self._answers: queue.Queue[str | None] = queue.Queue()
            threading.Thread(target=_read_lines, args=(self._proc.stdout, self._answers),
                             daemon=True, name="anynet-distort-worker-reader").start()
        except BaseException:
            self.close()
            raise
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
        try:
            line = self._answers.get(timeout=REPLY_TIMEOUT_S)
        except queue.Empty:
            self._proc.kill()  # stuck (stopped, swapped out): it is not waited for again
            self._fail(f"no answer in {REPLY_TIMEOUT_S:g} s")
            return
        if line is None:   # its output ended: so did it
            self._fail(self._exit_text())
        elif line.strip() != f"done {epoch} {chunk}":
            self._fail(line.strip())

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


# The folder this anynet was imported from, and how the worker starts: with this folder (and
# not the current one, where another anynet may lie) ahead on its path, so that it imports the
# same anynet as the parent; `serve` checks that it did.
_HERE = str(Path(__file__).resolve())
_ROOT = str(Path(_HERE).parent.parent)
_BOOT = ("import sys; root = sys.argv[1]; sys.path[:] = [p for p in sys.path if p]; "
         "root in sys.path or sys.path.insert(0, root); "
         "from anynet.distort_worker import main; main()")


def _worker_env() -> dict[str, str]:
    """The worker's environment: this one, with one BLAS/OpenMP thread (the parent trains on
    the other cores)."""
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    return env


def _read_lines(stream: Any, answers: queue.Queue) -> None:
    """The worker's answers, line by line, into `answers`; None when its output ends."""
    try:
        for line in stream:
            answers.put(line)
    except (OSError, ValueError):  # closed under it (close)
        pass
    answers.put(None)


def _shut_down(segments: list, procs: list, stderr: Any) -> None:
    """Unlink the segments (first: a second Ctrl-C during the rest leaves none behind), end
    the worker (closing its input ends it at once; killed if it does not go) and drop its
    error file. A finalizer: it must not raise."""
    for seg in segments:
        try:
            seg.unlink()  # the name goes now; the memory once nothing maps it any more
        except OSError:
            pass
        try:
            seg.close()
        except (OSError, BufferError):  # arrays still viewing it: they keep it mapped
            pass
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
    try:
        stderr.close()
    except OSError:
        pass


# --- the worker process ------------------------------------------------------------------------

def _attach(name: str, shape: tuple[int, ...], dtype: Any, keep: list) -> np.ndarray:
    """The parent's segment `name` as an array, mapped here. The parent owns it: it unlinks it
    when done, and if it is killed, its resource tracker does. So this process must not become
    an owner: before Python 3.13 attaching registers the segment with a tracker of this
    process's own (bpo-39959), which would unlink it when this process ends; that registration
    is left out."""
    try:
        seg = shared_memory.SharedMemory(name=name, track=False)  # type: ignore[call-arg]
    except TypeError:  # Python < 3.13
        from multiprocessing import resource_tracker

        register = resource_tracker.register
        resource_tracker.register = lambda *args: None
        try:
            seg = shared_memory.SharedMemory(name=name)
        finally:
            resource_tracker.register = register
    keep.append(seg)
    return np.ndarray(shape, dtype=dtype, buffer=seg.buf)


def serve(stdin, stdout) -> int:
    """The worker's loop (see the module docstring); returns the exit code."""
    from anynet.augment import Distorter
    from anynet.backend import get_backend
    from anynet.fused import chunk_inputs

    keep: list = []
    try:
        h = json.loads(stdin.readline())
        if h.get("anynet") != _HERE:
            raise ImportError(f"this is the anynet of {_HERE}, not the parent's "
                              f"({h.get('anynet')})")
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
            out[:m] = chunk_inputs(ops, images, rows_idx, X, pixels, distorter, (epoch, chunk))
        except Exception as e:
            print(f"error: {type(e).__name__}: {e}", file=stdout, flush=True)
            return 2
        print(f"done {epoch} {chunk}", file=stdout, flush=True)
    del images, idx, out
    for seg in keep:
        seg.close()
    return 0


def main() -> None:
    """The worker process (started by `DistortionWorker` through `_BOOT`)."""
    import signal

    # its life is its parent's: it ends when its input closes (the parent done, or killed)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = serve(sys.stdin, sys.stdout)
    sys.stdout.flush()
    os._exit(code)  # at once: the parent may be waiting, and there is nothing to tidy
