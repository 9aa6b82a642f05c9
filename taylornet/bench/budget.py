"""Memory as a function of width: predicting a case before running it, and the width at which an
implementation runs out of a memory budget.

Peak memory of a call is affine in the width m for fixed (n, d, order, ...): inputs and weights grow
like m*d, autograd's n x m temporaries like n*m. ``fit_affine`` fits total = a + b*m by least
squares over the measured widths; the budget width solves a + b*m = budget.
"""
from __future__ import annotations

import math
import statistics

# Rough n x m buffer counts before anything is measured (only used to avoid starting a case that
# cannot fit; the measured line replaces them after the first width).
_NM_BUFFERS = {
    # (family, backward): (taylornet, reference)
    ("features", False): (2, 8),
    ("features", True): (2, 14),  # the output and its cotangent: the backward adds none
    ("net", False): (0, 8),
    ("net", True): (0, 12),
    ("moments", False): (0, 10),
    ("moments", True): (0, 16),
}


def analytic_peak(case, impl: str, itemsize: int) -> float:
    """A rough a-priori peak (bytes, beyond the inputs) of one call: n x m buffers plus weight grads."""
    fused, ref = _NM_BUFFERS[(case.family, case.backward)]
    k = 1 if case.order == "exact" else max(1, int(case.order))
    count = fused if impl == "taylornet" else ref + (k if impl == "eager" else 0)
    grads = 2 * case.m * case.d * itemsize if case.backward else 0
    return count * case.n * case.m * itemsize + grads


def fit_affine(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """(a, b) with total ~= a + b*m, from (m, bytes) points; through the origin for one point."""
    pts = [(float(m), float(v)) for m, v in points if v is not None and v > 0]
    if not pts:
        return None
    if len({m for m, _ in pts}) == 1:
        m, v = max(pts)
        return 0.0, v / m
    b, a = statistics.linear_regression([m for m, _ in pts], [v for _, v in pts])
    if b <= 0:  # flat or noisy: no growth with width to extrapolate
        return statistics.fmean(v for _, v in pts), 0.0
    return a, b


def predict(points: list[tuple[int, float]], m: int) -> float | None:
    """Conservative prediction for width m from measured (width, bytes): the largest of the affine
    fit and the proportional scaling of the widest point."""
    if not points:
        return None
    fit = fit_affine(points)
    m_top, v_top = max(points)
    guesses = [v_top * m / m_top]
    if fit is not None:
        guesses.append(fit[0] + fit[1] * m)
    return max(guesses)


def budget_width(points: list[tuple[int, float]], budget: float) -> dict | None:
    """The width at which total memory reaches ``budget`` bytes.

    "measured" when a measured width already exceeds it (interpolated log-log between the last width
    under and the first over), else "extrapolated" from the affine fit; None without growth.
    """
    pts = sorted((m, v) for m, v in points if v is not None and v > 0)
    if not pts:
        return None
    for (m0, v0), (m1, v1) in zip(pts, pts[1:]):
        if v0 <= budget < v1:
            t = (math.log(budget) - math.log(v0)) / (math.log(v1) - math.log(v0))
            return {"width": m0 * (m1 / m0) ** t, "how": "measured"}
    if pts[0][1] >= budget:
        return {"width": pts[0][0] * budget / pts[0][1], "how": "extrapolated"}
    fit = fit_affine(pts)
    if fit is None or fit[1] <= 0:
        return None
    a, b = fit
    return {"width": (budget - a) / b, "how": "extrapolated"}
