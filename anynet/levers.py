"""Training levers beyond SGD: dropout, label smoothing, distillation and averaged weights
(docs/tuning.md).

Each is off by default (`TrainConfig`: dropout, input_dropout, label_smoothing, average) and
changes training only; the network evaluated and saved is the plain 784-H-10 one.

- **Dropout** (`--dropout P`, `--input-dropout P`): in every training step each hidden unit
  (each input pixel) of each example is dropped with probability p and the kept ones are
  scaled by 1 / (1 - p), "inverted" dropout (`anynet.functional.dropout`), so evaluation uses
  the plain network. The masks are drawn here, on the host, from NumPy's
  Generator([seed, MASK_STREAM, epoch, chunk]) for each chunk of an epoch's batches
  (`anynet.batches.chunk_rows` rows: the chunks distortions are drawn for), inputs' mask first,
  then the hidden units'. So every step (reference, compiled, fused) and every backend trains
  with the same masks, and a resumed run draws what the uninterrupted one drew.
- **Label smoothing** (`--label-smoothing EPS`): targets (1 - eps) one_hot + eps / K
  (`anynet.functional.smoothed_targets`); the steps compute it themselves.
- **Distillation** (`--teacher MODEL [MODEL ...]`, `--distill ALPHA`, `--temperature T`):
  targets (1 - alpha) smoothed one-hot + alpha times a committee's softened probabilities,
  made for each chunk on the backend (`anynet.distill`; `ChunkTargets`).
- **Weight averaging** (`--average ema:DECAY` or `swa:START`): the weights that the per-epoch
  validation and the test report, and that the model file holds, are an average of the
  trained ones, which go on training unchanged. EMA: after every step
  m <- DECAY m + (1 - DECAY) W from m = 0, reported bias-corrected as m / (1 - DECAY^t) after t
  steps (the weighted mean of all the steps' weights, weights DECAY^(t-s)), `ema_update` (the
  fused step does it in place, `FusedOps.ema_`). SWA (Izmailov et al. 2018): the plain mean of
  the weights at the end of every epoch from START on, `swa_update`, by the training loop.
  Checkpoints hold both the trained weights and the average (m itself for EMA).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from array_api_compat import array_namespace

from anynet.config import MAX_EMA_DECAY, TrainConfig, check_lever, short_repr

if TYPE_CHECKING:
    from anynet.distill import Teacher

MASK_STREAM = 3  # the masks of a chunk come from default_rng([seed, MASK_STREAM, epoch, chunk])


@dataclass(frozen=True)
class Levers:
    """What a training step needs of the levers: the dropout probabilities of the hidden units
    and of the inputs, label smoothing's eps, the EMA's decay (0: none), the seed of the
    masks, and a teacher to distill (`anynet.distill.Teacher`, None: none). All off (the
    default): the plain step. Checked as `TrainConfig` checks its fields."""

    dropout: float = 0.0
    input_dropout: float = 0.0
    label_smoothing: float = 0.0
    ema: float = 0.0
    seed: int = 0
    teacher: Teacher | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("dropout", "input_dropout", "label_smoothing"):
            object.__setattr__(self, name, check_lever(name, getattr(self, name)))
        if not (type(self.ema) in (int, float) and 0 <= self.ema <= MAX_EMA_DECAY):
            raise ValueError(f"ema must be a decay in [0, {MAX_EMA_DECAY}] (0: none), got "
                             f"{short_repr(self.ema)}")

    @classmethod
    def from_config(cls, config: TrainConfig, teacher: Teacher | None = None) -> Levers:
        averaging = config.averaging()
        return cls(config.dropout, config.input_dropout, config.label_smoothing,
                   float(averaging[1]) if averaging[0] == "ema" else 0.0, config.seed, teacher)

    @property
    def masks(self) -> bool:
        """Whether a step draws dropout masks (on the host, a chunk at a time)."""
        return bool(self.dropout or self.input_dropout)

    @property
    def per_chunk(self) -> bool:
        """Whether a step makes something per chunk of inputs: dropout masks, or a teacher's
        targets."""
        return self.masks or self.teacher is not None

    def draw_masks(self, key: tuple[int, int], n: int, D: int, H: int,
                   dtype: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The scaled dropout masks of the n rows of chunk `key` = (epoch, chunk): (inputs' M_x
        (n, D), hidden units' M_h (n, H)) as host arrays of `dtype`, None where that dropout is
        off. Each entry is 0 with probability p, else 1 / (1 - p) (rounded to `dtype`)."""
        rng = np.random.default_rng([self.seed, MASK_STREAM, *key])
        Mx = _scaled_keep(rng, (n, D), self.input_dropout, dtype) if self.input_dropout else None
        Mh = _scaled_keep(rng, (n, H), self.dropout, dtype) if self.dropout else None
        return Mx, Mh


