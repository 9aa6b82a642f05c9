"""Truncated Taylor series of tensors (jets) and their arithmetic.

A :class:`Jet` holds the coefficients [y_0, ..., y_K] of a tensor-valued series in t, None standing
for a zero coefficient. The functions here combine coefficient lists: sums, Cauchy products that skip
zero coefficients, and the standard recurrences of Taylor arithmetic (Griewank & Walther, ch. 13)
for exp, tanh, sigmoid, erf, the normal CDF, sin / cos, division, log, powers and square roots.
"""
from __future__ import annotations

import math
import numbers

import torch


class Jet:
    """A tensor-valued truncated Taylor series in t: coefficients [y_0, ..., y_K], None for zero."""

    __slots__ = ("c",)

    def __init__(self, coefficients):
        self.c = list(coefficients)

    def __repr__(self):
        degrees = [k for k, v in enumerate(self.c) if v is not None]
        return f"Jet(shape={tuple(self.c[0].shape)}, nonzero orders={degrees})"


def _coeffs(v, K: int):
    return v.c if isinstance(v, Jet) else [v] + [None] * K


def _make(coefficients):
    """A Jet, or the plain tensor when every coefficient beyond the first is zero."""
    return coefficients[0] if all(c is None for c in coefficients[1:]) else Jet(coefficients)


def _acc(total, term):
    return term if total is None else total + term


def _add(a, b, alpha=1):
    out = []
    for x, y in zip(a, b):
        if y is not None and alpha != 1:
            y = y * alpha
        out.append(x if y is None else (y if x is None else x + y))
    return out


def _scale(a, s):
    return [None if x is None else x * s for x in a]


def _cauchy(a, b, product=torch.mul, start=0):
    """z_k = sum_{i+j=k} product(a_i, b_j) for k >= start (None below), skipping zero coefficients."""
    K = len(a) - 1
    nz_a = [i for i, x in enumerate(a) if x is not None]
    nz_b = [j for j, y in enumerate(b) if y is not None]
    out = [None] * (K + 1)
    for i in nz_a:
        for j in nz_b:
            if start <= i + j <= K:
                out[i + j] = _acc(out[i + j], product(a[i], b[j]))
    return out


def _ode(x, y0, d_of):
    """Series of y with y' = d * x' (d a series known from y_0..y_m): k y_k = sum_j j x_j d_{k-j}."""
    K = len(x) - 1
    y, d = [y0] + [None] * K, []
    for k in range(1, K + 1):
        d.append(d_of(y, k - 1))
        total = None
        for j in range(1, k + 1):
            if x[j] is not None and d[k - j] is not None:
                total = _acc(total, x[j] * d[k - j] * (j / k))
        y[k] = total
    return y


def _square_sum(y, m):
    """sum_{i=0}^{m} y_i y_{m-i} (the m-th coefficient of y^2)."""
    total = None
    for i in range(m + 1):
        if y[i] is not None and y[m - i] is not None:
            total = _acc(total, y[i] * y[m - i])
    return total


def _exp(x, y0=None):
    return _ode(x, torch.exp(x[0]) if y0 is None else y0, lambda y, m: y[m])


def _tanh(x, y0=None):
    def d(y, m):  # 1 - y^2
        s = _square_sum(y, m)
        return 1 - s if m == 0 else (None if s is None else -s)
    return _ode(x, torch.tanh(x[0]) if y0 is None else y0, d)


def _sigmoid(x, y0=None):
    def d(y, m):  # y - y^2
        s = _square_sum(y, m)
        return y[m] if s is None else (-s if y[m] is None else y[m] - s)
    return _ode(x, torch.sigmoid(x[0]) if y0 is None else y0, d)


def _with_derivative(x, y0, dy):
    """Series of y = g(x) from g(x_0) and the series of g'(x)."""
    return _ode(x, y0, lambda y, m: dy[m])


def _erf(x, y0=None):
    g = _scale(_exp(_scale(_cauchy(x, x), -1.0)), 2.0 / math.sqrt(math.pi))
    return _with_derivative(x, torch.erf(x[0]) if y0 is None else y0, g)


def _normal_cdf(x):
    phi = _scale(_exp(_scale(_cauchy(x, x), -0.5)), 1.0 / math.sqrt(2.0 * math.pi))
    return _with_derivative(x, 0.5 * (1.0 + torch.erf(x[0] * (0.5**0.5))), phi)


