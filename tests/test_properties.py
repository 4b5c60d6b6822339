"""Property-based tests of the math (hypothesis), on NumPy arrays."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install 'anynet[test]')")

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from anynet import functional as F


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, (3, 10), elements=st.floats(-1e4, 1e4)))
def test_softmax_is_a_distribution_for_any_logits(Z):
    P = F.softmax(Z)
    assert np.all(P >= 0) and np.all(np.isfinite(P))
    np.testing.assert_allclose(P.sum(axis=1), 1, rtol=1e-12)
    # shifting every logit of a row by a constant changes nothing
    np.testing.assert_allclose(F.softmax(Z - 123.0), P, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, (4, 10), elements=st.floats(-50, 50)),
       arrays(np.int64, (4,), elements=st.integers(0, 9)))
def test_loss_gradient_rows_sum_to_zero_and_loss_is_nonnegative(Z, t):
    loss = float(F.softmax_cross_entropy(Z, t))
    assert loss >= 0 and np.isfinite(loss)
    dZ = F.softmax_cross_entropy_grad(F.softmax(Z), t)
    np.testing.assert_allclose(dZ.sum(axis=1), 0, atol=1e-15)
    assert np.all(dZ[np.arange(4), t] <= 0)
