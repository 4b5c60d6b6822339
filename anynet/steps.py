"""Training steps: the plain Array API step, and a fused step behind one seam.

A training step takes batch `i` of the current epoch's permutation, computes the loss and
gradients, and updates the parameters. `make_train_step` picks the implementation:

- `ArrayAPIStep`, the reference, on every backend: `TwoLayerNet.loss_and_grads_array` (the math
  of `anynet.functional`) followed by `SGD.step`. This is the code to read.
- `CompiledStep`, where the backend compiles (JAX: `jax.jit`): the reference step, the same
  functions, as one computation per batch (JAX dispatches each operation separately otherwise,
  ~30x slower).
- `FusedStep`, on every backend with in-place arrays (NumPy, CuPy, PyTorch on any device), for
  SGD with or without momentum (Nesterov, weight decay):
  the same math, rearranged so that a step is a few large operations instead of ~25 small ones:
    * the output layer's bias folded into its weights: W2a = [W2; b2] (H+1, K) against hidden
      activations that carry a column of ones, so the layer, and its weight-and-bias gradient,
      is one matrix product (the inputs carry no such column: converting pixels into a
      784-wide contiguous buffer is faster than into a 785-wide one, by more than b1 costs);
    * the hidden layer in (N, H) layout, which suits BLAS best for narrow H; the output layer
      in (K, N) layout, where the softmax's reductions over K classes are fast;
    * the parameters in one buffer [W1 | b1 | W2a], and so their velocities and gradients: an
      update that is the same for every parameter is one operation over all of them;
    * for plain SGD, the learning rate folded into the small (K, N) output gradient before the
      weight-gradient products, so each weight update is one subtraction, and on PyTorch none
      at all: the update W1 -= X^T dZ1 is a single GEMM that accumulates into W1 (addmm_);
    * with momentum, SGD.step's formulas rearranged so that W1's gradient goes straight into
      its velocity (v = beta v + X^T dZ1, one GEMM that accumulates) and the rest is two
      passes over the parameters (three with Nesterov and weight decay), each one BLAS axpy or
      PyTorch add_ (`_momentum_update` derives them);
    * no gradient with respect to the input images (the first layer needs none);
    * pixels gathered and converted to floats a chunk of ~1024 rows at a time, into buffers
      allocated once; every operation writes into preallocated memory.
  It is written once, over a dozen in-place primitives that the backend seam supplies
  (`Backend.fused_ops`: NumPy's ufuncs, which CuPy shares, and PyTorch's in-place methods).
  It computes the same numbers as the reference up to float rounding (tests hold them together)
  and is 1.5-3x faster, most for small networks, where the cost of each call dominates.
- `GraphedStep`, where the backend captures CUDA graphs (PyTorch on CUDA): the fused step
  recorded once as a CUDA graph (`Backend.graph_capture`) and replayed, one launch per step,
  with the batch indices and learning rate read from device buffers. Not on CuPy, which refuses
  cuBLAS calls (the step's matrix products) during stream capture: there the fused step runs,
  its element-wise chains as CuPy kernels of anynet's own.

Every index a step gathers with is in range by construction: the epoch's order is checked to be
a permutation, labels to be classes, batch numbers to be in the epoch (`check_permutation`),
since on a GPU an index out of range is silent (CuPy) or ends the CUDA context (PyTorch).

All keep the parameters where the rest of anynet expects them (`params`: W1, b1, W2, b2), so
evaluation, checkpoints and model files see no difference, and all return the batch's loss as a
0-d array of the backend: the training loop reads losses a window of batches at a time, so the
device is never made to wait after each batch. (The fused and graphed steps write each batch's
loss into a buffer of the epoch's losses: a loss holds until the same batch of the next epoch.)
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from anynet.backend.contract import Array
from anynet.batches import (  # noqa: F401  (names the steps' users import from here)
    CHUNK_ROWS,
    ChunkedBatches,
    Distorter,
    check_batch,
    check_labels,
    check_permutation,
    chunk_rows,
    epoch_order,
)
from anynet.fused import FusedStep, Rates, one_buffer  # noqa: F401
from anynet.graphed import GraphCaptureUnavailable, GraphedStep, first_cause  # noqa: F401
from anynet.levers import Levers, ema_update
from anynet.network import TwoLayerNet, loss_and_grads, pixels_to_inputs
from anynet.optim import SGD

NO_LEVERS = Levers()


class TrainStep(Protocol):
    """What the training loop (anynet.training.Trainer) asks of every step `make_train_step`
    makes; mypy holds each step class to it."""

    def begin_epoch(self, perm: np.ndarray, rates: np.ndarray | None = None,
                    epoch: int = 0) -> None:
        """Start epoch `epoch` in the order `perm`; `rates`, its batches' learning rates."""
        ...

    def __call__(self, batch: int, lr: float) -> Array:
        """One step on batch `batch` at learning rate `lr`: its loss, a 0-d device array."""
        ...

    @property
    def params(self) -> dict:
        """The current parameters by name (W1, b1, W2, b2)."""
        ...

    @property
    def velocity(self) -> dict:
        """The optimizer's state by parameter name ({} without momentum)."""
        ...

    @property
    def average(self) -> dict:
        """The EMA's m by parameter name ({} without an EMA)."""
        ...


