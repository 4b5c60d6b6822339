"""Training configuration: every hyperparameter, its default, and why, in one place.

The command line (`anynet train`) builds its options from these fields, the model file records
them, and a checkpoint carries them so `--resume` continues with exactly the same run.
The defaults train the assignment's 784-30-10 network with SGD (no momentum) to 97.45-97.51%
test accuracy (seeds 0-3) in about 5 seconds on a laptop CPU; they were chosen by a small search
recorded in docs/tuning.md. Without the weight decay the same run reaches about 97.1%.

A `TrainConfig` checks itself when it is made (`__post_init__`): direct construction,
`dataclasses.replace` and `TrainConfig.from_dict` (a file's record, the command line's options)
all go through the same checks, so a `TrainConfig` that exists is a valid one. The optimizer's
rules (`check_sgd`) are written here once and shared with `anynet.optim.SGD`. It is not for
checking that a config
fits a particular dataset or parameter file: `anynet.modelio` and the training loop do that.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

DTYPES = ("float32", "float64")
# Bounds on what a run may cost (docs/promises.md). Every epoch adds about
# 250 characters to the record a model file and each checkpoint carry, which a reader accepts
# up to 4 Mi characters (anynet.modelio.MAX_METADATA_CHARS): 10,000 epochs stay inside it.
MAX_EPOCHS = 10_000
# A training step holds a few (batch_size, hidden) arrays: at most 2**25 elements each (128 MB
# in float32), e.g. all 55,000 training examples in one batch with up to 610 hidden units.
MAX_BATCH_UNITS = 2**25


@dataclass(frozen=True)
class TrainConfig:
    hidden: int = 30            # H, the assignment's suggested hidden layer
    epochs: int = 30            # passes over the training set
    batch_size: int = 32        # examples per SGD step: small batches generalise better here
    lr: float = 0.3             # near the largest stable rate for pixels scaled to [0, 1]
    momentum: float = 0.0       # plain SGD, as the assignment teaches it
    nesterov: bool = False
    weight_decay: float = 3e-4  # a little L2: H = 30 overfits (99% train accuracy) without it
    schedule: str = "cosine"    # anneal the rate to 0: the last epochs settle into a minimum
    seed: int = 0               # initial weights, shuffling and the validation split
    val_size: int = 5000        # training examples held out to report validation accuracy
    dtype: str = "float32"
    backend: str = "numpy"
    # distortions of the training images (anynet.augment): each image of each epoch drawn anew
    augment: str = "none"       # none, affine, elastic, affine+elastic
    rotate: float = 15.0        # degrees either way
    scale: float = 0.15         # relative change of size either way
    shear: float = 0.3          # slant k: columns shifted k pixels per row
    shift: float = 2.0          # pixels either way
    alpha: float = 34.0         # elastic strength, pixels (Simard 2003)
    sigma: float = 4.0          # elastic smoothness, pixels (Simard 2003)
    # preprocessing of every image before the network sees it (anynet.preprocess), in training
    # and wherever the model is used: none, deslant, width:W or deslant+width:W
    preprocess: str = "none"
    # training levers (anynet.levers, docs/tuning.md): all off by default, so the defaults
    # train the assignment's network exactly as before they existed
    dropout: float = 0.0        # probability that a hidden unit is dropped in a training step
    input_dropout: float = 0.0  # probability that an input pixel is dropped in a training step
    label_smoothing: float = 0.0  # eps: targets (1 - eps) one_hot + eps / K
    average: str = "none"       # none, ema:DECAY or swa:START_EPOCH: the weights reported, saved
    # distillation (anynet.distill): the teacher's share alpha of the targets (0: no teacher;
    # the teacher itself, a committee of networks, is given beside the config), and the
    # temperature of its softmax
    distill: float = 0.0
    temperature: float = 1.0

    def __post_init__(self):
        """Check every field (ValueError naming the first bad one); NumPy scalars become the
        Python values they hold and ints given for floats become floats."""
        from anynet.optim import SCHEDULES
        from anynet.preprocess import Preprocessing

        values = {f.name: _python_scalar(getattr(self, f.name)) for f in fields(self)}
        for name in ("hidden", "epochs", "batch_size"):
            _check_int(values, name, minimum=1)
        for name in ("seed", "val_size"):
            _check_int(values, name, minimum=0)
        check_sgd(values)
        for name, choices in (("schedule", SCHEDULES), ("dtype", DTYPES)):
            if values[name] not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, "
                                 f"got {short_repr(values[name])}")
        if not (isinstance(values["backend"], str) and values["backend"]):
            raise ValueError(f"backend must be a backend's name, "
                             f"got {short_repr(values['backend'])}")
        for name in LEVER_LIMITS:
            values[name] = check_lever(name, values[name])
        values["temperature"] = check_temperature(values["temperature"])
        values["preprocess"] = str(Preprocessing.parse(values["preprocess"]))
        values["average"] = canonical_average(values["average"], values["epochs"])
        for name, value in values.items():
            object.__setattr__(self, name, value)
        _check_costs(self)
        self.distortion()  # its own checks: ValueError naming the field

    def distortion(self):
        """The `anynet.augment.Distortion` these fields describe."""
        from anynet.augment import Distortion

        return Distortion(kind=self.augment, rotate=self.rotate, scale=self.scale,
                          shear=self.shear, shift=self.shift, alpha=self.alpha,
                          sigma=self.sigma)

    def preprocessing(self):
        """The `anynet.preprocess.Preprocessing` that `preprocess` names."""
        from anynet.preprocess import Preprocessing

        return Preprocessing.parse(self.preprocess)

    def averaging(self) -> Averaging:
        """The weight averaging `average` names: ("none", None), ("ema", decay) or
        ("swa", first epoch averaged, 1-based)."""
        return parse_average(self.average)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A checked config from a dict (a file's record, the command line's options).

        Missing keys take their defaults; unknown keys are ignored. NumPy scalars count as the
        Python values they hold (scikit-learn's searches draw np.float64 and np.int64: a
        `GridSearchCV` over `np.linspace(...)`); the config keeps the Python value. Every value
        must have its field's type (a bool, NumPy's too, is not an int; an int is accepted for
        a float) and lie in its range:
        hidden, epochs, batch_size >= 1; lr > 0; 0 <= momentum < 1; nesterov only with momentum;
        weight_decay >= 0; floats finite; seed, val_size >= 0; schedule, dtype one of their
        choices; backend a name; the distortion fields as `anynet.augment.Distortion` checks
        them; dropout, input_dropout, label_smoothing, distill within LEVER_LIMITS; temperature
        in (0, 100]; preprocess one of `anynet.preprocess.FORMS`; average as `parse_average`
        reads it, an SWA starting at an epoch the run reaches. Raises ValueError naming the
        first bad field.
        """
        if not isinstance(values, dict):
            raise ValueError(f"the config must be a mapping of field names to values, got "
                             f"{type(values).__name__}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def check_sgd(values: dict[str, Any]) -> None:
    """The optimizer's rules, for `TrainConfig` and `anynet.optim.SGD` alike: lr a finite
    number > 0, momentum in [0, 1), weight_decay a finite number >= 0 (ints become floats in
    `values`), nesterov a bool, and only with momentum. Raises ValueError naming the field."""
    for name in ("lr", "momentum", "weight_decay", "nesterov"):
        values[name] = _python_scalar(values[name])
    _check_float(values, "lr", lambda x: x > 0, "a finite number > 0")
    _check_float(values, "momentum", lambda x: 0 <= x < 1, "a number in [0, 1)")
    _check_float(values, "weight_decay", lambda x: x >= 0, "a finite number >= 0")
    if not isinstance(values["nesterov"], bool):
        raise ValueError(f"nesterov must be true or false, got {short_repr(values['nesterov'])}")
    if values["nesterov"] and values["momentum"] == 0:
        raise ValueError("nesterov needs momentum > 0 (it is a kind of momentum)")


# The levers' ranges, each written once (TrainConfig checks its fields against this table, the
# command line's options too): field -> (highest, meaning); 0, the lowest, turns the lever off.
# Dropout at p scales the kept units by 1 / (1 - p): 20 at 0.95, beyond which a step's signal
# is a few units blown up twenty-fold. Label smoothing that helps is about 0.1 (Szegedy et al.
# 2016); at 0.5 half of each target is already spread over the classes.
LEVER_LIMITS = {
    "dropout": (0.95, "the probability that a hidden unit is dropped"),
    "input_dropout": (0.95, "the probability that an input pixel is dropped"),
    "label_smoothing": (0.5, "the share of each target spread evenly over the classes"),
    "distill": (1.0, "the teacher's share of each target"),
}
# every lever's field, each off by default (a temperature without a teacher changes nothing)
LEVER_FIELDS = (*LEVER_LIMITS, "average", "temperature")
# An EMA with decay d averages over about 1 / (1 - d) steps: at most a million (hundreds of
# MNIST epochs), far beyond use, and 1 - d stays far from rounding to 0.
MAX_EMA_DECAY = 0.999999
AVERAGE_FORMS = (f"none, ema:DECAY (0 < DECAY <= {MAX_EMA_DECAY}) or swa:START (an epoch, "
                 "1 <= START <= epochs)")
# a weight averaging as `parse_average` reads it: its kind, with the EMA's decay or the SWA's
# first epoch (typed by kind, so that a checker knows which number goes with which)
Averaging = (tuple[Literal["none"], None] | tuple[Literal["ema"], float]
             | tuple[Literal["swa"], int])


def check_lever(name: str, value: Any) -> float:
    """`value` as lever `name` (a field of LEVER_LIMITS), a float in [0, highest]; ValueError
    naming the field, its range and meaning otherwise."""
    highest, meaning = LEVER_LIMITS[name]
    value = _python_scalar(value)
    if not (type(value) in (int, float) and math.isfinite(value) and 0 <= value <= highest):
        raise ValueError(f"{name} must be a number in [0, {highest:g}] ({meaning}), got "
                         f"{short_repr(value)}")
    return float(value)


MAX_TEMPERATURE = 100.0  # softmax(z / 100) of MNIST logits is already all but uniform
# the teacher's share of the targets where a teacher is named without one (anynet train
# --teacher): half the labels, half the teacher, as Hinton et al. weigh their two terms alike
DEFAULT_DISTILL = 0.5


def check_temperature(value: Any) -> float:
    """`value` as a teacher's temperature (anynet.distill): a finite number in
    (0, MAX_TEMPERATURE]; ValueError otherwise."""
    value = _python_scalar(value)
    if not (type(value) in (int, float) and math.isfinite(value)
            and 0 < value <= MAX_TEMPERATURE):
        raise ValueError(f"temperature must be a number in (0, {MAX_TEMPERATURE:g}] (the "
                         f"teacher's softmax is taken of its logits / temperature), got "
                         f"{short_repr(value)}")
    return float(value)


def parse_average(text: Any) -> Averaging:
    """The weight averaging named by `text`: "none" -> ("none", None); "ema:DECAY" ->
    ("ema", DECAY), 0 < DECAY <= MAX_EMA_DECAY; "swa:START" -> ("swa", START), an integer
    >= 1. ValueError saying what is accepted otherwise."""
    problem = f"average must be {AVERAGE_FORMS}, got {short_repr(text)}"
    if not isinstance(text, str):
        raise ValueError(problem)
    kind, sep, value = text.strip().partition(":")
    if kind == "none" and not sep:
        return "none", None
    try:
        if kind == "ema":
            decay = float(value)
            if math.isfinite(decay) and 0 < decay <= MAX_EMA_DECAY:
                return "ema", decay
        elif kind == "swa":
            start = int(value)
            if start >= 1:
                return "swa", start
    except ValueError:
        pass
    raise ValueError(problem)


def canonical_average(text: Any, epochs: int) -> str:
    """`text` checked (`parse_average`) and written one way ("ema:0.999", "swa:20"), so that the
    same averaging always compares equal; an SWA must start at an epoch the run reaches."""
    kind, value = parse_average(text)
    if kind == "swa" and value is not None and type(epochs) is int and value > epochs:
        raise ValueError(f"average swa:{value} starts after the last epoch ({epochs}); start it "
                         f"at an epoch from 1 to {epochs}")
    return kind if value is None else f"{kind}:{value!r}"


def _python_scalar(value):
    """A NumPy scalar (np.int64, np.float64, np.bool_, np.str_) as the Python value it holds;
    anything else as it is. Without NumPy imported there are no NumPy scalars to convert."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic) and value.dtype.kind in "biufU":
        return value.item()
    return value


def _check_costs(config: TrainConfig) -> None:
    """The bounds on a run's length and memory (MAX_EPOCHS, MAX_BATCH_UNITS)."""
    if config.epochs > MAX_EPOCHS:
        raise ValueError(f"epochs must be at most {MAX_EPOCHS:,} (a model file records every "
                         f"epoch), got {short_repr(config.epochs)}")
    if int(config.batch_size) * int(config.hidden) > MAX_BATCH_UNITS:  # no int64 wrap-around
        raise ValueError(f"batch_size x hidden must be at most {MAX_BATCH_UNITS:,} (a step holds "
                         f"(batch, hidden) arrays), got {short_repr(config.batch_size)} x "
                         f"{config.hidden}; choose a smaller batch or fewer hidden units")


def _check_int(values: dict, name: str, minimum: int) -> None:
    if name not in values:
        return
    value = values[name]
    if type(value) is not int or value < minimum:  # bool is a subclass of int: not accepted
        raise ValueError(f"{name} must be an integer >= {minimum}, got {short_repr(value)}")


def _check_float(values: dict, name: str, in_range, wording: str) -> None:
    if name not in values:
        return
    value = values[name]
    ok = type(value) in (int, float) and math.isfinite(value) and in_range(value)
    if not ok:
        raise ValueError(f"{name} must be {wording}, got {short_repr(value)}")
    values[name] = float(value)


def short_repr(value, limit: int = 40) -> str:
    """`value` as a message shows it: its repr, cut to about `limit` characters, on one line."""
    if type(value) is int and value.bit_length() > 64:  # str() of a huge int is slow or refused
        return f"a {value.bit_length()}-bit integer"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
