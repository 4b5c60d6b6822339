"""Evaluation of a network on a labelled set, computed on the network's backend.

One implementation for every caller: the training loop's per-epoch metrics, `anynet train`'s
test accuracy, and `anynet evaluate`'s report (confusion matrix, most confidently wrong images).
The data goes through the network `chunk_size(H)` examples at a time (bounded memory); everything
per example stays on the device, and the host reads a few small arrays once at the end.

For chunk c with logits Z (n, K), labels t (n,) and Y = one_hot(t), prediction y = argmax Z:
    loss     = -(1/N) sum over all chunks of sum_i log_softmax(Z)[i, t_i]
    accuracy = (1/N) #{i : y_i = t_i}
    confusion[k, j] = #{i : t_i = k, y_i = j} = (Y^T one_hot(y))[k, j]   (a matrix product)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anynet import functional as F

EVAL_CHUNK = 10_000  # examples per forward pass at most
# Elements in each (chunk, H) array at most: 4 MB in float32. Larger arrays are mapped and
# unmapped by the allocator on every call and fault their pages in again: evaluating 10,000
# examples on 784-800-10 (NumPy, one thread: a training run's metrics, every epoch) took
# 0.6-0.9 s and 3,000-5,700 page faults in one chunk, 0.2 s and about 1,200 in chunks of 1,024.
# (A 784-100000-10 model took 12.2 GB and 79 s in chunks of 10,000 rows.)
EVAL_UNITS = 2**20


def chunk_size(hidden: int) -> int:
    """Examples per forward pass for a network of `hidden` units: EVAL_CHUNK, fewer for wide
    networks, so that each (chunk, H) array holds at most EVAL_UNITS elements."""
    return max(1, min(EVAL_CHUNK, EVAL_UNITS // max(int(hidden), 1)))


@dataclass
class Evaluation:
    """What `evaluate` found. confusion (K, K) counts [true, predicted] and `wrong` (the most
    confidently wrong examples: index, label, predicted, probability) are filled when asked."""

    examples: int
    loss: float
    accuracy: float
    confusion: np.ndarray | None = None
    wrong: list[dict] = field(default_factory=list)

    @property
    def per_class_accuracy(self) -> np.ndarray:
        """Accuracy on each true class (K,): the confusion matrix's diagonal over its rows.
        ValueError when the evaluation was made without `confusion=True`."""
        if self.confusion is None:
            raise ValueError("per-class accuracy needs the confusion matrix: "
                             "evaluate(..., confusion=True)")
        return np.diag(self.confusion) / np.maximum(self.confusion.sum(axis=1), 1)


def evaluate(net, images: Any, labels: Any, *, confusion: bool = False,
             n_wrong: int = 0) -> Evaluation:
    """Loss and accuracy of `net` on images uint8 (N, D) with labels (N,), host or backend
    arrays; with `confusion`, the (K, K) confusion matrix; with `n_wrong`, the `n_wrong` wrong
    predictions made with the highest probability, most confident first.

    An empty set has no loss or accuracy: both are nan. A model whose outputs overflow gives a
    non-finite loss, for the caller to judge (NumPy's warnings about it are silenced).
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _evaluate(net, images, labels, confusion, n_wrong)


def _evaluate(net, images: Any, labels: Any, confusion: bool, n_wrong: int) -> Evaluation:
    xp, backend = net.xp, net.backend
    n = int(images.shape[0])
    if n == 0:
        return Evaluation(0, math.nan, math.nan,
                          np.zeros((net.sizes[2],) * 2, np.int64) if confusion else None)
    K = net.sizes[2]
    loss_parts, hit_parts, confusion_parts, scores = [], [], [], []
    chunk = chunk_size(net.sizes[1])
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)  # out-of-bounds slice ends are not standard
        Z = net.forward(images[start:stop, ...])  # the standard wants every axis indexed
        t = net.labels(labels[start:stop])
        log_P = F.log_softmax(Z)
        Y = F.one_hot(t, K, Z.dtype)
        predicted = xp.argmax(Z, axis=-1)
        loss_parts.append(-xp.sum(log_P * Y))
        hit_parts.append(xp.sum(xp.astype(predicted == t, Z.dtype)))
        if confusion:  # counts below 2^24 per chunk: exact in float32
            confusion_parts.append(Y.T @ F.one_hot(predicted, K, Z.dtype))
        if n_wrong:
            confidence = xp.exp(xp.max(log_P, axis=-1))
            wrong = predicted != t
            scores.append(xp.stack([xp.where(wrong, confidence, -xp.ones_like(confidence)),
                                    xp.astype(predicted, Z.dtype)]))
    # the host reads: one small array for the sums, and the per-example scores if asked
    sums = backend.to_numpy(xp.stack([xp.sum(xp.stack(loss_parts)),
                                      xp.sum(xp.stack(hit_parts))])).astype(np.float64)
    result = Evaluation(n, float(sums[0]) / n, float(sums[1]) / n)
    if confusion:
        total = confusion_parts[0]
        for part in confusion_parts[1:]:
            total = total + part
        result.confusion = np.rint(backend.to_numpy(total)).astype(np.int64)
    if n_wrong:
        score, predicted = backend.to_numpy(xp.concat(scores, axis=1))
        host_labels = np.asarray(backend.to_numpy(net.labels(labels)), np.int64)
        wrong = np.flatnonzero(score >= 0)
        order = wrong[np.argsort(-score[wrong], kind="stable")][:n_wrong]
        result.wrong = [{"index": int(i), "label": int(host_labels[i]),
                         "predicted": int(predicted[i]), "probability": float(score[i])}
                        for i in order]
    return result


