"""The assignment's worked examples, and the library's own answers to them on any backend.

The numbers are the assignment's, as transcribed in `shared/assignment/worked-examples.md`:
ReLU of a 5x3 table, the softmax of 10 logits, the cross-entropy of a batch of 3 (9.4518), and the
gradient of that loss with respect to the logits. `run_examples(backend)` computes each with
`anynet.functional` in float64 on the chosen backend and compares it with the expected values;
the tests and `anynet examples` both use it, so what the tests check is what users see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anynet import functional as F
from anynet.backend import Backend, get_backend

RELU_INPUT = np.array([
    [0.24254239, -0.0093585, 0.06251788],
    [0.29174967, 0.00640839, 0.0088702],
    [0.21299534, 0.01685097, -0.01915576],
    [0.28040822, 0.08560704, -0.20277768],
    [0.20900069, 0.05125724, -0.23243211],
])

# What the assignment's rule (negatives become 0; derivative 1 where x > 0, else 0) makes of
# Table 1, written out by hand: the code is compared with these tables, never with itself.
RELU_EXPECTED = np.array([
    [0.24254239, 0.0, 0.06251788],
    [0.29174967, 0.00640839, 0.0088702],
    [0.21299534, 0.01685097, 0.0],
    [0.28040822, 0.08560704, 0.0],
    [0.20900069, 0.05125724, 0.0],
])
RELU_GRAD_EXPECTED = np.array([
    [1.0, 0.0, 1.0],
    [1.0, 1.0, 1.0],
    [1.0, 1.0, 0.0],
    [1.0, 1.0, 0.0],
    [1.0, 1.0, 0.0],
])

SOFTMAX_LOGITS = np.array([
    -1.70250359, -4.2325084, -4.32629959, 5.89011416, -5.86517858,
    10.57400549, -3.038615, -8.27508649, 6.23970273, 2.72117404,
])
SOFTMAX_EXPECTED = np.array([
    4.55628258e-06, 3.62947261e-07, 3.30453631e-07, 9.03738205e-03, 7.09224737e-08,
    9.77756708e-01, 1.19769115e-06, 6.37050950e-09, 1.28193803e-02, 3.80005111e-04,
])

LOSS_PROBS = np.array([
    [4.55628258e-06, 3.62947261e-07, 3.30453631e-07, 9.03738205e-03, 7.09224737e-08,
     9.77756708e-01, 1.19769115e-06, 6.37050950e-09, 1.28193803e-02, 3.80005111e-04],
    [1.02072520e-03, 2.07443268e-02, 1.36165460e-04, 1.31895168e-01, 7.33937145e-04,
     2.33243538e-01, 2.03292669e-03, 3.39410794e-04, 5.27287683e-01, 8.25661187e-02],
    [5.19327780e-02, 1.89228826e-03, 1.90638660e-02, 2.89810025e-01, 4.21878509e-02,
     4.39552262e-01, 1.67685711e-02, 5.51353408e-04, 1.38094898e-01, 1.46107555e-04],
])
LOSS_LABELS = np.array([6, 4, 7])
LOSS_EXPECTED = 9.451778874433794

GRAD_EXPECTED = np.array([
    [1.51876086e-06, 1.20982420e-07, 1.10151210e-07, 3.01246068e-03, 2.36408246e-08,
     3.25918903e-01, -3.33332934e-01, 2.12350317e-09, 4.27312677e-03, 1.26668370e-04],
    [3.40241732e-04, 6.91477560e-03, 4.53884867e-05, 4.39650558e-02, -3.33088688e-01,
     7.77478461e-02, 6.77642230e-04, 1.13136931e-04, 1.75762561e-01, 2.75220396e-02],
    [1.73109260e-02, 6.30762753e-04, 6.35462201e-03, 9.66033417e-02, 1.40626170e-02,
     1.46517421e-01, 5.58952372e-03, -3.33149549e-01, 4.60316327e-02, 4.87025185e-05],
])

# The tolerances the project promises (README, tests): softmax to a relative 1e-7 (the printed
# values have 8-9 significant digits), the loss to 1e-9, the gradient table to 1e-9 absolute.
SOFTMAX_RTOL = 1e-7
LOSS_ATOL = 1e-9
GRAD_ATOL = 1e-9
# A library whose float64 exp and log are only float32-accurate (MLX's; the backend measures it,
# `Backend.capabilities["float64 accurate"]`) is held to what float32 can promise instead.
FLOAT32_ACCURATE = {"softmax": 1e-5, "loss": 1e-6, "grad": 1e-6}


@dataclass(frozen=True)
class ExampleResult:
    """One worked example: what anynet computed, what the assignment says, and how far apart."""

    name: str
    computed: np.ndarray
    expected: np.ndarray
    error: float        # the largest deviation, measured as `measure` says
    tolerance: float
    measure: str        # "exact", "relative" or "absolute"

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance


def run_examples(backend: str | Backend = "numpy") -> list[ExampleResult]:
    """Compute every worked example on `backend` in float64 and compare with the assignment."""
    b = get_backend(backend)
    xp = b.xp
    softmax_rtol, loss_atol, grad_atol = SOFTMAX_RTOL, LOSS_ATOL, GRAD_ATOL
    if not b.capabilities["float64 accurate"]:
        softmax_rtol, loss_atol, grad_atol = FLOAT32_ACCURATE.values()

    def on(a, dtype="float64"):
        return b.asarray(a, dtype)

    results = []
    z = on(RELU_INPUT)
    relu = b.to_numpy(F.relu(z))
    relu_expected = RELU_EXPECTED
    results.append(ExampleResult(
        "relu", relu, relu_expected, float(np.max(np.abs(relu - relu_expected))), 0.0, "exact"))
    grad = b.to_numpy(F.relu_grad(z))
    grad_expected = RELU_GRAD_EXPECTED
    results.append(ExampleResult(
        "relu_grad", grad, grad_expected, float(np.max(np.abs(grad - grad_expected))), 0.0,
        "exact"))
    # the derivative at exactly 0 is 0, as the assignment defines it
    at_zero = b.to_numpy(F.relu_grad(on([-1.0, 0.0, 1.0])))
    results.append(ExampleResult(
        "relu_grad at -1, 0, 1", at_zero, np.array([0.0, 0.0, 1.0]),
        float(np.max(np.abs(at_zero - [0.0, 0.0, 1.0]))), 0.0, "exact"))

    p = b.to_numpy(F.softmax(on(SOFTMAX_LOGITS)))
    rel = np.max(np.abs(p - SOFTMAX_EXPECTED) / SOFTMAX_EXPECTED)
    results.append(ExampleResult("softmax", p, SOFTMAX_EXPECTED, float(rel), softmax_rtol,
                                 "relative"))

    P, t = on(LOSS_PROBS), on(LOSS_LABELS, "int64")
    loss = float(b.to_numpy(F.cross_entropy(P, t)))
    results.append(ExampleResult(
        "cross_entropy", np.array(loss), np.array(LOSS_EXPECTED), abs(loss - LOSS_EXPECTED),
        loss_atol, "absolute"))
    # the same loss from logits: log P are logits whose softmax is P (each row of P sums to 1)
    from_logits = float(b.to_numpy(F.softmax_cross_entropy(xp.log(P), t)))
    results.append(ExampleResult(
        "softmax_cross_entropy(log P)", np.array(from_logits), np.array(LOSS_EXPECTED),
        abs(from_logits - LOSS_EXPECTED), loss_atol, "absolute"))

    dZ = b.to_numpy(F.softmax_cross_entropy_grad(P, t))
    results.append(ExampleResult(
        "softmax_cross_entropy_grad", dZ, GRAD_EXPECTED, float(np.max(np.abs(dZ - GRAD_EXPECTED))),
        grad_atol, "absolute"))
    return results


def format_results(results: list[ExampleResult], backend_name: str) -> str:
    """The examples as a report: each computed value beside the assignment's, and a verdict."""
    lines = [f"The assignment's worked examples, computed by anynet on {backend_name} (float64)",
             ""]
    with np.printoptions(precision=8, suppress=False, linewidth=100):
        for r in results:
            verdict = "ok" if r.ok else "MISMATCH"
            bound = "== (exact)" if r.measure == "exact" else f"<= {r.tolerance:.0e} {r.measure}"
            lines.append(f"{r.name}: {verdict}  (largest deviation {r.error:.2e}, {bound})")
            if r.computed.ndim == 0:
                lines.append(f"  anynet:   {float(r.computed):.15f}")
                lines.append(f"  expected: {float(r.expected):.15f}")
            else:
                lines.append("  anynet:")
                lines.append(_indent(np.array2string(r.computed, separator=" ")))
                lines.append("  expected:")
                lines.append(_indent(np.array2string(r.expected, separator=" ")))
            lines.append("")
    failed = [r.name for r in results if not r.ok]
    lines.append("all examples agree" if not failed else f"MISMATCH in: {', '.join(failed)}")
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
