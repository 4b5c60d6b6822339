"""Nielsen-style per-example backprop (network.py from "Neural Networks and Deep Learning").

The structure of Michael Nielsen's classic network.py: float64 column vectors, each mini-batch
processed one example at a time (`for x, y in mini_batch: backprop(x, y)`), the per-example
gradients summed and applied as `w - (lr / len(mini_batch)) * nw`, `random.shuffle` of a list of
(x, y) pairs per epoch. The model is ours, not his (ReLU hidden layer, softmax + cross-entropy,
He normal init instead of sigmoid + quadratic cost), so the arithmetic per example matches the
other columns and only the per-example loop differs.

Per-example Python is slow (that is the point of this column), so it trains on a fixed random
subset of SUBSET images and the worker multiplies its epoch time by 60000 / SUBSET (an epoch's
work is linear in its images); the table labels it as scaled. Its accuracy is after training on
that subset only. Weights are (out, in) as in network.py: W1 (H, 784), W2 (10, H).
"""

from __future__ import annotations

import random
from itertools import pairwise

import numpy as np

SUBSET = 10_000


class NielsenNet:
    def __init__(self, hidden, batch, lr, seed, train_images, train_labels, subset=SUBSET):
        rng = np.random.default_rng(seed)
        self.random = random.Random(seed)
        sizes = [784, hidden, 10]
        self.weights = [rng.standard_normal((n, m)) * np.sqrt(2 / m)
                        for m, n in pairwise(sizes)]
        self.biases = [np.zeros((n, 1)) for n in sizes[1:]]
        self.batch, self.lr = batch, lr
        subset = min(subset, len(train_images))
        pick = rng.choice(len(train_images), size=subset, replace=False)
        eye = np.eye(10)
        self.training_data = [(train_images[i].reshape(784, 1) / 255.0,
                               eye[train_labels[i]].reshape(10, 1)) for i in pick]
        self.epoch_time_scale = len(train_images) / subset
        self.timed_images = subset

    def epoch(self):
        self.random.shuffle(self.training_data)
        n = len(self.training_data)
        for k in range(0, n, self.batch):
            self.update_mini_batch(self.training_data[k:k + self.batch])

    def update_mini_batch(self, mini_batch):
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        for x, y in mini_batch:
            delta_nabla_b, delta_nabla_w = self.backprop(x, y)
            nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_nabla_b, strict=True)]
            nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_nabla_w, strict=True)]
        scale = self.lr / len(mini_batch)
        self.weights = [w - scale * nw for w, nw in zip(self.weights, nabla_w, strict=True)]
        self.biases = [b - scale * nb for b, nb in zip(self.biases, nabla_b, strict=True)]

    def backprop(self, x, y):
        (w1, w2), (b1, b2) = self.weights, self.biases
        z1 = w1 @ x + b1                       # (H, 1)
        a1 = np.maximum(z1, 0)
        z2 = w2 @ a1 + b2                      # (10, 1)
        e = np.exp(z2 - z2.max())
        delta2 = e / e.sum() - y               # softmax + cross-entropy: p - y
        delta1 = (w2.T @ delta2) * (z1 > 0)
        return [delta1, delta2], [delta1 @ x.T, delta2 @ a1.T]

    def accuracy(self, images, labels):
        (w1, w2), (b1, b2) = self.weights, self.biases
        X = images.T / 255.0                   # all test images as columns, (784, N)
        z2 = w2 @ np.maximum(w1 @ X + b1, 0) + b2
        return float(np.mean(z2.argmax(axis=0) == labels))


def make(hidden, batch, lr, seed, train_images, train_labels, *, device="cpu", threads=2):
    return NielsenNet(hidden, batch, lr, seed, train_images, train_labels)
