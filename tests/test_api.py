"""The library as a user meets it: modules built on the meta device and initialized after to_empty,
loss helpers that refuse targets of the wrong shape, complete reprs, order parsed once, the one
Philox against its known answers, the public NTK Gram, the version and the check of the torch the
extension was built for."""
from __future__ import annotations

import importlib.metadata
import inspect
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch.func import jacrev

import taylornet as tn
from taylornet import ops as tn_ops
from taylornet.optim import NoisySGD

from _utils import assert_close_verbose

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# The meta device, to_empty and reset_parameters

def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].device == sb[k].device and torch.equal(sa[k], sb[k]), k


MODULES = {
    "linear": lambda **kw: tn.TaylorLinear(7, 9, activation="gelu", order=3, **kw),
    "linear-nobias": lambda **kw: tn.TaylorLinear(7, 9, bias=False, **kw),
    "net": lambda **kw: tn.TaylorNet(6, 20, 3, bias=True, train_readout=True, **kw),
    "net-odd": lambda **kw: tn.TaylorNet(5, 7, symmetric_init=False, **kw),
}


@pytest.mark.parametrize("how", ["argument", "context"])
@pytest.mark.parametrize("kind", list(MODULES))
def test_meta_build_then_reset_parameters_equals_a_direct_build(kind, how):
    make = MODULES[kind]
    torch.manual_seed(5)
    direct = make(dtype=F64)
    torch.manual_seed(5)
    if how == "argument":
        meta = make(dtype=F64, device="meta")
    else:
        with torch.device("meta"):
            meta = make(dtype=F64)
    assert all(t.is_meta for t in meta.state_dict().values())
    meta.to_empty(device="cpu")
    meta.reset_parameters()
    _same_state(meta, direct)
    x = torch.randn(4, direct.in_features, dtype=F64)
    assert torch.equal(meta(x), direct(x))


def test_a_wide_net_builds_on_the_meta_device_without_memory():
    with torch.device("meta"):
        net = tn.TaylorNet(16, width=2**20)
    assert net.weight0.is_meta and net.weight0.shape == (2**20, 16) and net.a.shape == (1, 2**20)


def test_reset_parameters_restores_the_initialization():
    torch.manual_seed(1)
    net = tn.TaylorNet(4, 12, bias=True, dtype=F64)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    with torch.no_grad():
        for t in net.state_dict().values():
            t.add_(1.0)
    net.reset_parameters()
    assert torch.equal(torch.get_rng_state(), rng)  # keyed by init_seed, not by the generator
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not net.weight.any() and not net.bias.any()
    layer = tn.TaylorLinear(3, 5)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    layer.reset_parameters()  # nn.Linear's semantics: a fresh draw from the generator
    assert not layer.weight.any() and layer.weight0.abs().max() <= 1 / math.sqrt(3)


# ---------------------------------------------------------------------------------------------
# Targets of the wrong shape

def test_expected_loss_accepts_the_prediction_shape_or_one_output_without_its_dimension():
    torch.manual_seed(2)
    net = tn.TaylorNet(3, 8, order=3, sign_randomization=True, dtype=F64)
    with torch.no_grad():
        net.weight.normal_()
    x, y = torch.randn(10, 3, dtype=F64), torch.randn(10, dtype=F64)
    mean, var = net.moments(x)
    want = ((mean[:, 0] - y) ** 2 + var[:, 0]).mean()
    for target in (y, y[:, None]):
        assert_close_verbose(net.expected_loss(x, target), want, atol=1e-14, rtol=1e-13, name="loss")
    # (n,) against (n, 1) used to broadcast to (n, n): a different number, without a word
    assert abs(((mean - y) ** 2 + var).mean().item() - want.item()) > 1e-3
    for bad in (y[:5], y[None, :], torch.randn(10, 2, dtype=F64), torch.randn(10, 1, 1, dtype=F64)):
        with pytest.raises(ValueError, match=r"^y: expected shape \(10, 1\) \(the prediction's\) or \(10,\), got"):
            net.expected_loss(x, bad)