def _scaled_keep(rng: np.random.Generator, shape: tuple[int, int], p: float,
                 dtype: Any) -> np.ndarray:
    """keep / (1 - p): keep = (u >= p) for u uniform in [0, 1) (float32's 2^24 steps: P(keep)
    is 1 - p to within 6e-8)."""
    M = (rng.random(shape, dtype=np.float32) >= p).astype(dtype)
    M *= np.dtype(dtype).type(1.0 / (1.0 - p))
    return M


def ema_update(average: dict, params: dict, decay: float) -> dict:
    """One step of the exponential moving average: m <- decay m + (1 - decay) W, for every
    parameter, as new arrays (any backend's; nothing is changed in place)."""
    return {k: decay * average[k] + (1 - decay) * p for k, p in params.items()}


def ema_weights(average: dict, decay: float, steps: int) -> dict:
    """The EMA's weights after `steps` (>= 1) updates from m = 0: m / (1 - decay^steps), the
    mean of the steps' weights with weights decay^(steps - s), which sum to 1."""
    scale = 1.0 / (1.0 - decay ** steps)
    return {k: m * scale for k, m in average.items()}


def swa_update(average: dict, params: dict, n: int) -> dict:
    """The mean of n snapshots of the weights from that of the first n - 1 (`average`; {} for
    n = 1) and the n-th (`params`): avg + (W - avg) / n, as new arrays."""
    if not average:
        return {k: p + array_namespace(p).zeros_like(p) for k, p in params.items()}
    return {k: average[k] + (p - average[k]) / n for k, p in params.items()}


def initial_average(config: TrainConfig, params: dict) -> dict:
    """The average a run starts with: m = 0 for an EMA, none ({}) otherwise (an SWA begins at
    the end of its first epoch)."""
    if config.averaging()[0] != "ema":
        return {}
    return {k: array_namespace(p).zeros_like(p) for k, p in params.items()}


def reported_params(config: TrainConfig, average: dict, epochs_done: int,
                    steps: int) -> dict | None:
    """The averaged weights a run reports and saves after `epochs_done` epochs and `steps`
    steps, or None where it reports its trained weights (no averaging, or an SWA that has not
    begun, or no step yet)."""
    averaging = config.averaging()
    if averaging[0] == "ema" and steps > 0:
        return ema_weights(average, float(averaging[1]), steps)
    if averaging[0] == "swa" and average and epochs_done >= int(averaging[1]):
        return average
    return None


def swa_count(config: TrainConfig, epochs_done: int) -> int:
    """How many end-of-epoch snapshots an SWA has averaged after `epochs_done` epochs (0 where
    the config averages none that way)."""
    averaging = config.averaging()
    return max(0, epochs_done - int(averaging[1]) + 1) if averaging[0] == "swa" else 0


def describe(config: TrainConfig) -> str:
    """The levers a config turns on, for people ("" for none): 'dropout 0.5, input dropout 0.2,
    label smoothing 0.1, weights averaged by an EMA of decay 0.999'."""
    parts = []
    if config.dropout:
        parts.append(f"dropout {config.dropout:g}")
    if config.input_dropout:
        parts.append(f"input dropout {config.input_dropout:g}")
    if config.label_smoothing:
        parts.append(f"label smoothing {config.label_smoothing:g}")
    if config.distill:
        parts.append(f"distilled from a teacher (weight {config.distill:g}, temperature "
                     f"{config.temperature:g})")
    kind, value = config.averaging()
    if kind == "ema":
        parts.append(f"weights averaged by an EMA of decay {value:g}")
    elif kind == "swa":
        parts.append(f"weights averaged over epochs {value}-{config.epochs} (SWA)")
    return ", ".join(parts)
