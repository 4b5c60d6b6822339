"""The fused training step: `FusedStep`, the reference step's math (training's levers included:
dropout, label smoothing, the EMA of the weights) as a few large in-place operations over the
seam's primitives (`Backend.fused_ops`). anynet.graphed records it as a CUDA graph. anynet.steps'
docstring tells how it rearranges the math and where it runs; tests hold it equal to the
reference step (anynet.steps.ArrayAPIStep) on every backend."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from anynet.backend.contract import Array, FusedOps
from anynet.batches import (
    Distorter,
    check_batch,
    check_labels,
    check_permutation,
    chunk_rows,
    epoch_order,
)
from anynet.distill import ChunkTargets
from anynet.levers import Levers
from anynet.network import TwoLayerNet
from anynet.optim import SGD


class FusedStep:
    """SGD as a few large in-place operations; see the module docstring for the math.

    Written once over a small set of in-place primitives (`Backend.fused_ops`). Takes over
    `net.params`: they become the step's own arrays (W2, b2 views into [W2; b2]), updated in
    place, so `net` always holds the current parameters. With momentum, `velocity` (the
    optimizer's state, zeros or a checkpoint's) is taken over the same way, and with an EMA of
    the weights (`levers.ema`) its m, `average` (zeros or a checkpoint's).

    The levers (`anynet.levers.Levers`): label smoothing is in the targets Y, which are rows of
    a smoothed identity, or with a teacher its targets for the chunk (`anynet.distill`:
    computed on the backend as the chunk is loaded, or without distortions read from a table
    made once); dropout's masks are drawn on the host for a chunk and uploaded into buffers of
    their own (the inputs' mask is applied to the chunk as it is loaded, the hidden units' in
    each step, forward and backward: one multiply each); the EMA is one pass over every
    parameter at the end of the step (`FusedOps.ema_`).
    """

    def __init__(self, net: TwoLayerNet, optimizer: SGD, images: Array, labels: Array,
                 batch_size: int, velocity: dict | None = None,
                 distorter: Distorter | None = None, *,
                 levers: Levers | None = None, average: dict | None = None) -> None:
        ops = net.backend.fused_ops()
        if ops is None:
            raise ValueError(f"the fused step needs in-place arrays; {net.backend.name} has none")
        self.ops: FusedOps = ops  # the seam's contract: mypy checks every call against it
        D, H, K = net.sizes
        dtype = np.dtype(net.dtype)
        self.net, self.wd = net, optimizer.weight_decay
        self.momentum, self.nesterov = optimizer.momentum, optimizer.nesterov
        check_labels(net.backend, labels, K)
        self.images, self.labels = images, labels
        self.n = images.shape[0]
        self.n_batches = -(-self.n // batch_size)
        self.B, self.H, self.K, self.dtype = batch_size, H, K, dtype
        self.batches_per_chunk = chunk_rows(batch_size) // batch_size
        self.distorter, self.epoch, self.levers = distorter, 0, levers or Levers()
        self.teacher_targets = ChunkTargets.of(self.levers, images, distorter is not None)

        p = {k: net.backend.to_numpy(v) for k, v in net.params.items()}
        # [W1 | b1 | W2a], W2a = [W2; b2] (H+1, K): one buffer, the parameters views into it
        self.params_flat, (self.W1, self.b1, self.W2a) = one_buffer(ops, dtype, p)
        net.params = {"W1": self.W1, "b1": self.b1, "W2": self.W2a[:H], "b2": self.W2a[H]}

        B, R = batch_size, self.batches_per_chunk * batch_size
        self.X = ops.empty((R, D), dtype)                  # a chunk of inputs
        # its pixels, gathered into memory that stays: a fresh 800 kB block per chunk would be
        # returned to the OS and faulted back in every time
        self.pixels = ops.empty((R, D), np.uint8)
        self.Y = ops.empty((self.batches_per_chunk, K, B), dtype)  # one-hot labels, (K, N)
        # the gradients in the same layout: [dW1 | db1 | dW2a]
        self.grads_flat, (self.dW1, self.db1, self.dW2a) = one_buffer(
            ops, dtype, {k: np.zeros_like(v) for k, v in p.items()})
        # [b1 | W2a], the small parameters, and their gradients: flat[D H:]
        self.params_rest, self.grads_rest = self.params_flat[D * H:], self.grads_flat[D * H:]
        eps = self.levers.label_smoothing     # a label's targets: one-hot, or smoothed
        self.eye = ops.host(np.eye(K) * (1 - eps) + eps / K if eps else np.eye(K), dtype)
        if self.momentum or self.levers.ema:
            self.tmp = ops.empty(self.params_flat.shape, dtype)
        self._velocity = self._velocity_buffers(velocity, p) if self.momentum else None
        self._average = self._lever_buffers(average, p, R)
        # each batch's loss, where the step writes it: a batch's holds until the same batch of
        # the next epoch (the Trainer reads every window within its epoch)
        self.losses = ops.empty((self.n_batches,), dtype)
        # b -> (Z1, A1, P, mask, dZ1, m, s); P: logits, probs, then dZ2
        self._buffer_sets: dict[int, tuple[Array, ...]] = {}
        self._buffers(B)  # made here, never inside a capture's warm-up (its pool can be freed)
        # the buffers never move, so each batch's views into them are made once, not per step
        self._batch_views = [(self.X[j * B:(j + 1) * B], self.Y[j], self._hidden_mask(j * B, B))
                             for j in range(self.batches_per_chunk)]
        self.perm: Array | None = None  # the epoch's order on the device, from begin_epoch
        self.chunk = self.rows_in_chunk = -1
        self.ahead: Any = None  # a DistortionWorker making the next chunk (distort_ahead)

    def _velocity_buffers(self, velocity: dict | None, p: dict) -> dict:
        """The velocities in the parameters' layout (one buffer, starting from `velocity` or
        zeros), room for a * v, and the flush of subnormal velocities; returns the velocities
        by parameter name, views into the buffer."""
        ops, dtype, D, H = self.ops, self.dtype, self.W1.shape[0], self.H
        v = {k: self.net.backend.to_numpy(v) for k, v in (velocity or {}).items()}
        v = v or {k: np.zeros_like(p[k]) for k in p}
        self.velocity_flat, (self.vW1, self.vb1, self.vW2a) = one_buffer(ops, dtype, v)
        self.velocity_rest = self.velocity_flat[D * H:]
        # A velocity whose gradient stays 0 (pixels always blank) decays as mu^t into the
        # subnormal floats, where x86 arithmetic takes ~100x as long (measured: NumPy at
        # H = 800 with momentum 0.9 and no weight decay, 4% of W1's velocity subnormal, an
        # epoch 1.9x a plain one). So every `flush_every` batches (as long as a velocity
        # takes to decay from `tiny` to the subnormals) those below `tiny` are set to 0:
        # what the CPU's flush-to-zero mode would do, sooner. They move a parameter by
        # under lr * 2e-31 (float32); weight decay keeps velocities away from 0 anyway.
        finfo = np.finfo(dtype)
        self.tiny = float(finfo.tiny) * 2.0 ** 24
        self.flush_every = max(1, int(24 * np.log(2) / -np.log(self.momentum)))
        return {"W1": self.vW1, "b1": self.vb1, "W2": self.vW2a[:H], "b2": self.vW2a[H]}

    def _lever_buffers(self, average: dict | None, p: dict, R: int) -> dict | None:
        """Room for a chunk's dropout masks, and the EMA's m in the parameters' layout (one
        buffer, from `average` or zeros); returns m by parameter name, views into the buffer
        (None without an EMA)."""
        ops, dtype, D, H, lv = self.ops, self.dtype, self.W1.shape[0], self.H, self.levers
        self.Mx: Array | None = ops.empty((R, D), dtype) if lv.input_dropout else None
        self.Mh: Array | None = ops.empty((R, H), dtype) if lv.dropout else None
        self.average_flat: Array | None = None
        if not lv.ema:
            return None
        m = {k: self.net.backend.to_numpy(v) for k, v in (average or {}).items()}
        m = m or {k: np.zeros_like(p[k]) for k in p}
        self.average_flat, (aW1, ab1, aW2a) = one_buffer(ops, dtype, m)
        return {"W1": aW1, "b1": ab1, "W2": aW2a[:H], "b2": aW2a[H]}

    def _hidden_mask(self, start: int, b: int) -> Array | None:
        """The hidden units' dropout mask of the chunk's rows start .. start + b - 1, or None."""
        return None if self.Mh is None else self.Mh[start:start + b]

    def distort_ahead(self, worker: Any) -> None:
        """Let `worker` (an `anynet.distort_worker.DistortionWorker` over this step's images,
        distortion and seed) gather and distort each next chunk while this one trains. The
        chunks are the same, bit for bit; a chunk the worker has not made (it failed, or the
        epoch starts mid-way) is made here as before."""
        self.ahead = worker

    def begin_epoch(self, perm: np.ndarray, rates: np.ndarray | None = None,
                    epoch: int = 0) -> None:
        perm = check_permutation(perm, self.n)
        self.perm, self.chunk, self.epoch = self.ops.host(perm, np.int64), -1, epoch
        self._ask_ahead(0)

    def _chunk_order(self, chunk: int) -> Array:
        """The rows of chunk `chunk`: batches chunk*bpc .. (chunk+1)*bpc - 1 of the epoch."""
        rows = self.batches_per_chunk * self.B
        return epoch_order(self.perm)[chunk * rows:(chunk + 1) * rows]

    def _ask_ahead(self, chunk: int) -> None:
        """Have the worker, where there is one, make chunk `chunk` of this epoch (if any)."""
        if self.ahead is not None:
            idx = self._chunk_order(chunk)
            if idx.shape[0]:   # (none past the epoch's last chunk)
                self.ahead.request(self.epoch, chunk, idx)

    def _load_chunk(self, chunk: int) -> None:
        """Gather, convert and distort the rows of batches chunk*bpc .. (chunk+1)*bpc - 1."""
        ops, B, K = self.ops, self.B, self.K
        idx = self._chunk_order(chunk)
        n = idx.shape[0]
        # the worker's, where it made this chunk: what chunk_inputs makes here, bit for bit
        made = self.ahead.result(self.epoch, chunk) if self.ahead is not None else None
        if made is None:
            made = chunk_inputs(ops, self.images, idx, self.X, self.pixels, self.distorter,
                                (self.epoch, chunk))
        if self.distorter is not None:  # (else made is X itself)
            ops.copy_(self.X[:n], made)
        self._ask_ahead(chunk + 1)   # made there while this chunk trains
        labels = ops.take(self.labels, idx)
        # the rows' targets (n, K): one-hot or smoothed, or the teacher's, which sees the
        # image the student sees, before its input dropout
        targets = (ops.take(self.eye, labels) if self.teacher_targets is None
                   else self.teacher_targets(self.X[:n], labels, idx))
        if self.levers.masks:  # the chunk's masks, drawn on the host as ChunkedBatches draws
            Mx, Mh = self.levers.draw_masks((self.epoch, chunk), n, self.X.shape[1], self.H,
                                            self.dtype)
            # (a mask is drawn exactly where its buffer was made: the same lever asks for both)
            if Mx is not None and self.Mx is not None:
                ops.upload_(self.Mx[:n], Mx)
                ops.mul_(self.X[:n], self.Mx[:n])           # X' = X * M_x
            if Mh is not None and self.Mh is not None:
                ops.upload_(self.Mh[:n], Mh)
        full = n // B
        self.Y[:full] = targets[:full * B].reshape(full, B, K).swapaxes(1, 2)
        if n % B:
            self.Y[full, :, :n % B] = targets[full * B:].T
        self.rows_in_chunk = n
        self.chunk = chunk

    def __call__(self, batch: int, lr: float) -> Array:
        check_batch(batch, self.n_batches)
        chunk, j = divmod(batch, self.batches_per_chunk)
        if chunk != self.chunk:
            self._load_chunk(chunk)
        if self.momentum and batch % self.flush_every == 0:
            self.ops.zero_tiny_(self.velocity_flat, self.tiny, self.tmp)
        start, loss = j * self.B, self.losses[batch:batch + 1]
        if start + self.B <= self.rows_in_chunk:
            X, Y, Mh = self._batch_views[j]
            self._step(X, Y, self._rates(lr, self.B), self.B, loss, Mh)
        else:
            b = self.rows_in_chunk - start   # the epoch's short last batch
            self._step(self.X[start:start + b], self.Y[j][:, :b], self._rates(lr, b), b, loss,
                       self._hidden_mask(start, b))
        return self.losses[batch]

    def _rates(self, lr: float, b: int) -> Rates:
        """The step's scalars for learning rate `lr` and a batch of b (see `Rates`)."""
        mu, wd = self.momentum, self.wd
        if not mu:
            return Rates(lr / b, 1 - lr * wd, -lr, 0.0, 0.0, 0.0, 0.0)
        if not self.nesterov:
            return Rates(1 / b, 1 - lr * wd, -lr, 0.0, mu, wd / mu, -lr)
        beta = mu * (1 - lr * wd)
        if beta <= 0:
            raise ValueError(f"Nesterov momentum with lr * weight_decay >= 1 (lr {lr}, weight "
                             f"decay {wd}) has no fused step")
        return Rates(1 / b, 1 - lr * wd, -lr, lr * mu, beta, wd / beta, -lr * (1 + mu))

    def _buffers(self, b: int) -> tuple[Array, ...]:
        """The step's buffers for a batch of b examples: made once for b = B, and once more
        for a shorter last batch (contiguous, as every backend's out= wants)."""
        if b not in self._buffer_sets:
            o, H, K, dt = self.ops, self.H, self.K, self.dtype
            A1 = o.empty((b, H + 1), dt)                     # hidden activations, last column 1
            A1[:, H] = 1
            # Z1 apart from A1, contiguous: element-wise work on a strided view costs twice
            self._buffer_sets[b] = (o.empty((b, H), dt), A1, o.empty((K, b), dt),
                                    o.empty((b, H), bool), o.empty((b, H), dt),
                                    o.empty((b,), dt), o.empty((b,), dt))
        return self._buffer_sets[b]

    def _step(self, X: Array, Y: Array, rates: Rates, b: int, loss: Array,
              Mh: Array | None = None) -> None:
        """One step on inputs X (b, D) and targets Y (K, b) (one-hot, or label-smoothed);
        `rates` from `_rates` (numbers, or for the CUDA-graph step 1-element device arrays);
        the batch's loss goes into `loss`, a 1-element array; `Mh` (b, H): the hidden units'
        dropout mask, or None. Every operation is one of the seam's primitives, and writes into
        memory that already exists: what a CUDA graph can record and replay."""
        o, H, W1, b1, W2a = self.ops, self.H, self.W1, self.b1, self.W2a
        Z1, A1, P, mask, dZ1, m, s = self._buffers(b)
        # forward: Z1 = X W1 + b1, A1 = relu(Z1) (* M), logits Z2^T = (A1 W2 + b2)^T in (K, N)
        o.mm(X, W1, out=Z1)
        o.bias_relu_(Z1, b1, A1[:, :H])
        if Mh is not None:
            o.mul_(A1[:, :H], Mh)
        o.mm(W2a.T, A1.T, out=P)
        # softmax over classes (axis 0), stably; loss = mean(log sum exp - sum_k Y_k z_k);
        # dZ2 = c (softmax(P) - Y), c = lr / N: for plain SGD the learning rate rides on this
        # small array; with momentum the velocity sums gradients, so c = 1 / N
        o.softmax_xent_(P, Y, rates.c, m, s, loss)
        # backward: dW2a = A1^T dZ2; dA1 = dZ2 W2^T (before W2 changes); dZ1 = dA1 * relu'(Z1)
        o.mm(A1.T, P.T, out=self.dW2a)
        o.mm(P.T, W2a[:H].T, out=dZ1)
        if Mh is not None:
            o.mul_(dZ1, Mh)                            # dA1 = (dZ2 W2^T) * M
        o.relu_backward_(dZ1, Z1, mask)
        o.colsum(dZ1, out=self.db1)
        if self.momentum:
            self._momentum_update(X, dZ1, rates)
        else:
            self._plain_update(X, dZ1, rates)
        if self.average_flat is not None:              # m <- decay m + (1 - decay) p
            o.ema_(self.average_flat, self.params_flat, self.levers.ema, self.tmp)

    def _plain_update(self, X: Array, dZ1: Array, rates: Rates) -> None:
        """SGD.step without momentum, weight decay as in SGD.step: p <- p - lr * (g + wd * p),
        every parameter at once, the learning rate already inside dZ1 and dW2a."""
        o, W1 = self.ops, self.W1
        if self.wd:
            o.mul_(self.params_flat, rates.decay)
        o.sub_mm_(W1, X.T, dZ1, self.dW1)              # W1 -= X^T dZ1 (lr already inside)
        o.sub_(self.params_rest, self.grads_rest)      # b1 -= db1, [W2; b2] -= dW2a

    def _momentum_update(self, X: Array, dZ1: Array, rates: Rates) -> None:
        """SGD.step with momentum, in place, for every parameter p with gradient g at once:
            v' = mu v + g + wd p;  p' = p - lr v',  Nesterov: p' = p - lr (g + wd p + mu v').

        Rearranged into the fewest passes over the parameters, W1's gradient X^T dZ1 never
        stored: it goes into W1's velocity inside the GEMM, v = beta v + X^T dZ1 (`gemm_acc_`).
          heavy ball: v += (wd / mu) p;  v = mu v + g;  p += -lr v.
          Nesterov:   g + wd p = v' - mu v, so p' = q - lr (1 + mu) v', q = p + lr mu v; and
                      v' = mu v + wd p + g = beta (v + k q) + g, beta = mu (1 - lr wd), k = wd/beta:
                      p += lr mu v;  v += k p;  v = beta v + g;  p += -lr (1 + mu) v.
        Three passes (two without weight decay), each one axpy, the first two one call
        (`look_ahead_`: one pass on NumPy with one BLAS thread). The scalars: `_rates`.
        Where the seam has `momentum_` (CuPy: one kernel), SGD.step's own formula runs over all
        the parameters in one launch instead."""
        o, wd = self.ops, self.wd
        fused = getattr(o, "momentum_", None)
        if fused is not None:
            o.mm(X.T, dZ1, out=self.dW1)
            fused(self.params_flat, self.grads_flat, self.velocity_flat, wd, self.momentum,
                  rates.neg_lr, self.nesterov)
            return
        P, V, T = self.params_flat, self.velocity_flat, self.tmp
        if self.nesterov and wd:
            o.look_ahead_(P, V, rates.lr_mu, rates.k, T)   # q = p + lr mu v; v + k q
        elif self.nesterov:
            o.axpy_(P, rates.lr_mu, V, T)              # q = p + lr mu v
        elif wd:
            o.axpy_(V, rates.k, P, T)                  # v + k p
        o.gemm_acc_(self.vW1, X.T, dZ1, rates.beta, self.dW1)   # v' = beta v + X^T dZ1
        o.mul_(self.velocity_rest, rates.beta)         # ... and for b1, [W2; b2]: v' = beta v + g
        o.add_(self.velocity_rest, self.grads_rest)
        o.axpy_(P, rates.v_rate, V, T)                 # p' = p - lr v', or q - lr (1 + mu) v'

    @property
    def params(self) -> dict:
        return self.net.params

    @property
    def velocity(self) -> dict:
        return self._velocity if self._velocity is not None else {}

    @property
    def average(self) -> dict:
        """The EMA's m by parameter name ({} without an EMA)."""
        return self._average if self._average is not None else {}


