"""anynet in the benchmark: TwoLayerNet + SGD on one backend (numpy, torch, jax, cupy).

PLACEHOLDER, first version: the lead rewrites this adapter around anynet's tuned training step.
It drives the public API the way a user's own loop would: `TwoLayerNet(n_hidden=H,
backend=..., seed=...)`, `SGD(lr=...)`, `opt.init(net.params)`, and per mini-batch
`loss, grads = net.loss_and_grads_array(Xb, yb)` (the variant that leaves the loss on the device
instead of syncing for a Python float every step), `params, state = opt.step(net.params, grads,
state)`, `net.params = params`. The training set crosses to the backend once, as the uint8 pixels
anynet takes (it scales each batch by 1/255 itself; labels int64); each epoch takes a NumPy
permutation and gathers batches with `xp.take`.

Options: backend = an anynet backend name ("numpy", "torch", "jax", "cupy"); with
device="cuda" torch and jax run on the GPU ("torch:cuda", "jax:gpu").
"""

from __future__ import annotations

import numpy as np

from anynet.backend import get_namespace
from anynet.network import TwoLayerNet
from anynet.optim import SGD


def _backend_name(backend, device):
    if device == "cuda" and backend in ("torch", "jax"):
        return {"torch": "torch:cuda", "jax": "jax:gpu"}[backend]
    return backend


class AnynetTrainer:
    def __init__(self, hidden, batch, lr, seed, train_images, train_labels, backend, device,
                 threads):
        name = _backend_name(backend, device)
        self.backend = get_namespace(name)
        if self.backend.name == "torch":
            import torch

            torch.set_num_threads(threads)
        self.xp = self.backend.xp
        self.net = TwoLayerNet(n_hidden=hidden, backend=self.backend, seed=seed)
        self.opt = SGD(lr=lr)
        self.state = self.opt.init(self.net.params)
        self.X = self.backend.asarray(train_images)                  # uint8 (N, 784)
        self.y = self.backend.asarray(train_labels, dtype="int64")
        self.batch = batch
        self.rng = np.random.default_rng(seed)

    def epoch(self):
        xp, n = self.xp, self.X.shape[0]
        perm = self.backend.asarray(self.rng.permutation(n), dtype="int64")
        for i in range(0, n, self.batch):
            idx = perm[i:i + self.batch]
            Xb, yb = xp.take(self.X, idx, axis=0), xp.take(self.y, idx, axis=0)
            _loss, grads = self.net.loss_and_grads_array(Xb, yb)
            self.net.params, self.state = self.opt.step(self.net.params, grads, self.state)
        self._sync()

    def _sync(self):
        """Wait for the device to finish, so the timer measures the work and not its dispatch."""
        name = self.backend.name
        if name == "jax":
            import jax

            jax.block_until_ready(self.net.params)
        elif name == "cupy":
            import cupy

            cupy.cuda.Device().synchronize()
        elif name == "torch" and getattr(self.backend.device, "type", "cpu") == "cuda":
            import torch

            torch.cuda.synchronize()

    def accuracy(self, images, labels):
        from anynet.backend import to_numpy

        pred = to_numpy(self.net.predict(self.backend.asarray(images)))
        return float(np.mean(pred == labels))


def make(hidden, batch, lr, seed, train_images, train_labels, *, device="cpu", threads=2,
         backend="numpy"):
    return AnynetTrainer(hidden, batch, lr, seed, train_images, train_labels, backend, device,
                         threads)
