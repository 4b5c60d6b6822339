"""A TwoLayerNet pickles: the backend's spec and host copies of the parameters travel, and the
network comes back on the same backend with the same numbers (joblib, multiprocessing)."""

from __future__ import annotations

import pickle

import numpy as np

from anynet.network import PARAM_NAMES, TwoLayerNet


def _net(backend) -> TwoLayerNet:
    return TwoLayerNet(n_in=12, n_hidden=5, n_out=3, backend=backend, dtype="float64", seed=3)


def test_round_trip_keeps_backend_parameters_and_predictions(backend):
    net = _net(backend)
    X = np.random.default_rng(0).random((7, 12))
    copy = pickle.loads(pickle.dumps(net))
    assert copy.backend.spec == net.backend.spec
    assert copy.backend.device == net.backend.device
    assert copy.dtype == "float64" and copy.sizes == (12, 5, 3)
    for k in PARAM_NAMES:
        np.testing.assert_array_equal(copy.backend.to_numpy(copy.params[k]),
                                      net.backend.to_numpy(net.params[k]))
    np.testing.assert_array_equal(copy.backend.to_numpy(copy.predict_proba(X)),
                                  net.backend.to_numpy(net.predict_proba(X)))


def test_pickle_holds_host_arrays_and_a_spec_only(backend):
    state = _net(backend).__getstate__()
    assert state["backend"] == backend.spec
    assert all(type(v) is np.ndarray for v in state["params"].values())
    assert b"array_api_strict" not in pickle.dumps(state)  # no library objects travel


def test_copy_is_independent(backend):
    net = _net(backend)
    copy = pickle.loads(pickle.dumps(net))
    before = copy.backend.to_numpy(copy.params["W1"]).copy()
    net.params["W1"] = net.params["W1"] * 0
    np.testing.assert_array_equal(copy.backend.to_numpy(copy.params["W1"]), before)


def test_joblib_carries_a_network_to_worker_processes():
    import pytest

    joblib = pytest.importorskip("joblib")
    net = _net("numpy")
    X = np.random.default_rng(1).random((4, 12))
    results = joblib.Parallel(n_jobs=2, backend="loky")(
        joblib.delayed(TwoLayerNet.predict_proba)(net, X[i:i + 2]) for i in (0, 2))
    np.testing.assert_allclose(np.concatenate(results), net.predict_proba(X), rtol=1e-12)
