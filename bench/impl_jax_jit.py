"""JAX the way its own MNIST example writes it (examples/mnist_classifier_fromscratch.py).

Parameters are a list of (W, b) pairs; `predict` returns log-softmax through `logsumexp`; the loss
is the mean cross-entropy against one-hot targets; `update` is one `jax.jit`-compiled function
that takes `jax.grad` of the loss and returns the SGD-updated parameters. As in the example, the
data stay NumPy float32 arrays on the host, each epoch draws a NumPy permutation and each step
hands `train_images[batch_idx]` to the jitted function. He normal init, zero biases. The epoch
ends with `block_until_ready` so the timer sees the finished work (JAX dispatches asynchronously).

Shapes: X (N, 784) float32, targets (N, 10) one-hot float32, W1 (784, H), W2 (H, 10).
"""

from __future__ import annotations

from itertools import pairwise

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp


def predict(params, inputs):
    (w1, b1), (w2, b2) = params
    hidden = jnp.maximum(jnp.dot(inputs, w1) + b1, 0)
    logits = jnp.dot(hidden, w2) + b2
    return logits - logsumexp(logits, axis=1, keepdims=True)


def loss(params, batch):
    inputs, targets = batch
    return -jnp.mean(jnp.sum(predict(params, inputs) * targets, axis=1))


class JaxJitNet:
    def __init__(self, hidden, batch, lr, seed, train_images, train_labels, device):
        platform = "gpu" if device == "cuda" else "cpu"
        self.device = jax.devices(platform)[0]
        self.rng = np.random.default_rng(seed)
        sizes = [784, hidden, 10]
        self.params = [
            (jax.device_put(
                (self.rng.standard_normal((m, n)) * np.sqrt(2 / m)).astype(np.float32),
                self.device),
             jax.device_put(np.zeros(n, dtype=np.float32), self.device))
            for m, n in pairwise(sizes)
        ]
        self.train_images = train_images.astype(np.float32) / np.float32(255)
        self.train_labels = np.eye(10, dtype=np.float32)[train_labels]
        self.batch = batch

        step_size = lr

        @jax.jit
        def update(params, batch):
            grads = jax.grad(loss)(params, batch)
            return [(w - step_size * dw, b - step_size * db)
                    for (w, b), (dw, db) in zip(params, grads, strict=True)]

        self.update = update

    def epoch(self):
        n = len(self.train_images)
        perm = self.rng.permutation(n)
        params = self.params
        for i in range(0, n, self.batch):
            batch_idx = perm[i:i + self.batch]
            params = self.update(params, (self.train_images[batch_idx],
                                          self.train_labels[batch_idx]))
        self.params = jax.block_until_ready(params)

    def accuracy(self, images, labels):
        X = jax.device_put(images.astype(np.float32) / np.float32(255), self.device)
        pred = np.asarray(jnp.argmax(predict(self.params, X), axis=1))
        return float(np.mean(pred == labels))


def make(hidden, batch, lr, seed, train_images, train_labels, *, device="cpu", threads=2):
    return JaxJitNet(hidden, batch, lr, seed, train_images, train_labels, device)
