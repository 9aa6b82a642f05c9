"""Pure-PyTorch autograd implementation of taylornet: the float64 oracle and the benchmark baseline.

Everything here is a composition of ordinary torch ops, so autograd provides the gradients. The
normalized Taylor coefficients c_k(z) = sigma^(k)(z) / k! use exact closed forms: polynomials with
rational coefficients, derived once with ``fractions.Fraction`` (cached) and evaluated by Horner.

    z0 = x w0^T + b0,   u = x w^T + b,   v = s * u
    h  = sum_{k in O} c_k(z0) v^k            ("exact": h = sigma(z0 + v))
    f  = scale * h A^T                        (scale = 1/sqrt(m) unless given)
"""
from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

from .activations import ACTIVATIONS, MAX_ORDER, Order, check_activation, parse_order
from .functional import expected_squared_loss

__all__ = [
    "ACTIVATIONS", "MAX_ORDER", "activation_function", "taylor_coefficients",
    "taylor_features", "taylor_net", "taylor_net_moments", "expected_squared_loss",
]

_ACTIVATION_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "gelu": F.gelu,  # approximate="none": the exact erf form
    "silu": F.silu,
    "sin": torch.sin,
    "cos": torch.cos,
    "exp": torch.exp,
    "erf": torch.erf,
    "relu": F.relu,
    "relu2": lambda z: F.relu(z) ** 2,
    "relu3": lambda z: F.relu(z) ** 3,
}


if set(_ACTIVATION_FUNCTIONS) != set(ACTIVATIONS):  # the compiled ops' table is the one list
    raise ImportError(f"taylornet.reference: activations {sorted(_ACTIVATION_FUNCTIONS)} differ from the compiled "
                      f"ops' {sorted(ACTIVATIONS)}")


def activation_function(activation: str) -> Callable[[Tensor], Tensor]:
    """The plain torch activation sigma (used by order="exact").

    Example::

        >>> taylornet.reference.activation_function("gelu")(torch.zeros(2))
        tensor([0., 0.])
    """
    return _ACTIVATION_FUNCTIONS[check_activation(activation)]


# ---------------------------------------------------------------------------------------------
# Exact rational polynomials (ascending coefficients)

def _derivative(p):
    return [i * c for i, c in enumerate(p)][1:]


def _mul(p, q):
    out = [Fraction(0)] * (len(p) + len(q) - 1) if p and q else []
    for i, pi in enumerate(p):
        for j, qj in enumerate(q):
            out[i + j] += pi * qj
    return out


def _add(p, q):
    n = max(len(p), len(q))
    return [(p[i] if i < len(p) else 0) + (q[i] if i < len(q) else 0) for i in range(n)]


@cache
def _polynomials(family: str, K: int) -> tuple[tuple[float, ...], ...]:
    """Polynomials Q_0..Q_K (float coefficients, ascending powers, derived exactly) such that

        "tanh":    tanh^(k)(z) / k!    = Q_k(tanh z)
        "sigmoid": sigmoid^(k)(z) / k! = Q_k(sigmoid z)
        "normal":  Phi^(k)(z) / k!     = Q_k(z) phi(z)                  k >= 1  ((-1)^(k-1) He_{k-1} / k!)
        "erf":     erf^(k)(z) / k!     = Q_k(z) (2/sqrt(pi)) exp(-z^2)  k >= 1  ((-1)^(k-1) H_{k-1} / k!)

    Q_0 of "normal" and "erf" is unused (Phi and erf themselves are not polynomials).
    """
    one = Fraction(1)
    if family in ("tanh", "sigmoid"):
        # P_{k+1} = dt/dz * P_k'(t) with dt/dz = 1 - t^2 (tanh) or p - p^2 (sigmoid); normalized:
        # Q_{k+1} = dt/dz * Q_k' / (k + 1).
        dt = [one, 0, -one] if family == "tanh" else [0, one, -one]
        polys = [[Fraction(0), one]]
        for k in range(K):
            polys.append([c / (k + 1) for c in _mul(dt, _derivative(polys[-1]))])
    elif family in ("normal", "erf"):
        # Hermite: probabilists' He_{n+1} = z He_n - n He_{n-1}; physicists' H_{n+1} = 2z H_n - 2n H_{n-1}.
        two = 1 if family == "normal" else 2
        herm = [[one], [0, Fraction(two)]]
        while len(herm) < K:
            n = len(herm) - 1
            herm.append(_add(_mul([0, Fraction(two)], herm[n]), [-two * n * c for c in herm[n - 1]]))
        polys = [[]] + [[Fraction((-1) ** (k - 1), math.factorial(k)) * c for c in herm[k - 1]]
                        for k in range(1, K + 1)]
    else:
        raise ValueError(f"unknown polynomial family {family!r}")
    out = []
    for p in polys:
        while p and p[-1] == 0:
            p = p[:-1]
        out.append(tuple(float(c) for c in p))
    return tuple(out)


