"""Validate taylornet.reference independently: nested autograd, nested forward-mode AD of the full
network, and brute-force enumeration of all sign patterns. Everything in float64."""
import itertools
import math

import pytest
import torch
from torch.func import jvp

import taylornet.reference as ref
from taylornet.activations import ACTIVATIONS

from _utils import slow_except

# torch.func.jvp loads torch's jvp decompositions, which call the deprecated torch.jit.script.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

DT = torch.float64
SMOOTH = [a for a in ACTIVATIONS if a != "relu"]

# Plain activations written independently of the reference module.
PLAIN = {
    "tanh": torch.tanh,
    "sigmoid": lambda z: 1.0 / (1.0 + torch.exp(-z)),
    "softplus": lambda z: torch.log1p(torch.exp(z)),
    "gelu": lambda z: z * 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0))),
    "silu": lambda z: z / (1.0 + torch.exp(-z)),
    "sin": torch.sin,
    "cos": torch.cos,
    "exp": torch.exp,
    "erf": torch.erf,
    "relu": lambda z: torch.clamp(z, min=0.0),
    "relu2": lambda z: torch.clamp(z, min=0.0) ** 2,
    "relu3": lambda z: torch.clamp(z, min=0.0) ** 3,
}
MAX_K = {"relu": 1, "relu2": 3, "relu3": 4}  # highest order checked against autograd; others: 6
POWER = {"relu": 1, "relu2": 2, "relu3": 3}  # sigma = max(z, 0)^p: c_p is the step, c_k = 0 beyond


