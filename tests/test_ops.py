"""The compiled ops (tn.taylor_features, tn.taylor_net, tn.taylor_net_moments) against the pure-PyTorch
reference (tn.reference) and against independent oracles: values and gradients of every input,
float64 (tight) and float32 (FlashAttention-style error bound), odd shapes, non-contiguous inputs,
the blocked / multi-threaded paths of the net kernels, batch shapes, empty batches, gradcheck and
torch.library.opcheck."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.func import jvp

import taylornet as tn
import taylornet.reference as ref

from _utils import (
    FEATURE_INPUTS,
    NET_INPUTS,
    assert_close_verbose,
    assert_error_bounded,
    cast,
    make_problem,
    non_contiguous,
    num_threads,
    random_signs,
    slow_except,
)

F64, F32 = torch.float64, torch.float32
ORDERS = [0, 1, 2, 3, (2,), (0, 2), (1, 3), 6, "exact"]
RELU_ORDERS = [0, 1, "exact"]
CASES = [(act, order) for act in tn.ACTIVATIONS for order in (RELU_ORDERS if act == "relu" else ORDERS)]
CASE_IDS = [f"{act}-{order}".replace(" ", "") for act, order in CASES]
SIGN_SEED = (0x1234_5678_9ABC_DEF0 - 2**63, 2**40 + 7)  # (seed, offset): both words non-trivial

OPS = ("features", "net", "moments")


def op_inputs(op: str) -> tuple[str, ...]:
    return FEATURE_INPUTS if op == "features" else NET_INPUTS


def run(impl, op, p, *, activation, order, sign_mode="none", scale=None):
    """Outputs of ``op`` (a tuple: (h,), (f,) or (mean, var)) of ``impl`` (tn or tn.reference).

    sign_mode: "none", "tensor" (explicit random signs) or "seed" (the kernels draw the signs from
    SIGN_SEED; the reference gets the same signs from tn.philox_signs).
    """
    x, w0, w, a, b0, b = (p[k] for k in NET_INPUTS)
    m = w.shape[0]
    kw = {"activation": activation, "order": order}
    if op != "features":
        kw["scale"] = scale
    if op != "moments":
        if sign_mode == "tensor":
            kw["signs"] = random_signs(m, dtype=x.dtype, seed=11)
        elif sign_mode == "seed":
            if impl is tn:
                kw["sign_seed"] = SIGN_SEED
            else:
                kw["signs"] = tn.philox_signs(m, SIGN_SEED, dtype=x.dtype)
    if op == "features":
        return (impl.taylor_features(x, w0, w, b0, b, **kw),)
    if op == "net":
        return (impl.taylor_net(x, w0, w, a, b0, b, **kw),)
    return tuple(impl.taylor_net_moments(x, w0, w, a, b0, b, **kw))


def cotangents_like(outputs, seed=123):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g, dtype=F64).to(o.dtype) for o in outputs]


def forward_and_grads(impl, op, p, cotangents=None, **kw):
    """(outputs, {name: gradient}) with every present input of ``op`` requiring grad.

    The leaves are detached views of the given tensors, so non-contiguous inputs stay
    non-contiguous. The kernels must return a gradient for every input; the reference may leave
    an input unused (order 0 ignores w), which counts as a zero gradient.
    """
    names = [k for k in op_inputs(op) if p[k] is not None]
    leaves = dict(p)
    for k in names:
        leaves[k] = p[k].detach().requires_grad_(True)
    outputs = run(impl, op, leaves, **kw)
    if cotangents is None:
        cotangents = cotangents_like(outputs)
    grads = torch.autograd.grad(outputs, [leaves[k] for k in names], cotangents,
                                allow_unused=impl is not tn, materialize_grads=impl is not tn)
    return tuple(o.detach() for o in outputs), dict(zip(names, grads)), cotangents


def with_layout(p, layout):
    """x as a non-contiguous view (transposed storage or strided slice) with the same values."""
    if layout == "contiguous":
        return p
    q = dict(p)
    q["x"] = non_contiguous(p["x"], layout)
    return q


def _largest(t):
    return t.abs().max().item() if t.numel() else 0.0


def check_float64(op, p, name="", **kw):
    outs, grads, cot = forward_and_grads(tn, op, p, **kw)
    routs, rgrads, _ = forward_and_grads(ref, op, p, cot, **kw)
    for i, (o, r) in enumerate(zip(outs, routs)):
        assert o.dtype == F64
        assert_close_verbose(o, r, atol=1e-10 * max(1.0, _largest(r)), rtol=1e-9,
                             name=f"{name} output {i}")
    assert grads.keys() == rgrads.keys()
    for k in grads:
        r = rgrads[k]
        assert grads[k].dtype == F64
        assert_close_verbose(grads[k], r, atol=1e-10 * max(1.0, _largest(r)), rtol=1e-9,
                             name=f"{name} grad {k}")
    return outs, grads, cot


def check_float32(op, p64, layout="contiguous", name="", **kw):
    """float32 kernel vs float64 reference, bounded by 2x the float32 reference's own error."""
    routs64, rgrads64, cot = forward_and_grads(ref, op, p64, **kw)
    p32 = with_layout(cast(p64, F32), layout)
    cot32 = [c.to(F32) for c in cot]
    outs, grads, _ = forward_and_grads(tn, op, p32, cot32, **kw)
    routs32, rgrads32, _ = forward_and_grads(ref, op, p32, cot32, **kw)
    for i in range(len(outs)):
        assert outs[i].dtype == F32
        assert_error_bounded(outs[i], routs32[i], routs64[i], name=f"{name} float32 output {i}")
    for k in grads:
        assert grads[k].dtype == F32
        assert_error_bounded(grads[k], rgrads32[k], rgrads64[k], name=f"{name} float32 grad {k}")


