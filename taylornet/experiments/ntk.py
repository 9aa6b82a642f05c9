"""The empirical neural tangent kernel of the two-layer model and kernel ridge regression with it.

For f(x) = scale * sum_r a_r sigma(w0_r.x + w_r.x) with the movement W trained, the gradient in w_r at
W = 0 is J_r(x) = scale a_r sigma'(z0_r(x)) x, the same for every Taylor order >= 1 (they all share the
linearization). The Gram matrix of these Jacobians is

    K(x, x') = sum_r J_r(x).J_r(x') = (x.x') * scale^2 * sum_r a_r^2 sigma'(z0_r(x)) sigma'(z0_r(x')),

accumulated here over chunks of neurons, so the n x m Jacobian (or even an n x m activation buffer)
never exists: memory is O(n1 n2 + (n1 + n2) * chunk). The order-1 model trained on the ridge loss
converges to the kernel ridge predictor with this Gram matrix.
"""
from __future__ import annotations

import math

import torch

from .. import functional as F

__all__ = ["activation_derivative", "ntk_gram", "kernel_ridge"]

_CHUNK_ELEMENTS = 2**22  # n x chunk activation derivatives held at once


def activation_derivative(x: torch.Tensor, w0: torch.Tensor, *, activation: str) -> torch.Tensor:
    """sigma'(x w0^T), shape (n, m), by the fused op.

    The order-1 Taylor feature is c_1(z0) u = sigma'(z0) u; with the movement W = 0 and its bias
    b = 1, u = 1 and the feature is sigma'(z0) itself.
    """
    m = w0.shape[0]
    zeros = torch.zeros_like(w0)
    ones = torch.ones(m, dtype=w0.dtype, device=w0.device)
    return F.taylor_features(x, w0, zeros, None, ones, activation=activation, order=(1,))


def ntk_gram(x1: torch.Tensor, x2: torch.Tensor, w0: torch.Tensor, a: torch.Tensor, *,
             activation: str = "tanh", scale: float | None = None, chunk: int | None = None) -> torch.Tensor:
    """K(x1_i, x2_j), shape (n1, n2): the NTK in W of scale * sum_r a_r sigma(w0_r.x + w_r.x) at W = 0.

    ``a`` is the readout, (m,) or (1, m); ``scale`` defaults to 1/sqrt(m) as in ``taylor_net``.
    ``chunk`` neurons are processed at a time (default: as many as keep each chunk's
    activation derivatives near 4M elements).
    """
    a = a.reshape(-1)
    m = w0.shape[0]
    if a.shape[0] != m:
        raise ValueError(f"a: expected m = {m} readout weights (one output), got shape {tuple(a.shape)}")
    scale = 1.0 / math.sqrt(m) if scale is None else float(scale)
    if chunk is None:
        chunk = max(1, _CHUNK_ELEMENTS // max(x1.shape[0], x2.shape[0]))
    weight = (scale * a) ** 2
    acc = x1.new_zeros((x1.shape[0], x2.shape[0]))
    for start in range(0, m, chunk):
        rows = slice(start, start + chunk)
        d1 = activation_derivative(x1, w0[rows], activation=activation)
        d2 = d1 if x2 is x1 else activation_derivative(x2, w0[rows], activation=activation)
        acc += (d1 * weight[rows]) @ d2.T
    return (x1 @ x2.T) * acc


def kernel_ridge(gram_train: torch.Tensor, y_train: torch.Tensor, gram_test: torch.Tensor,
                 ridge: float) -> torch.Tensor:
    """Kernel ridge predictions gram_test (gram_train + ridge I)^-1 y_train, solved in float64.

    ``gram_train`` is (n, n), ``gram_test`` is (n_test, n), ``y_train`` is (n,) or (n, c). The ridge
    matches the loss mean_i (f(x_i) - y_i)^2 + lam ||W||^2 of the order-1 model when ridge = n lam.
    """
    eye = torch.eye(gram_train.shape[0], dtype=torch.float64, device=gram_train.device)
    coef = torch.linalg.solve(gram_train.double() + ridge * eye, y_train.double())
    return (gram_test.double() @ coef).to(gram_test.dtype)