def _z(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.empty(n, dtype=DT).uniform_(-2.5, 2.5, generator=g)
    return torch.where(z.abs() < 0.2, z.sign() * 0.2 + z, z)  # keep off the relu kink


def _autograd_derivatives(fn, z, K):
    """[sigma^(k)(z) for k <= K] by nested reverse-mode autograd."""
    z = z.clone().requires_grad_(True)
    y = fn(z)
    out = [y.detach()]
    for _ in range(K):
        if not y.requires_grad:  # derivative graph ended: the rest vanish
            y = torch.zeros_like(z)
        else:
            (y,) = torch.autograd.grad(y.sum(), z, create_graph=True, allow_unused=True)
            y = torch.zeros_like(z) if y is None else y
        out.append(y.detach())
    return out


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_coefficients_match_nested_autograd(activation):
    z = _z()
    K = MAX_K.get(activation, 6)
    derivs = _autograd_derivatives(PLAIN[activation], z, K)
    coeffs = ref.taylor_coefficients(z, activation, K + 2)
    assert len(coeffs) == K + 3
    for k in range(K + 1):
        torch.testing.assert_close(coeffs[k], derivs[k] / math.factorial(k), rtol=1e-10, atol=1e-12,
                                   msg=f"{activation} c_{k}")
        assert coeffs[k].shape == z.shape and coeffs[k].dtype == DT
    if activation in POWER:  # beyond the power p everything is exactly zero
        p = POWER[activation]
        torch.testing.assert_close(coeffs[p], (z > 0).to(DT), rtol=0, atol=0)
        for k in range(p + 1, K + 3):
            assert torch.equal(coeffs[k], torch.zeros_like(z)), f"{activation} c_{k}"


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_coefficients_differentiate_to_next(activation):
    """d c_k / dz = (k + 1) c_{k+1}: what the backward of the Taylor features relies on."""
    z = _z(seed=1).requires_grad_(True)
    K = 5
    coeffs = ref.taylor_coefficients(z, activation, K + 1)
    for k in range(K + 1):
        if not coeffs[k].requires_grad:
            grad = torch.zeros_like(z)
        else:
            (grad,) = torch.autograd.grad(coeffs[k].sum(), z, retain_graph=True, allow_unused=True)
            grad = torch.zeros_like(z) if grad is None else grad
        torch.testing.assert_close(grad, (k + 1) * coeffs[k + 1].detach(), rtol=1e-10, atol=1e-12,
                                   msg=f"{activation} dc_{k}")


@pytest.mark.parametrize("activation", [a for a in SMOOTH if a not in MAX_K])
def test_high_order_series_converges(activation):
    """Up to order 16 the series sum_k c_k(z) h^k reproduces sigma(z + h) for small h."""
    z = _z(seed=2)
    h = 0.25 * torch.linspace(-1, 1, z.numel(), dtype=DT)
    coeffs = ref.taylor_coefficients(z, activation, ref.MAX_ORDER)
    series = sum(c * h**k for k, c in enumerate(coeffs))
    torch.testing.assert_close(series, PLAIN[activation](z + h), rtol=1e-11, atol=1e-11)


# ---------------------------------------------------------------------------------------------
# The network against an independent oracle

def _params(n=5, d=3, m=7, c=2, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, dtype=DT, generator=g)  # noqa: E731
    x, w0, w = r(n, d), r(m, d), 0.4 * r(m, d)
    a = r(c, m) if c else r(m)
    b0, b = (r(m), 0.3 * r(m)) if bias else (None, None)
    signs = torch.where(torch.rand(m, generator=g, dtype=DT) < 0.5, -1.0, 1.0).to(DT)
    return x, w0, w, a, b0, b, signs


def _full_net(activation, x, w0, w, a, b0, b, signs, t=1.0, scale=None):
    """g(t W) = scale * sum_r a_r sigma(w0_r.x + b0_r + s_r t (w_r.x + b_r)), written out by hand."""
    m = w0.shape[0]
    scale = 1.0 / math.sqrt(m) if scale is None else scale
    z0 = x @ w0.t() + (0 if b0 is None else b0)
    u = x @ w.t() + (0 if b is None else b)
    h = PLAIN[activation](z0 + t * signs * u)
    return scale * (h @ a.t() if a.dim() == 2 else h @ a)


def _taylor_terms(activation, params, K):
    """[(1/k!) d^k/dt^k g(t W)|_{t=0} for k <= K] by nested forward-mode AD (torch.func.jvp)."""
    fns = [lambda t: _full_net(activation, *params, t=t)]
    for _ in range(K):
        fns.append(lambda t, f=fns[-1]: jvp(f, (t,), (torch.ones_like(t),))[1])
    t0 = torch.zeros((), dtype=DT)
    return [fns[k](t0) / math.factorial(k) for k in range(K + 1)]


@pytest.mark.parametrize("activation", slow_except(ACTIVATIONS, ("tanh", "gelu", "sin", "relu3")))
def test_net_matches_forward_mode_taylor_polynomial(activation):
    K = 1 if activation == "relu" else 4
    params = _params(seed=3)
    x, w0, w, a, b0, b, signs = params
    terms = _taylor_terms(activation, params, K)
    assert not torch.allclose(terms[1], torch.zeros_like(terms[1]))
    orders = [k for k in range(K + 1)] + ([(1, 3), (0, 2, 4), [4, 1]] if K == 4 else [(1,), (0,)])
    for order in orders:
        ks = range(order + 1) if isinstance(order, int) else order
        expected = sum(terms[k] for k in ks)
        got = ref.taylor_net(x, w0, w, a, b0, b, activation=activation, order=order, signs=signs)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12, msg=f"{activation} {order}")
    # 1-D readout, no biases, no signs, explicit scale
    x, w0, w, a, _, _, _ = _params(c=0, seed=4, bias=False)
    ones = torch.ones(w0.shape[0], dtype=DT)
    terms = _taylor_terms(activation, (x, w0, w, a, None, None, ones), K)
    got = ref.taylor_net(x, w0, w, a, activation=activation, order=K)
    torch.testing.assert_close(got, sum(terms), rtol=1e-10, atol=1e-12)
    got = ref.taylor_net(x, w0, w, a, activation=activation, order=K, scale=0.25)
    torch.testing.assert_close(got, sum(terms) * (0.25 * math.sqrt(w0.shape[0])), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_exact_order_is_the_full_network(activation):
    params = _params(seed=5)
    x, w0, w, a, b0, b, signs = params
    got = ref.taylor_net(x, w0, w, a, b0, b, activation=activation, order="exact", signs=signs)
    torch.testing.assert_close(got, _full_net(activation, *params), rtol=1e-12, atol=1e-12)
    feats = ref.taylor_features(x, w0, w, b0, b, activation=activation, order="exact")
    torch.testing.assert_close(feats, PLAIN[activation](x @ w0.t() + b0 + x @ w.t() + b), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Moments over random signs, by enumerating all 2^m sign patterns

@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_moments_match_sign_enumeration(activation):
    m = 6
    x, w0, w, a, b0, b, _ = _params(m=m, c=2, seed=6)
    y = torch.randn(x.shape[0], 2, dtype=DT, generator=torch.Generator().manual_seed(7))
    patterns = torch.tensor(list(itertools.product((1.0, -1.0), repeat=m)), dtype=DT)
    orders = [(0, 1), "exact"] if activation == "relu" else [2, 3, (1, 3), "exact"]
    for order in orders:
        fs = torch.stack([ref.taylor_net(x, w0, w, a, b0, b, activation=activation, order=order, signs=s)
                          for s in patterns])
        mean, var = ref.taylor_net_moments(x, w0, w, a, b0, b, activation=activation, order=order)
        assert mean.shape == var.shape == (x.shape[0], 2)
        assert var.max() > 1e-6  # the test can see the variance
        torch.testing.assert_close(mean, fs.mean(0), rtol=1e-10, atol=1e-12, msg=f"{activation} {order} mean")
        torch.testing.assert_close(var, fs.var(0, unbiased=False), rtol=1e-10, atol=1e-12,
                                   msg=f"{activation} {order} var")
        loss = ref.expected_squared_loss(mean, var, y)
        torch.testing.assert_close(loss, ((fs - y) ** 2).mean(0), rtol=1e-10, atol=1e-12)
        # 1-D readout and explicit scale
        f1 = torch.stack([ref.taylor_net(x, w0, w, a[0], b0, b, activation=activation, order=order, signs=s,
                                         scale=0.7) for s in patterns])
        mean1, var1 = ref.taylor_net_moments(x, w0, w, a[0], b0, b, activation=activation, order=order, scale=0.7)
        assert mean1.shape == var1.shape == (x.shape[0],)
        torch.testing.assert_close(mean1, f1.mean(0), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(var1, f1.var(0, unbiased=False), rtol=1e-10, atol=1e-12)


def test_expected_squared_loss_is_elementwise():
    mean, var, y = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.0]), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(ref.expected_squared_loss(mean, var, y), torch.tensor([1.5, 9.0]))


# ---------------------------------------------------------------------------------------------
# Shapes, dtypes, gradients

@pytest.mark.parametrize("order", [2, (1, 3), "exact"])
def test_batch_shapes(order):
    d, m, c = 3, 7, 2
    _, w0, w, a, b0, b, signs = _params(d=d, m=m, c=c, seed=8)
    x = torch.randn(2, 3, d, dtype=DT)
    flat = x.reshape(-1, d)
    kw = dict(activation="gelu", order=order)
    h = ref.taylor_features(x, w0, w, b0, b, signs=signs, **kw)
    assert h.shape == (2, 3, m)
    torch.testing.assert_close(h.reshape(-1, m), ref.taylor_features(flat, w0, w, b0, b, signs=signs, **kw))
    f = ref.taylor_net(x, w0, w, a, b0, b, signs=signs, **kw)
    assert f.shape == (2, 3, c)
    torch.testing.assert_close(f.reshape(-1, c), ref.taylor_net(flat, w0, w, a, b0, b, signs=signs, **kw))
    f1 = ref.taylor_net(x, w0, w, a[1], b0, b, signs=signs, **kw)
    assert f1.shape == (2, 3)
    torch.testing.assert_close(f1, f[..., 1])
    mean, var = ref.taylor_net_moments(x, w0, w, a, b0, b, **kw)
    assert mean.shape == var.shape == (2, 3, c)
    mean1, var1 = ref.taylor_net_moments(x, w0, w, a[0], b0, b, **kw)
    assert mean1.shape == var1.shape == (2, 3)
    torch.testing.assert_close(mean1, mean[..., 0])
    torch.testing.assert_close(var1, var[..., 0])
    # a single sample without a batch dimension
    assert ref.taylor_features(x[0, 0], w0, w, b0, b, **kw).shape == (m,)
    assert ref.taylor_net(x[0, 0], w0, w, a, b0, b, **kw).shape == (c,)
    assert ref.taylor_net(x[0, 0], w0, w, a[0], b0, b, **kw).shape == ()


def test_signs_none_is_all_plus_and_float32_follows_float64():
    x, w0, w, a, b0, b, _ = _params(seed=9)
    ones = torch.ones(w0.shape[0], dtype=DT)
    for act in ("tanh", "silu", "relu3"):
        f = ref.taylor_net(x, w0, w, a, b0, b, activation=act, order=3)
        torch.testing.assert_close(f, ref.taylor_net(x, w0, w, a, b0, b, activation=act, order=3, signs=ones))
        f32 = ref.taylor_net(*(t.float() for t in (x, w0, w, a, b0, b)), activation=act, order=3,
                             signs=ones.float())
        assert f32.dtype == torch.float32
        torch.testing.assert_close(f32.double(), f, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation,order", [("tanh", 2), ("gelu", "exact"), ("silu", (1, 3))])
def test_gradcheck(activation, order):
    x, w0, w, a, b0, b, signs = _params(n=3, d=2, m=4, c=2, seed=10)
    inputs = tuple(t.clone().requires_grad_(True) for t in (x, w0, w, a, b0, b))
    fn = lambda *t: ref.taylor_net(*t, activation=activation, order=order, signs=signs)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)
    fm = lambda *t: ref.taylor_net_moments(*t, activation=activation, order=order)  # noqa: E731
    assert torch.autograd.gradcheck(fm, inputs)
