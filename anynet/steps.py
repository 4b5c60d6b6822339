"""Training steps: the plain Array API step, and NumPy's fast step behind one seam.

A training step takes batch `i` of the current epoch's permutation, computes the loss and
gradients, and updates the parameters. `make_train_step` picks the implementation:

- `ArrayAPIStep`, the reference, on every backend: `TwoLayerNet.loss_and_grads_array` (the math
  of `anynet.functional`) followed by `SGD.step`. This is the code to read.
- `NumpyFastStep`, on the NumPy backend with plain SGD (momentum 0; weight decay allowed): the
  same math, rearranged so that a step is a few large operations instead of ~25 small ones:
    * the output layer's bias folded into its weights: W2a = [W2; b2] (H+1, K) against hidden
      activations that carry a column of ones, so the layer, and its weight-and-bias gradient,
      is one matrix product (the inputs carry no such column: converting pixels into a
      784-wide contiguous buffer is faster than into a 785-wide one, by more than b1 costs);
    * the hidden layer in (N, H) layout, which suits BLAS best for narrow H; the output layer
      in (K, N) layout, where the softmax's reductions over K classes are fast;
    * the learning rate folded into the small (K, N) output gradient before the weight-gradient
      products, so the (D+1, H) update is one subtraction;
    * no gradient with respect to the input images (the first layer needs none);
    * pixels gathered and converted to floats a chunk of ~1024 rows at a time, into buffers
      allocated once; every operation writes into preallocated memory (NumPy's `out=`).
  It computes the same numbers as the reference up to float rounding (tests hold them together)
  and is 2-3x faster for small networks, where the cost of each call dominates.

Both keep the parameters where the rest of anynet expects them (`params`: W1, b1, W2, b2), so
evaluation, checkpoints and model files see no difference.
"""

from __future__ import annotations

import numpy as np

from anynet.network import TwoLayerNet
from anynet.optim import SGD

CHUNK_ROWS = 1024  # rows gathered and converted at once: big enough to amortise, fits in cache


class ArrayAPIStep:
    """The reference step on any backend: loss_and_grads, then SGD.step.

    `images` uint8 (N, D) and `labels` int (N,) live on the net's backend.
    """

    def __init__(self, net: TwoLayerNet, optimizer: SGD, images, labels, batch_size: int,
                 velocity: dict):
        self.net, self.optimizer = net, optimizer
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.velocity = velocity
        self.perm = None

    def begin_epoch(self, perm: np.ndarray, first_batch: int = 0) -> None:
        self.perm = self.net.backend.asarray(perm, "int64")

    def __call__(self, batch: int, lr: float) -> float:
        xp, B = self.net.xp, self.batch_size
        idx = self.perm[batch * B:(batch + 1) * B]
        X = xp.take(self.images, idx, axis=0)
        t = xp.take(self.labels, idx, axis=0)
        loss, grads = self.net.loss_and_grads_array(X, t)
        self.net.params, self.velocity = self.optimizer.step(
            self.net.params, grads, self.velocity, lr=lr)
        return float(loss)

    @property
    def params(self) -> dict:
        return self.net.params


