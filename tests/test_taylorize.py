"""taylornet.taylorize and taylornet.empirical_ntk against independent oracles, in float64.

- the order-K expansion equals the K-th Taylor polynomial of t -> f(theta0 + t delta), term by term,
  computed by nested torch.func.jvp in parameter space (MLPs, a small CNN);
- LayerNorm, whose nested forward-mode AD is wrong in PyTorch (pytorch/pytorch#196700), against the
  same oracle on a layer norm written with elementary ops;
- a two-layer network taylorized in its first layer equals tn.taylor_net / tn.TaylorNet, outputs and
  gradients;
- Taylor mode's matrix products grow linearly in K, nested forward mode's exponentially;
- empirical_ntk equals J J^T from explicit autograd Jacobians and from torch.func.jacrev.
"""
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp
from torch.utils._python_dispatch import TorchDispatchMode

import taylornet as tn

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

F64 = torch.float64


def _close(actual, expected, name="", rtol=1e-10, atol=1e-12):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def _randomize_movement(model, seed=1, std=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.delta.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _nested_jvp_terms(module, delta, x, K):
    """[(1/k!) D^k f(theta0)[delta^k] for k <= K], by K nested jvps in parameter space."""
    names = list(delta)
    params = {n: p.detach() for n, p in module.named_parameters() if n in delta}
    tangents = tuple(delta[n].detach() for n in names)

    def f(*ps):
        return functional_call(module, dict(zip(names, ps)), (x,))

    terms, fn = [f(*params.values())], f
    for k in range(1, K + 1):
        fn = (lambda prev: lambda *ps: jvp(prev, ps, tangents)[1])(fn)
        terms.append(fn(*params.values()) / math.factorial(k))
    return terms


def _mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 6), nn.Softplus(),
                         nn.Linear(6, 3), nn.Sigmoid(), nn.Linear(3, 2), nn.LogSoftmax(-1)).to(F64)


def _cnn():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.SiLU(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3),
    ).to(F64)


@pytest.mark.parametrize("K", [1, 2, 4])
def test_mlp_terms_match_nested_jvp(K):
    torch.manual_seed(0)
    net = _mlp()
    model = tn.taylorize(net, K)
    _randomize_movement(model)
    x = torch.randn(5, 4, dtype=F64)
    terms = model.terms(x)
    expected = _nested_jvp_terms(net, model.movement(), x, K)
    assert len(terms) == K + 1
    for k, (a, b) in enumerate(zip(terms, expected)):
        _close(a, b, f"term {k}")
        assert b.abs().max() > 1e-3, "a non-trivial term"
    _close(model(x), sum(expected), "forward = sum of the terms")


