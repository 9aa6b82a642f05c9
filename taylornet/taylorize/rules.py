"""Taylor-mode rules of the ATen ops: how each op acts on jets.

``rule(op, args, kwargs, out0, K)`` returns the op's output with its Taylor coefficients, given the
primal output ``out0 = op(primals)``: linear ops act on each coefficient, bilinear ones take the
Cauchy product, smooth elementwise ops use the series recurrences of ``series.py``, piecewise-linear
ones follow the primal's branch, and any other op falls back to nested forward-mode AD on that op
alone (``_rule_fallback``). ``apply`` picks the rule of an op.
"""
from __future__ import annotations

import math

import torch
from torch.func import jvp
from torch.utils import _pytree as pytree

from .series import (
    Jet,
    _add,
    _broadcast,
    _cauchy,
    _coeffs,
    _divide,
    _erf,
    _exp,
    _log,
    _make,
    _mask,
    _normal_cdf,
    _pow,
    _reduce_dims,
    _scale,
    _sigmoid,
    _sin_cos,
    _sqrt,
    _tanh,
    _var,
)

aten = torch.ops.aten

def _assemble(out0, per_order):
    """Builds the result from out0 and [out_1, ..., out_K] (each like out0, or None)."""
    if isinstance(out0, torch.Tensor):
        return _make([out0] + list(per_order))
    if isinstance(out0, (tuple, list)):
        items = []
        for i, o in enumerate(out0):
            if isinstance(o, torch.Tensor) and o.is_floating_point():
                items.append(_make([o] + [None if p is None else p[i] for p in per_order]))
            else:
                items.append(o)
        return type(out0)(items)
    return out0


def _jets_in(leaves):
    return [i for i, v in enumerate(leaves) if isinstance(v, Jet)]


def _rule_linear(op, args, kwargs, out0, K):
    """Ops linear in their floating-point tensor arguments jointly (views, sums, cat, ...): the op on
    each coefficient, constants entering only at order 0."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    jets = _jets_in(leaves)
    per_order = []
    for k in range(1, K + 1):
        if all(leaves[i].c[k] is None for i in jets):
            per_order.append(None)
            continue
        vals = []
        for v in leaves:
            if isinstance(v, Jet):
                vals.append(v.c[k] if v.c[k] is not None else torch.zeros_like(v.c[0]))
            elif isinstance(v, torch.Tensor) and v.is_floating_point():
                vals.append(torch.zeros_like(v))
            else:
                vals.append(v)
        a, kw = pytree.tree_unflatten(vals, spec)
        per_order.append(op(*a, **kw))
    return _assemble(out0, per_order)


def _rule_constant(op, args, kwargs, out0, K):
    """Ops whose value does not move with t: detach (as torch.func.jvp does), *_like, sign, floor..."""
    return out0


def _arg(args, kwargs, i, name, default=None):
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _rule_add(op, args, kwargs, out0, K):
    a, b = args[0], args[1]
    alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
    sign = -1 if op.overloadpacket is aten.sub else 1
    z = _add(_coeffs(a, K), _coeffs(b, K) if isinstance(b, (Jet, torch.Tensor)) else [b] + [None] * K,
             sign * alpha)
    return _make([out0] + [None if v is None else _broadcast(v, out0.shape) for v in z[1:]])


def _rule_rsub(op, args, kwargs, out0, K):  # other - alpha * x
    x, other = args[0], args[1]
    alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
    z = _add(_coeffs(other, K) if isinstance(other, (Jet, torch.Tensor)) else [other] + [None] * K,
             _coeffs(x, K), -alpha)
    return _make([out0] + [None if v is None else _broadcast(v, out0.shape) for v in z[1:]])


def _rule_affine_scalar(op, args, kwargs, out0, K):
    """x + s, x - s (Scalar overloads): the higher coefficients are x's."""
    x = args[0]
    return _make([out0] + list(x.c[1:]))


def _rule_zero_fill(op, args, kwargs, out0, K):
    """constant_pad_nd, masked_fill: the fill value belongs to order 0 only."""
    x = args[0]
    if op.overloadpacket is aten.constant_pad_nd:
        return _make([out0] + [None if v is None else op(v, args[1], 0.0) for v in x.c[1:]])
    if isinstance(args[2], Jet):
        return _rule_fallback(op, args, kwargs, out0, K)
    return _make([out0] + [None if v is None else aten.masked_fill.Scalar(v, args[1], 0.0) for v in x.c[1:]])