# ---------------------------------------------------------------------------------------------
# Every activation x order, odd shapes, non-contiguous x. The epilogue depends on the activation and
# the orders; the sign source, the biases and the memory layout enter the kernels elsewhere (the
# pre-activations, the signs of v), so the grid walks through them across the orders of each
# activation instead of multiplying them in, and the next test crosses them with each other.

SIGN_MODES = ("none", "tensor", "seed")
LAYOUTS = ("contiguous", "transpose", "slice")


def _variant(i: int) -> tuple[str, bool, str]:
    """(sign mode, bias, layout) of grid case i: all 18 combinations in every 18 consecutive cases."""
    return SIGN_MODES[i % 3], bool(i // 3 % 2), LAYOUTS[(i + i // 6) % 3]


@pytest.mark.parametrize("op", ["features", "net", "moments"])
@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_ops_match_reference(case, op):
    activation, order = CASES[case]
    sign_mode, bias, layout = _variant(case)
    if op == "moments":
        sign_mode = "none"
    p = make_problem(n=37, d=13, m=131, c=3, bias=bias, seed=1)
    name = f"{op} {activation} order={order} signs={sign_mode} bias={bias} {layout}"
    outs, _, _ = check_float64(op, with_layout(p, layout), name=name, activation=activation, order=order,
                               sign_mode=sign_mode)
    if op == "moments":
        assert bool((outs[1] >= 0).all()), "variance must be non-negative"
    check_float32(op, p, layout, name=name, activation=activation, order=order, sign_mode=sign_mode)


def test_grid_walks_through_the_sign_sources_biases_and_layouts():
    for act in tn.ACTIVATIONS:  # each activation meets every sign source and layout
        variants = [_variant(i) for i, (a, _) in enumerate(CASES) if a == act]
        assert {v[0] for v in variants} == set(SIGN_MODES), act
        assert {v[2] for v in variants} == set(LAYOUTS), act
    assert len({_variant(i) for i in range(18)}) == 18


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("sign_mode", SIGN_MODES)
@pytest.mark.parametrize("op", ["features", "net"])
@pytest.mark.parametrize("activation,order", slow_except([("tanh", 3), ("gelu", "exact")], [("tanh", 3)]))
def test_sign_sources_biases_and_layouts(activation, order, op, sign_mode, bias, layout):
    p = make_problem(n=37, d=13, m=131, c=3, bias=bias, seed=2)
    name = f"{op} {activation} order={order} signs={sign_mode} bias={bias} {layout}"
    check_float64(op, with_layout(p, layout), name=name, activation=activation, order=order,
                  sign_mode=sign_mode)
    check_float32(op, p, layout, name=name, activation=activation, order=order, sign_mode=sign_mode)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("activation,order", [("tanh", 3), ("silu", (1, 3)), ("sin", "exact")])
def test_explicit_scale_and_1d_readout(op, activation, order):
    p = make_problem(n=9, d=4, m=21, c=0, seed=3)
    check_float64(op, p, name=f"{op} scale", activation=activation, order=order, sign_mode="tensor",
                  scale=0.37)
    if op != "features":
        a = run(tn, op, p, activation=activation, order=order, scale=0.37)
        b = run(tn, op, p, activation=activation, order=order)
        factor = 0.37 * math.sqrt(21)  # default scale is 1/sqrt(m)
        assert_close_verbose(a[0], b[0] * factor, atol=1e-12, rtol=1e-12, name="scale of the mean")
        if op == "moments":
            assert_close_verbose(a[1], b[1] * factor**2, atol=1e-12, rtol=1e-12, name="scale^2 of the var")


@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_parameters(op):
    p = make_problem(n=11, d=6, m=40, c=3, seed=4)
    q = dict(p)
    q["w0"] = non_contiguous(p["w0"], "transpose")
    q["w"] = non_contiguous(p["w"], "slice")
    q["a"] = non_contiguous(p["a"], "transpose")
    q["b0"] = non_contiguous(p["b0"], "slice")
    q["b"] = non_contiguous(p["b"], "slice")
    q["x"] = non_contiguous(p["x"], "transpose")
    kw = {"activation": "gelu", "order": 3, "sign_mode": "none" if op == "moments" else "seed"}
    check_float64(op, q, name=f"{op} non-contiguous", **kw)
    outs, grads, cot = forward_and_grads(tn, op, q, **kw)
    outs_c, grads_c, _ = forward_and_grads(tn, op, p, cot, **kw)
    for o, oc in zip(outs, outs_c):
        assert_close_verbose(o, oc, atol=1e-13, rtol=1e-13, name="non-contiguous vs contiguous")
    for k in grads:
        assert grads[k].shape == p[k].shape
        assert_close_verbose(grads[k], grads_c[k], atol=1e-13, rtol=1e-13, name=f"grad {k}")


# ---------------------------------------------------------------------------------------------
# Blocked tiling (128 samples x 512 float / 256 double neurons) and the sample- / neuron-parallel
# paths of the net kernels, chosen from the block counts and torch.get_num_threads().

TILING_SHAPES = [
    (300, 1100),  # several blocks both ways, partial tiles at both edges
    (5, 2000),    # one sample block, many neuron blocks: neuron-parallel forward with 2 threads
    (1000, 40),   # one neuron block, many sample blocks: sample-parallel backward with partial sums
    (129, 257),   # one element past a tile edge in both directions (float64)
]


TILING_OPS = {
    "net-tanh-seed": ("net", {"activation": "tanh", "order": 3, "sign_mode": "seed"}),
    "net-gelu-exact-signs": ("net", {"activation": "gelu", "order": "exact", "sign_mode": "tensor"}),
    "moments-erf": ("moments", {"activation": "erf", "order": 3}),
}


# Every shape x readout x dtype x op; each shape, readout width, dtype and op (and most pairs of
# them) among the quick ones.
TILING_CASES = [(n, m, c, dtype, config) for n, m in TILING_SHAPES for c in (1, 5) for dtype in (F64, F32)
                for config in TILING_OPS]
TILING_QUICK = [case for i, case in enumerate(TILING_CASES) if i % 5 == 0]


@pytest.mark.parametrize("n,m,c,dtype,config", slow_except(
    TILING_CASES, TILING_QUICK,
    ids=[f"n{n}-m{m}-c{c}-{'f64' if dtype == F64 else 'f32'}-{config}" for n, m, c, dtype, config in TILING_CASES]))
def test_blocked_tiling_and_threads(n, m, c, dtype, config):
    """Values and gradients with 1 and 2 threads against the reference (computed single-threaded)."""
    op, kw = TILING_OPS[config]
    p64 = make_problem(n=n, d=7, m=m, c=0 if c == 1 else c, seed=5)
    p = cast(p64, dtype)
    routs, rgrads, cot = forward_and_grads(ref, op, p, **kw)
    if dtype == F32:
        routs64, rgrads64, _ = forward_and_grads(ref, op, p64, [t.double() for t in cot], **kw)
    before = torch.get_num_threads()
    for threads in (1, 2):
        with num_threads(threads):
            assert torch.get_num_threads() == threads
            outs, grads, _ = forward_and_grads(tn, op, p, cot, **kw)
        assert torch.get_num_threads() == before
        name = f"{op} n={n} m={m} c={c} threads={threads} {kw}"
        if dtype == F64:
            for i, (o, r) in enumerate(zip(outs, routs)):
                assert_close_verbose(o, r, atol=1e-10 * max(1.0, _largest(r)), rtol=1e-9,
                                     name=f"{name} output {i}")
            for k, r in rgrads.items():
                assert_close_verbose(grads[k], r, atol=1e-10 * max(1.0, _largest(r)), rtol=1e-9,
                                     name=f"{name} grad {k}")
        else:
            for i, o in enumerate(outs):
                assert_error_bounded(o, routs[i], routs64[i], name=f"{name} float32 output {i}")
            for k, g in grads.items():
                assert_error_bounded(g, rgrads[k], rgrads64[k], name=f"{name} float32 grad {k}")


@pytest.mark.parametrize("n,m", [(300, 1100), (5, 2000), (1000, 40)])
def test_thread_count_does_not_change_results(n, m):
    p = cast(make_problem(n=n, d=7, m=m, c=5, seed=6), F32)
    kw = {"activation": "tanh", "order": 2, "sign_mode": "seed"}
    results = []
    for threads in (1, 2):
        with num_threads(threads):
            results.append(forward_and_grads(tn, "net", p, **kw))
    (o1, g1, _), (o2, g2, _) = results
    assert_close_verbose(o2[0], o1[0], atol=1e-5, rtol=1e-5, name="output, 2 vs 1 threads")
    for k in g1:
        assert_close_verbose(g2[k], g1[k], atol=1e-4 * g1[k].abs().max().item(), rtol=1e-5, name=f"grad {k}")


# ---------------------------------------------------------------------------------------------
# Shapes, no_grad, empty batches, inputs untouched, only the needed gradients

@pytest.mark.parametrize("op,readout", [("features", None), ("net", "2d"), ("net", "1d"), ("moments", "2d"),
                                        ("moments", "1d")])
def test_leading_batch_shapes(op, readout):
    d, m, c = 5, 17, 3
    p = make_problem(n=6, d=d, m=m, c=c if readout == "2d" else 0, seed=7)
    kw = {"activation": "erf", "order": (1, 3)}
    if op != "moments":
        kw["sign_seed" if op == "net" else "signs"] = 9 if op == "net" else random_signs(m)
    args = (p["w0"], p["w"]) + ((p["a"],) if op != "features" else ()) + (p["b0"], p["b"])
    fn = {"features": tn.taylor_features, "net": tn.taylor_net, "moments": tn.taylor_net_moments}[op]
    rfn = {"features": ref.taylor_features, "net": ref.taylor_net, "moments": ref.taylor_net_moments}[op]
    rkw = dict(kw)
    if "sign_seed" in rkw:
        rkw["signs"] = tn.philox_signs(m, rkw.pop("sign_seed"), dtype=F64)
    tail = (m,) if op == "features" else ((c,) if readout == "2d" else ())

    def outs(f, x, **k):
        r = f(x, *args, **k)
        return r if isinstance(r, tuple) else (r,)

    x3 = p["x"].reshape(2, 3, d).requires_grad_(True)
    got = outs(fn, x3, **kw)
    flat = outs(fn, p["x"], **kw)
    want = outs(rfn, x3, **rkw)
    for g, f, w in zip(got, flat, want):
        assert g.shape == (2, 3) + tail
        assert_close_verbose(g, f.reshape(g.shape), atol=1e-14, rtol=1e-14, name="batched vs flat")
        assert_close_verbose(g, w, atol=1e-12, rtol=1e-10, name="batched vs reference")
    (gx,) = torch.autograd.grad(sum(o.sum() for o in got), x3)
    (rgx,) = torch.autograd.grad(sum(o.sum() for o in outs(rfn, x3, **rkw)), x3)
    assert gx.shape == x3.shape
    assert_close_verbose(gx, rgx, atol=1e-12, rtol=1e-10, name="batched grad x")
    # a single sample without a batch dimension
    x1 = p["x"][4].clone().requires_grad_(True)
    got1 = outs(fn, x1, **kw)
    for g, f in zip(got1, flat):
        assert g.shape == tail
        assert_close_verbose(g, f[4], atol=1e-14, rtol=1e-14, name="single sample")
    (gx1,) = torch.autograd.grad(sum(o.sum() for o in got1), x1)
    (rgx1,) = torch.autograd.grad(sum(o.sum() for o in outs(rfn, x1, **rkw)), x1)
    assert gx1.shape == (d,)
    assert_close_verbose(gx1, rgx1, atol=1e-12, rtol=1e-10, name="single sample grad x")


@pytest.mark.parametrize("op", OPS)
def test_no_grad(op):
    p = make_problem(n=8, d=4, m=10, c=2, seed=8)
    leaves = {k: (v.requires_grad_(True) if v is not None else None) for k, v in p.items()}
    kw = {"activation": "softplus", "order": 2}
    with_grad = run(tn, op, leaves, **kw)
    assert all(o.requires_grad for o in with_grad)
    with torch.no_grad():
        outs = run(tn, op, leaves, **kw)
    for o, w in zip(outs, with_grad):
        assert not o.requires_grad and o.grad_fn is None
        assert torch.equal(o, w.detach())


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("batch", [(0,), (2, 0)])
@pytest.mark.parametrize("order", [2, "exact"])
def test_empty_batch(op, batch, order):
    d, m, c = 4, 9, 3
    p = make_problem(n=1, d=d, m=m, c=c, seed=9)
    p["x"] = torch.zeros(*batch, d, dtype=F64)
    names = [k for k in op_inputs(op) if p[k] is not None]
    leaves = {k: (v.clone().requires_grad_(k in names) if v is not None else None) for k, v in p.items()}
    outs = run(tn, op, leaves, activation="tanh", order=order,
               sign_mode="none" if op == "moments" else "seed")
    tail = (m,) if op == "features" else (c,)
    for o in outs:
        assert o.shape == (*batch, *tail) and o.dtype == F64
    sum(o.sum() for o in outs).backward()
    for k in names:
        g = leaves[k].grad
        assert g is not None and g.shape == p[k].shape, k
        assert bool((g == 0).all()), f"grad {k} of an empty batch must be zero"


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("sign_mode", ["tensor", "seed"])
def test_inputs_are_not_modified(op, sign_mode):
    p = make_problem(n=13, d=5, m=33, c=2, seed=10)
    p["x"] = non_contiguous(p["x"], "transpose")
    signs = random_signs(33, dtype=F64, seed=3)
    seed = torch.tensor([5, 6], dtype=torch.int64)
    before = {k: v.clone() for k, v in p.items()}
    signs_before, seed_before = signs.clone(), seed.clone()
    leaves = {k: v.requires_grad_(True) for k, v in p.items()}
    kw = {"activation": "sigmoid", "order": 3}
    if op != "moments":
        kw["signs" if sign_mode == "tensor" else "sign_seed"] = signs if sign_mode == "tensor" else seed
    args = [leaves[k] for k in op_inputs(op)]
    fn = {"features": tn.taylor_features, "net": tn.taylor_net, "moments": tn.taylor_net_moments}[op]
    out = fn(*args, **kw)
    out = out if isinstance(out, tuple) else (out,)
    sum((o * o).sum() for o in out).backward()
    for k, v in before.items():
        assert torch.equal(p[k].detach(), v), f"{k} was modified"
    assert torch.equal(signs, signs_before) and torch.equal(seed, seed_before)
    assert not p["x"].is_contiguous()


NEEDS_SUBSETS = [("x",), ("w0",), ("w",), ("a",), ("b0",), ("b",), ("x", "w"), ("w0", "b0"), ("a", "w")]
NEEDS_CASES = [(op, s) for op in OPS for s in NEEDS_SUBSETS if not (op == "features" and "a" in s)]


@pytest.mark.parametrize("op,subset", NEEDS_CASES, ids=[f"{op}-{'-'.join(s)}" for op, s in NEEDS_CASES])
@pytest.mark.parametrize("activation,order", [("tanh", 2), ("gelu", "exact"), ("relu3", (1, 3))])
def test_only_the_needed_gradients(op, subset, activation, order):
    p = make_problem(n=10, d=4, m=19, c=2, seed=12)
    leaves = {k: v.clone().requires_grad_(k in subset) for k, v in p.items()}
    kw = {"activation": activation, "order": order, "sign_mode": "none" if op == "moments" else "seed"}
    outs = run(tn, op, leaves, **kw)
    cot = cotangents_like(outs)
    torch.autograd.backward(outs, cot)
    rleaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    routs = run(ref, op, rleaves, **kw)
    rgrads = torch.autograd.grad(routs, [rleaves[k] for k in subset], cot, allow_unused=True,
                                 materialize_grads=True)
    for k, rg in zip(subset, rgrads):
        assert_close_verbose(leaves[k].grad, rg, atol=1e-11, rtol=1e-10, name=f"grad {k}")
    for k in NET_INPUTS:
        if k not in subset:
            assert leaves[k].grad is None, k


@pytest.mark.parametrize("which", ["mean", "var"])
def test_moments_gradient_of_one_output(which):
    p = make_problem(n=10, d=4, m=19, c=2, seed=13)
    kw = {"activation": "cos", "order": 3}
    leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    rleaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    i = 0 if which == "mean" else 1
    (run(tn, "moments", leaves, **kw)[i] ** 2).sum().backward()
    (run(ref, "moments", rleaves, **kw)[i] ** 2).sum().backward()
    for k in NET_INPUTS:
        assert_close_verbose(leaves[k].grad, rleaves[k].grad, atol=1e-11, rtol=1e-10, name=f"grad {k}")


@pytest.mark.parametrize("op", ["features", "net", "moments"])
@pytest.mark.parametrize("needs", [[1, 1, 1, 1, 1, 1], [0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0],
                                   [0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]])
def test_backward_ops_honour_needs(op, needs):
    """torch.ops.taylornet.*_backward directly: the needed gradients are right, the others empty."""
    p = make_problem(n=7, d=3, m=12, c=2, seed=14)
    names = op_inputs(op)
    needs = [bool(v) for v in needs][: len(names)]
    x, w0, w, a, b0, b = (p[k] for k in NET_INPUTS)
    ops = torch.ops.taylornet
    signs = random_signs(12)
    g = torch.Generator().manual_seed(0)
    if op == "features":
        grad = torch.randn(7, 12, generator=g, dtype=F64)
        got = ops.features_backward(grad, x, w0, w, b0, b, signs, None, "tanh", [0, 1, 2], False, needs)
        cot = [grad]
    elif op == "net":
        grad = torch.randn(7, 2, generator=g, dtype=F64)
        got = ops.net_backward(grad, x, w0, w, a, b0, b, signs, None, "tanh", [0, 1, 2], False, 0.3, needs)
        cot = [grad]
    else:
        gm, gv = torch.randn(2, 7, 2, generator=g, dtype=F64)
        got = ops.moments_backward(gm, gv, x, w0, w, a, b0, b, "tanh", [0, 1, 2], False, 0.3, needs)
        cot = [gm, gv]
    assert len(got) == len(names)
    leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    kw = {"activation": "tanh", "order": 2}
    if op == "features":
        routs = (ref.taylor_features(*(leaves[k] for k in names), signs=signs, **kw),)
    elif op == "net":
        routs = (ref.taylor_net(*(leaves[k] for k in names), signs=signs, scale=0.3, **kw),)
    else:
        routs = ref.taylor_net_moments(*(leaves[k] for k in names), scale=0.3, **kw)
    rgrads = torch.autograd.grad(routs, [leaves[k] for k in names], cot)
    for k, need, gk, rk in zip(names, needs, got, rgrads):
        if need:
            assert_close_verbose(gk, rk, atol=1e-11, rtol=1e-10, name=f"needed grad {k}")
        else:
            assert gk.numel() == 0, f"grad {k} was not asked for but has shape {tuple(gk.shape)}"


@pytest.mark.parametrize("op", OPS)
def test_double_backward_raises(op):
    """Second derivatives are not implemented: differentiating a gradient raises instead of returning
    no gradient (which autograd would treat as zero). The reference has them, and they are not zero."""
    p = make_problem(n=4, d=3, m=5, c=0, seed=15)
    kw = {"activation": "tanh", "order": 2}

    def first_grad(impl):
        leaves = {k: (v.clone().requires_grad_(k in ("x", "w")) if v is not None else None) for k, v in p.items()}
        outs = run(impl, op, leaves, **kw)
        (gw,) = torch.autograd.grad(sum(o.sum() for o in outs), leaves["w"], create_graph=True)
        return gw, leaves["x"]

    rgw, rx = first_grad(ref)
    (rgg,) = torch.autograd.grad(rgw.sum(), rx)
    assert rgg.abs().max() > 1e-3  # d^2 f / dw dx is not zero
    gw, x = first_grad(tn)
    with pytest.raises(RuntimeError, match=f"taylornet: {op}_backward does not support double backward"):
        torch.autograd.grad(gw.sum(), x)


# ---------------------------------------------------------------------------------------------
# gradcheck and opcheck

GRADCHECK_CASES = [
    ("features", "tanh", 2, "tensor"),
    ("features", "gelu", "exact", "seed"),
    ("features", "relu2", (0, 2), "none"),
    ("net", "tanh", 2, "tensor"),
    ("net", "silu", (1, 3), "seed"),
    ("net", "erf", "exact", "tensor"),
    ("net", "sin", 6, "none"),
    ("net", "relu", 1, "tensor"),
    ("moments", "tanh", 3, "none"),
    ("moments", "softplus", "exact", "none"),
    ("moments", "exp", (1, 2), "none"),
]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("op,activation,order,sign_mode", GRADCHECK_CASES)
def test_gradcheck(op, activation, order, sign_mode, bias):
    p = make_problem(n=3, d=2, m=4, c=2, bias=bias, seed=16)
    if activation.startswith("relu"):  # keep finite differences away from the kink
        p["x"] = p["x"] + 0.05 * torch.sign(p["x"])
    names = [k for k in op_inputs(op) if p[k] is not None]
    inputs = tuple(p[k].clone().requires_grad_(True) for k in names)

    def fn(*ts):
        q = dict(p)
        q.update(zip(names, ts))
        return run(tn, op, q, activation=activation, order=order, sign_mode=sign_mode)

    assert torch.autograd.gradcheck(fn, inputs, atol=1e-7, rtol=1e-6)


def _opcheck_samples():
    p = make_problem(n=5, d=3, m=6, c=2, seed=17)
    x, w0, w, a, b0, b = (p[k] for k in NET_INPUTS)
    signs = random_signs(6)
    seed = torch.tensor([3, -4], dtype=torch.int64)
    g = torch.Generator().manual_seed(1)
    gf, gn, gv = torch.randn(5, 6, generator=g, dtype=F64), *torch.randn(2, 5, 2, generator=g, dtype=F64)

    def rg(t):
        return t.clone().requires_grad_(True)

    ops = torch.ops.taylornet
    return [
        ("features", ops.features, (rg(x), rg(w0), rg(w), rg(b0), rg(b), signs, None, "tanh", [0, 1, 2], False)),
        ("features-seed-nobias", ops.features, (rg(x), rg(w0), rg(w), None, None, None, seed, "gelu", [], True)),
        ("features-f32", ops.features,
         (rg(x.float()), w0.float(), rg(w.float()), None, rg(b.float()), None, None, "relu3", [3, 1], False)),
        ("net", ops.net, (rg(x), rg(w0), rg(w), rg(a), rg(b0), None, None, seed, "silu", [1, 3], False, 0.5)),
        ("net-signs", ops.net, (rg(x), w0, rg(w), a, None, rg(b), signs, None, "sin", [0, 2], False, 0.25)),
        ("net-seed-first-neuron", ops.net, (rg(x), rg(w0), rg(w), rg(a), None, None, None,
                                            torch.tensor([7, 1, 130]), "tanh", [0, 1, 2, 3], False, 0.5)),
        ("net-exact", ops.net, (rg(x), rg(w0), rg(w), rg(a), rg(b0), rg(b), None, None, "erf", [], True, 1.0)),
        ("moments", ops.moments, (rg(x), rg(w0), rg(w), rg(a), None, rg(b), "sin", [0, 1, 2, 3], False, 0.4)),
        ("moments-exact", ops.moments, (rg(x), rg(w0), rg(w), rg(a), rg(b0), None, "softplus", [], True, 0.4)),
        ("features_backward", ops.features_backward,
         (gf, x, w0, w, b0, b, signs, None, "tanh", [0, 1, 2], False, [True, False, True, True, False])),
        ("features_backward-seed", ops.features_backward,
         (gf, x, w0, w, None, None, None, seed, "cos", [], True, [True, True, True, True, True])),
        ("net_backward", ops.net_backward,
         (gn, x, w0, w, a, b0, b, None, seed, "tanh", [0, 1, 2], False, 0.3, [False, True, True, True, False, True])),
        ("net_backward-signs", ops.net_backward,
         (gn, x, w0, w, a, None, None, signs, None, "exp", [2], False, 0.3, [True, False, False, True, True, True])),
        ("moments_backward", ops.moments_backward,
         (gn, gv, x, w0, w, a, b0, None, "erf", [], True, 0.3, [True, True, True, True, True, True])),
        ("moments_backward-some", ops.moments_backward,
         (gn, gv, x, w0, w, a, None, b, "gelu", [1, 2], False, 0.3, [False, False, True, False, False, True])),
        ("philox_signs", ops.philox_signs, (seed, 300)),
        ("philox", ops.philox, (torch.arange(12, dtype=torch.int64).reshape(3, 4), -5)),
    ]


_OPCHECK_NAMES = [s[0] for s in _opcheck_samples()]
_OPCHECK_QUICK = ("features", "net_backward", "moments", "philox")


@pytest.mark.parametrize("sample", slow_except(list(range(len(_OPCHECK_NAMES))),
                                               [i for i, s in enumerate(_OPCHECK_NAMES) if s in _OPCHECK_QUICK],
                                               ids=_OPCHECK_NAMES))
def test_opcheck(sample):
    _, op, args = _opcheck_samples()[sample]
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result
    assert "test_aot_dispatch_dynamic" in result


# ---------------------------------------------------------------------------------------------
# Independent oracles for the compiled ops: the Taylor polynomial of the full network by nested
# forward-mode AD, and the sign moments by enumerating all sign patterns.

ignore_jit_warning = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

PLAIN = {
    "tanh": torch.tanh,
    "gelu": lambda z: z * 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0))),
    "sigmoid": lambda z: 1.0 / (1.0 + torch.exp(-z)),
    "relu3": lambda z: torch.clamp(z, min=0.0) ** 3,
    "cos": torch.cos,
}


