"""Stochastic gradient descent and learning-rate schedules.

The optimizer takes gradients that were computed elsewhere (`TwoLayerNet.loss_and_grads`) and
returns new parameters; it never computes a gradient. The step is a pure function of
(params, grads, state): it returns new arrays rather than writing into the old ones, so it works
on immutable arrays (JAX) as well as on NumPy, CuPy and PyTorch.

One step, for every parameter p with gradient g (the PyTorch convention):
    g <- g + weight_decay * p                 L2 penalty (weight_decay / 2) * ||p||^2
    v <- momentum * v + g                     velocity (only when momentum > 0)
    d <- g + momentum * v  if nesterov  else  v
    p <- p - lr * d
With momentum = 0 this is plain SGD, p <- p - lr * g, and there is no state. On a lazy library
(Dask, MLX) the new parameters and state are computed before they are returned
(`anynet.backend.materialise`), so a loop's graph never grows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from array_api_compat import array_namespace

from anynet.backend import materialise as materialise_arrays
from anynet.config import check_sgd

SCHEDULES = ("constant", "step", "cosine")


@dataclass(frozen=True)
class SGD:
    """SGD with optional momentum, Nesterov momentum and weight decay (see the module docstring)."""

    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self):
        values = {name: getattr(self, name) for name in ("lr", "momentum", "nesterov",
                                                         "weight_decay")}
        check_sgd(values)  # the same rules as TrainConfig's (ValueError naming the field)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def init(self, params: dict) -> dict:
        """Optimizer state for `params`: a zero velocity per parameter; {} without momentum."""
        if self.momentum == 0:
            return {}
        return {k: array_namespace(v).zeros_like(v) for k, v in params.items()}

    def step(
        self, params: dict, grads: dict, state: dict, lr: float | None = None, *,
        materialise: bool = True,
    ) -> tuple[dict, dict]:
        """One update: returns (new params, new state); the inputs are left as they were.

        `lr` overrides the learning rate for this step (a schedule's value). `materialise=False`
        leaves a lazy library's results unevaluated, for a caller that evaluates them together
        with more (the training step, with the loss: one Dask `persist` a step instead of two).
        """
        lr = self.lr if lr is None else lr
        mu, wd = self.momentum, self.weight_decay
        new_params, new_state = {}, {}
        for k, p in params.items():
            g = grads[k]
            if wd:
                g = g + wd * p
            if mu:
                v = mu * state[k] + g
                new_state[k] = v
                g = g + mu * v if self.nesterov else v
            new_params[k] = p - lr * g
        # a lazy library (Dask, MLX) computes them now, so the next step starts from values and
        # a loop's graph never grows; for every other library this hands them back as they are
        if not materialise:
            return new_params, new_state
        arrays = materialise_arrays([*new_params.values(), *new_state.values()])
        return (dict(zip(new_params, arrays[:len(new_params)], strict=True)),
                dict(zip(new_state, arrays[len(new_params):], strict=True)))


def make_schedule(name: str, base_lr: float, total_steps: int) -> Callable[[int], float]:
    """Learning rate as a function of the step number 0 .. total_steps - 1.

    constant: base_lr throughout.
    step:     base_lr, divided by 10 at half of training and again at three quarters.
    cosine:   base_lr * (1 + cos(pi * step / total_steps)) / 2, from base_lr down towards 0.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    total = max(1, total_steps)
    if name == "constant":
        return lambda step: base_lr
    if name == "step":
        return lambda step: base_lr * 0.1 ** ((step >= total / 2) + (step >= 3 * total / 4))
    return lambda step: base_lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
