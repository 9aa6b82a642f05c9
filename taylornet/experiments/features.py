"""A fixed random representation h(x) for the hierarchical learner.

``RandomFeatures`` maps x in R^d (on the sphere of radius sqrt(d)) to D standardized Hermite features
of degree q of random projections,

    h_i(x) = (He_q(v_i.x) - mu) / sd,      v_i uniform on the unit sphere, frozen,

with mu and sd the exact mean and standard deviation of He_q(t), t = v.x, for x uniform on that
sphere, so every coordinate has mean 0 and variance 1, the scale of the input coordinates. (For a
Gaussian t, He_q is already centered with variance q!, and different features are nearly orthogonal.)
With D >= the dimension of the degree-q polynomials (about d^q / q!), the span of h contains them, so
a degree-2q polynomial of x is a quadratic form in h: a quadratic Taylor model on h can fit a degree-p
target with q = p / 2. This is the hierarchical learner of Chen, Bai, Lee et al. (2020).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .data import sphere_moment

__all__ = ["RandomFeatures", "hermite", "hermite_coefficients", "taylor_coefficient_hermite"]


def hermite_coefficients(q: int) -> list[int]:
    """Coefficients of the probabilists' Hermite polynomial He_q, ascending powers.

    He_0 = 1, He_1 = t, He_{k+1} = t He_k - k He_{k-1}.
    """
    prev, cur = [1], [0, 1]
    if q == 0:
        return prev
    for k in range(1, q):
        shifted = [0] + cur
        prev, cur = cur, [s - k * (prev[i] if i < len(prev) else 0) for i, s in enumerate(shifted)]
    return cur


def hermite(t: torch.Tensor, q: int) -> torch.Tensor:
    """He_q(t), by Horner."""
    out = torch.zeros_like(t)
    for c in reversed(hermite_coefficients(q)):
        out = out * t + c
    return out


def taylor_coefficient_hermite(activation: str, order: int, max_degree: int, points: int = 80) -> list[float]:
    """Hermite coefficients g_0 .. g_max_degree of the Taylor coefficient c_k = sigma^(k) / k!:
    c_k(z) = sum_j g_j He_j(z) for z ~ N(0, 1), i.e. g_j = E[c_k(z) He_j(z)] / j!.

    With z0 = w0.x ~ N(0, 1), the order-k term c_k(z0) u^k of a neuron reaches degree j + k in x
    through g_j: the quadratic model (k = 2) learns the degree-4 part of a target through g_2, and
    the degree-2 part mostly through g_0. c_k comes from the fused op (the order-k feature with
    u = 1); the expectation from Gauss-Hermite quadrature with ``points`` nodes.
    """
    from numpy.polynomial.hermite_e import hermegauss

    from .. import functional as F

    nodes, weights = hermegauss(points)  # weight exp(-z^2 / 2), total sqrt(2 pi)
    z = torch.as_tensor(nodes, dtype=torch.float64).unsqueeze(-1)
    one = torch.ones(1, 1, dtype=torch.float64)
    c = F.taylor_features(z, one, torch.zeros_like(one), None, torch.ones(1, dtype=torch.float64),
                          activation=activation, order=(order,)).squeeze(-1)
    w = torch.as_tensor(weights, dtype=torch.float64) / math.sqrt(2 * math.pi)
    return [float((w * c * hermite(z.squeeze(-1), j)).sum()) / math.factorial(j) for j in range(max_degree + 1)]


def _sphere_mean_sd(q: int, d: int) -> tuple[float, float]:
    """Mean and standard deviation of He_q(t) for t = v.x, |v| = 1, x uniform on the sqrt(d)-sphere."""
    c = hermite_coefficients(q)
    mean = sum(ck * sphere_moment(k, d) for k, ck in enumerate(c))
    second = sum(cj * ck * sphere_moment(j + k, d) for j, cj in enumerate(c) for k, ck in enumerate(c))
    return mean, math.sqrt(second - mean**2)


class RandomFeatures(nn.Module):
    """h(x) = (He_q(x V^T) - mu) / sd, with V (D, d) random unit rows drawn once from ``generator``."""

    def __init__(self, in_features: int, num_features: int, degree: int, generator: torch.Generator,
                 dtype=torch.float32):
        super().__init__()
        if degree < 1:
            raise ValueError(f"degree: expected a positive int, got {degree}")
        v = torch.randn(num_features, in_features, generator=generator, dtype=torch.float64)
        self.register_buffer("directions", (v / v.norm(dim=1, keepdim=True)).to(dtype))
        self.degree = degree
        self.mean, self.sd = _sphere_mean_sd(degree, in_features)

    @property
    def num_features(self) -> int:
        return self.directions.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (hermite(x @ self.directions.T, self.degree) - self.mean) / self.sd

    def extra_repr(self) -> str:
        d = self.directions.shape[1]
        return f"in_features={d}, num_features={self.num_features}, degree={self.degree}"