def _rule_mul(op, args, kwargs, out0, K):
    a, b = args[0], args[1]
    if not isinstance(b, (Jet, torch.Tensor)):  # mul.Scalar
        return _make([out0] + _scale(a.c[1:], b))
    z = _cauchy(_coeffs(a, K), _coeffs(b, K), start=1)
    return _make([out0] + [None if v is None else _broadcast(v, out0.shape) for v in z[1:]])


def _rule_div(op, args, kwargs, out0, K):
    a, b = args[0], args[1]
    if kwargs.get("rounding_mode") is not None:
        return out0
    if not isinstance(b, Jet):  # divided by a constant: linear
        return _make([out0] + [None if v is None else _broadcast(v / b, out0.shape) for v in _coeffs(a, K)[1:]])
    z = _divide(_coeffs(a, K), b.c, out0)
    return _make([out0] + [None if v is None else _broadcast(v, out0.shape) for v in z[1:]])


def _rule_bilinear(product):
    def rule(op, args, kwargs, out0, K):
        z = _cauchy(_coeffs(args[0], K), _coeffs(args[1], K), product, start=1)
        return _make([out0] + z[1:])
    return rule


def _rule_addmm(op, args, kwargs, out0, K):
    bias, m1, m2 = args[:3]
    beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
    z = _cauchy(_coeffs(m1, K), _coeffs(m2, K), aten.mm.default, start=1)  # out0 is order 0
    if alpha != 1:
        z = _scale(z, alpha)
    out = [out0]
    for k in range(1, K + 1):
        v = z[k]
        if isinstance(bias, Jet) and bias.c[k] is not None:
            b = bias.c[k] * beta if beta != 1 else bias.c[k]
            v = _broadcast(b, out0.shape) if v is None else v + b
        out.append(v)
    return _make(out)


def _rule_convolution(op, args, kwargs, out0, K):
    x, w, bias = args[0], args[1], args[2]
    rest = tuple(args[3:])

    def conv(a, b):
        return aten.convolution.default(a, b, None, *rest)

    z = _cauchy(_coeffs(x, K), _coeffs(w, K), conv, start=1)
    out = [out0]
    for k in range(1, K + 1):
        v = z[k]
        if isinstance(bias, Jet) and bias.c[k] is not None:
            b = bias.c[k].reshape(1, -1, *([1] * (out0.dim() - 2)))
            v = _broadcast(b, out0.shape) if v is None else v + b
        out.append(v)
    return _make(out)


def _unary(series_fn):
    def rule(op, args, kwargs, out0, K):
        return _make([out0] + series_fn(args[0].c, out0)[1:])
    return rule


def _rule_pow(op, args, kwargs, out0, K):
    x, r = args[0], args[1]
    if isinstance(r, (Jet, torch.Tensor)) or not isinstance(x, Jet):
        return _rule_fallback(op, args, kwargs, out0, K)
    return _make([out0] + _pow(x.c, r, out0)[1:])


def _rule_gelu(op, args, kwargs, out0, K):
    x = args[0].c
    if kwargs.get("approximate", args[1] if len(args) > 1 else "none") == "tanh":
        inner = _scale(_add(x, _scale(_pow(x, 3), 0.044715)), math.sqrt(2.0 / math.pi))
        t = _tanh(inner)
        half = _scale([t[0] + 1.0] + t[1:], 0.5)
        return _make([out0] + _cauchy(x, half, start=1)[1:])
    return _make([out0] + _cauchy(x, _normal_cdf(x), start=1)[1:])


def _rule_silu(op, args, kwargs, out0, K):
    x = args[0].c
    return _make([out0] + _cauchy(x, _sigmoid(x), start=1)[1:])


def _rule_softplus(op, args, kwargs, out0, K):
    x = args[0].c
    beta = _arg(args, kwargs, 1, "beta", 1.0)
    threshold = _arg(args, kwargs, 2, "threshold", 20.0)
    bx = _scale(x, beta)
    soft = _scale(_log(_exp(bx), shift=1.0), 1.0 / beta)  # log(1 + e^{beta x}) / beta
    linear = x[0] * beta > threshold
    return _make([out0] + [None if (s is None and v is None) else torch.where(
        linear, v if v is not None else 0.0, s if s is not None else 0.0) for s, v in zip(soft[1:], x[1:])])


def _rule_relu(op, args, kwargs, out0, K):
    x = args[0].c
    return _make([out0] + _mask(x, x[0] > 0)[1:])


def _rule_abs(op, args, kwargs, out0, K):
    x = args[0].c
    return _make([out0] + [None if v is None else v * torch.sign(x[0]) for v in x[1:]])


