"""anynet's two-layer network as a scikit-learn classifier: `TwoLayerClassifier`.

    >>> from anynet.sklearn import TwoLayerClassifier
    >>> clf = TwoLayerClassifier(hidden=30, epochs=10).fit(X, y)      # X (N, D) floats, y (N,)
    >>> clf.predict(X), clf.predict_proba(X), clf.score(X, y)

An estimator in scikit-learn's sense: the hyperparameters are the constructor's arguments (those
of `anynet.config.TrainConfig`, checked by it at `fit`), fitted state ends in an underscore, and
it works in `Pipeline`, `GridSearchCV` and `cross_val_score`. Any label values (`classes_`, via
a `LabelEncoder`), any number of features D (the network is D-H-K with K = len(classes_)).

Training is anynet's own: `anynet.fit.train_model` (a `Trainer`) with the reference step
(`anynet.steps.ArrayAPIStep`: `TwoLayerNet.loss_and_grads_array` then `SGD.step`), on the
estimator's `backend`. SGD with one learning rate for every feature needs inputs of unit
scale, so by default (`standardize=True`) each feature is standardized with the mean and
standard deviation of the data first fitted on (`mean_`, `scale_`; a constant feature is only
centred); `standardize=False` takes the floats as they are (no division by 255). Inputs may
be arrays of any Array API library (NumPy, PyTorch, array-api-strict, ...); they reach the
backend through the host. With scikit-learn's `array_api_dispatch` enabled, `predict` and
`predict_proba` answer in the input's namespace and on its device.

Not for: MNIST pixels straight from the IDX files (the command line and `Trainer` do that,
with the fused step), sample weights, or multi-output targets.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anynet.errors import BackendError, DivergenceError, MissingExtraError

try:
    import sklearn
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.preprocessing import LabelEncoder
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError:  # pragma: no cover - exercised in an environment without the extra
    raise MissingExtraError("scikit-learn", "sklearn", "anynet.sklearn") from None

from array_api_compat import array_namespace, is_array_api_obj, is_numpy_array
from array_api_compat import device as device_of

from anynet import functional as F
from anynet.backend import parse_spec, to_numpy
from anynet.config import TrainConfig
from anynet.fit import train_model
from anynet.training import TrainState

_DEFAULTS = TrainConfig()


def _host(array: Any) -> Any:
    """An array of any Array API library as a host NumPy array; anything else as it is (lists,
    pandas frames: scikit-learn's validation takes those)."""
    if is_array_api_obj(array) and not is_numpy_array(array):
        return to_numpy(array)
    return array


class TwoLayerClassifier(ClassifierMixin, BaseEstimator):
    """A D-H-K network (ReLU hidden layer, softmax output) trained by mini-batch SGD.

    Parameters (defaults are anynet's MNIST defaults, except dtype):
        hidden        H, hidden units
        epochs        passes over the training data in `fit`
        batch_size    examples per SGD step
        lr            learning rate (the schedule's start)
        momentum, nesterov, weight_decay   SGD's options (`anynet.optim.SGD`)
        schedule      "constant", "step" or "cosine", over all of `fit`'s steps
        seed          initial weights and shuffling
        backend       where training and prediction run: "numpy", "torch", "jax:gpu", ...
        dtype         "float64" (scikit-learn's precision; the default) or "float32"
        standardize   scale each feature to mean 0, standard deviation 1 (see above)

    Fitted attributes: `classes_` (K,), `n_features_in_`, `mean_` and `scale_` (D,) (zeros
    and ones without `standardize`), `net_` (the `TwoLayerNet`, which sees standardized inputs),
    `history_` (one dict of metrics per epoch trained), `n_iter_` (epochs trained).
    """

    def __init__(self, hidden: int = _DEFAULTS.hidden, epochs: int = _DEFAULTS.epochs,
                 batch_size: int = _DEFAULTS.batch_size, lr: float = _DEFAULTS.lr,
                 momentum: float = _DEFAULTS.momentum, nesterov: bool = _DEFAULTS.nesterov,
                 weight_decay: float = _DEFAULTS.weight_decay,
                 schedule: str = _DEFAULTS.schedule, seed: int = _DEFAULTS.seed,
                 backend: str = "numpy", dtype: str = "float64", standardize: bool = True):
        # stored as given (scikit-learn's rule); fit checks them, through TrainConfig
        self.hidden, self.epochs, self.batch_size = hidden, epochs, batch_size
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.weight_decay, self.schedule, self.seed = weight_decay, schedule, seed
        self.backend, self.dtype, self.standardize = backend, dtype, standardize

    # --- training ------------------------------------------------------------------------------

    def _config(self, **override: Any) -> TrainConfig:
        """The hyperparameters as a checked TrainConfig (ValueError naming a bad one)."""
        values = {name: getattr(self, name) for name in (
            "hidden", "epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay",
            "schedule", "seed", "dtype", "backend")}
        values.update(override)
        try:
            parse_spec(values["backend"])  # its form; whether it is installed is fit's to say
        except BackendError as e:
            raise ValueError(str(e)) from None
        return TrainConfig.from_dict(values)

    def _validate(self, X: Any, y: Any, reset: bool) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(over="ignore", invalid="ignore"):  # its finiteness test sums X
            X, y = validate_data(self, _host(X), _host(y), reset=reset,
                                 dtype=[np.float64, np.float32])
        check_classification_targets(y)
        return X, y

    def _fit_scaling(self, X: np.ndarray) -> None:
        """mean_ and scale_ (D,) of X (N, D). Computed on each column divided by a power of two
        at least its largest magnitude (exact: the same bits as X.mean() and X.std() wherever
        those do not overflow), so features up to float64's largest (1.8e308) standardize too:
        the squares inside std() overflow from about 1e154."""
        if not isinstance(self.standardize, bool):
            raise ValueError(f"standardize must be True or False, got {self.standardize!r}")
        D = X.shape[1]
        self.mean_, self.scale_ = np.zeros(D), np.ones(D)
        if self.standardize:
            X = X.astype(np.float64, copy=False)
            largest = np.max(np.abs(X), axis=0, initial=0.0)
            # 2**(e - 1) for largest = m * 2**e, 0.5 <= m < 1: the columns land in (-2, 2)
            power = np.ldexp(1.0, np.frexp(np.where(largest > 0, largest, 1.0))[1] - 1)
            scaled = X / power
            self.mean_ = power * scaled.mean(axis=0)
            std = power * scaled.std(axis=0)
            self.scale_ = np.where(std > 0, std, 1.0)

    def _inputs(self, X: np.ndarray, dtype: str) -> np.ndarray:
        """X (N, D) standardized with the fitted mean_ and scale_, as `dtype`. Raises ValueError
        where that is not finite in `dtype` (features far beyond the range fitted on, or beyond
        float32's 3.4e38 unstandardized)."""
        with np.errstate(over="ignore", invalid="ignore"):
            Z = ((X - self.mean_) / self.scale_).astype(dtype, copy=False)
            if not np.all(np.isfinite(Z)):
                # X - mean_ overflows for features near 1e308 of both signs: halve both sides
                # (exact) and double after the division
                Z = (((0.5 * X - 0.5 * self.mean_) / self.scale_) * 2).astype(dtype, copy=False)
        if not np.all(np.isfinite(Z)):
            row, column = (int(i) for i in np.argwhere(~np.isfinite(Z))[0])
            value = f"feature {column} of sample {row} ({X[row, column]:.6g})"
            if self.standardize:
                raise ValueError(
                    f"{value} lies too far from the data fitted on (mean {self.mean_[column]:.6g},"
                    f" standard deviation {self.scale_[column]:.6g}) to standardize in {dtype}; "
                    "check the sample's scale")
            raise ValueError(f"{value} is too large for {dtype} (standardize=False takes the "
                             "features as they are); scale them down or set standardize=True")
        return Z

    def _train(self, config: TrainConfig, X: np.ndarray, t: np.ndarray,
               state: TrainState | None) -> None:
        """Train `net_` (a new one, D-H-K with K = len(classes_), when `state` is None) with
        anynet's library path (`anynet.fit.train_model`)."""
        try:
            result = train_model(config, X, t, resume=state, n_classes=len(self.classes_),
                                 backend=config.backend, fast=False)
        except DivergenceError as e:
            if self.standardize:
                raise
            largest = float(np.max(np.abs(X)))
            raise DivergenceError(f"{e} (the features are not standardized, standardize=False, "
                                  f"and reach {largest:.3g}: scale them, or set "
                                  "standardize=True)") from None
        self.net_ = result.net
        self._velocity = result.state.velocity
        self._rng_state = result.state.rng_state
        self.history_ = [*getattr(self, "history_", []), *result.state.history]
        self.n_iter_ = len(self.history_)

    def fit(self, X: Any, y: Any) -> TwoLayerClassifier:
        """Train a new network for `epochs` epochs. X (N, D) numbers, y (N,) labels."""
        config = self._config()
        X, y = self._validate(X, y, reset=True)
        self._encoder = LabelEncoder().fit(y)
        self.classes_ = self._encoder.classes_
        self.history_ = []
        self._fit_scaling(X)
        self._train(config, self._inputs(X, config.dtype), self._encoder.transform(y), None)
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> TwoLayerClassifier:
        """One epoch over (X, y), continuing from the current network (and momentum) or, on the
        first call, from a new one; `classes` (every label that will ever come) is needed then.
        The learning rate is the constant `lr`: a schedule needs the total number of steps,
        which a stream of calls does not know."""
        first = not hasattr(self, "classes_")
        if first and classes is None:
            raise ValueError("the first call to partial_fit needs classes=, every label value "
                             "the data will have")
        config = self._config(epochs=1, schedule="constant")
        X, y = self._validate(X, y, reset=first)
        if first:
            self._encoder = LabelEncoder().fit(_check_classes(classes))
            self.classes_ = self._encoder.classes_
            self.history_ = []
            self._fit_scaling(X)
        unknown = np.setdiff1d(y, self.classes_)
        if unknown.size:
            raise ValueError(f"labels {unknown[:5].tolist()} are not among classes_ "
                             f"{self.classes_[:10].tolist()}")
        state = None
        if not first:
            net = self.net_
            state = TrainState(params=net.params, velocity=self._velocity,
                               rng_state=self._rng_state)
        dtype = config.dtype if first else self.net_.dtype
        self._train(config, self._inputs(X, dtype), self._encoder.transform(y), state)
        return self

    # --- prediction ----------------------------------------------------------------------------

    def _logits(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        with np.errstate(over="ignore", invalid="ignore"):  # its finiteness test sums X
            X = validate_data(self, _host(X), reset=False, dtype=[np.float64, np.float32])
        return to_numpy(self.net_.forward(self._inputs(X, self.net_.dtype)))

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities (N, K), columns in the order of `classes_`, float64."""
        P = F.softmax(self._logits(X).astype(np.float64))
        return _like(P, X)

    def predict(self, X: Any) -> Any:
        """The most probable label per example (N,), from `classes_`."""
        Z = self._logits(X)
        return _like(self.classes_[np.argmax(Z, axis=-1)], X)


def _check_classes(classes: Any) -> np.ndarray:
    """partial_fit's `classes` as a 1-D NumPy array of at least one label; ValueError for NaN
    or infinite labels, or anything `check_classification_targets` refuses (continuous values,
    several outputs)."""
    labels = np.asarray(_host(classes))
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"classes must be a non-empty list of labels, got an array of shape "
                         f"{labels.shape}")
    if labels.dtype.kind in "fc" and not np.all(np.isfinite(labels)):
        raise ValueError(f"classes must be finite labels, got {labels[~np.isfinite(labels)][0]} "
                         f"among {labels[:10].tolist()}")
    if labels.dtype.kind == "O" and any(isinstance(v, float) and not np.isfinite(v)
                                        for v in labels):
        raise ValueError(f"classes must not hold NaN or infinity, got {labels[:10].tolist()}")
    check_classification_targets(labels)
    return labels


def _like(result: np.ndarray, X: Any) -> Any:
    """`result` in X's namespace and on its device where scikit-learn's array_api_dispatch is
    on and X is another library's array; as it is otherwise (and for non-numeric labels)."""
    if not (sklearn.get_config().get("array_api_dispatch") and is_array_api_obj(X)
            and not is_numpy_array(X) and result.dtype.kind in "biuf"):
        return result
    xp = array_namespace(X)
    return xp.asarray(result, device=device_of(X))
