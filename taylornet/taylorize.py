"""``taylorize(module, order)``: the order-K Taylor expansion of any PyTorch module in its parameters,
and ``empirical_ntk(module, x1, x2)``: the Gram matrix of its parameter Jacobians.

    model = tn.taylorize(net, order=2)     # net(x; theta0 + delta) to second order in delta
    model(x)                               # sum_{k<=2} (1/k!) D^k f(theta0)[delta, ..., delta] (x)
    model.terms(x)                         # [term_0, term_1, term_2]: the orders separately

The expansion point theta0 is a frozen copy of the module's parameters at the call; the movement
delta (``model.delta``, one zero-initialized parameter per expanded parameter, same names) is
what trains. This is neural-tangents' ``taylor_expand`` for PyTorch modules.

How: Taylor mode (univariate jets). The K-th Taylor polynomial of f(theta0 + delta) in delta is
sum_k y_k, where y_k are the Taylor coefficients in t of the one-variable function
t -> f(theta0 + t delta) at t = 0. The module is traced once per input signature to an ATen graph
(``make_fx`` of ``torch.func.functional_call``, functionalized and decomposed to core ATen), and the
graph is evaluated on truncated series (y_0, ..., y_K) instead of tensors:

- parameters are the series (theta0, delta, 0, ...), inputs and buffers are constants;
- linear ops (views, sums, pooling, cat, ...) act on each coefficient;
- bilinear ops (mm, addmm, convolution, mul) take the Cauchy product, skipping zero coefficients:
  a weight (degree 1) times an activation (degree K) costs 2K + 1 products, not (K + 1)^2;
- smooth elementwise ops (tanh, sigmoid, exp, log, erf, gelu, sqrt, pow, ...) use the standard
  Taylor-arithmetic recurrences (Griewank & Walther, ch. 13): O(K^2) elementwise work;
- piecewise-linear ops (relu, abs, clamp, max pooling, maximum, ...) follow the primal's branch;
- any other op falls back to nested forward-mode AD (torch.func.jvp) on that op alone.

The matrix products, which dominate, therefore grow linearly in K (2K + 1 per layer), against 2^K
full evaluations for nested forward-mode AD of the whole model (``method="jvp"``, kept as the simple
alternative and for checking). Gradients with respect to delta come from ordinary autograd through
the series arithmetic. docs/taylorize.md has the measured costs.

Limits: the trace is specialized to the input shapes and to the Python control flow taken at trace
time (like torch.compile / torch.fx); buffers are constants (a BatchNorm's running statistics are not
updated; use eval mode or batch statistics); random ops are re-drawn at every call, once per call.
"""
from __future__ import annotations

import copy
import math
import numbers
import operator
from collections.abc import Iterable

import torch
from torch import fx, nn
from torch.func import functional_call, functionalize, jacrev, jvp, vjp, vmap
from torch.utils import _pytree as pytree

__all__ = ["TaylorizedModule", "empirical_ntk", "taylorize"]

aten = torch.ops.aten


# ---------------------------------------------------------------------------------------------
# Truncated Taylor series: lists [y_0, ..., y_K], y_0 a tensor, y_k a tensor or None (zero)

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


# ---------------------------------------------------------------------------------------------
# Rules: rule(op, args, kwargs, out0, K) -> output (pytree of Jet / tensors); out0 = op(primals)

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


def _apply(op, args, kwargs, K):
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


def _interpret(gm: fx.GraphModule, inputs, K: int):
    env = {}
    it = iter(inputs)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = next(it)
        elif node.op == "get_attr":
            env[node] = getattr(gm, node.target)
        elif node.op == "call_function":
            args, kwargs = pytree.tree_map_only(fx.Node, env.__getitem__, (node.args, node.kwargs))
            if node.target is operator.getitem:
                env[node] = args[0][args[1]]
            else:
                env[node] = _apply(node.target, args, kwargs, K)
        elif node.op == "output":
            return pytree.tree_map_only(fx.Node, env.__getitem__, node.args[0])
        else:
            raise NotImplementedError(f"taylorize: unexpected graph node {node.op} {node.target}")


def _decompositions():
    from torch._decomp import core_aten_decompositions, get_decompositions

    table = dict(core_aten_decompositions())
    table.update(get_decompositions([
        aten.native_dropout, aten._native_batch_norm_legit_no_training, aten._native_batch_norm_legit,
        aten._native_batch_norm_legit_functional, aten.native_batch_norm, aten.native_group_norm,
        aten.elu, aten.leaky_relu, aten.linalg_vector_norm, aten.addmv, aten.hardtanh,
    ]))
    return table