class NonFiniteOutputs(ValueError):
    """A model's probabilities for example `row` are not finite (its weights overflow); in a
    committee, `member` is that model's index (`anynet.committee.rank_pictures`)."""

    def __init__(self, row: int, member: int = 0):
        super().__init__(f"the outputs for example {row} are not finite")
        self.row, self.member = row, member


def may_overflow(net) -> bool:
    """Whether some picture could make the network's outputs non-finite (nan/inf), judged from
    the weights alone, before any picture is seen (`anynet serve` refuses such a model at start).

    Pixels x lie in [0, 1]^D (uint8 / 255), so every partial sum of the forward pass is bounded:
        |Z1_j| <= |b1_j| + sum_i |W1_ij| = a_j         and 0 <= relu(Z1_j) <= a_j
        |Z2_k| <= |b2_k| + sum_j a_j |W2_jk| = c_k
    and softmax takes exp(Z2_k - max Z2) >= exp(-2 max c). With 4 max c below the dtype's largest
    number (a factor 2 to spare for rounding), nothing can overflow. The weights of a trained
    model give bounds some 35 orders of magnitude below float32's largest number; a model is
    judged unusable only with weights many orders of magnitude beyond any training's.
    """
    params = {k: np.abs(v.astype(np.float64)) for k, v in net.host_params().items()}
    with np.errstate(over="ignore", invalid="ignore"):
        a = params["b1"] + params["W1"].sum(axis=0)  # (H,)
        c = params["b2"] + a @ params["W2"]  # (K,)
        bound = 4 * float(np.max(c, initial=0.0))
    return not bound < float(np.finfo(net.dtype).max)  # nan (inf * 0) counts as overflow


def ranked_classes(net, pixels: Any) -> list[list[dict]]:
    """Every example's classes, most probable first, for pictures to classify:
    pixels (N, D) -> N lists of K {"class", "probability"} (a stable order: ties keep the lower
    class first), computed `chunk_size(H)` examples at a time. Raises NonFiniteOutputs naming
    the first example whose outputs overflow."""
    n, chunk = int(pixels.shape[0]), chunk_size(net.sizes[1])
    with np.errstate(over="ignore", invalid="ignore"):
        parts = [net.backend.to_numpy(net.predict_proba(pixels[start:min(start + chunk, n), ...]))
                 for start in range(0, n, chunk)]
    probabilities = (np.concatenate(parts) if parts
                     else np.zeros((0, net.sizes[2]))).astype(np.float64)
    unusable = ~np.all(np.isfinite(probabilities), axis=1)
    if unusable.any():
        raise NonFiniteOutputs(int(np.argmax(unusable)))
    ranking = np.argsort(-probabilities, axis=1, kind="stable")
    return [[{"class": int(c), "probability": float(probs[c])} for c in order]
            for probs, order in zip(probabilities, ranking, strict=True)]