def _horner(coefficients, t: torch.Tensor) -> torch.Tensor:
    """sum_i coefficients[i] t^i for python-number coefficients."""
    if not coefficients:
        return torch.zeros_like(t)
    out = torch.full_like(t, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        out = out * t + c if c != 0 else out * t
    return out


def _series(coefficients, v: torch.Tensor) -> torch.Tensor:
    """sum_k coefficients[k] v^k by Horner in v, for tensor coefficients; None is a zero term."""
    h = None
    for c in reversed(coefficients):
        if h is not None:
            h = h * v
        if c is not None:
            h = c if h is None else h + c
    return torch.zeros_like(v) if h is None else h


# ---------------------------------------------------------------------------------------------
# Taylor coefficients

def taylor_coefficients(z: Tensor, activation: str, K: int) -> list[Tensor]:
    """[c_0(z), ..., c_K(z)] with c_k = sigma^(k)(z) / k!, differentiable in z by autograd.

    relu is allowed any K here (c_k = 0 for k >= 2); the public order check is stricter.

    Args:
        z: pre-activations, any shape.
        activation: one of ``ACTIVATIONS``.
        K: the highest order.

    Shape:
        - z: :math:`(*)`
        - Output: K + 1 tensors of shape :math:`(*)`

    Example::

        >>> c = taylornet.reference.taylor_coefficients(torch.zeros(3), "tanh", 3)
        >>> [round(v[0].item(), 4) for v in c]   # tanh(0), 1, 0, -1/3
        [0.0, 1.0, -0.0, -0.3333]
    """
    check_activation(activation)
    if activation in ("tanh", "sigmoid"):
        t = torch.tanh(z) if activation == "tanh" else torch.sigmoid(z)
        return [_horner(q, t) for q in _polynomials(activation, K)]
    if activation == "softplus":  # softplus^(k) = sigmoid^(k-1), so c_k = c^sigmoid_{k-1} / k
        s = taylor_coefficients(z, "sigmoid", K - 1) if K >= 1 else []
        return [F.softplus(z)] + [s[k - 1] / k for k in range(1, K + 1)]
    if activation in ("silu", "gelu"):
        # sigma = z * base  =>  sigma^(k) / k! = z * d_k + d_{k-1}, d_j = base^(j) / j!
        if activation == "silu":
            d = taylor_coefficients(z, "sigmoid", K)
        else:
            phi = torch.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))
            d = [0.5 * (1.0 + torch.erf(z * math.sqrt(0.5)))]
            d += [phi * _horner(q, z) for q in _polynomials("normal", K)[1:]]
        return [z * d[0]] + [z * d[k] + d[k - 1] for k in range(1, K + 1)]
    if activation == "erf":
        g = torch.exp(-z * z) * (2.0 / math.sqrt(math.pi))
        return [torch.erf(z)] + [g * _horner(q, z) for q in _polynomials("erf", K)[1:]]
    inv_fact = [float(Fraction(1, math.factorial(k))) for k in range(K + 1)]
    if activation == "exp":
        e = torch.exp(z)
        return [e * inv_fact[k] for k in range(K + 1)]
    if activation in ("sin", "cos"):
        s, c = torch.sin(z), torch.cos(z)
        cycle = (s, c, -s, -c)  # sin^(k) = cycle[k % 4], cos^(k) = cycle[(k + 1) % 4]
        shift = 0 if activation == "sin" else 1
        return [cycle[(k + shift) % 4] * inv_fact[k] for k in range(K + 1)]
    # relu, relu2, relu3: sigma = max(z, 0)^p, c_k = binom(p, k) max(z, 0)^(p - k) for k <= p, where
    # max(z, 0)^0 means the step (z > 0); zero beyond p.
    p = {"relu": 1, "relu2": 2, "relu3": 3}[activation]
    r = F.relu(z)
    out = []
    for k in range(K + 1):
        if k < p:
            out.append(math.comb(p, k) * r ** (p - k) if p - k > 1 else math.comb(p, k) * r)
        elif k == p:
            out.append((z > 0).to(z.dtype))
        else:
            out.append(torch.zeros_like(z))
    return out


# ---------------------------------------------------------------------------------------------
# Features, network, moments

