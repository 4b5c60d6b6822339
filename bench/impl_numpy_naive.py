"""The straightforward NumPy network a student writes: the baseline every other column beats.

784 -> H ReLU -> 10 softmax, mean cross-entropy, plain SGD, vectorised over the batch and
nothing more: float32 arrays, `X @ W1 + b1`, the fused gradient `(P - Y) / N`, the chain rule
by hand, `W -= lr * dW`. Each epoch shuffles by indexing the whole float32 training set with a
permutation (a 188 MB copy, as students do), then walks it in slices.

Shapes: N batch, D = 784, H hidden, K = 10. X (N, D), W1 (D, H), b1 (H,), W2 (H, K), b2 (K,).
Not tuned on purpose: no preallocated buffers, no in-place tricks. With momentum, each
parameter gets a velocity as textbooks (and torch.optim.SGD) write it: g = dW + wd W,
v = mu v + g, W -= lr (g + mu v) with Nesterov, else W -= lr v.
"""

from __future__ import annotations

import numpy as np

ANYNET_BACKEND = "numpy"  # the anynet backend whose arrays these are (for anynet's distortions)


class NaiveNumpyNet:
    def __init__(self, hidden, batch, lr, seed, train_images, train_labels, momentum=0.0,
                 nesterov=False, weight_decay=0.0):
        self.rng = np.random.default_rng(seed)
        d, k = train_images.shape[1], 10
        # He normal: std sqrt(2 / fan_in) keeps ReLU activations' variance steady.
        self.W1 = (self.rng.standard_normal((d, hidden)) * np.sqrt(2 / d)).astype(np.float32)
        self.b1 = np.zeros(hidden, dtype=np.float32)
        self.W2 = (self.rng.standard_normal((hidden, k)) * np.sqrt(2 / hidden)).astype(np.float32)
        self.b2 = np.zeros(k, dtype=np.float32)
        self.batch, self.lr = batch, np.float32(lr)
        self.X = train_images.astype(np.float32) / np.float32(255)   # (60000, 784), once
        self.Y = np.eye(k, dtype=np.float32)[train_labels]            # one-hot (60000, 10)
        self.mu, self.nesterov, self.wd = momentum, nesterov, weight_decay
        self.v = {name: np.zeros_like(getattr(self, name)) for name in ("W1", "b1", "W2", "b2")}

    def epoch(self, lrs=None, distort=None):
        """One pass; `lrs`: the learning rate of each step, `distort(X, i)`: batch i's images
        distorted."""
        perm = self.rng.permutation(len(self.X))
        X, Y = self.X[perm], self.Y[perm]
        for step, i in enumerate(range(0, len(X), self.batch)):
            if lrs is not None:
                self.lr = np.float32(lrs[step])
            Xb = X[i:i + self.batch]
            self.step(Xb if distort is None else distort(Xb, step), Y[i:i + self.batch])

    def step(self, X, Y):
        n = len(X)
        Z1 = X @ self.W1 + self.b1                       # (N, H)
        A1 = np.maximum(Z1, 0)
        Z2 = A1 @ self.W2 + self.b2                      # (N, K)
        E = np.exp(Z2 - Z2.max(axis=1, keepdims=True))
        P = E / E.sum(axis=1, keepdims=True)             # softmax
        # d(mean cross-entropy)/dZ2 = (P - Y) / N: softmax and log-loss derivatives cancel.
        dZ2 = (P - Y) / n
        dW2 = A1.T @ dZ2
        db2 = dZ2.sum(axis=0)
        dA1 = dZ2 @ self.W2.T
        dZ1 = dA1 * (Z1 > 0)                             # ReLU passes gradient where it was on
        dW1 = X.T @ dZ1
        db1 = dZ1.sum(axis=0)
        if not (self.mu or self.wd):
            self.W1 -= self.lr * dW1
            self.b1 -= self.lr * db1
            self.W2 -= self.lr * dW2
            self.b2 -= self.lr * db2
            return
        for name, g in (("W1", dW1), ("b1", db1), ("W2", dW2), ("b2", db2)):
            p = getattr(self, name)
            g = g + np.float32(self.wd) * p
            if self.mu:
                self.v[name] = np.float32(self.mu) * self.v[name] + g
                g = g + np.float32(self.mu) * self.v[name] if self.nesterov else self.v[name]
            p -= self.lr * g

    def accuracy(self, images, labels):
        X = images.astype(np.float32) / np.float32(255)
        Z2 = np.maximum(X @ self.W1 + self.b1, 0) @ self.W2 + self.b2
        return float(np.mean(Z2.argmax(axis=1) == labels))


def make(hidden, batch, lr, seed, train_images, train_labels, *, device="cpu", threads=2,
         momentum=0.0, nesterov=False, weight_decay=0.0):
    return NaiveNumpyNet(hidden, batch, lr, seed, train_images, train_labels, momentum,
                         nesterov, weight_decay)
