"""``taylorize``: the Taylor expansion of a module in its parameters, as a module."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.func import functional_call
from torch.utils import _pytree as pytree

from ..activations import Order, parse_order
from .graph import interpret, trace
from .rules import _taylor_derivatives
from .series import Jet, _broadcast, _coeffs

_METHODS = ("taylor", "jvp")


class TaylorizedModule(nn.Module):
    r"""The order-``order`` Taylor expansion of ``module`` in its parameters, around their values.

    The forward is :math:`\sum_{k \in O} \frac{1}{k!} D^k f(\theta_0)[\delta, \ldots, \delta]` with
    :math:`\theta_0` the frozen parameters of ``module`` and :math:`\delta` the trainable movement
    (zero at start), one per expanded parameter. :func:`taylorize` builds one.

    Args:
        module: the module to expand.
        order: an int K (orders 0..K), a sequence of distinct orders, or ``"exact"`` (the module at
            :math:`\theta_0 + \delta`).
        parameters: names of the parameters to expand (default: those that require grad; the others
            stay fixed at their values).
        method: ``"taylor"`` (Taylor-mode series through the traced ATen graph, matrix products
            linear in K) or ``"jvp"`` (nested forward-mode AD of the whole module, :math:`2^K`
            evaluations).
        copy_module: expand around a copy of ``module`` (False: around ``module`` itself, whose
            parameters are then frozen in place).

    Shape:
        - Input and output: those of ``module``

    Attributes:
        module: the frozen base (parameters with ``requires_grad=False``).
        delta: a module tree holding the movement parameters under the base's names, zero at start.
        expanded: the names of the expanded parameters.
        orders: the sorted orders, or None for ``"exact"``.

    Example::

        >>> net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        >>> model = taylornet.TaylorizedModule(net, order=2)
        >>> model(torch.randn(8, 4)).shape
        torch.Size([8, 1])
    """

    def __init__(self, module: nn.Module, order: Order = 2, *, parameters: str | list[str] | None = None,
                 method: str = "taylor", copy_module: bool = True) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
        if method not in _METHODS:
            raise ValueError(f"method: expected 'taylor' or 'jvp', got {method!r}")
        orders, exact = parse_order(order, max_order=None)
        self.order = order
        self.orders = None if exact else orders
        self.method = method
        base = copy.deepcopy(module) if copy_module else module
        named = dict(base.named_parameters())
        if parameters is None:
            names = [n for n, p in named.items() if p.requires_grad]
        else:
            names = [parameters] if isinstance(parameters, str) else list(parameters)
            unknown = [n for n in names if n not in named]
            if unknown:
                raise ValueError(f"parameters: {unknown} are not parameters of the module "
                                 f"(it has {list(named)})")
        if not names:
            raise ValueError("taylorize: no parameter to expand (none requires grad, or parameters=[])")
        for p in base.parameters():
            p.requires_grad_(False)
        self.module = base
        self.expanded = tuple(names)
        self.delta = nn.Module()
        for name in names:
            *path, leaf = name.split(".")
            holder = self.delta
            for part in path:
                if not hasattr(holder, part):
                    holder.add_module(part, nn.Module())
                holder = getattr(holder, part)
            holder.register_parameter(leaf, nn.Parameter(torch.zeros_like(named[name])))
        self._graphs = {}

    # -- helpers --------------------------------------------------------------------------------

    def movement(self) -> dict:
        """{name: delta parameter} for the expanded parameters."""
        out = {}
        for name in self.expanded:
            path, _, leaf = name.rpartition(".")
            # attribute access, so that torch.func.functional_call can swap the tensors in
            out[name] = getattr(self.delta.get_submodule(path) if path else self.delta, leaf)
        return out

    def _base_state(self):
        params = dict(self.module.named_parameters())
        buffers = dict(self.module.named_buffers())
        return params, buffers

    def extra_repr(self) -> str:
        return f"order={self.order!r}, method={self.method!r}, expanded={list(self.expanded)}"

    # -- evaluation -----------------------------------------------------------------------------

    def forward(self, *args, **kwargs):
        if self.orders is None:  # "exact": the module at theta0 + delta
            params, buffers = self._base_state()
            moved = {**params, **{n: params[n] + d for n, d in self.movement().items()}}
            return functional_call(self.module, {**moved, **buffers}, args, kwargs)
        terms = self._terms(args, kwargs, self.orders[-1])
        keep = [terms[k] for k in self.orders]

        def total(*leaves):
            out = None
            for v in leaves:
                out = v if out is None else out + v
            return out
        return pytree.tree_map(total, *keep) if len(keep) > 1 else keep[0]

    def terms(self, *args, **kwargs) -> list:
        """[y_0, ..., y_K]: y_k = (1/k!) D^k f(theta0)[delta, ..., delta], each like the module's output
        for the inputs ``args``, ``kwargs``; K is the highest order."""
        if self.orders is None:
            raise ValueError("terms: order='exact' has no Taylor terms")
        return self._terms(args, kwargs, self.orders[-1])

    def _terms(self, args, kwargs, K):
        if self.method == "jvp":
            return self._terms_jvp(args, kwargs, K)
        return self._terms_taylor(args, kwargs, K)

    def _terms_jvp(self, args, kwargs, K):
        params, buffers = self._base_state()
        delta = self.movement()
        out_spec = []

        def phi(t):
            moved = {**params, **{n: params[n] + t * d for n, d in delta.items()}}
            out = functional_call(self.module, {**moved, **buffers}, args, kwargs)
            leaves, spec = pytree.tree_flatten(out)
            out_spec[:] = [spec]
            return tuple(leaves)

        ref = next(iter(delta.values()))
        t = torch.zeros((), dtype=ref.dtype, device=ref.device)
        derivs = _taylor_derivatives(phi, t, K)
        return [pytree.tree_unflatten([v / math.factorial(k) for v in derivs[k]], out_spec[0])
                for k in range(K + 1)]

    def _terms_taylor(self, args, kwargs, K):
        params, buffers = self._base_state()
        names = list(params) + list(buffers)
        state = [params[n] for n in params] + [buffers[n] for n in buffers]
        arg_leaves, arg_spec = pytree.tree_flatten((args, kwargs))
        tensor_pos = [i for i, v in enumerate(arg_leaves) if isinstance(v, torch.Tensor)]
        const_leaves = tuple(None if i in tensor_pos else v for i, v in enumerate(arg_leaves))
        key = (
            arg_spec, const_leaves, self.module.training, K,
            tuple((tuple(arg_leaves[i].shape), arg_leaves[i].dtype, arg_leaves[i].device) for i in tensor_pos),
            tuple((tuple(t.shape), t.dtype, t.device) for t in state),
        )
        entry = self._graphs.get(key)
        if entry is None:
            if torch._C._functorch.maybe_current_level() is not None:
                # make_fx cannot trace inside a torch.func transform (it records the inputs as constants)
                raise RuntimeError(
                    "taylorize: this input signature has not been traced yet, and tracing cannot run inside "
                    "a torch.func transform (jacrev, vmap, ...); call the taylorized module once outside the "
                    "transform with inputs of the same shapes (per-sample shapes under vmap) first"
                )
            entry = self._build_graph(names, state, arg_leaves, arg_spec, tensor_pos)
            self._graphs[key] = entry
        gm, out_spec = entry
        delta = self.movement()
        inputs = []
        for n, t in zip(names, state):
            if n in delta:
                inputs.append(Jet([t, delta[n]] + [None] * (K - 1)) if K >= 1 else t)
            else:
                inputs.append(t)
        inputs += [arg_leaves[i] for i in tensor_pos]
        outs = interpret(gm, inputs, K)
        per_leaf = [_coeffs(o, K) if isinstance(o, (Jet, torch.Tensor)) else [o] + [None] * K for o in outs]
        terms = []
        for k in range(K + 1):
            leaves = []
            for c in per_leaf:
                v = c[k]
                if v is None:
                    v = torch.zeros_like(c[0])
                elif isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(c[0].shape):
                    v = _broadcast(v, c[0].shape)
                leaves.append(v)
            terms.append(pytree.tree_unflatten(leaves, out_spec))
        return terms

    def _build_graph(self, names, state, arg_leaves, arg_spec, tensor_pos):
        module, n_state = self.module, len(names)
        out_spec = []

        def flat_fn(*flat):
            mapping = dict(zip(names, flat[:n_state]))
            leaves = list(arg_leaves)
            for i, v in zip(tensor_pos, flat[n_state:]):
                leaves[i] = v
            a, kw = pytree.tree_unflatten(leaves, arg_spec)
            out = functional_call(module, mapping, a, kw)
            leaves_out, spec = pytree.tree_flatten(out)
            out_spec[:] = [spec]
            return leaves_out

        gm = trace(flat_fn, list(state) + [arg_leaves[i] for i in tensor_pos])
        return gm, out_spec[0]


def taylorize(module: nn.Module, order: Order = 2, *, parameters: str | list[str] | None = None,
              method: str = "taylor", copy_module: bool = True) -> TaylorizedModule:
    r"""The order-``order`` Taylor expansion of ``module`` in its parameters around their current values.

    Returns a :class:`TaylorizedModule` whose forward is
    :math:`\sum_{k \in O} \frac{1}{k!} D^k f(\theta_0)[\delta, \ldots, \delta]`, with :math:`\theta_0`
    the (copied, frozen) current parameters and :math:`\delta` the trainable movement (zero at start).

    Args:
        module: the module to expand.
        order: an int K (orders 0..K), a sequence of distinct orders, or ``"exact"``.
        parameters: names of the parameters to expand (default: those that require grad).
        method: ``"taylor"`` (Taylor-mode series, matrix products linear in K) or ``"jvp"`` (nested
            forward-mode AD, :math:`2^K` evaluations).
        copy_module: expand around a copy (False: around ``module`` itself).

    Shape:
        - Input and output: those of ``module``

    Example::

        >>> net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        >>> model = taylornet.taylorize(net, order=2)
        >>> y0, y1, y2 = model.terms(torch.randn(8, 4))   # the orders separately
    """
    return TaylorizedModule(module, order, parameters=parameters, method=method, copy_module=copy_module)
