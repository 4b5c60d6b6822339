"""The batches of an epoch, shared by every training step (anynet.steps, anynet.fused): the
chunk a step gathers and distorts at once, and the checks that keep every device index in range
(on a GPU an index out of range is silent, CuPy, or ends the CUDA context, PyTorch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from array_api_compat import array_namespace

from anynet.backend.contract import Array
from anynet.network import pixels_to_inputs

# what a step distorts a chunk of inputs with (`anynet.augment.Distorter`): X, (epoch, chunk)
Distorter = Callable[[Array, tuple[int, ...]], Array]

CHUNK_ROWS = 1024  # rows gathered and converted at once: big enough to amortise, fits in cache


def check_permutation(perm, n: int) -> np.ndarray:
    """`perm` as int64 host values, checked to be a permutation of 0 .. n-1. Every gather of
    training rows goes through it, so no index is out of range by construction: on a GPU an
    index out of range is silent (CuPy's take wraps it) or fatal (PyTorch's device-side assert
    ends the CUDA context), and NumPy wraps negative ones."""
    perm = np.asarray(perm)
    if perm.shape != (n,) or perm.dtype.kind not in "iu":
        raise ValueError(f"the epoch's order must be {n} integers, not {perm.dtype} "
                         f"{perm.shape}")
    perm = perm.astype(np.int64, copy=False)
    if n and (perm.min() < 0 or perm.max() >= n or
              np.bincount(perm, minlength=n).max() != 1):
        raise ValueError(f"the epoch's order is not a permutation of 0..{n - 1}")
    return perm


def check_classes(name: str, labels: np.ndarray, K: int) -> None:
    """Raise ValueError unless every host label is a class, 0 .. K-1 (`name`: "training",
    "validation", for the message)."""
    if labels.size == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= K:
        raise ValueError(f"the {name} labels run from {low} to {high}, outside the network's "
                         f"classes 0..{K - 1}")


def check_labels(backend, labels, K: int) -> None:
    """Raise ValueError unless every label is a class, 0 .. K-1: the fused steps gather one-hot
    rows by label, and an index out of range must be impossible on the device (see
    `check_permutation`). Read once, when a step is made."""
    check_classes("training", backend.to_numpy(labels), K)


def check_batch(batch: int, n_batches: int) -> None:
    if not 0 <= batch < n_batches:
        raise IndexError(f"batch {batch} of an epoch of {n_batches} batches")


T = TypeVar("T")


def epoch_order(perm: T | None) -> T:
    """`perm`, the epoch's order that `begin_epoch` gave a step; RuntimeError before it gave
    one, so that no step gathers by an order it never checked (the CUDA-graph step's device
    copy of it is uninitialised memory until then)."""
    if perm is None:
        raise RuntimeError("no epoch's order yet: call begin_epoch(perm) before the first batch")
    return perm


def chunk_rows(batch_size: int) -> int:
    """Rows of a chunk: the whole batches that fit in CHUNK_ROWS (at least one). Distortions
    are drawn a chunk at a time, so every step chunks the epoch alike."""
    return max(1, CHUNK_ROWS // batch_size) * batch_size


class ChunkedBatches:
    """The batches of an epoch made a chunk at a time, for the steps that otherwise gather a
    batch at a time, where something is made per chunk: distorted images
    (`anynet.augment.Distorter`), dropout masks or a teacher's targets (`anynet.levers.Levers`).
    A chunk's rows are gathered, converted, distorted, given the teacher's targets and
    input-dropped at once, each drawn with the key (epoch, chunk) as `FusedStep` draws them, so
    every step trains on the same inputs, targets and masks, and a resumed run redraws what it
    would have drawn."""

    def __init__(self, net, images, labels, batch_size: int, *, distorter=None, levers=None):
        """`net`: the `TwoLayerNet` trained (its backend, dtype and hidden width)."""
        self.distorter, self.images, self.labels = distorter, images, labels
        self.backend, self.levers, self.H = net.backend, levers, net.sizes[1]
        self.host_dtype, self.dtype = net.dtype, net.backend.dtype(net.dtype)
        self.B, self.R = batch_size, chunk_rows(batch_size)
        self.epoch, self.chunk = 0, -1
        self.perm: Any = None  # the epoch's order on the device, from begin_epoch
        self.X: Any = None  # the current chunk's inputs (R, D), labels (R,), hidden-unit masks
        self.t: Any = None
        self.Mh: Any = None
        self.T: Any = None  # the teacher's targets (R, K), or None
        from anynet.distill import ChunkTargets  # (anynet.distill reads CHUNK_ROWS here)

        self.teacher_targets = ChunkTargets.of(levers, images, distorter is not None)

    def begin_epoch(self, perm, epoch: int) -> None:
        self.perm, self.epoch, self.chunk = perm, epoch, -1

    def batch(self, batch: int) -> tuple:
        """(X (b, D) floats, t (b,), the hidden units' dropout mask (b, H) or None, the
        teacher's targets (b, K) or None) of batch `batch`."""
        xp, R, B = array_namespace(self.perm), self.R, self.B
        chunk, start = divmod(batch * B, R)
        if chunk != self.chunk:
            self._load(xp, chunk)
        end = min(start + B, self.X.shape[0])
        Mh = None if self.Mh is None else self.Mh[start:end, ...]
        T = None if self.T is None else self.T[start:end, ...]
        return self.X[start:end, ...], self.t[start:end], Mh, T

    def _load(self, xp, chunk: int) -> None:
        R = self.R
        idx = self.perm[chunk * R:min((chunk + 1) * R, self.perm.shape[0])]
        X = pixels_to_inputs(xp.take(self.images, idx, axis=0), self.dtype)
        t = xp.take(self.labels, idx, axis=0)
        if self.distorter is not None:
            X = self.distorter(X, (self.epoch, chunk))
        # the teacher sees the image the student sees, before its input dropout
        self.T = None if self.teacher_targets is None else self.teacher_targets(X, t, idx)
        self.Mh = None
        if self.levers is not None and self.levers.masks:
            n, D = X.shape
            Mx, Mh = self.levers.draw_masks((self.epoch, chunk), n, D, self.H,
                                            self.host_dtype)
            if Mx is not None:
                X = X * self.backend.asarray(Mx)
            if Mh is not None:
                self.Mh = self.backend.asarray(Mh)
        self.X, self.t = X, t
        self.chunk = chunk
