"""nn.Modules: TaylorLinear (drop-in layer of Taylor features) and TaylorNet (two-layer Taylor model)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import taylornet as tn
import taylornet.reference as ref

from _utils import assert_close_verbose, non_contiguous

# torch.compile and torch.optim import modules that call the deprecated torch.jit.script_method.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

F64 = torch.float64

PLAIN = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": lambda z: z * 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0))),
    "softplus": lambda z: torch.log1p(torch.exp(z)),
    "relu": torch.relu,
    "relu3": lambda z: torch.relu(z) ** 3,
    "sin": torch.sin,
}


def randomize_(module, std=0.2, seed=0):
    """Move the trainable weights away from zero, deterministically."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


# ---------------------------------------------------------------------------------------------
# TaylorLinear

def test_taylor_linear_parameters_and_buffers():
    torch.manual_seed(0)
    layer = tn.TaylorLinear(40, 300, activation="gelu", order=3)
    assert {k for k, _ in layer.named_parameters()} == {"weight", "bias"}
    assert {k for k, _ in layer.named_buffers()} == {"weight0", "bias0"}
    assert layer.weight.shape == layer.weight0.shape == (300, 40)
    assert layer.bias.shape == layer.bias0.shape == (300,)
    assert torch.equal(layer.weight, torch.zeros(300, 40)) and torch.equal(layer.bias, torch.zeros(300))
    assert not layer.weight0.requires_grad and not layer.bias0.requires_grad
    # nn.Linear's init: U(-1/sqrt(in), 1/sqrt(in)) for the weight and the bias
    bound = 1 / math.sqrt(40)
    for t in (layer.weight0, layer.bias0):
        assert t.abs().max() <= bound
        assert t.max() > 0.9 * bound and t.min() < -0.9 * bound
    assert abs(layer.weight0.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    assert set(layer.state_dict()) == {"weight", "bias", "weight0", "bias0"}
    # without bias
    nobias = tn.TaylorLinear(4, 6, bias=False)
    assert nobias.bias is None and nobias.bias0 is None
    assert {k for k, _ in nobias.named_parameters()} == {"weight"}
    # dtype follows the factory arguments
    assert tn.TaylorLinear(3, 5, dtype=F64).weight0.dtype == F64


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "gelu", "relu", "relu3", "sin"])
@pytest.mark.parametrize("order", [0, 2, (0, 3), "exact"])
def test_taylor_linear_at_init_is_the_activation(activation, order):
    if activation == "relu" and order not in (0, "exact"):
        order = 1
    torch.manual_seed(1)
    layer = tn.TaylorLinear(6, 20, activation=activation, order=order, dtype=F64)
    x = torch.randn(11, 6, dtype=F64)
    want = PLAIN[activation](x @ layer.weight0.t() + layer.bias0)
    assert_close_verbose(layer(x), want, atol=1e-13, rtol=1e-12, name=f"{activation} {order}")


def test_taylor_linear_matches_features_and_state_dict_round_trip():
    torch.manual_seed(2)
    layer = randomize_(tn.TaylorLinear(5, 9, activation="softplus", order=(1, 2), dtype=F64))
    x = torch.randn(7, 5, dtype=F64)
    want = ref.taylor_features(x, layer.weight0, layer.weight, layer.bias0, layer.bias, activation="softplus",
                               order=(1, 2))
    assert_close_verbose(layer(x), want, atol=1e-13, rtol=1e-12, name="layer vs reference")
    torch.manual_seed(99)
    fresh = tn.TaylorLinear(5, 9, activation="softplus", order=(1, 2), dtype=F64)
    assert not torch.equal(fresh(x), layer(x))
    missing = fresh.load_state_dict(layer.state_dict())
    assert not missing.missing_keys and not missing.unexpected_keys
    assert torch.equal(fresh(x), layer(x))
    for k, v in layer.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_taylor_linear_is_a_drop_in_layer():
    torch.manual_seed(3)
    layer = tn.TaylorLinear(4, 8, activation="tanh", order=2, dtype=F64)
    head = nn.Linear(8, 2, dtype=F64)
    model = nn.Sequential(layer, head)
    plain = nn.Sequential(nn.Linear(4, 8, dtype=F64), nn.Tanh(), copy.deepcopy(head))
    with torch.no_grad():
        plain[0].weight.copy_(layer.weight0)
        plain[0].bias.copy_(layer.bias0)
    x = torch.randn(2, 5, 4, dtype=F64)
    y = model(x)
    assert y.shape == (2, 5, 2)
    assert_close_verbose(y, plain(x), atol=1e-13, rtol=1e-12, name="at init = Linear + Tanh")
    y.square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().max() > 0
    assert layer.bias.grad is not None and head.weight.grad is not None
    # at W = 0 the gradient of the movement equals the gradient of the plain layer's weight
    plain(x).square().sum().backward()
    assert_close_verbose(layer.weight.grad, plain[0].weight.grad, atol=1e-12, rtol=1e-10, name="dW")
    assert_close_verbose(layer.bias.grad, plain[0].bias.grad, atol=1e-12, rtol=1e-10, name="db")


