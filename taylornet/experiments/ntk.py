"""Kernel ridge regression with the empirical NTK of the two-layer model.

The Gram matrix is ``taylornet.ntk_gram`` (also ``TaylorNet.ntk``): the fused, chunked one, with no
n x m Jacobian. The order-1 model trained on the ridge loss converges to the kernel ridge predictor
with this Gram matrix.
"""
from __future__ import annotations

import torch

from ..functional import ntk_gram

__all__ = ["kernel_ridge", "ntk_gram"]


def kernel_ridge(gram_train: torch.Tensor, y_train: torch.Tensor, gram_test: torch.Tensor,
                 ridge: float) -> torch.Tensor:
    """Kernel ridge predictions gram_test (gram_train + ridge I)^-1 y_train, solved in float64.

    ``gram_train`` is (n, n), ``gram_test`` is (n_test, n), ``y_train`` is (n,) or (n, c). The ridge
    matches the loss mean_i (f(x_i) - y_i)^2 + lam ||W||^2 of the order-1 model when ridge = n lam.
    """
    eye = torch.eye(gram_train.shape[0], dtype=torch.float64, device=gram_train.device)
    coef = torch.linalg.solve(gram_train.double() + ridge * eye, y_train.double())
    return (gram_test.double() @ coef).to(gram_test.dtype)