def test_cnn_terms_and_gradients():
    torch.manual_seed(1)
    net = _cnn()
    K = 3
    model = tn.taylorize(net, K)
    _randomize_movement(model, std=0.2)
    x = torch.randn(3, 2, 8, 8, dtype=F64)
    for k, (a, b) in enumerate(zip(model.terms(x), _nested_jvp_terms(net, model.movement(), x, K))):
        _close(a, b, f"term {k}")
    # gradients of a loss with respect to the movement, against nested forward mode (method="jvp")
    other = tn.taylorize(net, K, method="jvp")
    other.load_state_dict(model.state_dict())
    model(x).square().sum().backward()
    other(x).square().sum().backward()
    for (name, p), q in zip(model.delta.named_parameters(), other.delta.parameters()):
        _close(p.grad, q.grad, f"grad {name}")
        assert p.grad.abs().max() > 0
    # and it trains
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    y = torch.randn(3, 3, dtype=F64)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_at_start_and_orders():
    torch.manual_seed(2)
    net = _mlp()
    x = torch.randn(4, 4, dtype=F64)
    model = tn.taylorize(net, 3)
    assert all(p.abs().max() == 0 for p in model.delta.parameters()), "the movement starts at zero"
    _close(model(x), net(x), "at start the expansion is the module")
    assert not any(p.requires_grad for p in model.module.parameters()), "the base is frozen"
    assert {n for n, _ in model.delta.named_parameters()} == {n for n, _ in net.named_parameters()}
    _randomize_movement(model)
    terms = model.terms(x)
    even = tn.taylorize(net, (0, 2))
    even.load_state_dict(model.state_dict())
    _close(even(x), terms[0] + terms[2], "order (0, 2)")
    exact = tn.taylorize(net, "exact")
    exact.load_state_dict(model.state_dict())
    moved = {n: p + model.movement()[n] for n, p in net.named_parameters()}
    _close(exact(x), functional_call(net, moved, (x,)), "order 'exact'")
    # the expansion converges to the moved module as K grows (small movement)
    with torch.no_grad():
        for p in model.delta.parameters():
            p.mul_(0.1)
    moved = {n: p + model.movement()[n] for n, p in net.named_parameters()}
    errors = []
    for K in (1, 2, 3, 4):
        m = tn.taylorize(net, K)
        m.load_state_dict(model.state_dict())
        errors.append((m(x) - functional_call(net, moved, (x,))).abs().max().item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-2 * errors[0], errors


def test_parameters_subset():
    torch.manual_seed(3)
    net = _mlp()
    net[0].bias.requires_grad_(False)
    model = tn.taylorize(net, 2)
    assert "0.bias" not in dict(model.delta.named_parameters())
    only = tn.taylorize(net, 2, parameters=["2.weight"])
    assert [n for n, _ in only.delta.named_parameters()] == ["2.weight"]
    _randomize_movement(only)
    x = torch.randn(3, 4, dtype=F64)
    for k, (a, b) in enumerate(zip(only.terms(x), _nested_jvp_terms(net, only.movement(), x, 2))):
        _close(a, b, f"term {k}")
    with pytest.raises(ValueError, match="not parameters"):
        tn.taylorize(net, 2, parameters=["nope"])


def _layer_norm_by_hand(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).square().mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


class _HandNorm(nn.Module):
    def __init__(self, ln):
        super().__init__()
        self.weight, self.bias, self.eps = ln.weight, ln.bias, ln.eps

    def forward(self, x):
        return _layer_norm_by_hand(x, self.weight, self.bias, self.eps)


def test_layer_norm_where_nested_jvp_is_wrong():
    """nn.LayerNorm's nested forward-mode AD is wrong beyond order 1 (pytorch/pytorch#196700); the Taylor
    rule matches the same network with the layer norm written with elementary ops."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 2)).to(F64)
    with torch.no_grad():
        net[2].weight.normal_(1, 0.3), net[2].bias.normal_(0, 0.3)
    by_hand = nn.Sequential(net[0], net[1], _HandNorm(net[2]), net[3])
    K = 3
    model = tn.taylorize(net, K)
    _randomize_movement(model)
    x = torch.randn(5, 4, dtype=F64)
    expected = _nested_jvp_terms(by_hand, model.movement(), x, K)
    for k, (a, b) in enumerate(zip(model.terms(x), expected)):
        _close(a, b, f"term {k}")


@pytest.mark.parametrize("activation,K,bias", [("tanh", 2, False), ("gelu", 3, True), ("sigmoid", 1, True),
                                               ("sin", 4, False)])
def test_two_layer_matches_taylor_net(activation, K, bias):
    d, m, c, n = 5, 16, 2, 7
    torch.manual_seed(5)
    tnet = tn.TaylorNet(d, m, c, activation=activation, order=K, bias=bias, dtype=F64)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        tnet.weight.copy_(0.4 * torch.randn(m, d, generator=g, dtype=F64))
        if bias:
            tnet.bias.copy_(0.4 * torch.randn(m, generator=g, dtype=F64))
    act = {"tanh": nn.Tanh(), "gelu": nn.GELU(), "sigmoid": nn.Sigmoid()}.get(activation)

    class Sin(nn.Module):
        def forward(self, z):
            return torch.sin(z)

    net = nn.Sequential(nn.Linear(d, m, bias=bias), act or Sin(), nn.Linear(m, c, bias=False)).to(F64)
    with torch.no_grad():
        net[0].weight.copy_(tnet.weight0)
        if bias:
            net[0].bias.copy_(tnet.bias0)
        net[2].weight.copy_(tnet.scale * tnet.a)
    net[2].weight.requires_grad_(False)  # the readout is fixed, as in TaylorNet
    model = tn.taylorize(net, K)
    with torch.no_grad():
        model.movement()["0.weight"].copy_(tnet.weight)
        if bias:
            model.movement()["0.bias"].copy_(tnet.bias)

    x = torch.randn(n, d, dtype=F64)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    fa, fb = model(xa), tnet(xb)
    _close(fa, fb, "forward vs TaylorNet")
    _close(fa, tn.taylor_net(x, tnet.weight0, tnet.weight, tnet.a, tnet.bias0, tnet.bias, activation=activation,
                             order=K), "forward vs tn.taylor_net")
    y = torch.randn(n, c, dtype=F64)
    (fa - y).square().sum().backward()
    (fb - y).square().sum().backward()
    _close(model.movement()["0.weight"].grad, tnet.weight.grad, "dW")
    if bias:
        _close(model.movement()["0.bias"].grad, tnet.bias.grad, "db")
    _close(xa.grad, xb.grad, "dX")


class _CountMatmuls(TorchDispatchMode):
    OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.slow
def test_taylor_mode_is_linear_in_K():
    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1)).to(F64)
    x = torch.randn(3, 4, dtype=F64)
    counts = {}
    for method in ("taylor", "jvp"):
        for K in (1, 2, 3, 4, 5):
            model = tn.taylorize(net, K, method=method)
            model(x)  # trace once
            with _CountMatmuls() as c:
                model(x)
            counts[method, K] = c.count
    taylor = [counts["taylor", K] for K in (1, 2, 3, 4, 5)]
    steps = {b - a for a, b in zip(taylor, taylor[1:])}
    assert len(steps) == 1, f"taylor mode: matrix products per K not linear: {taylor}"
    # the first layer (input independent of delta): the primal + 1; the others: the primal + 2K
    assert taylor == [2 + 2 * (2 * K + 1) for K in (1, 2, 3, 4, 5)], taylor
    jvp_counts = [counts["jvp", K] for K in (1, 2, 3, 4, 5)]
    assert all(b >= 2 * a for a, b in zip(jvp_counts, jvp_counts[1:])), f"nested jvp: {jvp_counts}"


# ---------------------------------------------------------------------------------------------
# empirical NTK

def _explicit_jacobian(module, x, names):
    """J (n * o, P) by one autograd.grad call per output entry."""
    params = [dict(module.named_parameters())[n] for n in names]
    out = module(x).reshape(-1)
    rows = []
    for i in range(out.numel()):
        grads = torch.autograd.grad(out[i], params, retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


@pytest.mark.parametrize("implementation", ["jacobian", "ntvp"])
def test_empirical_ntk_matches_explicit_jacobians(implementation):
    torch.manual_seed(8)
    net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 6), nn.GELU(), nn.Linear(6, 2)).to(F64)
    x1, x2 = torch.randn(4, 3, dtype=F64), torch.randn(5, 3, dtype=F64)
    names = [n for n, _ in net.named_parameters()]
    j1, j2 = _explicit_jacobian(net, x1, names), _explicit_jacobian(net, x2, names)
    expected = (j1 @ j2.T).reshape(4, 2, 5, 2).permute(0, 2, 1, 3)
    theta = tn.empirical_ntk(net, x1, x2, implementation=implementation)
    assert theta.shape == (4, 5, 2, 2)
    _close(theta, expected, "Theta(x1, x2)")
    _close(tn.empirical_ntk(net, x1, x2, trace=True, implementation=implementation),
           expected.diagonal(dim1=2, dim2=3).sum(-1), "traced")
    # the same from torch.func.jacrev
    params = {n: p.detach() for n, p in net.named_parameters()}
    jac = jacrev(lambda p: functional_call(net, p, (x1,)))(params)
    j = torch.cat([jac[n].reshape(4 * 2, -1) for n in names], dim=1)
    _close(tn.empirical_ntk(net, x1, implementation=implementation), (j @ j.T).reshape(4, 2, 4, 2).permute(0, 2, 1, 3),
           "Theta(x1, x1) vs jacrev")
    # a subset of the parameters; a scalar output gives (n1, n2)
    sub = ["2.weight", "4.bias"]
    j1s, j2s = _explicit_jacobian(net, x1, sub), _explicit_jacobian(net, x2, sub)
    _close(tn.empirical_ntk(net, x1, x2, parameters=sub, implementation=implementation),
           (j1s @ j2s.T).reshape(4, 2, 5, 2).permute(0, 2, 1, 3), "subset")
    scalar = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1), nn.Flatten(0)).to(F64)
    js1, js2 = _explicit_jacobian(scalar, x1, [n for n, _ in scalar.named_parameters()]), \
        _explicit_jacobian(scalar, x2, [n for n, _ in scalar.named_parameters()])
    theta_s = tn.empirical_ntk(scalar, x1, x2, implementation=implementation)
    assert theta_s.shape == (4, 5)
    _close(theta_s, js1 @ js2.T, "scalar output")


def test_ntk_of_the_linearization_is_the_ntk():
    """At delta = 0 the order-1 (and order-2) expansion has the module's NTK in delta."""
    torch.manual_seed(9)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).to(F64)
    x1, x2 = torch.randn(3, 1, 6, 6, dtype=F64), torch.randn(2, 1, 6, 6, dtype=F64)
    expected = tn.empirical_ntk(net, x1, x2)
    for K in (1, 2):
        model = tn.taylorize(net, K)
        _close(tn.empirical_ntk(model, x1, x2), expected, f"order {K}")