def test_expected_squared_loss_checks_shapes_for_several_outputs():
    mean, var = torch.zeros(6, 3), torch.ones(6, 3)
    assert tn.expected_squared_loss(mean, var, torch.ones(6, 3)).shape == (6, 3)
    assert tn.reference.expected_squared_loss is tn.expected_squared_loss
    for bad in (torch.ones(6), torch.ones(3), torch.ones(1, 3)):
        with pytest.raises(ValueError, match=r"^y: expected shape \(6, 3\) \(the prediction's\), got"):
            tn.expected_squared_loss(mean, var, bad)
    m1, v1 = torch.zeros(6), torch.ones(6)  # a 1-D readout: the prediction is (n,)
    assert tn.expected_squared_loss(m1, v1, torch.ones(6)).shape == (6,)
    with pytest.raises(ValueError, match=r"^y: "):
        tn.expected_squared_loss(m1, v1, torch.ones(6, 1))


# ---------------------------------------------------------------------------------------------
# Modules: repr, order parsed once

def test_extra_repr_lists_every_setting():
    net = tn.TaylorNet(3, 8, 2, activation="sin", order=(1, 3), sign_randomization=True, symmetric_init=False,
                       train_readout=True, scale=0.5, bias=True, eval_signs="none")
    text = repr(net)
    for part in ("in_features=3", "width=8", "out_features=2", "activation='sin'", "order=(1, 3)",
                 "sign_randomization=True", "symmetric_init=False", "train_readout=True", "scale=0.5",
                 "bias=True", "eval_signs='none'"):
        assert part in text, part
    layer = tn.TaylorLinear(3, 4, bias=False, activation="erf", order="exact", eval_signs="none")
    for part in ("in_features=3", "out_features=4", "bias=False", "activation='erf'", "order='exact'",
                 "sign_randomization=False", "eval_signs='none'"):
        assert part in repr(layer), part
    # every constructor argument but device and dtype appears
    for cls, module in ((tn.TaylorNet, net), (tn.TaylorLinear, layer)):
        names = set(inspect.signature(cls).parameters) - {"device", "dtype"}
        assert all(f"{name}=" in repr(module) for name in names), cls


def test_order_is_parsed_when_set_not_at_every_forward(monkeypatch):
    net = tn.TaylorNet(3, 8, order=2, dtype=F64)
    with torch.no_grad():
        net.weight.normal_()
    calls = []
    real = tn.functional.parse_order
    monkeypatch.setattr(tn.functional, "parse_order", lambda *a, **k: calls.append(a) or real(*a, **k))
    x = torch.randn(5, 3, dtype=F64)
    y2 = net(x)
    assert calls == []
    net.order = (0, 1)
    assert len(calls) == 1
    assert not torch.equal(net(x), y2) and len(calls) == 1
    with pytest.raises(ValueError, match="^order: "):
        net.order = -1
    assert net.order == (0, 1)
    net.activation = "relu"  # orders 0 and 1 exist for relu
    with pytest.raises(ValueError, match="^order: relu has no derivatives of order >= 2"):
        net.order = 2
    assert (net.activation, net.order) == ("relu", (0, 1))
    with pytest.raises(ValueError, match="^activation: "):
        net.activation = "swish"
    with pytest.raises(ValueError, match="^activation: "):
        tn.TaylorLinear(2, 2, activation="swish")


def test_activation_table_is_the_compiled_ops_one():
    assert tn.ACTIVATIONS == tuple(torch.ops.taylornet.activations())
    assert tn.MAX_ORDER == 16
    assert {a: int(torch.ops.taylornet.max_order(a)) for a in tn.ACTIVATIONS} == {
        a: 1 if a == "relu" else 16 for a in tn.ACTIVATIONS}


# ---------------------------------------------------------------------------------------------
# The one Philox: the kernels' generator, exposed as an op, against Random123's known answers

