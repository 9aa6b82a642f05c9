"""Optimizers for the Taylor models.

``NoisySGD`` is the escaping-saddle algorithm of the beyond-NTK theorems: gradient descent on the
regularized loss with isotropic Gaussian noise added to every gradient. The sign-randomized quadratic
model starts at W = 0, a saddle point of its expected loss (the gradient of E_S f vanishes there), so
plain gradient descent on the expected loss never leaves it; the noise does.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["NoisySGD"]


class NoisySGD(torch.optim.Optimizer):
    r"""SGD with L2 weight decay and Gaussian gradient noise:

    .. math::
        p \leftarrow p - \text{lr}\,(\nabla + \text{weight\_decay}\cdot p + \text{noise\_std}\cdot\xi),
        \qquad \xi \sim N(0, I) \text{ fresh every step.}

    With ``noise_std=0`` this is exactly ``torch.optim.SGD(params, lr, weight_decay=weight_decay)``.
    For the quadratic Taylor model the weight decay is the natural regularizer: :math:`\|W\|_F^2` is
    the nuclear norm of :math:`\sum_r w_r w_r^T`, the quadratic form the model learns.

    Args:
        params: parameters or parameter groups, as for any optimizer.
        lr: the learning rate.
        noise_std: the standard deviation of the gradient noise.
        weight_decay: the L2 penalty's coefficient.
        generator: the noise's generator (on the parameters' device); None: torch's default
            generator, so ``torch.manual_seed`` makes runs repeat.

    Example::

        >>> model = taylornet.TaylorNet(8, 256, order=2, sign_randomization=True)
        >>> opt = NoisySGD(model.parameters(), lr=0.5, noise_std=1e-3, weight_decay=1e-4)
        >>> model.expected_loss(torch.randn(32, 8), torch.randn(32)).backward()
        >>> opt.step()
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float, noise_std: float = 0.0,
                 weight_decay: float = 0.0, generator: torch.Generator | None = None) -> None:
        if lr <= 0:
            raise ValueError(f"lr: expected a positive learning rate, got {lr}")
        if noise_std < 0:
            raise ValueError(f"noise_std: expected a non-negative number, got {noise_std}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay: expected a non-negative number, got {weight_decay}")
        super().__init__(params, {"lr": lr, "noise_std": noise_std, "weight_decay": weight_decay})
        self.generator = generator

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, noise_std, weight_decay = group["lr"], group["noise_std"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if weight_decay:
                    grad = grad.add(p, alpha=weight_decay)
                if noise_std:
                    noise = torch.randn(p.shape, generator=self.generator, dtype=p.dtype, device=p.device)
                    grad = grad.add(noise, alpha=noise_std)
                p.add_(grad, alpha=-lr)
        return loss
