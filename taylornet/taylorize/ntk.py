"""``empirical_ntk``: the Gram matrix of a module's parameter Jacobians."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from .module import TaylorizedModule


def empirical_ntk(module: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, *,
                  parameters: list[str] | None = None, trace: bool = False,
                  implementation: str = "jacobian") -> torch.Tensor:
    r""":math:`\Theta(x_1, x_2) = J(x_1) J(x_2)^T` of any module, :math:`J = \partial\,\text{module}(x) /
    \partial\theta`, at the module's current parameters.

    For any module (a :class:`TaylorizedModule` included). The two-layer model's kernel at
    initialization has a fused, Jacobian-free form: :func:`taylornet.ntk_gram`.

    Args:
        module: maps a batch :math:`(n, \ldots)` to outputs :math:`(n, *o)`.
        x1: first inputs.
        x2: second inputs (default: x1).
        parameters: names of the parameters to differentiate (default: those that require grad).
        trace: sum over the output dimensions (the trace of the per-pair block).
        implementation: ``"jacobian"`` (contract the Jacobians from ``torch.func.jacrev``; memory
            :math:`n \cdot o \cdot P`) or ``"ntvp"`` (NTK-vector products: a vjp and a jvp per
            output of x2; no Jacobian is stored).

    Shape:
        - x1: :math:`(n_1, \ldots)`; x2: :math:`(n_2, \ldots)`
        - Output: :math:`(n_1, n_2, *o, *o)`, or :math:`(n_1, n_2)` when the per-sample output is a
          scalar or ``trace=True``

    Example::

        >>> net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        >>> taylornet.empirical_ntk(net, torch.randn(5, 4)).shape
        torch.Size([5, 5, 1, 1])
    """
    if x2 is None:
        x2 = x1
    if isinstance(module, TaylorizedModule) and module.orders is not None and module.method == "taylor":
        with torch.no_grad():  # trace outside the torch.func transforms below
            module(x1), module(x2)
    named = dict(module.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if parameters is None else list(parameters)
    if not names:
        raise ValueError("empirical_ntk: no parameter to differentiate")
    params = {n: named[n].detach() for n in names}

    def f(p, x):
        return functional_call(module, p, (x,))

    out1_shape = f(params, x1[:1]).shape[1:] if implementation == "ntvp" else None
    if implementation == "jacobian":
        j1 = jacrev(f)(params, x1)
        j2 = j1 if x2 is x1 else jacrev(f)(params, x2)
        out_shape = None
        theta = None
        for n in names:
            a, b = j1[n], j2[n]
            n1, n2 = x1.shape[0], x2.shape[0]
            p_numel = named[n].numel()
            out_shape = a.shape[1:a.dim() - named[n].dim()]
            a = a.reshape(n1, -1, p_numel)
            b = b.reshape(n2, -1, p_numel)
            term = torch.einsum("aip,bjp->abij", a, b)
            theta = term if theta is None else theta + term
    elif implementation == "ntvp":
        n1, n2 = x1.shape[0], x2.shape[0]
        out_shape = out1_shape

        def slice_(vec):
            _, vjp_fn = vjp(lambda p: f(p, x2), params)
            (v,) = vjp_fn(vec)
            _, col = jvp(lambda p: f(p, x1), (params,), (v,))
            return col

        o = math.prod(out_shape)
        ref = next(iter(params.values()))
        basis = torch.eye(n2 * o, dtype=ref.dtype, device=ref.device).reshape(n2 * o, n2, *out_shape)
        cols = vmap(slice_)(basis)  # (n2 * o, n1, *o)
        theta = cols.reshape(n2, o, n1, o).permute(2, 0, 3, 1)  # (n1, n2, o1, o2)
    else:
        raise ValueError(f"implementation: expected 'jacobian' or 'ntvp', got {implementation!r}")
    if trace or len(out_shape) == 0:
        return theta.diagonal(dim1=2, dim2=3).sum(-1) if theta.dim() == 4 else theta
    return theta.reshape(theta.shape[0], theta.shape[1], *out_shape, *out_shape)