def _rule_leaky_relu(op, args, kwargs, out0, K):
    x = args[0].c
    slope = _arg(args, kwargs, 1, "negative_slope", 0.01)
    return _make([out0] + _mask(x, x[0] > 0, slope)[1:])


def _rule_clamp(op, args, kwargs, out0, K):
    x = args[0]
    packet = op.overloadpacket
    if packet is aten.clamp_min:
        lo, hi = args[1], None
    elif packet is aten.clamp_max:
        lo, hi = None, args[1]
    else:
        lo, hi = _arg(args, kwargs, 1, "min"), _arg(args, kwargs, 2, "max")
    if isinstance(lo, Jet) or isinstance(hi, Jet):
        return _rule_fallback(op, args, kwargs, out0, K)
    inside = torch.ones_like(x.c[0], dtype=torch.bool)
    if lo is not None:
        inside &= x.c[0] > lo
    if hi is not None:
        inside &= x.c[0] < hi
    return _make([out0] + [None if v is None else _broadcast(v * inside.to(v.dtype), out0.shape)
                           for v in x.c[1:]])


def _select(mask, a, b, shape):
    """where(mask, a, b) for coefficients that may be None (zero)."""
    if a is None and b is None:
        return None
    a = a if a is not None else torch.zeros((), dtype=(b.dtype), device=b.device)
    b = b if b is not None else torch.zeros((), dtype=a.dtype, device=a.device)
    return _broadcast(torch.where(mask, a, b), shape)


def _rule_where(op, args, kwargs, out0, K):
    cond, a, b = args
    if isinstance(cond, Jet):
        cond = cond.c[0]
    A = _coeffs(a, K) if isinstance(a, (Jet, torch.Tensor)) else [a] + [None] * K
    B = _coeffs(b, K) if isinstance(b, (Jet, torch.Tensor)) else [b] + [None] * K
    return _make([out0] + [_select(cond, A[k], B[k], out0.shape) for k in range(1, K + 1)])


def _rule_maximum(op, args, kwargs, out0, K):
    a, b = args
    A, B = _coeffs(a, K), _coeffs(b, K)
    pick_a = A[0] > B[0] if op.overloadpacket is aten.maximum else A[0] < B[0]
    return _make([out0] + [_select(pick_a, A[k], B[k], out0.shape) for k in range(1, K + 1)])


def _rule_amax(op, args, kwargs, out0, K):
    x = args[0].c
    dims = _reduce_dims(x[0], _arg(args, kwargs, 1, "dim", []))
    keepdim = _arg(args, kwargs, 2, "keepdim", False)
    hit = (x[0] == x[0].amax(dims, keepdim=True) if op.overloadpacket is aten.amax
           else x[0] == x[0].amin(dims, keepdim=True)).to(x[0].dtype)
    count = hit.sum(dims, keepdim=keepdim)
    return _make([out0] + [None if v is None else (v * hit).sum(dims, keepdim=keepdim) / count for v in x[1:]])


def _rule_max_dim(op, args, kwargs, out0, K):
    x = args[0].c
    dim = _arg(args, kwargs, 1, "dim")
    keepdim = _arg(args, kwargs, 2, "keepdim", False)
    values, indices = out0
    idx = indices if keepdim else indices.unsqueeze(dim)
    coeffs = [None if v is None else (v.gather(dim, idx) if keepdim else v.gather(dim, idx).squeeze(dim))
              for v in x[1:]]
    return (_make([values] + coeffs), indices)


def _rule_max_pool(op, args, kwargs, out0, K):
    """The indices point into the flattened spatial plane (volume) of each channel."""
    x = args[0].c
    values, indices = out0
    start = -3 if op.overloadpacket is aten.max_pool3d_with_indices else -2
    flat_idx = indices.flatten(start)
    coeffs = [None if v is None else v.flatten(start).gather(-1, flat_idx).view_as(values) for v in x[1:]]
    return (_make([values] + coeffs), indices)


def _rule_var(op, args, kwargs, out0, K):
    x = args[0].c
    dims = _reduce_dims(x[0], _arg(args, kwargs, 1, "dim"))
    correction = kwargs.get("correction")
    correction = 1 if correction is None else correction
    keepdim = kwargs.get("keepdim", False)
    var, mean = _var(x, dims, correction, keepdim)
    packet = op.overloadpacket
    if packet is aten.var_mean:
        return (_make([out0[0]] + var[1:]), _make([out0[1]] + mean[1:]))
    if packet is aten.std:
        return _make([out0] + _sqrt(var, out0)[1:])
    return _make([out0] + var[1:])