def _full_net(activation, x, w0, w, a, b0, b, signs, t):
    """g(t W) = m^-1/2 sum_r a_jr sigma(w0_r.x + b0_r + s_r t (w_r.x + b_r)), written out by hand."""
    z0 = x @ w0.t() + b0
    u = x @ w.t() + b
    return (PLAIN[activation](z0 + t * signs * u) @ a.t()) / math.sqrt(w0.shape[0])


def _taylor_terms(activation, params, K):
    fns = [lambda t: _full_net(activation, *params, t=t)]
    for _ in range(K):
        fns.append(lambda t, f=fns[-1]: jvp(f, (t,), (torch.ones_like(t),))[1])
    t0 = torch.zeros((), dtype=F64)
    return [fns[k](t0) / math.factorial(k) for k in range(K + 1)]


@ignore_jit_warning
@pytest.mark.parametrize("activation", slow_except(list(PLAIN), ("tanh", "relu3")))
def test_net_is_the_taylor_polynomial_of_the_full_network(activation):
    p = make_problem(n=6, d=3, m=9, c=2, seed=18, movement=0.6)
    signs = random_signs(9, seed=4)
    params = tuple(p[k] for k in NET_INPUTS) + (signs,)
    K = 4
    terms = _taylor_terms(activation, params, K)
    assert all(t.abs().max() > 1e-6 for t in terms[: (4 if activation == "relu3" else 5)])
    x, w0, w, a, b0, b = (p[k] for k in NET_INPUTS)
    # the same with the signs drawn in the kernel
    terms_s = _taylor_terms(activation, params[:-1] + (tn.philox_signs(9, 21, dtype=F64),), K)
    for order in [0, 1, 2, 3, 4, (1, 3), (0, 2, 4), (4,), (2, 3)]:
        ks = range(order + 1) if isinstance(order, int) else order
        want = sum(terms[k] for k in ks)
        got = tn.taylor_net(x, w0, w, a, b0, b, activation=activation, order=order, signs=signs)
        assert_close_verbose(got, want, atol=1e-11, rtol=1e-10, name=f"{activation} order={order}")
        got_s = tn.taylor_net(x, w0, w, a, b0, b, activation=activation, order=order, sign_seed=21)
        assert_close_verbose(got_s, sum(terms_s[k] for k in ks), atol=1e-11, rtol=1e-10,
                             name=f"{activation} order={order} sign_seed")
    got = tn.taylor_net(x, w0, w, a, b0, b, activation=activation, order="exact", signs=signs)
    assert_close_verbose(got, _full_net(activation, *params, t=1.0), atol=1e-12, rtol=1e-12, name="exact")