def test_taylor_linear_sign_randomization():
    torch.manual_seed(4)
    layer = randomize_(tn.TaylorLinear(5, 64, activation="tanh", order=3, sign_randomization=True,
                                       dtype=F64))
    x = torch.randn(6, 5, dtype=F64)
    layer.train()
    y1, y2 = layer(x), layer(x)
    assert (y1 - y2).abs().max() > 1e-3, "fresh signs on every training call"
    torch.manual_seed(123)
    a = layer(x)
    torch.manual_seed(123)
    b = layer(x)
    assert torch.equal(a, b), "torch.manual_seed makes the signs reproducible"
    # the output is the features under the signs of the drawn (seed, offset)
    torch.manual_seed(123)
    sign_seed = tn.modules.draw_sign_seed()
    signs = tn.philox_signs(64, sign_seed, dtype=F64)
    want = ref.taylor_features(x, layer.weight0, layer.weight, layer.bias0, layer.bias, activation="tanh",
                               order=3, signs=signs)
    assert_close_verbose(a, want, atol=1e-13, rtol=1e-12, name="signed features")
    # every neuron sees one sign: h_r(s) is either h_r(+1) or h_r(-1)
    plus = ref.taylor_features(x, layer.weight0, layer.weight, layer.bias0, layer.bias, activation="tanh", order=3)
    neg = ref.taylor_features(x, layer.weight0, layer.weight, layer.bias0, layer.bias, activation="tanh", order=3,
                              signs=-torch.ones(64, dtype=F64))
    is_plus = ((a - plus).abs() < 1e-12).all(0)
    is_neg = ((a - neg).abs() < 1e-12).all(0)
    assert bool((is_plus | is_neg).all()) and is_plus.any() and is_neg.any()


@pytest.mark.parametrize("order", [3, 2, (1, 3), (1,), "exact", (0, 1, 4)])
def test_taylor_linear_eval_expectation(order):
    torch.manual_seed(5)
    layer = randomize_(tn.TaylorLinear(5, 16, activation="gelu", order=order, sign_randomization=True,
                                       dtype=F64))
    x = torch.randn(7, 5, dtype=F64, requires_grad=True)
    layer.eval()
    y = layer(x)
    args = (x, layer.weight0, layer.weight, layer.bias0, layer.bias)
    if order == "exact":
        z0 = x @ layer.weight0.t() + layer.bias0
        u = x @ layer.weight.t() + layer.bias
        want = 0.5 * (PLAIN["gelu"](z0 + u) + PLAIN["gelu"](z0 - u))
    else:
        orders = range(order + 1) if isinstance(order, int) else order
        even = tuple(k for k in orders if k % 2 == 0)
        want = ref.taylor_features(*args, activation="gelu", order=even) if even else torch.zeros(7, 16, dtype=F64)
    assert y.shape == (7, 16)
    assert_close_verbose(y, want, atol=1e-13, rtol=1e-12, name=f"eval {order}")
    # the expectation is deterministic and differentiable
    assert torch.equal(layer(x), y)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    # eval_signs="none": the features without signs
    layer.eval_signs = "none"
    want_none = ref.taylor_features(*args, activation="gelu", order=order)
    assert_close_verbose(layer(x), want_none, atol=1e-13, rtol=1e-12, name="eval_signs=none")


# ---------------------------------------------------------------------------------------------
# TaylorNet

@pytest.mark.parametrize("activation", ["tanh", "gelu", "relu", "relu3", "sin", "softplus"])
@pytest.mark.parametrize("order", [1, 3, (0, 2), "exact"])
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
def test_taylor_net_symmetric_init_is_zero(activation, order, dtype):
    if activation == "relu" and order not in (1, "exact"):
        order = (0, 1)
    torch.manual_seed(6)
    net = tn.TaylorNet(5, 64, 3, activation=activation, order=order, bias=True, dtype=dtype,
                       sign_randomization=True)
    half = 32
    assert torch.equal(net.weight0[:half], net.weight0[half:])
    assert torch.equal(net.bias0[:half], net.bias0[half:])
    assert torch.equal(net.a[:, :half], -net.a[:, half:])
    assert bool((net.a.abs() == 1).all())
    x = torch.randn(10, 5, dtype=dtype)
    h = ref.taylor_features(x.double(), net.weight0.double(), net.weight.double(), net.bias0.double(),
                            net.bias.double(), activation=activation, order=order)
    # zero up to the rounding of the readout sum: a few ulps of scale * sum_r |a_r h_r|
    bound = 16 * torch.finfo(dtype).eps * net.scale * (h.abs() @ net.a.double().abs().t())
    for mode in ("train", "eval"):
        getattr(net, mode)()
        f = net(x)
        assert f.shape == (10, 3) and f.dtype == dtype
        assert bool((f.double().abs() <= bound).all()), f"{mode}: |f| max {f.abs().max().item():.3e}"
        mean, var = net.moments(x)
        assert bool((mean.double().abs() <= bound).all())


