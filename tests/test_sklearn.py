"""anynet.sklearn.TwoLayerClassifier: scikit-learn's own estimator checks in full, the usual
compositions (Pipeline, GridSearchCV, cross_val_score), any labels and feature counts, training
on every backend, partial_fit, pickling, Array API inputs under array_api_dispatch."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn not installed: pip install 'anynet[sklearn]'")

from sklearn.datasets import load_iris  # bundled with scikit-learn: no download
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from anynet.config import TrainConfig
from anynet.sklearn import TwoLayerClassifier
from anynet.training import Trainer


@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True)


def test_passes_every_estimator_check():
    check_estimator(TwoLayerClassifier())  # raises on the first failing check


def test_passes_every_estimator_check_in_float32_on_the_backend_under_test(backend):
    check_estimator(TwoLayerClassifier(backend=backend.spec, dtype="float32"))


def test_learns_iris_on_the_backend_under_test(backend, iris):
    X, y = iris
    clf = TwoLayerClassifier(hidden=16, epochs=20, backend=backend.spec).fit(X, y)
    assert clf.net_.backend.spec == backend.spec
    assert clf.score(X, y) > 0.9
    P = clf.predict_proba(X)
    assert P.shape == (150, 3) and P.dtype == np.float64
    np.testing.assert_allclose(P.sum(axis=1), 1, rtol=1e-12)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[P.argmax(axis=1)])
    assert clf.n_iter_ == 20 and len(clf.history_) == 20
    # the backend's own arrays as inputs: the same training, the same answers (NumPy's)
    same = TwoLayerClassifier(hidden=16, epochs=20, backend=backend.spec)
    same.fit(backend.asarray(X), backend.asarray(y, "int64"))
    np.testing.assert_array_equal(same.predict_proba(backend.asarray(X)), P)


def test_trains_through_anynets_trainer(iris, monkeypatch):
    calls = []
    fit = Trainer.fit

    def spy(self, resume=None):
        calls.append((self.config.epochs, self.fast))
        return fit(self, resume)

    monkeypatch.setattr(Trainer, "fit", spy)
    X, y = iris
    TwoLayerClassifier(epochs=3).fit(X, y)
    assert calls == [(3, False)]


def test_any_labels_and_any_feature_count():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 7))
    y = np.where(X[:, 0] + X[:, 3] > 0, "yes", "no")
    clf = TwoLayerClassifier(epochs=30).fit(X, y)
    assert list(clf.classes_) == ["no", "yes"] and clf.n_features_in_ == 7
    assert clf.net_.sizes == (7, 30, 2)
    assert set(clf.predict(X)) <= {"no", "yes"} and clf.score(X, y) > 0.9


def test_pipeline_grid_search_and_cross_validation(iris):
    X, y = iris
    pipe = make_pipeline(StandardScaler(), TwoLayerClassifier(epochs=15, standardize=False))
    assert pipe.fit(X, y).score(X, y) > 0.9
    grid = GridSearchCV(TwoLayerClassifier(epochs=10), {"hidden": [4, 16], "lr": [0.1, 0.3]},
                        cv=3).fit(X, y)
    assert grid.best_params_["hidden"] in (4, 16) and grid.best_score_ > 0.8
    scores = cross_val_score(TwoLayerClassifier(epochs=10), X, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.8


def test_searches_over_numpy_values(iris):
    # GridSearchCV hands out the elements of NumPy arrays (np.float64, np.int64) and
    # RandomizedSearchCV draws np.float64 from scipy.stats: every fit failed on them
    from scipy.stats import loguniform

    X, y = iris
    searches = [
        GridSearchCV(TwoLayerClassifier(epochs=3), {"lr": np.linspace(0.05, 0.3, 3)}, cv=2),
        GridSearchCV(TwoLayerClassifier(epochs=3), {"hidden": np.arange(16, 65, 16)}, cv=2),
        RandomizedSearchCV(TwoLayerClassifier(epochs=3), {"lr": loguniform(1e-2, 0.3)},
                           n_iter=3, cv=2, random_state=0),
    ]
    for search in searches:
        search.set_params(error_score="raise").fit(X, y)
        assert search.best_score_ > 0.5
        assert np.isfinite(search.cv_results_["mean_test_score"]).all()


def test_numpy_scalars_become_python_values_and_bools_stay_refused():
    config = TrainConfig.from_dict({"hidden": np.int64(16), "lr": np.float32(0.25),
                                    "seed": np.uint8(3), "nesterov": np.bool_(False),
                                    "schedule": np.str_("constant"), "momentum": np.int32(0)})
    assert (config.hidden, config.seed, config.lr, config.momentum) == (16, 3, 0.25, 0.0)
    assert type(config.hidden) is int and type(config.seed) is int
    assert type(config.lr) is float and type(config.momentum) is float
    assert type(config.nesterov) is bool and type(config.schedule) is str
    for bad in ({"hidden": np.bool_(True)}, {"hidden": np.float64(16.0)},
                {"lr": np.float64("nan")}, {"lr": np.float32("inf")}, {"lr": np.bool_(True)},
                {"lr": np.complex128(0.1)}, {"seed": np.int64(-1)}, {"lr": np.array([0.1])},
                {"nesterov": np.int64(1)}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig.from_dict(bad)


def test_features_near_float64s_limit_standardize(iris):
    # the standardization's squares overflowed from about 1e154: scale_ became inf, and
    # features of +-1e308 were reported as a divergence
    rng = np.random.default_rng(0)
    X, y = iris
    for factor in (1e200, 1e308):
        big = X / np.abs(X).max(axis=0) * factor  # every feature reaches +-factor
        clf = TwoLayerClassifier(epochs=10).fit(big, y)
        assert np.isfinite(clf.mean_).all() and np.isfinite(clf.scale_).all()
        assert clf.score(big, y) > 0.9
    signs = rng.choice([-1.0, 1.0], size=(150, 4))
    clf = TwoLayerClassifier(epochs=3).fit(signs * 1.7e308, y)  # both signs: X - mean_ overflows
    assert np.isfinite(clf.scale_).all() and np.isfinite(clf.predict_proba(signs * 1.7e308)).all()
    # on ordinary data the scaling is exactly mean() and std()
    clf = TwoLayerClassifier(epochs=1).fit(X, y)
    np.testing.assert_array_equal(clf.mean_, X.mean(axis=0))
    np.testing.assert_array_equal(clf.scale_, X.std(axis=0))


def test_features_that_cannot_be_scaled_say_so(iris):
    X, y = iris
    clf = TwoLayerClassifier(epochs=1, dtype="float32").fit(X, y)
    far = X[:3].copy()
    far[1, 2] = 1e300  # finite, but ~1e300 standard deviations out: not a float32
    with pytest.raises(ValueError, match=r"feature 2 of sample 1 \(1e\+300\) lies too far"):
        clf.predict(far)
    with pytest.raises(ValueError, match=r"too large for float32 \(standardize=False"):
        TwoLayerClassifier(epochs=1, dtype="float32", standardize=False).fit(X * 1e38, y)


def test_partial_fit_refuses_classes_that_are_not_labels(iris):
    X, y = iris
    for classes, words in (([0, 1, np.nan], "finite"), ([0, 1, np.inf], "finite"),
                           (np.array([0, 1, float("nan")], dtype=object), "NaN"),
                           ([], "non-empty"), ([[0, 1, 2]], "non-empty"),
                           ([0.5, 1.5, 2.5], "continuous")):
        with pytest.raises(ValueError, match=words):
            TwoLayerClassifier(epochs=1).partial_fit(X, y, classes=classes)
    assert TwoLayerClassifier().partial_fit(X, y, classes=np.array([0.0, 1.0, 2.0])).n_iter_ == 1


def test_partial_fit_continues_one_epoch_at_a_time(iris):
    X, y = iris
    clf = TwoLayerClassifier(lr=0.1)
    with pytest.raises(ValueError, match="classes="):
        clf.partial_fit(X, y)
    for _ in range(15):
        clf.partial_fit(X, y, classes=[0, 1, 2])
    assert clf.n_iter_ == 15 and clf.score(X, y) > 0.9
    with pytest.raises(ValueError, match="not among classes_"):
        clf.partial_fit(X, y + 5)


def test_hyperparameters_are_checked_at_fit(iris):
    X, y = iris
    for bad in ({"lr": -1.0}, {"hidden": 0}, {"schedule": "linear"}, {"dtype": "float16"},
                {"nesterov": True}, {"standardize": 1}, {"backend": "nonesuch"}):
        clf = TwoLayerClassifier(epochs=1, **bad)  # the constructor only stores them
        with pytest.raises(ValueError):
            clf.fit(X, y)


def test_unfitted_estimator_says_so(iris):
    with pytest.raises(NotFittedError):
        TwoLayerClassifier().predict(iris[0])


def test_fitted_estimator_pickles(backend, iris):
    X, y = iris
    clf = TwoLayerClassifier(epochs=3, backend=backend.spec).fit(X, y)
    copy = pickle.loads(pickle.dumps(clf))
    assert copy.net_.backend.spec == backend.spec
    np.testing.assert_array_equal(copy.predict_proba(X), clf.predict_proba(X))


def test_array_api_inputs_answer_in_their_namespace_under_dispatch():
    pytest.importorskip("array_api_strict")
    code = textwrap.dedent("""
        import array_api_strict as xp, numpy as np, sklearn
        from array_api_compat import is_array_api_strict_namespace, array_namespace
        from sklearn.datasets import load_iris
        from anynet.sklearn import TwoLayerClassifier
        X, y = load_iris(return_X_y=True)
        dev = xp.Device("device1")
        Xs, ys = xp.asarray(X, device=dev), xp.asarray(y, device=dev)
        ref = TwoLayerClassifier(epochs=10).fit(X, y)
        with sklearn.config_context(array_api_dispatch=True):
            clf = TwoLayerClassifier(epochs=10).fit(Xs, ys)
            p, P = clf.predict(Xs), clf.predict_proba(Xs)
            for a in (p, P):
                assert is_array_api_strict_namespace(array_namespace(a)), type(a)
                assert a.device == dev, a.device
            assert P.dtype == xp.float64
            assert clf.score(Xs, ys) > 0.9
        # without dispatch, answers are NumPy's; the training is the same either way
        P_np = clf.predict_proba(Xs)
        assert isinstance(P_np, np.ndarray)
        np.testing.assert_array_equal(P_np, ref.predict_proba(X))
        print("ok")
    """)
    env = {**os.environ, "SCIPY_ARRAY_API": "1"}  # scikit-learn's dispatch needs it at import
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_without_scikit_learn_the_import_names_the_extra():
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "from anynet.errors import MissingExtraError\n"
            "try:\n    import anynet.sklearn\nexcept MissingExtraError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    message = done.stdout.strip()
    assert "\n" not in message and "anynet[sklearn]" in message and "scikit-learn" in message
