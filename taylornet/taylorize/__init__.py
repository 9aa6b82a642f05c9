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
from .module import TaylorizedModule, taylorize
from .ntk import empirical_ntk

__all__ = ["TaylorizedModule", "empirical_ntk", "taylorize"]
