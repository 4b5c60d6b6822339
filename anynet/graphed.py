"""The CUDA-graph step: `GraphedStep`, the fused step (anynet.fused) recorded once as a CUDA graph
and replayed, where the backend captures one (`Backend.graph_capture`: PyTorch on CUDA).
anynet.steps' docstring tells where each step runs; tests hold it equal to the reference step
(anynet.steps.ArrayAPIStep) on every backend, with a strict CPU stand-in for the capture
(tests/fake_capture.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from anynet.backend.contract import Array
from anynet.batches import check_batch, epoch_order
from anynet.fused import FusedStep, Rates
from anynet.levers import Levers
from anynet.network import TwoLayerNet
from anynet.optim import SGD

# `Backend.graph_capture`'s capture(fn) -> replay, and what `_capture` makes of it: the replay,
# or False where capture failed (None: not tried yet)
Replay = Callable[[], object]
Capture = Callable[[Callable[[], None]], Replay]


class GraphCaptureUnavailable(UserWarning):
    """CUDA graph capture failed; training goes on with the fused step, launch by launch."""


class GraphedStep(FusedStep):
    """The fused step as one CUDA graph per batch: captured once, replayed every step.

    A graph replays fixed work on fixed memory, so everything that changes from batch to
    batch lives in device buffers the graph reads: the epoch's permutation, a batch counter k,
    each batch's learning rate. One replay gathers batch k (rows perm[kB : kB + B]), converts
    its pixels, runs `FusedStep._step` with rates computed from lr[k] on the device, writes
    the loss to losses[k] and adds 1 to k: one launch instead of ~40, and no host work
    between them. The 0-d loss a call returns is losses[k]: it holds until the same batch of
    the next epoch (the Trainer reads every window within its epoch). The host only uploads
    the permutation and the rates once an epoch (and the counter when a run resumes
    mid-epoch). The epoch's short last batch, if any, takes the fused step.

    `capture(fn) -> replay` comes from `Backend.graph_capture` on CUDA; the CPU test suite
    passes a strict fake (tests/fake_capture.py) that records the seam's primitives once and
    replays them without running Python. So `_graph_step` does everything through the
    primitives, into buffers made before capture (a capture's warm-up may allocate from a pool
    that is freed if capture fails), and reads nothing back to the host. Where capture fails, a
    `GraphCaptureUnavailable` warning names the first cause and the fused step runs (in the
    tests, the warning is an error).

    Of training's levers, label smoothing (in the targets) and the EMA of the weights (a pass
    inside the step) are recorded with the step; dropout is not: its masks are drawn on the
    host for each chunk, as distortions are, so a run with dropout takes the fused step
    (`make_train_step`), and this step refuses it (ValueError).
    """

    def __init__(self, net: TwoLayerNet, optimizer: SGD, images: Array, labels: Array,
                 batch_size: int, velocity: dict | None, capture: Capture, *,
                 levers: Levers | None = None, average: dict | None = None) -> None:
        if levers is not None and levers.masks:
            raise ValueError("the CUDA-graph step has no dropout: its masks are drawn on the "
                             "host a chunk at a time; use the fused step")
        super().__init__(net, optimizer, images, labels, batch_size, velocity, levers=levers,
                         average=average)
        o, B, D, K, dt = self.ops, self.B, net.sizes[0], self.K, self.dtype
        self.capture = capture
        self.replay: Replay | Literal[False] | None = None
        self.n_full = self.n // B                      # batches the graph runs
        self.perm_device = o.empty((self.n,), np.int64)
        self.rates_device = o.host(np.zeros(-(-self.n // B)), dt)
        self.rates_host = np.full(-(-self.n // B), np.nan)
        self.loss_now = o.empty((1,), dt)              # the replay's loss, before losses[k]
        self.k = o.host(np.zeros(1, np.int64))         # the batch the next replay trains
        self.next_batch: int | None = None             # ... as the host knows it
        self.arange = o.host(np.arange(B), np.int64)
        self.kB, self.pos, self.idx = (o.empty((1,), np.int64), o.empty((B,), np.int64),
                                       o.empty((B,), np.int64))
        self.Xg, self.pixels_g = o.empty((B, D), dt), o.empty((B, D), np.uint8)
        self.Yg = o.empty((K, B), dt)
        # every training label's targets (one-hot or smoothed), (K, N): a batch's are then
        # one gather
        self.targets = o.empty((K, self.n), dt)
        o.copy_(self.targets, o.take(self.eye, labels).T)
        self.lr_now = o.empty((1,), dt)
        self.rates_now = Rates(*(o.empty((1,), dt) for _ in Rates._fields))
        self.wd_device = o.host(np.full(1, self.wd), dt)

    def begin_epoch(self, perm: np.ndarray, rates: np.ndarray | None = None,
                    epoch: int = 0) -> None:
        super().begin_epoch(perm, epoch=epoch)
        self.ops.copy_(self.perm_device, self.perm)
        if rates is not None:
            self.rates_host[:] = rates
            self.ops.upload_(self.rates_device, np.asarray(rates, self.dtype))
        self.next_batch = None  # the counter is set on the first batch

    def __call__(self, batch: int, lr: float) -> Array:
        check_batch(batch, self.n_batches)
        epoch_order(self.perm)  # the replay gathers by perm_device: uninitialised before it
        if batch >= self.n_full or self.replay is False:
            return super().__call__(batch, lr)
        if self.replay is None:
            self.replay = self._capture()
            if self.replay is False:
                return super().__call__(batch, lr)
        o = self.ops
        if batch != self.next_batch:
            o.upload_(self.k, np.array([batch], np.int64))
        if self.rates_host[batch] != lr:  # not given ahead, or not what was given
            self.rates_host[batch] = lr
            o.upload_(self.rates_device[batch:batch + 1], np.array([lr], self.dtype))
        self.replay()
        self.next_batch = batch + 1
        return self.losses[batch]

    def _graph_step(self) -> None:
        """What one replay does: batch k, entirely from device buffers."""
        o, B = self.ops, self.B
        o.mul_into(self.k, B, out=self.kB)
        o.add_into(self.arange, self.kB, out=self.pos)       # kB, kB + 1, ..., kB + B - 1
        o.take_into(self.perm_device, self.pos, out=self.idx)
        o.load_rows(self.images, self.idx, self.Xg, 1 / 255, self.pixels_g)
        o.take_into(self.targets, self.idx, out=self.Yg, axis=1)
        o.take_into(self.rates_device, self.k, out=self.lr_now)
        self._step(self.Xg, self.Yg, self._device_rates(), B, self.loss_now)
        o.put_(self.losses, self.k, self.loss_now)
        o.add_(self.k, 1)

    def _device_rates(self) -> Rates:
        """`_rates(lr, B)` computed on the device from lr in `lr_now`; the scalars that do not
        depend on lr stay numbers."""
        o, lr, r, mu, wd = self.ops, self.lr_now, self.rates_now, self.momentum, self.wd
        o.mul_into(lr, -wd, out=r.decay)
        o.add_(r.decay, 1.0)                             # 1 - lr wd
        o.mul_into(lr, -1.0, out=r.neg_lr)
        if not mu:
            o.mul_into(lr, 1 / self.B, out=r.c)
            return Rates(r.c, r.decay, r.neg_lr, 0.0, 0.0, 0.0, 0.0)
        if not self.nesterov:
            return Rates(1 / self.B, r.decay, r.neg_lr, 0.0, mu, wd / mu, r.neg_lr)
        o.mul_into(lr, mu, out=r.lr_mu)
        o.mul_into(r.decay, mu, out=r.beta)              # mu (1 - lr wd)
        o.copy_(r.k, self.wd_device)
        o.div_(r.k, r.beta)                              # wd / beta
        o.mul_into(lr, -(1 + mu), out=r.v_rate)
        return Rates(1 / self.B, r.decay, r.neg_lr, r.lr_mu, r.beta, r.k, r.v_rate)

    def _capture(self) -> Replay | Literal[False]:
        """The replay of one captured step, or False (with a warning) where capture fails.
        Capturing runs the step once to warm up: the state it changes is put back."""
        import warnings

        o = self.ops
        state = [self.params_flat, self.k, self.losses]
        if self.momentum:
            state.append(self.velocity_flat)
        if self.average_flat is not None:
            state.append(self.average_flat)
        saved = [o.clone(a) for a in state]
        replay: Replay | Literal[False]
        try:
            replay = self.capture(self._graph_step)
        except Exception as e:  # CUDA reports capture problems in many exception types
            replay = False
            warnings.warn(GraphCaptureUnavailable(
                f"CUDA graph capture failed ({first_cause(e)}); training goes on with the "
                "fused step, one launch per operation"), stacklevel=3)
        for array, copy in zip(state, saved, strict=True):
            o.copy_(array, copy)
        return replay


def first_cause(error: BaseException) -> str:
    """What went wrong first, as 'Type: message', with what it led to: a capture that fails
    inside the step is ended in a `finally` (CuPy) or `__exit__` (PyTorch), whose own error
    (cudaErrorStreamCaptureInvalidated) would otherwise hide the cause."""
    chain, seen = [error], {id(error)}
    while True:
        e = chain[-1].__cause__ or chain[-1].__context__
        if e is None or id(e) in seen:
            break
        chain.append(e)
        seen.add(id(e))
    text = f"{type(chain[-1]).__name__}: {chain[-1]}"
    if len(chain) > 1:
        text += f"; then {type(error).__name__}: {error}"
    return text