def _rule_layer_norm(op, args, kwargs, out0, K):
    x, normalized_shape, weight, bias, eps = args
    X = _coeffs(x, K)
    dims = list(range(X[0].dim() - len(normalized_shape), X[0].dim()))
    var, mean = _var(X, dims, 0, True)
    rstd = _pow([var[0] + eps] + var[1:], -0.5)
    y = _cauchy(_add(X, mean, -1), rstd)
    if weight is not None:
        y = _cauchy(y, _coeffs(weight, K))
    if bias is not None:
        y = _add(y, _coeffs(bias, K))
    return (_make([out0[0]] + y[1:]), _make([out0[1]] + mean[1:]), _make([out0[2]] + rstd[1:]))


def _rule_softmax(op, args, kwargs, out0, K):
    x, dim = args[0].c, args[1]
    shift = x[0].amax(dim, keepdim=True).detach()  # softmax(x - c) = softmax(x) for a constant c
    e = _exp([x[0] - shift] + x[1:])
    total = [None if v is None else v.sum(dim, keepdim=True) for v in e]
    if op.overloadpacket is aten._softmax:
        y = _divide(e, total)
    else:
        y = _add([x[0] - shift] + x[1:], _log(total), -1)
    return _make([out0] + y[1:])


def _rule_embedding(op, args, kwargs, out0, K):
    weight = args[0]
    rest = args[1:]
    return _make([out0] + [None if v is None else op(v, *rest, **kwargs) for v in weight.c[1:]])


def _rule_noop_copy_(op, args, kwargs, out0, K):
    return args[0]


def _taylor_derivatives(fn, t, K):
    """[fn(t), fn'(t), ..., fn^(K)(t)] for fn: scalar tensor -> tuple of tensors, by nested jvp."""
    def level(k):
        if k == 0:
            return lambda s: tuple(fn(s))
        inner = level(k - 1)

        def f(s):
            primal, tangent = jvp(inner, (s,), (torch.ones_like(s),))
            n = len(primal) // k
            return tuple(primal) + tuple(tangent[-n:])
        return f
    out = level(K)(t)
    n = len(out) // (K + 1)
    return [out[k * n:(k + 1) * n] for k in range(K + 1)]