class ArrayAPIStep:
    """The reference step on any backend: loss_and_grads, then SGD.step (and the EMA of the
    weights where `levers` asks for one).

    `images` uint8 (N, D) and `labels` int (N,) live on the net's backend. `levers`
    (`anynet.levers.Levers`): dropout, label smoothing, the EMA's decay; `average`: the EMA's
    m to start from (zeros, or a checkpoint's).
    """

    def __init__(self, net: TwoLayerNet, optimizer: SGD, images: Array, labels: Array,
                 batch_size: int, velocity: dict, distorter: Distorter | None = None, *,
                 levers: Levers | None = None, average: dict | None = None) -> None:
        self.net, self.optimizer = net, optimizer
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.velocity = velocity
        self.levers = levers = levers or NO_LEVERS
        self.average = dict(average or {}) if levers.ema else {}
        if levers.ema and not self.average:
            self.average = {k: net.xp.zeros_like(v) for k, v in net.params.items()}
        self.perm: Array | None = None  # the epoch's order on the device, from begin_epoch
        self.chunks = None if distorter is None and not levers.per_chunk else ChunkedBatches(
            net, images, labels, batch_size, distorter=distorter, levers=levers)

    def begin_epoch(self, perm: np.ndarray, rates: np.ndarray | None = None,
                    epoch: int = 0) -> None:
        """Start epoch `epoch` (0-based; it keys the distortions and dropout masks): `perm`
        orders the training set; `rates`, each batch's learning rate when known ahead (the
        CUDA-graph step keeps them on the device)."""
        perm = check_permutation(perm, self.images.shape[0])
        self.perm = self.net.backend.asarray(perm, "int64")
        if self.chunks is not None:
            self.chunks.begin_epoch(self.perm, epoch)

    def batch_indices(self, batch: int) -> Array:
        """Positions in the training set of batch `batch` of this epoch."""
        B, perm = self.batch_size, epoch_order(self.perm)
        # the standard leaves out-of-bounds slice ends unspecified: clip the last batch's
        return perm[batch * B:min((batch + 1) * B, perm.shape[0])]

    def batch(self, batch: int) -> tuple:
        """(inputs X (b, D), uint8 pixels or floats; labels t (b,); the hidden units' dropout
        mask (b, H) or None; the teacher's targets (b, K) or None) of batch `batch`."""
        if self.chunks is not None:
            return self.chunks.batch(batch)
        xp, idx = self.net.xp, self.batch_indices(batch)
        return xp.take(self.images, idx, axis=0), xp.take(self.labels, idx, axis=0), None, None

    def __call__(self, batch: int, lr: float) -> Array:
        """One SGD step on batch `batch` with learning rate `lr`; returns the batch's loss as a
        0-d array of the backend (reading it would wait for the device)."""
        check_batch(batch, -(-self.images.shape[0] // self.batch_size))
        epoch_order(self.perm)
        X, t, Mh, T = self.batch(batch)
        loss, grads = self.net.loss_and_grads_array(
            X, t, hidden_mask=Mh, label_smoothing=self.levers.label_smoothing, targets=T)
        params, velocity = self.optimizer.step(self.net.params, grads, self.velocity, lr=lr,
                                               materialise=False)
        average = ema_update(self.average, params, self.levers.ema) if self.levers.ema else {}
        # a lazy library (Dask, MLX) computes the loss and the new parameters now, together (the
        # shared forward pass once), so the next step starts from values and the graph never
        # grows; elsewhere this hands the arrays back as they are
        n, m = len(params), len(velocity)
        loss, *arrays = self.net.backend.materialise([loss, *params.values(),
                                                      *velocity.values(), *average.values()])
        self.net.params = dict(zip(params, arrays[:n], strict=True))
        self.velocity = dict(zip(velocity, arrays[n:n + m], strict=True))
        self.average = dict(zip(average, arrays[n + m:], strict=True))
        return loss

    @property
    def params(self) -> dict:
        return self.net.params


class CompiledStep(ArrayAPIStep):
    """The reference step, compiled by the backend (`Backend.compile`: jax.jit on JAX): the
    gather, `loss_and_grads`, `SGD.step` and the EMA of a batch become one computation, instead
    of ~30 separately dispatched operations. Same functions, same math; parameters stay
    immutable.

    Each call donates the state it replaces (parameters, velocities, the EMA's m) to the
    computation (`Backend.compile`'s `donate`), so that XLA writes the new state over the old
    instead of into newly allocated arrays each step (H = 800 with Nesterov momentum and weight
    decay: an epoch 1.44 s against 1.75 s on this project's 2-core CPU). The step starts from
    copies of the arrays it was given, so the caller's stay valid; `params`, `velocity` and
    `average` are valid until the next call (the training loop holds a Ctrl-C back from the
    call until it has stored them: `HeldInterrupts`)."""

    donates = True

    def __init__(self, net: TwoLayerNet, optimizer: SGD, images: Array, labels: Array,
                 batch_size: int, velocity: dict, distorter: Distorter | None = None, *,
                 levers: Levers | None = None, average: dict | None = None) -> None:
        super().__init__(net, optimizer, images, labels, batch_size, velocity, distorter,
                         levers=levers, average=average)
        dtype = net.backend.dtype(net.dtype)
        xp, lv = net.xp, self.levers
        # copies, to be donated: the arrays the caller passed in are never given up
        self.net.params, self.velocity, self.average = (
            {k: xp.asarray(v, copy=True) for k, v in part.items()}
            for part in (net.params, self.velocity, self.average))

        def step_on(state, X, t, Mh, T, lr):
            params, velocity, average = state
            loss, grads = loss_and_grads(params, X, t, hidden_mask=Mh,
                                         label_smoothing=lv.label_smoothing, targets=T)
            params, velocity = optimizer.step(params, grads, velocity, lr=lr)
            if lv.ema:
                average = ema_update(average, params, lv.ema)
            return loss, (params, velocity, average)

        def step(state, images, labels, idx, lr):
            X = pixels_to_inputs(xp.take(images, idx, axis=0), dtype)
            return step_on(state, X, xp.take(labels, idx, axis=0), None, None, lr)

        def step_from(state, images, labels, perm, start, lr):
            # the batch's indices computed inside: slicing perm outside would cost a separately
            # dispatched operation per step (~6% of a step at H = 800 on JAX's CPU)
            idx = xp.take(perm, start + xp.arange(batch_size, dtype=perm.dtype), axis=0)
            return step(state, images, labels, idx, lr)

        compile_ = net.backend.compile
        self._step = compile_(step, donate=(0,))          # the short last batch
        self._step_from = compile_(step_from, donate=(0,))
        self._step_on = compile_(step_on, donate=(0,))    # inputs made outside, chunk by chunk

    def __call__(self, batch: int, lr: float) -> Array:
        check_batch(batch, -(-self.images.shape[0] // self.batch_size))
        perm = epoch_order(self.perm)
        state = (self.net.params, self.velocity, self.average)
        start = batch * self.batch_size
        if self.chunks is not None:
            loss, state = self._step_on(state, *self.chunks.batch(batch), lr)
        elif start + self.batch_size <= perm.shape[0]:
            loss, state = self._step_from(state, self.images, self.labels, perm, start, lr)
        else:
            loss, state = self._step(state, self.images, self.labels, self.batch_indices(batch),
                                     lr)
        self.net.params, self.velocity, self.average = state
        return loss


class HeldInterrupts:
    """A Ctrl-C held back while a donating step (`CompiledStep`: JAX) has given up its old state
    and the loop has not yet stored the new one: a KeyboardInterrupt there would leave the run's
    state (`TrainState`, which a caller may hold) pointing at deleted arrays. Where Python's own
    SIGINT handler is in place, in the main thread, `for_step` puts this one there instead:
    a Ctrl-C inside `with held:` raises KeyboardInterrupt as the block ends, one outside it at
    once, as before. (Handlers of the caller's own, such as the CLI's `StopOnSignals`, whose
    first Ctrl-C raises nothing, are left as they are.) `restore()` puts Python's back."""

    def __init__(self) -> None:
        import signal

        self.holding = self.pending = False
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    @classmethod
    def for_step(cls, step: TrainStep) -> HeldInterrupts | None:
        """One installed for `step` where it donates its state and Python's SIGINT handler is
        in place in this (the main) thread; else None."""
        import signal
        import threading

        if (not getattr(step, "donates", False)
                or threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
            return None
        return cls()

    def _on_sigint(self, signum: int, frame: object) -> None:
        if not self.holding:
            raise KeyboardInterrupt
        self.pending = True

    def __enter__(self) -> None:
        self.holding = True

    def __exit__(self, kind: type | None, *exc: object) -> None:
        self.holding = False
        if self.pending and kind is None:
            self.pending = False
            raise KeyboardInterrupt

    def restore(self) -> None:
        import signal

        signal.signal(signal.SIGINT, self._previous)


def fast_step_applies(net: TwoLayerNet, optimizer: SGD, levers: Levers | None = None) -> bool:
    """Whether `FusedStep` can run this training: a backend with in-place primitives (NumPy,
    CuPy, PyTorch on any device); any SGD (momentum, Nesterov, weight decay) but Nesterov
    with lr * weight_decay >= 1, where its rearranged update would divide by zero (`Rates`);
    every lever of `levers` (dropout, label smoothing, EMA, a teacher: the fused step has them
    all)."""
    if optimizer.nesterov and optimizer.lr * optimizer.weight_decay >= 1:
        return False
    return net.backend.fused_ops() is not None


def make_train_step(net: TwoLayerNet, optimizer: SGD, images: Array, labels: Array,
                    batch_size: int, velocity: dict, *, fast: bool = True,
                    distorter: Distorter | None = None, levers: Levers | None = None,
                    average: dict | None = None) -> TrainStep:
    """The training step for this run: where `fast` is True, the fused step where it applies
    (as a CUDA graph where the backend captures one), the compiled reference step where the
    backend compiles (JAX); else the reference. `levers` and `average` as `ArrayAPIStep` takes
    them."""
    args = (net, optimizer, images, labels, batch_size, velocity)
    levers = levers or NO_LEVERS
    if fast and fast_step_applies(net, optimizer, levers):
        # distortions, dropout masks and a teacher's targets are made a chunk at a time: no
        # single graph per step
        drawn = distorter is not None or levers.per_chunk
        capture = net.backend.graph_capture() if not drawn else None
        if capture is not None:
            return GraphedStep(*args, capture, levers=levers, average=average)
        return FusedStep(*args, distorter=distorter, levers=levers, average=average)
    if fast and net.backend.compiles:
        return CompiledStep(*args, distorter=distorter, levers=levers, average=average)
    return ArrayAPIStep(*args, distorter=distorter, levers=levers, average=average)
