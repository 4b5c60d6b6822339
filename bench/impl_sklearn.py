"""scikit-learn's MLPClassifier trained with `partial_fit`, one call per epoch.

`MLPClassifier(hidden_layer_sizes=(H,), solver="sgd", activation="relu", momentum=0, alpha=0,
learning_rate_init=lr, batch_size=batch, shuffle=True)`: plain SGD on the mean log-loss, the
same model as every other column. Each `partial_fit` call is one pass over the data with
scikit-learn's own shuffle. The images are handed over as float32 in [0, 1], converted once
(scikit-learn keeps float32 input in float32).

One change from a stock MLPClassifier: its Glorot-uniform initialisation is replaced by He normal
with zero biases (overriding the private `_init_coef`), so all implementations start from the
same scale and their accuracies compare. Timing is unaffected.
"""

from __future__ import annotations

import numpy as np
from sklearn.neural_network import MLPClassifier


class HeInitMLPClassifier(MLPClassifier):
    """MLPClassifier with He normal weights (std sqrt(2 / fan_in)) and zero biases."""

    def _init_coef(self, fan_in, fan_out, dtype):
        coef = self._random_state.standard_normal((fan_in, fan_out)) * np.sqrt(2 / fan_in)
        return coef.astype(dtype, copy=False), np.zeros(fan_out, dtype=dtype)


class SklearnNet:
    def __init__(self, hidden, batch, lr, seed, train_images, train_labels):
        if not hasattr(MLPClassifier, "_init_coef"):
            raise RuntimeError("this scikit-learn has no MLPClassifier._init_coef to override")
        self.clf = HeInitMLPClassifier(
            hidden_layer_sizes=(hidden,), solver="sgd", activation="relu", momentum=0,
            alpha=0, learning_rate_init=lr, batch_size=batch, shuffle=True, random_state=seed,
        )
        self.X = train_images.astype(np.float32) / np.float32(255)
        self.y = train_labels
        self.classes = np.arange(10)

    def epoch(self):
        self.clf.partial_fit(self.X, self.y, classes=self.classes)

    def accuracy(self, images, labels):
        X = images.astype(np.float32) / np.float32(255)
        return float(np.mean(self.clf.predict(X) == labels))


def make(hidden, batch, lr, seed, train_images, train_labels, *, device="cpu", threads=2):
    return SklearnNet(hidden, batch, lr, seed, train_images, train_labels)