@pytest.mark.parametrize("activation,order", [("tanh", 3), ("gelu", (1, 2)), ("relu", 1), ("sigmoid", "exact"),
                                              ("exp", (0, 1, 2, 3))])
def test_moments_match_sign_enumeration_of_compiled_net(activation, order):
    m = 6
    p = make_problem(n=5, d=3, m=m, c=2, seed=19, movement=0.8)
    x, w0, w, a, b0, b = (p[k] for k in NET_INPUTS)
    patterns = torch.tensor(list(itertools.product((1.0, -1.0), repeat=m)), dtype=F64)
    fs = torch.stack([tn.taylor_net(x, w0, w, a, b0, b, activation=activation, order=order, signs=s)
                      for s in patterns])
    mean, var = tn.taylor_net_moments(x, w0, w, a, b0, b, activation=activation, order=order)
    assert var.max() > 1e-4
    assert_close_verbose(mean, fs.mean(0), atol=1e-12, rtol=1e-10, name="mean")
    assert_close_verbose(var, fs.var(0, unbiased=False), atol=1e-12, rtol=1e-10, name="var")


# ---------------------------------------------------------------------------------------------
# float32 accuracy of the per-element epilogue alone: one input, one neuron per z0 on a grid, so
# grad w0[r] = dh/dz0 at z0_r and the output is h itself (no sums that could hide or add error).