class _ManyOps(nn.Module):
    """A module that meets most of the Taylor-mode rules: bilinear and linear ops, quotients, powers,
    logs, roots, trigonometric and special functions, branches, reductions and softmax."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.emb = nn.Embedding(5, 6)

    def forward(self, x, idx):
        h = self.lin(x) + self.emb(idx)
        p = torch.sigmoid(h) + 0.5  # positive, away from zero
        parts = [
            torch.exp(0.3 * h) / p, torch.log(p) * torch.sqrt(p), p.pow(1.5) - p**3, torch.rsqrt(p),
            torch.reciprocal(p), torch.sin(h) * torch.cos(h), torch.erf(h) + torch.expm1(0.2 * h),
            torch.log1p(p), torch.clamp(h, -0.5, 0.5), torch.abs(h), nn.functional.leaky_relu(h, 0.1),
            torch.where(h > 0, h * h, -h), torch.maximum(h, 0.3 * h), torch.minimum(h, torch.tanh(h)),
            torch.softmax(h, -1), torch.log_softmax(h, -1), nn.functional.softplus(h, beta=2.0),
            nn.functional.gelu(h, approximate="tanh"), nn.functional.gelu(h), nn.functional.silu(h),
            h.var(-1, keepdim=True), h.std(-1, keepdim=True), h.amax(-1, keepdim=True),
            h.max(-1, keepdim=True).values, torch.square(h), 1.0 - h, h / 3.0,
        ]
        return tuple(parts)


def test_many_op_rules_match_nested_forward_mode():
    torch.manual_seed(8)
    net = _ManyOps().to(F64)
    K = 3
    model = tn.taylorize(net, K)
    _randomize_movement(model, std=0.2)
    other = tn.taylorize(net, K, method="jvp")
    other.load_state_dict(model.state_dict())
    x, idx = torch.randn(7, 4, dtype=F64), torch.randint(0, 5, (7,))
    for k, (parts, expected) in enumerate(zip(model.terms(x, idx), other.terms(x, idx))):
        for i, (a, b) in enumerate(zip(parts, expected)):
            _close(a, b, f"term {k} of output {i}", rtol=1e-9, atol=1e-11)
        if k == 1:  # every output moves (the piecewise-linear ones have no higher terms: h is linear)
            assert min(b.abs().max() for b in expected) > 1e-4