def _rule_fallback(op, args, kwargs, out0, K):
    """Any op: the Taylor coefficients of t -> op(x(t)) by nested forward-mode AD (2^K op calls)."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    jets = _jets_in(leaves)
    ref = leaves[jets[0]].c[0]
    out_leaves, out_spec = pytree.tree_flatten(out0)
    floating = [i for i, o in enumerate(out_leaves) if isinstance(o, torch.Tensor) and o.is_floating_point()]

    def phi(t):
        vals = list(leaves)
        for i in jets:
            c = leaves[i].c
            series = None
            for v in reversed(c):  # Horner in t
                series = series * t if series is not None else None
                if v is not None:
                    series = v if series is None else series + v
            vals[i] = series
        a, kw = pytree.tree_unflatten(vals, spec)
        res, _ = pytree.tree_flatten(op(*a, **kw))
        return tuple(res[i] for i in floating)

    t = torch.zeros((), dtype=ref.dtype, device=ref.device)
    try:
        derivs = _taylor_derivatives(phi, t, K)
    except Exception as exc:  # no forward-mode formula, data-dependent op, ...
        raise NotImplementedError(
            f"taylorize: no Taylor-mode rule for {op} and forward-mode AD of it failed ({exc}); "
            "use method='jvp' or report the op"
        ) from exc
    out = list(out_leaves)
    for pos, i in enumerate(floating):
        coeffs = [out_leaves[i]] + [derivs[k][pos] / math.factorial(k) for k in range(1, K + 1)]
        out[i] = _make(coeffs)
    return pytree.tree_unflatten(out, out_spec)


_LINEAR = (
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "squeeze", "unsqueeze",
    "slice", "select", "clone", "alias", "neg", "sum", "mean", "_to_copy", "flip", "roll", "repeat",
    "index_select", "gather", "index", "unfold", "as_strided", "diagonal", "narrow", "split",
    "split_with_sizes", "unbind", "chunk", "cat", "stack", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "upsample_nearest1d", "upsample_nearest2d",
    "upsample_bilinear2d", "pixel_shuffle", "pixel_unshuffle", "im2col", "col2im", "contiguous",
    "lift_fresh_copy", "copy", "cumsum", "tril", "triu", "diag_embed", "index_put", "scatter_add",
    "view_copy", "permute_copy", "t_copy", "transpose_copy", "expand_copy", "squeeze_copy",
    "unsqueeze_copy", "slice_copy", "select_copy", "alias_copy", "unfold_copy", "diagonal_copy",
    "as_strided_copy", "_unsafe_index", "slice_scatter", "select_scatter", "squeeze_dims",
)
_CONSTANT = (
    "detach", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
    "new_zeros", "new_ones", "new_empty", "new_full", "sign", "floor", "ceil", "round", "trunc",
    "bernoulli", "heaviside", "detach_copy",
)

_RULES = {}
for _name in _LINEAR:
    if hasattr(aten, _name):
        _RULES[getattr(aten, _name)] = _rule_linear
for _name in _CONSTANT:
    if hasattr(aten, _name):
        _RULES[getattr(aten, _name)] = _rule_constant
_RULES.update({
    aten.add: _rule_add, aten.sub: _rule_add, aten.rsub: _rule_rsub,
    aten.mul: _rule_mul, aten.div: _rule_div,
    aten.mm: _rule_bilinear(aten.mm.default), aten.bmm: _rule_bilinear(aten.bmm.default),
    aten.mv: _rule_bilinear(aten.mv.default), aten.dot: _rule_bilinear(aten.dot.default),
    aten.addmm: _rule_addmm, aten.convolution: _rule_convolution,
    aten.constant_pad_nd: _rule_zero_fill, aten.masked_fill: _rule_zero_fill,
    aten.tanh: _unary(_tanh), aten.sigmoid: _unary(_sigmoid), aten.exp: _unary(_exp),
    aten.expm1: _unary(lambda x, y0: [y0] + _exp(x)[1:]),
    aten.log: _unary(_log), aten.log1p: _unary(lambda x, y0: _log(x, y0, shift=1.0)),
    aten.erf: _unary(_erf), aten.sqrt: _unary(_sqrt),
    aten.rsqrt: _unary(lambda x, y0: _pow(x, -0.5, y0)),
    aten.reciprocal: _unary(lambda x, y0: _divide([torch.ones_like(x[0])] + [None] * (len(x) - 1), x, y0)),
    aten.sin: _unary(lambda x, y0: _sin_cos(x)[0]), aten.cos: _unary(lambda x, y0: _sin_cos(x)[1]),
    aten.pow: _rule_pow, aten.gelu: _rule_gelu, aten.silu: _rule_silu, aten.softplus: _rule_softplus,
    aten.relu: _rule_relu, aten.abs: _rule_abs, aten.leaky_relu: _rule_leaky_relu,
    aten.clamp: _rule_clamp, aten.clamp_min: _rule_clamp, aten.clamp_max: _rule_clamp,
    aten.where: _rule_where, aten.maximum: _rule_maximum, aten.minimum: _rule_maximum,
    aten.amax: _rule_amax, aten.amin: _rule_amax,
    aten.max_pool2d_with_indices: _rule_max_pool, aten.max_pool3d_with_indices: _rule_max_pool,
    aten.var: _rule_var, aten.var_mean: _rule_var, aten.std: _rule_var,
    aten.native_layer_norm: _rule_layer_norm,
    aten._softmax: _rule_softmax, aten._log_softmax: _rule_softmax,
    aten.embedding: _rule_embedding, aten.copy_: _rule_noop_copy_,
})
_OVERLOAD_RULES = {
    aten.add.Scalar: _rule_affine_scalar, aten.sub.Scalar: _rule_affine_scalar,
    aten.max.dim: _rule_max_dim, aten.min.dim: _rule_max_dim,
    aten.square.default: _unary(lambda x, y0: [y0] + _cauchy(x, x, start=1)[1:]),
}


def apply(op, args, kwargs, K):
    """op(*args, **kwargs) where some arguments are jets: the output with its Taylor coefficients."""
    leaves = pytree.tree_leaves((args, kwargs))
    if not any(isinstance(v, Jet) for v in leaves):
        return op(*args, **kwargs)
    pargs, pkwargs = pytree.tree_map_only(Jet, lambda j: j.c[0], (args, kwargs))
    out0 = op(*pargs, **pkwargs)
    if not any(isinstance(o, torch.Tensor) and o.is_floating_point() for o in pytree.tree_leaves(out0)):
        return out0  # indices, masks, shapes: functions of the primal only
    rule = _OVERLOAD_RULES.get(op)
    if rule is None and isinstance(op, torch._ops.OpOverload):
        rule = _RULES.get(op.overloadpacket)
    if rule is None:
        rule = _rule_fallback
    return rule(op, args, kwargs, out0, K)
