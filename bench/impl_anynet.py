"""anynet in the benchmark: exactly the training step `anynet train` runs, on one backend.

Builds `TwoLayerNet(n_hidden=H, backend=..., seed=...)` and `SGD(lr=...)`, then takes its step
from `anynet.steps.make_train_step`: the fused step on NumPy, PyTorch's CPU and CuPy, as a
CUDA graph on CUDA devices (cupy, torch:cuda), the compiled reference step on JAX. An epoch
is what `Trainer.fit` does for one: a seeded NumPy permutation, then every batch through the
step (its loss, a 0-d array, is not read here), then `Backend.sync` so the timer sees the
finished work. The training set
crosses to the backend once, as uint8 pixels; each chunk of batches becomes floats on the
backend. Threads are set by the worker (`anynet.backend.threads.set_threads`), not here.

Options: backend = an anynet backend name ("numpy", "torch", "jax", "cupy"); with
device="cuda" torch and jax run on the GPU ("torch:cuda", "jax:gpu"); momentum = SGD's (0.9 in
the +momentum columns: what momentum costs per epoch); nesterov and weight_decay likewise
(Nesterov 0.9 and weight decay 1e-4 in the +nesterov-wd columns: the recipes' optimizer).
"""

from __future__ import annotations

import numpy as np
from _worker import backend_spec

from anynet.backend import get_backend
from anynet.network import TwoLayerNet
from anynet.optim import SGD
from anynet.steps import make_train_step


class AnynetTrainer:
    def __init__(self, hidden, batch, lr, seed, train_images, train_labels, backend, device,
                 momentum, nesterov=False, weight_decay=0.0):
        self.backend = get_backend(backend_spec(backend, device))
        self.net = TwoLayerNet(n_hidden=hidden, backend=self.backend, seed=seed)
        self.lr = lr
        self.n = len(train_labels)
        self.n_batches = -(-self.n // batch)
        opt = SGD(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
        self.step = make_train_step(self.net, opt, self.backend.asarray(train_images),
                                    self.backend.asarray(train_labels, "int64"), batch,
                                    opt.init(self.net.params))
        self.rng = np.random.default_rng([seed, 1])

    def epoch(self):
        step, lr = self.step, self.lr
        step.begin_epoch(self.rng.permutation(self.n), np.full(self.n_batches, lr))
        for i in range(self.n_batches):
            step(i, lr)
        for array in self.step.params.values():  # JAX waits per array; the others per device
            self.backend.sync(array)

    def accuracy(self, images, labels):
        pred = self.backend.to_numpy(self.net.predict(self.backend.asarray(images)))
        return float(np.mean(pred == labels))


def make(hidden, batch, lr, seed, train_images, train_labels, *, device="cpu", threads=2,
         backend="numpy", momentum=0.0, nesterov=False, weight_decay=0.0):
    return AnynetTrainer(hidden, batch, lr, seed, train_images, train_labels, backend, device,
                         momentum, nesterov, weight_decay)