@pytest.mark.parametrize("order", [(2,), 3, 6])
@pytest.mark.parametrize("activation", [a for a in tn.ACTIVATIONS if a != "relu"])
def test_float32_epilogue_on_a_grid_of_z0(activation, order):
    m = 2001
    z = torch.linspace(-6, 6, m, dtype=F64)
    p64 = {"x": torch.ones(1, 1, dtype=F64), "w0": z[:, None], "w": torch.full((m, 1), 0.5, dtype=F64),
           "a": None, "b0": None, "b": None}
    kw = {"activation": activation, "order": order}
    routs64, rgrads64, cot = forward_and_grads(ref, "features", p64, **kw)
    p32 = cast(p64, F32)
    cot32 = [c.float() for c in cot]
    outs, grads, _ = forward_and_grads(tn, "features", p32, cot32, **kw)
    routs32, rgrads32, _ = forward_and_grads(ref, "features", p32, cot32, **kw)
    assert_error_bounded(outs[0], routs32[0], routs64[0], name=f"{activation} {order} h")
    assert_error_bounded(grads["w0"], rgrads32["w0"], rgrads64["w0"], name=f"{activation} {order} dh/dz0")
    assert_error_bounded(grads["w"], rgrads32["w"], rgrads64["w"], name=f"{activation} {order} dh/du")