def _sin_cos(x):
    K = len(x) - 1
    s, c = [torch.sin(x[0])] + [None] * K, [torch.cos(x[0])] + [None] * K
    for k in range(1, K + 1):
        ts = tc = None
        for j in range(1, k + 1):
            if x[j] is not None:
                ts = _acc(ts, x[j] * c[k - j] * (j / k))
                tc = _acc(tc, x[j] * s[k - j] * (-j / k))
        s[k], c[k] = ts, tc
    return s, c


def _divide(a, b, z0=None):
    """z = a / b: z_k = (a_k - sum_{j>=1} b_j z_{k-j}) / b_0."""
    K = len(a) - 1
    z = [a[0] / b[0] if z0 is None else z0] + [None] * K
    for k in range(1, K + 1):
        total = a[k]
        for j in range(1, k + 1):
            if b[j] is not None and z[k - j] is not None:
                total = -(b[j] * z[k - j]) if total is None else total - b[j] * z[k - j]
        z[k] = None if total is None else total / b[0]
    return z


def _log(x, y0=None, shift=0.0):
    """y = log(x + shift): y_k = (x_k - (1/k) sum_{j=1}^{k-1} j y_j x_{k-j}) / (x_0 + shift)."""
    K = len(x) - 1
    base = x[0] + shift if shift else x[0]
    y = [torch.log(base) if y0 is None else y0] + [None] * K
    for k in range(1, K + 1):
        total = x[k]
        for j in range(1, k):
            if y[j] is not None and x[k - j] is not None:
                term = y[j] * x[k - j] * (j / k)
                total = -term if total is None else total - term
        y[k] = None if total is None else total / base
    return y


def _pow(x, r, y0=None):
    if isinstance(r, numbers.Integral) and 0 <= r <= 16:
        if r == 0:
            return [torch.ones_like(x[0])] + [None] * (len(x) - 1)
        out, base, n = None, x, int(r)
        while n:  # binary powering with truncated products: exact, no division by x_0
            if n & 1:
                out = base if out is None else _cauchy(out, base)
            n >>= 1
            if n:
                base = _cauchy(base, base)
        return out
    # x y' = r y x':  k x_0 y_k = sum_{j=1}^{k} (r j - (k - j)) x_j y_{k-j}
    K = len(x) - 1
    y = [torch.pow(x[0], r) if y0 is None else y0] + [None] * K
    for k in range(1, K + 1):
        total = None
        for j in range(1, k + 1):
            if x[j] is not None and y[k - j] is not None:
                total = _acc(total, x[j] * y[k - j] * ((r * j - (k - j)) / k))
        y[k] = None if total is None else total / x[0]
    return y


def _sqrt(x, y0=None):
    K = len(x) - 1
    y = [torch.sqrt(x[0]) if y0 is None else y0] + [None] * K
    for k in range(1, K + 1):
        total = x[k]
        for j in range(1, k):
            if y[j] is not None and y[k - j] is not None:
                total = -(y[j] * y[k - j]) if total is None else total - y[j] * y[k - j]
        y[k] = None if total is None else total / (2 * y[0])
    return y


def _mask(x, mask, other_scale=None):
    """x_k on the mask, (other_scale * x_k or 0) off it: the branch of a piecewise-linear op."""
    out = [None]
    for xk in x[1:]:
        if xk is None:
            out.append(None)
        elif other_scale is None:
            out.append(xk * mask.to(xk.dtype))
        else:
            out.append(torch.where(mask, xk, xk * other_scale))
    return out


def _reduce_dims(t: torch.Tensor, dim):
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return list(range(t.dim()))
    return [d % max(t.dim(), 1) for d in ([dim] if isinstance(dim, int) else dim)]


def _var(x, dims, correction, keepdim):
    count = 1
    for d in dims:
        count *= x[0].shape[d]
    mean = [None if v is None else v.mean(dims, keepdim=True) for v in x]
    centered = _add(x, mean, -1)
    sq = _cauchy(centered, centered)
    denom = max(count - correction, 0)
    return [None if v is None else v.sum(dims, keepdim=keepdim) / denom for v in sq], \
        [None if v is None else (v if keepdim else v.squeeze(dims)) for v in mean]


def _broadcast(t, shape):
    return t if tuple(t.shape) == tuple(shape) else t.expand(shape).contiguous()