MASK32 = 0xFFFFFFFF
PHILOX_KAT = [  # (counter, key, result) from Random123's kat_vectors for philox4x32_10
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK32,) * 4, (MASK32, MASK32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _signed64(lo: int, hi: int) -> int:
    v = (hi << 32) | lo
    return v - 2**64 if v >= 2**63 else v


def test_philox_op_known_answers():
    counters = torch.tensor([c for c, _, _ in PHILOX_KAT], dtype=torch.int64)
    for i, (_, key, expected) in enumerate(PHILOX_KAT):
        got = torch.ops.taylornet.philox(counters[i:i + 1], _signed64(*key))
        assert tuple(got[0].tolist()) == expected
    assert counters.tolist()[1] == [MASK32] * 4  # the input is not modified
    with pytest.raises(ValueError, match="counters: expected shape"):
        torch.ops.taylornet.philox(torch.zeros(2, 3, dtype=torch.int64), 0)
    with pytest.raises(TypeError, match="counters: expected an int64 tensor"):
        torch.ops.taylornet.philox(torch.zeros(2, 4, dtype=torch.int32), 0)


def test_initialization_is_the_documented_philox_stream():
    """weight0 row j, column i: ndtri((word + 1/2) / 2^32) * d^-1/2, word i of Philox under the init seed
    with counter (i // 4, j_lo, j_hi, 0); readout k of neuron j: -1 when bit 31 of word k of stream 1 is set."""
    torch.manual_seed(4)
    net = tn.TaylorNet(6, 10, 2, symmetric_init=False, dtype=F64)
    seed = net.init_seed & (2**64 - 1)
    key = (seed & MASK32, seed >> 32)
    for j in (0, 3, 9):
        words = [w for call in range(2) for w in _python_philox((call, j, 0, 0), key)]
        want = torch.special.ndtri((torch.tensor(words[:6], dtype=F64) + 0.5) * 2.0**-32) * (1 / math.sqrt(6))
        assert torch.equal(net.weight0[j], want)
        readout_words = _python_philox((0, j, 0, 1), key)
        assert net.a[:, j].tolist() == [-1.0 if readout_words[k] >> 31 else 1.0 for k in range(2)]


def _python_philox(ctr, key):
    """Philox4x32-10 written from the paper (Salmon et al., SC'11), checked by test_signs' known answers."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32
        k0, k1 = (k0 + 0x9E3779B9) & MASK32, (k1 + 0xBB67AE85) & MASK32
    return c0, c1, c2, c3


def test_python_philox_known_answers():
    for ctr, key, expected in PHILOX_KAT:
        assert _python_philox(ctr, key) == expected


# ---------------------------------------------------------------------------------------------
# The NTK Gram

@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("c", [0, 2])
@pytest.mark.parametrize("activation", ["tanh", "softplus", "gelu"])
def test_ntk_gram_equals_the_jacobian_product(activation, c, bias):
    """K = J J^T, J the autograd Jacobian of the reference network and of its order-1 model in the
    movement (w, and b with biases) at zero movement."""
    g = torch.Generator().manual_seed(9)
    n1, n2, m, d = 5, 4, 6, 3
    x1, x2 = torch.randn(n1, d, generator=g, dtype=F64), torch.randn(n2, d, generator=g, dtype=F64)
    w0 = torch.randn(m, d, generator=g, dtype=F64) / math.sqrt(d)
    b0 = torch.randn(m, generator=g, dtype=F64)
    a = torch.randn(*((c,) if c else ()), m, generator=g, dtype=F64)
    zero_w, zero_b = torch.zeros(m, d, dtype=F64), torch.zeros(m, dtype=F64)
    for order in ("exact", 1):
        def f(w, b, x):
            return tn.reference.taylor_net(x, w0, w, a, b0, b if bias else None, activation=activation,
                                           order=order, scale=0.3)

        def jac(x):
            jw, jb = jacrev(f, argnums=(0, 1))(zero_w, zero_b, x)
            n = x.shape[0]
            parts = [jw.reshape(n, max(c, 1), -1)] + ([jb.reshape(n, max(c, 1), -1)] if bias else [])
            return torch.cat(parts, -1)  # (n, outputs, parameters)

        j1, j2 = jac(x1), jac(x2)
        want = torch.einsum("iap,jbp->ijab", j1, j2)
        want = want[:, :, 0, 0] if not c else want
        for chunk in (None, 4):
            got = tn.ntk_gram(x1, x2, w0, a, b0, activation=activation, scale=0.3, bias=bias, chunk=chunk)
            assert_close_verbose(got, want, atol=1e-12, rtol=1e-10, name=f"{order} chunk={chunk}")
    sym = tn.ntk_gram(x1, None, w0, a, b0, activation=activation, bias=bias)
    assert sym.shape == ((n1, n1) if not c else (n1, n1, c, c))
    assert_close_verbose(sym, sym.transpose(0, 1), atol=1e-14, rtol=1e-14, name="symmetric")


def test_taylor_net_ntk_is_ntk_gram_of_its_initialization():
    torch.manual_seed(3)
    net = tn.TaylorNet(4, 16, activation="gelu", bias=True, dtype=F64)
    x = torch.randn(6, 4, dtype=F64)
    want = tn.ntk_gram(x, x, net.weight0, net.a[0], net.bias0, activation="gelu", scale=net.scale, bias=True)
    assert torch.equal(net.ntk(x), want)
    with pytest.raises(ValueError, match=r"^a: expected shape \(m,\) = \(16,\) or \(c, 16\)"):
        tn.ntk_gram(x, x, net.weight0, net.a[0, :5])


# ---------------------------------------------------------------------------------------------
# Version and the torch the extension was built for

def test_one_version():
    assert tn.__version__ == importlib.metadata.version("taylornet")


def test_the_build_records_the_torch_it_was_built_for():
    from taylornet import _build_info

    assert _build_info.TORCH_VERSION == torch.__version__


def test_a_library_built_for_another_torch_says_so(tmp_path):
    lib = tmp_path / "libtaylornet_ops.so"
    lib.write_bytes(b"")

    def fails(path):
        raise OSError(f"{path}: undefined symbol: _ZN3c10")

    with pytest.raises(ImportError, match=r"built for torch 2\.0\.0 but torch 9\.9\.9 is running.*rebuild"):
        tn_ops._load_library(lib, "2.0.0", "9.9.9", load=fails)
    with pytest.raises(OSError, match="undefined symbol"):  # the same torch: the loader's own error
        tn_ops._load_library(lib, "9.9.9", "9.9.9", load=fails)
    loaded = []
    with pytest.warns(RuntimeWarning, match=r"built for torch 2\.0\.0 but torch 9\.9\.9 is running"):
        tn_ops._load_library(lib, "2.0.0", "9.9.9", load=loaded.append)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tn_ops._load_library(lib, "9.9.9", "9.9.9", load=loaded.append)
        tn_ops._load_library(lib, None, "9.9.9", load=loaded.append)  # built without the record
    assert loaded == [str(lib)] * 3
    with pytest.raises(ImportError, match="not found"):
        tn_ops._load_library(Path(tmp_path / "missing.so"), "9.9.9", "9.9.9", load=loaded.append)


# ---------------------------------------------------------------------------------------------
# Every public name is typed and documented

PUBLIC = [tn.taylor_features, tn.taylor_net, tn.taylor_net_moments, tn.expected_squared_loss, tn.philox_signs,
          tn.ntk_gram, tn.taylorize, tn.empirical_ntk, tn.TaylorLinear, tn.TaylorNet, tn.ShardedTaylorNet,
          tn.TaylorizedModule, tn.reference.taylor_features, tn.reference.taylor_net,
          tn.reference.taylor_net_moments, NoisySGD]


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda o: o.__qualname__)
def test_public_names_have_type_hints_and_nn_style_docstrings(obj):
    doc = inspect.getdoc(obj) or ""
    for section in ("Args:", "Shape:" if obj is not NoisySGD else "Args:", "Example::"):
        assert section in doc, f"{obj.__qualname__}: no {section}"
    fn = obj.__init__ if inspect.isclass(obj) else obj
    params = [p for name, p in inspect.signature(fn).parameters.items()
              if name not in ("self", "args", "kwargs") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [p.name for p in params if p.annotation is inspect.Parameter.empty]
    assert not missing, f"{obj.__qualname__}: no type hints for {missing}"


@pytest.mark.slow
def test_demo_runs(capsys):
    from taylornet.__main__ import main

    assert main(["demo", "--width", "64", "--train", "32", "--test", "32", "--steps", "5", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "taylornet demo: y = (b1.x)^2 - (b2.x)^2, d=32, m=64, n=32" in out
    assert out.count("step    5") == 2 and "forward+backward, n=32, m=64: fused" in out
    assert "test mse: quadratic" in out
