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

__all__ = ["RandomFeatures", "hermite", "hermite_coefficients"]


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
