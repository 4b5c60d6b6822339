"""anynet's two-layer network as a scikit-learn classifier: `TwoLayerClassifier`.

    >>> from anynet.sklearn import TwoLayerClassifier
    >>> clf = TwoLayerClassifier(hidden=30, epochs=10).fit(X, y)      # X (N, D) floats, y (N,)
    >>> clf.predict(X), clf.predict_proba(X), clf.score(X, y)

An estimator in scikit-learn's sense: the hyperparameters are the constructor's arguments (those
of `anynet.config.TrainConfig`, checked by it at `fit`), fitted state ends in an underscore, and
it works in `Pipeline`, `GridSearchCV` and `cross_val_score`. Any label values (`classes_`, via
a `LabelEncoder`), any number of features D (the network is D-H-K with K = len(classes_)).

Training is anynet's own: `anynet.training.Trainer` with the reference step
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

from anynet.errors import BackendError, MissingExtraError

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
from anynet.network import TwoLayerNet
from anynet.training import Trainer, TrainState

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
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.seed = seed
        self.backend = backend
        self.dtype = dtype
        self.standardize = standardize

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
        X, y = validate_data(self, _host(X), _host(y), reset=reset,
                             dtype=[np.float64, np.float32])
        check_classification_targets(y)
        return X, y

    def _fit_scaling(self, X: np.ndarray) -> None:
        if not isinstance(self.standardize, bool):
            raise ValueError(f"standardize must be True or False, got {self.standardize!r}")
        D = X.shape[1]
        self.mean_, self.scale_ = np.zeros(D), np.ones(D)
        if self.standardize:
            self.mean_ = X.mean(axis=0, dtype=np.float64)
            std = X.std(axis=0, dtype=np.float64)
            self.scale_ = np.where(std > 0, std, 1.0)

    def _inputs(self, X: np.ndarray, dtype: str) -> np.ndarray:
        """X (N, D) standardized with the fitted mean_ and scale_, as `dtype`."""
        return ((X - self.mean_) / self.scale_).astype(dtype, copy=False)

    def _train(self, config: TrainConfig, X: np.ndarray, t: np.ndarray,
               state: TrainState | None) -> None:
        """Train `net_` (a new one when `state` is None) with anynet's Trainer."""
        trainer = Trainer(config, X, t, backend=config.backend, fast=False)
        if state is None:
            net = TwoLayerNet(n_in=X.shape[1], n_hidden=config.hidden,
                              n_out=len(self.classes_), backend=trainer.backend,
                              dtype=config.dtype, seed=config.seed)
            state = TrainState(params=net.params, velocity=trainer.optimizer.init(net.params))
        result = trainer.fit(resume=state)
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
            self._encoder = LabelEncoder().fit(np.asarray(_host(classes)))
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


def _like(result: np.ndarray, X: Any) -> Any:
    """`result` in X's namespace and on its device where scikit-learn's array_api_dispatch is
    on and X is another library's array; as it is otherwise (and for non-numeric labels)."""
    if not (sklearn.get_config().get("array_api_dispatch") and is_array_api_obj(X)
            and not is_numpy_array(X) and result.dtype.kind in "biuf"):
        return result
    xp = array_namespace(X)
    return xp.asarray(result, device=device_of(X))