class NumpyFastStep:
    """Plain SGD on NumPy with preallocated buffers; see the module docstring for the math.

    Takes over `net.params`: they become views into the augmented weight buffers, updated in
    place, so `net` always holds the current parameters.
    """

    def __init__(self, net: TwoLayerNet, optimizer: SGD, images: np.ndarray, labels: np.ndarray,
                 batch_size: int):
        if optimizer.momentum:
            raise ValueError("the fast step implements plain SGD only (momentum 0)")
        D, H, K = net.sizes
        dtype = np.dtype(net.dtype)
        self.net, self.wd = net, optimizer.weight_decay
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)
        self.B, self.H, self.K, self.dtype = batch_size, H, K, dtype
        self.batches_per_chunk = max(1, CHUNK_ROWS // batch_size)

        p = net.params
        self.W1 = np.array(p["W1"], dtype, order="C")
        self.b1 = np.array(p["b1"], dtype)
        self.W2a = np.empty((H + 1, K), dtype)  # [W2; b2]
        self.W2a[:H], self.W2a[H] = p["W2"], p["b2"]
        net.params = {"W1": self.W1, "b1": self.b1, "W2": self.W2a[:H], "b2": self.W2a[H]}

        B, R = batch_size, self.batches_per_chunk * batch_size
        self.X = np.empty((R, D), dtype)           # a chunk of inputs
        self.Y = np.empty((self.batches_per_chunk, K, B), dtype)  # one-hot labels, (K, N) each
        self.A1 = np.empty((B, H + 1), dtype)      # hidden activations (N, H), last column 1
        self.A1[:, H] = 1
        self.mask = np.empty((B, H), bool)
        self.dZ1 = np.empty((B, H), dtype)
        self.P = np.empty((K, B), dtype)            # logits, then probabilities, then dZ2
        self.Yscaled = np.empty((K, B), dtype)
        self.m = np.empty(B, dtype)
        self.s = np.empty(B, dtype)
        self.dW1 = np.empty_like(self.W1)
        self.db1 = np.empty_like(self.b1)
        self.dW2a = np.empty_like(self.W2a)
        self.eye = np.eye(K, dtype=dtype)
        self._views = {}
        self.perm = None
        self.chunk = self.rows_in_chunk = -1

    def begin_epoch(self, perm: np.ndarray, first_batch: int = 0) -> None:
        self.perm, self.chunk = perm, -1

    def _load_chunk(self, chunk: int) -> None:
        """Gather and convert the rows of batches chunk*bpc .. (chunk+1)*bpc - 1."""
        B, bpc = self.B, self.batches_per_chunk
        idx = self.perm[chunk * bpc * B:(chunk + 1) * bpc * B]
        n = idx.shape[0]
        np.multiply(np.take(self.images, idx, axis=0), self.dtype.type(1 / 255), out=self.X[:n])
        onehot = self.eye[np.take(self.labels, idx)]                     # (n, K)
        self.rows_in_chunk = n
        full = n // B
        self.Y[:full] = onehot[:full * B].reshape(full, B, self.K).transpose(0, 2, 1)
        if n % B:
            self.Y[full, :, :n % B] = onehot[full * B:].T
        self.chunk = chunk

    def __call__(self, batch: int, lr: float) -> float:
        chunk, j = divmod(batch, self.batches_per_chunk)
        if chunk != self.chunk:
            self._load_chunk(chunk)
        start = j * self.B
        b = min(self.B, self.rows_in_chunk - start)
        return self._step(self.X[start:start + b], self.Y[j][:, :b], lr, b)

    def _buffers(self, b: int) -> tuple:
        """Views of the step's buffers for a batch of b examples (b < B only for the last)."""
        if b not in self._views:
            self._views[b] = (self.A1[:b], self.P[:, :b], self.mask[:b], self.dZ1[:b],
                              self.m[:b], self.s[:b], self.Yscaled[:, :b])
        return self._views[b]

    def _step(self, X, Y, lr: float, b: int) -> float:
        H, W1, b1, W2a = self.H, self.W1, self.b1, self.W2a
        A1, P, mask, dZ1, m, s, Ys = self._buffers(b)
        Z1 = A1[:, :H]
        # forward: Z1 = X W1 + b1, A1 = relu(Z1), logits Z2^T = (A1 W2 + b2)^T in (K, N)
        np.matmul(X, W1, out=Z1)
        np.add(Z1, b1, out=Z1)
        np.maximum(Z1, 0, out=Z1)                      # A1[:, :H] is Z1: relu in place
        np.matmul(W2a.T, A1.T, out=P)
        # softmax over classes (axis 0), stably; loss = mean(log sum exp - z_target)
        np.maximum.reduce(P, axis=0, out=m)
        np.subtract(P, m, out=P)
        picked = float(np.vdot(P, Y))                  # sum of the targets' shifted logits
        np.exp(P, out=P)
        np.add.reduce(P, axis=0, out=s)
        loss = (float(np.add.reduce(np.log(s))) - picked) / b
        # dZ2 = lr * (P - Y) / N, with P = exp / s: the learning rate rides on this small array
        c = lr / b
        np.divide(c, s, out=s)
        np.multiply(P, s, out=P)
        np.multiply(Y, c, out=Ys)
        np.subtract(P, Ys, out=P)
        # backward: dW2a = A1^T dZ2; dA1 = dZ2 W2^T (before W2 changes); dZ1 = dA1 * relu'(Z1)
        np.matmul(A1.T, P.T, out=self.dW2a)
        np.matmul(P.T, W2a[:H].T, out=dZ1)
        np.greater(Z1, 0, out=mask)
        np.multiply(dZ1, mask, out=dZ1)
        np.matmul(X.T, dZ1, out=self.dW1)
        np.add.reduce(dZ1, axis=0, out=self.db1)
        # update, weight decay as in SGD.step: p <- p - lr * (g + wd * p)
        if self.wd:
            decay = 1 - lr * self.wd
            for p in (W1, b1, W2a):
                np.multiply(p, decay, out=p)
        np.subtract(W1, self.dW1, out=W1)
        np.subtract(b1, self.db1, out=b1)
        np.subtract(W2a, self.dW2a, out=W2a)
        return loss

    @property
    def params(self) -> dict:
        return self.net.params

    @property
    def velocity(self) -> dict:
        return {}


def fast_step_applies(net: TwoLayerNet, optimizer: SGD) -> bool:
    """Whether `NumpyFastStep` can run this training: NumPy backend, plain SGD (momentum 0)."""
    return net.backend.name == "numpy" and optimizer.momentum == 0


def make_train_step(net: TwoLayerNet, optimizer: SGD, images, labels, batch_size: int,
                    velocity: dict, *, fast: bool = True):
    """The training step for this run: the NumPy fast step where it applies and `fast` is
    True, else the reference Array API step."""
    if fast and fast_step_applies(net, optimizer):
        return NumpyFastStep(net, optimizer, images, labels, batch_size)
    return ArrayAPIStep(net, optimizer, images, labels, batch_size, velocity)