def _train(seed, steps=3, sign_randomization=True, **kw):
    torch.manual_seed(seed)
    net = tn.TaylorNet(4, 32, 2, activation="tanh", order=2, sign_randomization=sign_randomization,
                       bias=True, dtype=F64, **kw)
    x = torch.randn(16, 4, dtype=F64)
    y = torch.randn(16, 2, dtype=F64)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = (net(x) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return net, losses


def test_taylor_net_training_is_reproducible():
    a, la = _train(0)
    b, lb = _train(0)
    assert la == lb
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k
    assert a.weight.abs().max() > 0, "training moved the weights"
    # the signs are drawn from torch's generator: another seed gives other signs, another trajectory
    c, lc = _train(1)
    assert lc[1:] != la[1:]
    x = torch.randn(3, 4, dtype=F64)
    torch.manual_seed(1)
    f1 = a(x)
    torch.manual_seed(2)
    f2 = a(x)
    assert (f1 - f2).abs().max() > 1e-6
    # without sign randomization the forward is deterministic
    d, _ = _train(0, sign_randomization=False)
    assert torch.equal(d(x), d(x))


def test_taylor_net_state_dict_round_trip():
    net, _ = _train(1)
    net.eval()
    torch.manual_seed(77)
    fresh = tn.TaylorNet(4, 32, 2, activation="tanh", order=2, sign_randomization=True, bias=True, dtype=F64)
    fresh.eval()
    x = torch.randn(5, 4, dtype=F64)
    assert not torch.allclose(fresh(x), net(x))
    result = fresh.load_state_dict(net.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    assert set(net.state_dict()) == {"weight0", "bias0", "a", "weight", "bias"}
    assert torch.equal(fresh(x), net(x))
    assert all(torch.equal(fresh.moments(x)[i], net.moments(x)[i]) for i in range(2))


def test_taylor_net_train_readout():
    torch.manual_seed(8)
    net = randomize_(tn.TaylorNet(3, 10, 2, order=2, train_readout=True, dtype=F64), seed=8)
    assert isinstance(net.a, nn.Parameter)
    assert "a" in dict(net.named_parameters())
    x = torch.randn(6, 3, dtype=F64)
    net(x).square().sum().backward()
    assert net.a.grad is not None
    a = net.a.detach().clone().requires_grad_(True)
    f = ref.taylor_net(x, net.weight0, net.weight.detach(), a, activation="tanh", order=2, scale=net.scale)
    f.square().sum().backward()
    assert_close_verbose(net.a.grad, a.grad, atol=1e-12, rtol=1e-10, name="grad a")
    frozen = tn.TaylorNet(3, 10, 2, dtype=F64)
    assert "a" not in dict(frozen.named_parameters()) and "a" in dict(frozen.named_buffers())


@pytest.mark.parametrize("order", [2, (1, 3), "exact"])
def test_taylor_net_eval_returns_moments_mean_and_expected_loss(order):
    torch.manual_seed(9)
    net = randomize_(tn.TaylorNet(4, 24, 3, activation="sin", order=order, sign_randomization=True,
                                  bias=True, dtype=F64), std=0.4)
    x = torch.randn(8, 4, dtype=F64)
    y = torch.randn(8, 3, dtype=F64)
    args = (x, net.weight0, net.weight, net.a, net.bias0, net.bias)
    mean, var = ref.taylor_net_moments(*args, activation="sin", order=order, scale=net.scale)
    assert var.max() > 1e-4
    net.eval()
    assert_close_verbose(net(x), mean, atol=1e-13, rtol=1e-12, name="eval output = E_S f")
    m2, v2 = net.moments(x)
    assert_close_verbose(m2, mean, atol=1e-13, rtol=1e-12, name="moments mean")
    assert_close_verbose(v2, var, atol=1e-13, rtol=1e-12, name="moments var")
    loss = net.expected_loss(x, y)
    assert loss.shape == ()
    want = tn.expected_squared_loss(m2, v2, y).mean()
    assert_close_verbose(loss, want, atol=1e-14, rtol=1e-13, name="expected loss")
    assert_close_verbose(loss, ((mean - y) ** 2 + var).mean(), atol=1e-13, rtol=1e-12, name="expected loss ref")
    loss.backward()
    assert net.weight.grad is not None and net.weight.grad.abs().max() > 0
    # eval_signs="none": the network without signs
    net.eval_signs = "none"
    want = ref.taylor_net(*args, activation="sin", order=order, scale=net.scale)
    assert_close_verbose(net(x), want, atol=1e-13, rtol=1e-12, name="eval_signs=none")
    # training with sign randomization draws signs instead
    net.train()
    assert not torch.allclose(net(x), mean)


@pytest.mark.parametrize("batch", [(2, 3), (), (0,), (1, 1, 4)])
@pytest.mark.parametrize("out_features", [1, 3])
def test_taylor_net_batch_shapes(batch, out_features):
    torch.manual_seed(10)
    net = randomize_(tn.TaylorNet(5, 12, out_features, dtype=F64))
    x = torch.randn(*batch, 5, dtype=F64)
    y = net(x)
    assert y.shape == (*batch, out_features)
    flat = net(x.reshape(-1, 5))
    assert_close_verbose(y, flat.reshape(y.shape), atol=1e-14, rtol=1e-14, name="batched")
    mean, var = net.moments(x)
    assert mean.shape == var.shape == (*batch, out_features)


def test_taylor_net_non_contiguous_input():
    torch.manual_seed(11)
    net = randomize_(tn.TaylorNet(6, 16, 2, order=3, dtype=F64))
    x = torch.randn(9, 6, dtype=F64)
    for kind in ("transpose", "slice"):
        xn = non_contiguous(x, kind).requires_grad_(True)
        xc = x.clone().requires_grad_(True)
        yn, yc = net(xn), net(xc)
        assert_close_verbose(yn, yc, atol=1e-14, rtol=1e-14, name=kind)
        (gn,) = torch.autograd.grad(yn.sum(), xn)
        (gc,) = torch.autograd.grad(yc.sum(), xc)
        assert_close_verbose(gn, gc, atol=1e-14, rtol=1e-14, name=f"{kind} grad")


# ---------------------------------------------------------------------------------------------
# torch.compile

@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compile_taylor_net_module_matches_eager():
    torch.manual_seed(12)
    net = randomize_(tn.TaylorNet(5, 16, 2, activation="gelu", order=3, bias=True, dtype=F64))
    x = torch.randn(7, 5, dtype=F64)
    compiled = torch.compile(net, fullgraph=True)
    y = compiled(x)
    y.square().sum().backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters()}
    net.zero_grad()
    y_eager = net(x)
    y_eager.square().sum().backward()
    assert_close_verbose(y, y_eager, atol=1e-14, rtol=1e-13, name="compiled forward")
    for k, p in net.named_parameters():
        assert_close_verbose(grads[k], p.grad, atol=1e-13, rtol=1e-12, name=f"compiled grad {k}")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compile_taylor_net_function_with_signs_matches_eager():
    g = torch.Generator().manual_seed(13)
    x = torch.randn(7, 5, generator=g)
    w0 = torch.randn(16, 5, generator=g)
    w = 0.3 * torch.randn(16, 5, generator=g)
    a = torch.randn(2, 16, generator=g)
    signs = torch.where(torch.rand(16, generator=g) < 0.5, -1.0, 1.0)

    def f(x, w, a):
        return tn.taylor_net(x, w0, w, a, activation="tanh", order=(1, 3), signs=signs)

    compiled = torch.compile(f, fullgraph=True)
    inputs = [t.clone().requires_grad_(True) for t in (x, w, a)]
    out = compiled(*inputs)
    grads = torch.autograd.grad(out.sum(), inputs)
    inputs_e = [t.clone().requires_grad_(True) for t in (x, w, a)]
    out_e = f(*inputs_e)
    grads_e = torch.autograd.grad(out_e.sum(), inputs_e)
    assert_close_verbose(out, out_e, atol=1e-6, rtol=1e-6, name="compiled forward")
    for name, gc, ge in zip("xwa", grads, grads_e):
        assert_close_verbose(gc, ge, atol=1e-6, rtol=1e-6, name=f"compiled grad {name}")
    # the signs really enter the compiled graph
    out_plus = tn.taylor_net(x, w0, w, a, activation="tanh", order=(1, 3))
    assert (out.detach() - out_plus).abs().max() > 1e-3