def chunk_inputs(ops: FusedOps, images: Array, idx: Array, X: Array, pixels: Array,
                 distorter: Distorter | None, key: tuple[int, int]) -> Array:
    """A chunk's inputs (n, D), n = len(idx): the uint8 rows `idx` of `images` gathered and
    scaled to [0, 1] into X[:n] (`pixels`: room for the gathered rows), then distorted by
    `distorter` (an `anynet.augment.Distorter`, or None) with `key` (epoch, chunk). Returns
    X[:n], or the distorted rows, a new array. The fused step and its distortion worker
    (anynet.distort_worker) both make their chunks here: the same images, bit for bit."""
    n = idx.shape[0]
    ops.load_rows(images, idx, X[:n], 1 / 255, pixels[:n])
    return X[:n] if distorter is None else distorter(X[:n], key)


class Rates(NamedTuple):
    """A step's scalars, from its learning rate lr and batch size N (`FusedStep._rates`): numbers,
    or for the CUDA-graph step 1-element device arrays (`GraphedStep._graph_step`).

    c       the factor on dZ2 = c (softmax - Y): lr / N for plain SGD (the learning rate rides on
            this small array), 1 / N with momentum (the velocity sums gradients)
    decay   1 - lr wd: plain SGD's weight decay, p <- decay p - lr g
    neg_lr  -lr (for a seam's `momentum_`, which takes SGD.step's own scalars)
    lr_mu   lr mu: Nesterov's look-ahead q = p + lr mu v
    beta    the velocity's factor in v <- beta v + g: mu, with Nesterov mu (1 - lr wd)
    k       weight decay folded into the velocity, v <- v + k p: wd / beta
    v_rate  the step along the new velocity, p <- p + v_rate v': -lr, with Nesterov -lr (1 + mu)
    """

    c: Any
    decay: Any
    neg_lr: Any
    lr_mu: Any
    beta: Any
    k: Any
    v_rate: Any


def one_buffer(ops: FusedOps, dtype: np.dtype,
               params: dict[str, np.ndarray]) -> tuple[Array, list[Array]]:
    """Host arrays W1 (D, H), b1 (H,), W2 (H, K), b2 (K,) as one new buffer of the backend,
    [W1 | b1 | W2a] with W2a = [W2; b2] (H+1, K), and the three views (W1, b1, W2a) into it."""
    W2a = np.concatenate([params["W2"], params["b2"][None, :]])
    parts = (params["W1"], params["b1"], W2a)
    flat = ops.host(np.concatenate([np.ravel(a) for a in parts]), dtype)
    views, start = [], 0
    for a in parts:
        views.append(flat[start:start + a.size].reshape(a.shape))
        start += a.size
    return flat, views
