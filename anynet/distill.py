"""Distillation: training a network on the soft targets of a teacher (Hinton, Vinyals & Dean
2015), here a committee of anynet networks (`anynet.committee`).

For a training example x with label t, the teacher's members m = 1..M give logits z_m(x); at
temperature tau the teacher's probabilities are their mean softened softmax, and the student's
targets mix them into the (label-smoothed) one-hot ones with weight alpha:

    Q(x) = (1/M) sum_m softmax(z_m(x) / tau)              (K,), sums to 1
    T(x) = (1 - alpha) smoothed_targets(t) + alpha Q(x)
    J    = -(1/N) sum_i sum_k T[i, k] log softmax(Z2)[i, k],   dJ/dZ2 = (softmax(Z2) - T) / N

So distillation is label smoothing with a teacher in place of the uniform distribution: the
student's softmax stays at temperature 1 and its gradient keeps the form every step computes
(the fused step's targets Y are T, the CUDA-graph step's too). Hinton et al. soften the
student's softmax by the same tau while training; at tau = 1 the two are the same, and at
tau > 1 this variant softens only the teacher's side (docs/tuning.md, "Distillation").

Q is computed on the backend for every chunk of inputs the student trains on, after that
chunk's distortions (`anynet.augment`) and before its input dropout: the teacher sees the image
the student sees, undropped. Without distortions an image's Q never changes, so it is computed
once for every training image, a table (N, K) that each chunk reads its rows from
(`ChunkTargets`). It depends on nothing but the teacher and the inputs, so a resumed run
computes what the uninterrupted one computed. `anynet train --teacher MODEL [MODEL ...]`
records each file with its SHA-256 (`load_teacher`), and `--resume` reads them again, refusing
a file that changed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anynet import functional as F
from anynet.batches import CHUNK_ROWS
from anynet.committee import MAX_MEMBERS, Committee, load_committee
from anynet.config import check_temperature, short_repr
from anynet.errors import UserError
from anynet.network import pixels_to_inputs


@dataclass(frozen=True, eq=False)
class Teacher:
    """A committee (one network or several, `anynet.committee.Committee`) whose probabilities
    at `temperature` make up `weight` (alpha, in (0, 1]) of a student's targets. Its members
    compute on the student's backend."""

    committee: Committee
    weight: float
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not (type(self.weight) in (int, float) and 0 < self.weight <= 1):
            raise ValueError(f"the teacher's weight in the targets must be in (0, 1], got "
                             f"{self.weight!r}")
        object.__setattr__(self, "weight", float(self.weight))
        object.__setattr__(self, "temperature", check_temperature(self.temperature))

    @property
    def sizes(self) -> tuple[int, int, int]:
        return self.committee.sizes

    def probabilities(self, X: Any, dtype: Any) -> Any:
        """Q (N, K) of `dtype`: the members' mean of softmax(logits / temperature) on inputs
        X (N, D), floats in [0, 1] on the committee's backend."""
        xp, tau = self.committee.xp, self.temperature
        total = None
        for net in self.committee.members:
            Z = xp.astype(net.forward(X), dtype)
            P = F.softmax(Z / tau if tau != 1 else Z)
            total = P if total is None else total + P
        assert total is not None, "a committee has at least one member"
        M = len(self.committee.members)
        return total / M if M > 1 else total

    def targets(self, X: Any, labels: Any, smoothing: float = 0.0) -> Any:
        """T (N, K) = (1 - weight) smoothed_targets(labels) + weight Q(X), in X's dtype."""
        return self.mix(self.probabilities(X, X.dtype), labels, smoothing)

    def mix(self, Q: Any, labels: Any, smoothing: float = 0.0) -> Any:
        """T (N, K) = (1 - weight) smoothed_targets(labels) + weight Q, in Q's dtype."""
        Y = F.smoothed_targets(labels, self.committee.sizes[2], smoothing, Q.dtype)
        return (1 - self.weight) * Y + self.weight * Q

    def table(self, images: Any, dtype: Any) -> Any:
        """Q (N, K) of `dtype` for every row of `images` (N, D), uint8 pixels on the
        committee's backend, converted as training converts them, CHUNK_ROWS at a time."""
        xp, n, rows = self.committee.xp, images.shape[0], CHUNK_ROWS
        return xp.concat([self.probabilities(pixels_to_inputs(images[i:min(i + rows, n), ...],
                                                              dtype), dtype)
                          for i in range(0, n, rows)], axis=0)