def _pre_activations(x, w0, w, b0, b):
    return F.linear(x, w0, b0), F.linear(x, w, b)


def _readout(h, a, scale, square=False):
    if scale is None:
        scale = 1.0 / math.sqrt(h.shape[-1])
    if square:
        a, scale = a * a, scale * scale
    return scale * (h @ (a if a.dim() == 1 else a.t()))


def taylor_features(x: Tensor, w0: Tensor, w: Tensor, b0: Tensor | None = None, b: Tensor | None = None, *,
                    activation: str = "tanh", order: Order = 2, signs: Tensor | None = None) -> Tensor:
    """h = sum_{k in O} c_k(z0) v^k, v = signs * u (or sigma(z0 + v) for "exact").

    :func:`taylornet.taylor_features` in plain PyTorch autograd (every derivative, of every order).

    Args:
        x, w0, w, b0, b, activation, order, signs: as in :func:`taylornet.taylor_features`.

    Shape:
        - x: :math:`(*, d)`; w0, w: :math:`(m, d)`; b0, b, signs: :math:`(m,)`
        - Output: :math:`(*, m)`

    Example::

        >>> x, w0, w = torch.randn(8, 4), torch.randn(16, 4), torch.zeros(16, 4)
        >>> taylornet.reference.taylor_features(x, w0, w, order=2).shape
        torch.Size([8, 16])
    """
    orders, exact = parse_order(order, activation)
    z0, u = _pre_activations(x, w0, w, b0, b)
    v = u if signs is None else u * signs.to(u.dtype)
    if exact:
        return activation_function(activation)(z0 + v)
    K = orders[-1]
    c = taylor_coefficients(z0, activation, K)
    return _series([c[k] if k in orders else None for k in range(K + 1)], v)


def taylor_net(x: Tensor, w0: Tensor, w: Tensor, a: Tensor, b0: Tensor | None = None, b: Tensor | None = None, *,
               activation: str = "tanh", order: Order = 2, signs: Tensor | None = None,
               scale: float | None = None) -> Tensor:
    """f = scale * h A^T: :func:`taylornet.taylor_net` in plain PyTorch autograd.

    Args:
        x, w0, w, a, b0, b, activation, order, signs, scale: as in :func:`taylornet.taylor_net`.

    Shape:
        - a: :math:`(m,)` or :math:`(c, m)`
        - Output: :math:`(*)` when a is :math:`(m,)`, :math:`(*, c)` when a is :math:`(c, m)`

    Example::

        >>> x, w0, w, a = torch.randn(8, 4), torch.randn(16, 4), torch.zeros(16, 4), torch.randn(3, 16)
        >>> taylornet.reference.taylor_net(x, w0, w, a).shape
        torch.Size([8, 3])
    """
    h = taylor_features(x, w0, w, b0, b, activation=activation, order=order, signs=signs)
    return _readout(h, a, scale)


def taylor_net_moments(x: Tensor, w0: Tensor, w: Tensor, a: Tensor, b0: Tensor | None = None,
                       b: Tensor | None = None, *, activation: str = "tanh", order: Order = 2,
                       scale: float | None = None) -> tuple[Tensor, Tensor]:
    """(E_S f, Var_S f) over independent uniformly random signs s_r in {+1, -1}.

    Only the odd-order part of h changes sign with s_r, so with e = even part and o = odd part:
    mean = scale * e A^T, var = scale^2 * o^2 (A^2)^T. :func:`taylornet.taylor_net_moments` in plain
    PyTorch autograd.

    Args:
        x, w0, w, a, b0, b, activation, order, scale: as in :func:`taylornet.taylor_net`.

    Shape:
        - Output: (mean, var), each of :func:`taylor_net`'s output shape

    Example::

        >>> x, w0, w, a = torch.randn(8, 4), torch.randn(16, 4), torch.randn(16, 4), torch.randn(16)
        >>> mean, var = taylornet.reference.taylor_net_moments(x, w0, w, a, order=3)
    """
    orders, exact = parse_order(order, activation)
    z0, u = _pre_activations(x, w0, w, b0, b)
    if exact:
        sigma = activation_function(activation)
        hp, hm = sigma(z0 + u), sigma(z0 - u)
        e, o = (hp + hm) / 2, (hp - hm) / 2
    else:
        K = orders[-1]
        c = taylor_coefficients(z0, activation, K)
        e = _series([c[k] if k in orders and k % 2 == 0 else None for k in range(K + 1)], u)
        o = _series([c[k] if k in orders and k % 2 == 1 else None for k in range(K + 1)], u)
    return _readout(e, a, scale), _readout(o * o, a, scale, square=True)
