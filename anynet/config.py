"""Training configuration: every hyperparameter, its default, and why, in one place.

The command line (`anynet train`) builds its options from these fields, the model file records
them, and a checkpoint carries them so `--resume` continues with exactly the same run.
The defaults train the assignment's 784-30-10 network with plain SGD to about 97.5% test accuracy
in a few seconds on a laptop CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class TrainConfig:
    hidden: int = 30            # H, the assignment's suggested hidden layer
    epochs: int = 15            # passes over the training set
    batch_size: int = 64        # examples per SGD step: fast, and noisy enough to generalise
    lr: float = 0.3             # the largest stable rate for this net on pixels in [0, 1]
    momentum: float = 0.0       # plain SGD, as the assignment teaches it
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "cosine"    # anneal the rate to 0: the last epochs settle into a minimum
    seed: int = 0               # initial weights, shuffling and the validation split
    val_size: int = 5000        # training examples held out to report validation accuracy
    dtype: str = "float32"
    backend: str = "numpy"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from a dict (a model file's or checkpoint's record); unknown keys ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})