class ChunkTargets:
    """A training step's targets from its teacher, chunk by chunk: for undistorted chunks
    (`images`, the training images, given) read from a table of Q made at the first chunk,
    one forward pass of the teacher over the data for the whole run; for distorted ones
    (`images` None) computed from each chunk's inputs as they are."""

    def __init__(self, teacher: Teacher, smoothing: float, images: Any = None) -> None:
        self.teacher, self.smoothing, self.images = teacher, smoothing, images
        self._table: Any = None

    @classmethod
    def of(cls, levers: Any, images: Any, distorted: bool) -> ChunkTargets | None:
        """A step's ChunkTargets from its `anynet.levers.Levers` (None: no teacher), its
        training images, and whether its chunks are distorted."""
        if levers is None or levers.teacher is None:
            return None
        return cls(levers.teacher, levers.label_smoothing, None if distorted else images)

    def __call__(self, X: Any, labels: Any, rows: Any) -> Any:
        """T (n, K) in X's dtype for the chunk's inputs X (n, D), `labels` (n,) and `rows`
        (n,), their indices into the training images."""
        if self.images is None:
            return self.teacher.targets(X, labels, self.smoothing)
        if self._table is None:
            self._table = self.teacher.table(self.images, X.dtype)
        Q = self.teacher.committee.xp.take(self._table, rows, axis=0)
        return self.teacher.mix(Q, labels, self.smoothing)


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_recorded(recorded: Any) -> list[dict]:
    """A run record's "teacher" entry, checked (it comes from a file): a list of at most
    MAX_MEMBERS {"path": text, "sha256": 64 hex digits}. UserError naming the problem."""
    ok = isinstance(recorded, list) and 0 < len(recorded) <= MAX_MEMBERS and all(
        isinstance(e, dict) and isinstance(e.get("path"), str) and 0 < len(e["path"]) <= 4096
        and isinstance(e.get("sha256"), str) and len(e["sha256"]) == 64
        and all(c in "0123456789abcdef" for c in e["sha256"]) for e in recorded)
    if not ok:
        raise UserError(f"the checkpoint's teacher entry is {short_repr(recorded)}, not a list "
                        "of model files with their SHA-256; the checkpoint is damaged (start "
                        "the run again)")
    return recorded


def preprocessing_mismatch(committee: Committee, wanted: Any) -> str | None:
    """Why `committee` cannot teach a student whose images are preprocessed as `wanted` (an
    `anynet.preprocess.Preprocessing`): the first member trained on other preprocessing; None
    where all match. The teacher reads the student's images as the student sees them."""
    for name, net in zip(committee.names, committee.members, strict=True):
        if net.preprocessing != wanted:
            return (f"teacher {name} was trained with preprocess {net.preprocessing}, this run "
                    f"uses {wanted}: a teacher must see the images as its student does (give "
                    f"the student --preprocess {net.preprocessing}, or teachers trained with "
                    f"{wanted})")
    return None


def load_teacher(paths: Sequence[str | Path] | None, backend: Any,
                 recorded: Any = None) -> tuple[Committee, list[dict]]:
    """The teacher of a run, read as a committee on `backend` (`anynet.committee.load_committee`:
    its bounds and checks, one line each), and what the run records of it: a list of
    {"path": the absolute path, "sha256": the file's digest}.

    A new run names its files (`paths`); a resumed one passes its record's entry (`recorded`)
    instead, and each file must still hold the bytes it was trained with, else UserError naming
    the file: a changed teacher would change the run it continues."""
    if recorded is not None:
        if paths:
            raise UserError("a resumed run takes its teacher from the checkpoint: drop --teacher")
        entries = check_recorded(recorded)
        paths = [e["path"] for e in entries]
    assert paths, "a teacher has at least one file"
    committee = load_committee(paths, backend=backend)  # every file checked before it is hashed
    files = [{"path": os.path.abspath(p), "sha256": _sha256(p)} for p in paths]
    for was, now in zip(entries if recorded is not None else files, files, strict=True):
        if was["sha256"] != now["sha256"]:
            raise UserError(f"the teacher {was['path']} has changed since the run began (its "
                            "SHA-256 differs): resume with the teacher it was trained with, or "
                            "start a new run")
    return committee, files