_DECOMPOSITIONS = None


def _trace(fn, example_inputs):
    """The functional ATen graph of fn(*flat_inputs) -> list of tensors."""
    global _DECOMPOSITIONS
    from torch.fx.experimental.proxy_tensor import make_fx

    if _DECOMPOSITIONS is None:
        _DECOMPOSITIONS = _decompositions()
    return make_fx(functionalize(fn, remove="mutations"), decomposition_table=_DECOMPOSITIONS,
                   tracing_mode="real")(*[t.detach() for t in example_inputs])


# ---------------------------------------------------------------------------------------------
# The module

def _parse_order(order):
    if isinstance(order, str):
        if order != "exact":
            raise ValueError(f"order: expected an int, a sequence of ints or 'exact', got {order!r}")
        return None
    if isinstance(order, bool):
        raise TypeError(f"order: expected an int, a sequence of ints or 'exact', got {order!r}")
    if isinstance(order, numbers.Integral):
        if order < 0:
            raise ValueError(f"order: expected a non-negative int, got {order}")
        return tuple(range(int(order) + 1))
    if isinstance(order, Iterable):
        orders = tuple(order)
        if not orders or any(isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0 for k in orders):
            raise ValueError(f"order: expected non-negative ints, got {order!r}")
        if len(set(orders)) != len(orders):
            raise ValueError(f"order: orders must be distinct, got {order!r}")
        return tuple(sorted(int(k) for k in orders))
    raise TypeError(f"order: expected an int, a sequence of ints or 'exact', got {order!r}")


class TaylorizedModule(nn.Module):
    """The order-``order`` Taylor expansion of ``module`` in the parameters named ``expanded``.

    Attributes: ``module`` (the frozen base, parameters with requires_grad=False), ``delta`` (a module
    tree holding the movement parameters under the base's names, zero at start), ``order``,
    ``method``. ``forward`` returns the module's output structure; ``terms`` the orders separately.
    """

    def __init__(self, module: nn.Module, order=2, *, parameters=None, method: str = "taylor",
                 copy_module: bool = True):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
        if method not in ("taylor", "jvp"):
            raise ValueError(f"method: expected 'taylor' or 'jvp', got {method!r}")
        self.order = order
        self.orders = _parse_order(order)
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
        """[y_0, ..., y_K]: y_k = (1/k!) D^k f(theta0)[delta, ..., delta], each like the output."""
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
        outs = _interpret(gm, inputs, K)
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

        gm = _trace(flat_fn, list(state) + [arg_leaves[i] for i in tensor_pos])
        return gm, out_spec[0]


def taylorize(module: nn.Module, order=2, *, parameters=None, method: str = "taylor",
              copy_module: bool = True) -> TaylorizedModule:
    """The order-``order`` Taylor expansion of ``module`` in its parameters around their current values.

    Returns a module whose forward is sum_{k in orders} (1/k!) D^k f(theta0)[delta, ..., delta] with
    theta0 the (copied, frozen) current parameters and delta the trainable movement (zero at start),
    one per expanded parameter. ``order``: an int K (orders 0..K), a sequence of orders, or "exact"
    (the module at theta0 + delta). ``parameters``: names of the parameters to expand (default:
    those that require grad; the others stay fixed at their values). ``method``: "taylor" (Taylor-mode
    series propagation through the traced ATen graph, matrix products linear in K) or "jvp" (nested
    forward-mode AD of the whole module, 2^K evaluations). ``copy_module=False`` expands around the
    module itself (its parameters are then frozen in place).
    """
    return TaylorizedModule(module, order, parameters=parameters, method=method, copy_module=copy_module)


# ---------------------------------------------------------------------------------------------
# Empirical NTK

def empirical_ntk(module: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, *, parameters=None,
                  trace: bool = False, implementation: str = "jacobian") -> torch.Tensor:
    """Theta(x1, x2) = J(x1) J(x2)^T, J = d module(x) / d theta over the parameters (default: those that
    require grad; ``parameters`` names a subset), at the module's current values.

    The module maps a batch (n, ...) to outputs (n, *o). Returns (n1, n2, *o, *o), or (n1, n2) when
    the per-sample output is a scalar or ``trace=True`` (the trace over the output dimensions).
    ``implementation``: "jacobian" (contract the Jacobians from torch.func.jacrev; memory n * o * P)
    or "ntvp" (NTK-vector products: a vjp and a jvp per output of x2; no Jacobian is stored).
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
