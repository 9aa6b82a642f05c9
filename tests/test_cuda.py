"""The CUDA kernels against the float64 reference and against the CPU kernels: the CPU matrix re-run
on the GPU, low precision judged by a same-precision reference, tile edges, signs that agree across
devices; the host path: no synchronisation, CUDA graph capture and replay, torch.compile's
"reduce-overhead" mode, the mainloop switch and its errors. Skipped where no CUDA device is present
(bench/gpu_check.sh runs them on a GPU)."""
from __future__ import annotations

import contextlib
import copy
import subprocess
import sys

import pytest
import torch

import taylornet as tn
import taylornet.reference as ref

from _utils import assert_close_verbose, assert_error_bounded, make_problem
from test_ops import _opcheck_samples

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

F64, F32 = torch.float64, torch.float32
ORDERS = [0, 1, 2, 3, (2,), (0, 2), (1, 3), 6, "exact"]
CASES = [(a, o) for a in tn.ACTIVATIONS for o in ([0, 1, "exact"] if a == "relu" else ORDERS)]
SIGN_SEED = (0x0DDBA11 - 2**40, 2**33 + 5)
INPUTS = {"features": ("x", "w0", "w", "b0", "b"), "net": ("x", "w0", "w", "a", "b0", "b"),
          "moments": ("x", "w0", "w", "a", "b0", "b")}


def on(p, device, dtype=None):
    return {k: (v.to(device=device, dtype=dtype or v.dtype) if v is not None else None) for k, v in p.items()}


def outputs_and_grads(impl, op, p, cot=None, *, activation, order, sign_seed=None):
    """Outputs of op and gradients of all its present inputs (cotangents drawn if not given)."""
    names = [k for k in INPUTS[op] if p[k] is not None]
    leaves = {k: (v.detach().requires_grad_(True) if k in names else v) for k, v in p.items()}
    x, w0, w, a, b0, b = (leaves[k] for k in ("x", "w0", "w", "a", "b0", "b"))
    kw = {"activation": activation, "order": order}
    if op != "moments" and sign_seed is not None:
        if impl is tn:
            kw["sign_seed"] = sign_seed
        else:
            kw["signs"] = tn.philox_signs(w.shape[0], sign_seed, dtype=x.dtype, device=x.device)
    if op == "features":
        outs = (impl.taylor_features(x, w0, w, b0, b, **kw),)
    elif op == "net":
        outs = (impl.taylor_net(x, w0, w, a, b0, b, **kw),)
    else:
        outs = tuple(impl.taylor_net_moments(x, w0, w, a, b0, b, **kw))
    if cot is None:
        g = torch.Generator().manual_seed(7)
        cot = [torch.randn(o.shape, generator=g, dtype=F64) for o in outs]
    cot = [c.to(device=outs[0].device, dtype=outs[0].dtype) for c in cot]
    grads = torch.autograd.grad(outs, [leaves[k] for k in names], cot, allow_unused=impl is not tn,
                                materialize_grads=impl is not tn)
    return [o.detach() for o in outs], dict(zip(names, grads)), cot


@pytest.mark.parametrize("sign_seed", [None, SIGN_SEED], ids=["nosigns", "signs"])
@pytest.mark.parametrize("op", ["features", "net", "moments"])
@pytest.mark.parametrize("activation,order", CASES, ids=[f"{a}-{o}".replace(" ", "") for a, o in CASES])
def test_float64_matches_reference(activation, order, op, sign_seed):
    p = make_problem(n=37, d=13, m=131, c=3, bias=True)
    outs, grads, cot = outputs_and_grads(tn, op, on(p, "cuda"), activation=activation, order=order,
                                         sign_seed=sign_seed)
    routs, rgrads, _ = outputs_and_grads(ref, op, p, [c.cpu() for c in cot], activation=activation,
                                         order=order, sign_seed=sign_seed)
    for o, r in zip(outs, routs):
        assert o.device.type == "cuda"
        assert_close_verbose(o.cpu(), r, atol=1e-10 * max(1.0, r.abs().max().item()), rtol=1e-9, name="out")
    for k in rgrads:
        r = rgrads[k]
        assert_close_verbose(grads[k].cpu(), r, atol=1e-10 * max(1.0, r.abs().max().item()), rtol=1e-9,
                             name=f"grad {k}")


LOW = [("tanh", 2), ("gelu", 2), ("silu", (1, 3)), ("sigmoid", 6), ("erf", "exact"), ("relu3", 3)]
# Storage dtype and whether TF32 matmuls are allowed: f32 runs the SIMT kernels, the others the
# tensor-core kernels (tf32 = float32 storage with torch.backends.cuda.matmul.allow_tf32).
PRECISIONS = {"f32": (F32, False), "tf32": (F32, True), "bf16": (torch.bfloat16, False), "f16": (torch.float16, False)}


@contextlib.contextmanager
def allow_tf32(on: bool):
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def check_against_same_precision(p, op, precision, **kw):
    """The kernel's outputs and gradients within twice the error of the reference evaluated in the
    same precision. For TF32 the reference's matmuls run in TF32 too, but its elementwise work and
    GEMV readouts stay float32 while every product of the kernel is TF32: a factor of 3 there."""
    dtype, tf32 = PRECISIONS[precision]
    factor = 3.0 if tf32 else 2.0
    with allow_tf32(False):
        routs64, rgrads64, cot = outputs_and_grads(ref, op, on(p, "cuda"), **kw)
    pl = on(p, "cuda", dtype)
    with allow_tf32(tf32):
        outs, grads, _ = outputs_and_grads(tn, op, pl, cot, **kw)
        routs, rgrads, _ = outputs_and_grads(ref, op, pl, cot, **kw)
    for i in range(len(outs)):
        assert outs[i].dtype == dtype
        assert_error_bounded(outs[i], routs[i], routs64[i], name=f"{precision} output {i}", factor=factor)
    for k in grads:
        assert_error_bounded(grads[k], rgrads[k], rgrads64[k], name=f"{precision} grad {k}", factor=factor)


# The tensor-core mainloops (TAYLORNET_CUDA_MAINLOOP); "mma" is also what auto picks on sm_80+.
TC_MAINLOOPS = ["mma", "wmma"]


@pytest.mark.parametrize("mainloop", TC_MAINLOOPS)
@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("op", ["features", "net", "moments"])
@pytest.mark.parametrize("activation,order", LOW)
def test_low_precision_within_twice_the_same_precision_reference(activation, order, op, precision, mainloop,
                                                                 monkeypatch):
    if precision == "f32" and mainloop != TC_MAINLOOPS[0]:
        pytest.skip("float32 without TF32 runs the SIMT kernels whatever the tensor-core mainloop")
    if precision != "f32":
        monkeypatch.setenv("TAYLORNET_CUDA_MAINLOOP", mainloop)
    p = make_problem(n=70, d=33, m=150, c=4, bias=True)
    check_against_same_precision(p, op, precision, activation=activation, order=order, sign_seed=SIGN_SEED)


@pytest.mark.parametrize("n,d,m,c", [(65, 129, 97, 16), (200, 512, 300, 7), (3, 8, 4099, 2), (4099, 5, 3, 1),
                                     (130, 40, 200, 1), (90, 1100, 140, 3)])
@pytest.mark.parametrize("precision", ["tf32", "bf16", "f16"])
@pytest.mark.parametrize("op", ["features", "net", "moments"])
@pytest.mark.parametrize("mainloop", TC_MAINLOOPS)
def test_tensor_core_tile_edges(n, d, m, c, op, precision, mainloop, monkeypatch):
    # Not multiples of the 64 x 64 tiles, of the k chunks (32 / 16) or of the 16 x 16 fragments;
    # d = 512 and c = 16 spread dX and dA over several column tiles; d = 1100 spreads the gradients
    # over several column groups (the accumulators of all their columns exceed shared memory); d =
    # 129 and 1100 run mma.sync's three-buffer ring round several times.
    monkeypatch.setenv("TAYLORNET_CUDA_MAINLOOP", mainloop)
    p = make_problem(n=n, d=d, m=m, c=c, bias=True)
    check_against_same_precision(p, op, precision, activation="gelu", order=3, sign_seed=SIGN_SEED)


# The wgmma mainloop (sm_90a) has kernels of the features forward and of the reductions (every
# other op) for bfloat16 and float16; float32 runs its stand-in, mma.sync, under
# TAYLORNET_CUDA_MAINLOOP=wgmma.
def wgmma_device() -> bool:
    return torch.cuda.get_device_capability() == (9, 0)


needs_wgmma = pytest.mark.skipif(not torch.cuda.is_available() or not wgmma_device(),
                                 reason="wgmma runs on compute capability 9.0 (H100, H200) only")


@needs_wgmma
@pytest.mark.parametrize("n,d,m", [(70, 33, 150), (65, 129, 97), (3, 8, 4099), (4099, 5, 3), (130, 64, 200),
                                   (90, 1100, 140), (64, 200, 64)])
@pytest.mark.parametrize("precision", ["bf16", "f16"])
@pytest.mark.parametrize("activation,order", LOW + [("tanh", 0), ("tanh", 1), ("tanh", (2,)), ("tanh", (0, 2)),
                                                    ("tanh", "exact"), ("relu", 1)])
def test_wgmma_features_forward(n, d, m, activation, order, precision, monkeypatch):
    # Tile edges in every direction, d not a multiple of the 8-element vectors (the element-wise
    # staging: 33, 5), one k chunk (64), the three-stage ring round several times (1100), every
    # specialised epilogue and the generic one; the gradients on the wgmma reductions.
    monkeypatch.setenv("TAYLORNET_CUDA_MAINLOOP", "wgmma")
    p = make_problem(n=n, d=d, m=m, c=1, bias=True)
    check_against_same_precision(p, "features", precision, activation=activation, order=order, sign_seed=SIGN_SEED)


@needs_wgmma
@pytest.mark.parametrize("precision", ["bf16", "f16"])
def test_wgmma_features_forward_matches_mma(precision, monkeypatch):
    # The same float32 sums of the same products in another order: equal up to the output's rounding.
    dtype = PRECISIONS[precision][0]
    p = on(make_problem(n=300, d=512, m=260, c=1, bias=True), "cuda", dtype)
    args = [p[k] for k in ("x", "w0", "w")]
    outs = {}
    for mainloop, tma in (("mma", "1"), ("wgmma", "1"), ("wgmma", "0")):
        monkeypatch.setenv("TAYLORNET_CUDA_MAINLOOP", mainloop)
        monkeypatch.setenv("TAYLORNET_CUDA_TMA", tma)
        outs[mainloop + tma] = tn.taylor_features(*args, b0=p["b0"], b=p["b"], activation="tanh", order=2,
                                                  sign_seed=SIGN_SEED).float()
    scale = outs["mma1"].abs().max().item()
    assert_close_verbose(outs["wgmma1"], outs["mma1"], atol=4e-3 * scale, rtol=2 ** -6, name="wgmma vs mma")
    # the copy engine's tiles and cp.async's are the same bytes in shared memory: the same wgmmas
    assert torch.equal(outs["wgmma1"], outs["wgmma0"]), "wgmma with tensor copies vs with cp.async"


@needs_wgmma
@pytest.mark.parametrize("n,d,m,c", [(70, 33, 150, 3), (260, 72, 200, 2), (130, 1100, 90, 1), (4099, 8, 67, 17)])
@pytest.mark.parametrize("precision", ["bf16", "f16"])
@pytest.mark.parametrize("op", ["net", "moments"])
def test_wgmma_reductions(n, d, m, c, op, precision, monkeypatch):
    # The net's readout and every gradient on the wgmma reductions: the ring round several neuron
    # and sample tiles per block (260 x 200), several k chunks per tile (72, 1100), cp.async
    # staging (d = 33), a readout over a column tile (c = 17).
    monkeypatch.setenv("TAYLORNET_CUDA_MAINLOOP", "wgmma")
    p = make_problem(n=n, d=d, m=m, c=c, bias=True)
    check_against_same_precision(p, op, precision, activation="tanh", order=2, sign_seed=SIGN_SEED)


@needs_wgmma
@pytest.mark.parametrize("precision", ["bf16", "f16"])
@pytest.mark.parametrize("order", [2, (0,)])
def test_wgmma_reductions_match_mma(precision, order, monkeypatch):
    # Without splits (deterministic: one atomic add per output element), wgmma with tensor copies and
    # with cp.async (the *_wgmma_fallback kernels) multiply the same bytes in the same order: bit for
    # bit the same gradients. tanh (0,): the series whose fallback kernels ptxas serialises.
    dtype = PRECISIONS[precision][0]
    p = on(make_problem(n=300, d=200, m=260, c=2, bias=True), "cuda", dtype)
    w0 = p["w0"].clone().requires_grad_()
    w = p["w"].clone().requires_grad_()
    cot = torch.randn(300, 2, device="cuda", dtype=dtype, generator=torch.Generator("cuda").manual_seed(3))
    outs = {}
    with deterministic():
        for mainloop, tma in (("mma", "1"), ("wgmma", "1"), ("wgmma", "0")):
            monkeypatch.setenv("TAYLORNET_CUDA_MAINLOOP", mainloop)
            monkeypatch.setenv("TAYLORNET_CUDA_TMA", tma)
            y = tn.taylor_net(p["x"], w0, w, p["a"], b0=p["b0"], b=p["b"], activation="tanh", order=order,
                              sign_seed=SIGN_SEED)
            dw0, dw = torch.autograd.grad(y, [w0, w], cot)
            outs[mainloop + tma] = (y.float(), dw0.float(), dw.float())
    for i, name in enumerate(("output", "dW0", "dW")):
        scale = outs["mma1"][i].abs().max().item()
        assert_close_verbose(outs["wgmma1"][i], outs["mma1"][i], atol=4e-3 * scale, rtol=2 ** -6,
                             name=f"wgmma vs mma {name}")
        assert torch.equal(outs["wgmma1"][i], outs["wgmma0"][i]), f"{name}: wgmma with tensor copies vs cp.async"


@needs_wgmma
@pytest.mark.parametrize("precision", ["bf16", "f16"])
@pytest.mark.parametrize("d", [72, 200, 64])
def test_wgmma_overlap_matches_serial(precision, d, monkeypatch):
    # The overlap kernels (each tile's first wgmmas under the previous tile's epilogue and stage 2)
    # run the same wgmmas, epilogue and stage 2 in the same order as the plain ones: without splits,
    # bit for bit the same readout and gradients, for 2, 4 and 1 k chunks per tile.
    dtype = PRECISIONS[precision][0]
    p = on(make_problem(n=300, d=d, m=260, c=2, bias=True), "cuda", dtype)
    x, w = p["x"].clone().requires_grad_(), p["w"].clone().requires_grad_()
    cot = torch.randn(300, 2, device="cuda", dtype=dtype, generator=torch.Generator("cuda").manual_seed(5))
    outs = {}
    monkeypatch.setenv("TAYLORNET_CUDA_MAINLOOP", "wgmma")
    with deterministic():
        for overlap in ("1", "0"):
            monkeypatch.setenv("TAYLORNET_CUDA_OVERLAP", overlap)
            y = tn.taylor_net(x, p["w0"], w, p["a"], b0=p["b0"], b=p["b"], activation="tanh", order=2,
                              sign_seed=SIGN_SEED)
            outs[overlap] = (y, *torch.autograd.grad(y, [x, w], cot))
    for name, got, want in zip(("output", "dX", "dW"), outs["1"], outs["0"]):
        assert torch.equal(got, want), f"{name}: overlapping stage 1 vs serial"


@needs_wgmma
@pytest.mark.parametrize("precision", ["bf16", "f16"])
@pytest.mark.parametrize("n,d,m", [(300, 72, 260), (4099, 200, 67), (40, 64, 1000), (70000, 128, 200)])
@pytest.mark.parametrize("activation,order", [("tanh", 2), ("silu", (0, 1, 2)), ("gelu", (1, 3))])
def test_wgmma_pingpong_matches_plain(precision, n, d, m, activation, order, monkeypatch):
    # The warp-specialised ping-pong features forward (TAYLORNET_CUDA_PINGPONG=1) runs the same
    # wgmmas per column half in the same order and the same epilogue as the plain wgmma kernel: bit
    # for bit the same features, over runs of 1 to many sample tiles, 1 to 4 k chunks, a specialised
    # epilogue and the generic one (gelu (1, 3)); and within the same-precision bounds of the reference.
    dtype = PRECISIONS[precision][0]
    p = on(make_problem(n=n, d=d, m=m, c=1, bias=True), "cuda", dtype)
    monkeypatch.setenv("TAYLORNET_CUDA_MAINLOOP", "wgmma")
    outs = {}
    for pingpong in ("0", "1"):
        monkeypatch.setenv("TAYLORNET_CUDA_PINGPONG", pingpong)
        outs[pingpong] = tn.taylor_features(p["x"], p["w0"], p["w"], b0=p["b0"], b=p["b"], activation=activation,
                                            order=order, sign_seed=SIGN_SEED)
    assert torch.equal(outs["1"], outs["0"]), "ping-pong vs plain wgmma features"
    if n * m <= 300 * 1000:
        check_against_same_precision(make_problem(n=n, d=d, m=m, c=1, bias=True), "features", precision,
                                     activation=activation, order=order, sign_seed=SIGN_SEED)


def test_pingpong_switch_takes_0_or_1(monkeypatch):
    p = on(make_problem(n=8, d=16, m=16, c=1), "cuda", torch.bfloat16)
    monkeypatch.setenv("TAYLORNET_CUDA_PINGPONG", "yes")
    with pytest.raises(ValueError, match="TAYLORNET_CUDA_PINGPONG: expected 0 or 1, got 'yes'"):
        tn.taylor_features(p["x"], p["w0"], p["w"])


def test_overlap_switch_takes_0_or_1(monkeypatch):
    p = on(make_problem(n=8, d=16, m=16, c=1), "cuda", torch.bfloat16)
    monkeypatch.setenv("TAYLORNET_CUDA_OVERLAP", "no")
    with pytest.raises(ValueError, match="TAYLORNET_CUDA_OVERLAP: expected 0 or 1, got 'no'"):
        tn.taylor_features(p["x"], p["w0"], p["w"])


def test_tensor_copy_switch_takes_0_or_1(monkeypatch):
    p = on(make_problem(n=8, d=16, m=16, c=1), "cuda", torch.bfloat16)
    monkeypatch.setenv("TAYLORNET_CUDA_TMA", "off")
    with pytest.raises(ValueError, match="TAYLORNET_CUDA_TMA: expected 0 or 1, got 'off'"):
        tn.taylor_features(p["x"], p["w0"], p["w"])


@pytest.mark.skipif(not torch.cuda.is_available() or wgmma_device(), reason="a GPU other than compute capability 9.0")
def test_wgmma_request_off_hopper_raises(monkeypatch):
    p = on(make_problem(n=8, d=16, m=16, c=1), "cuda", torch.bfloat16)
    monkeypatch.setenv("TAYLORNET_CUDA_MAINLOOP", "wgmma")
    with pytest.raises(RuntimeError, match="TAYLORNET_CUDA_MAINLOOP=wgmma cannot run here.*compute capability"):
        tn.taylor_features(p["x"], p["w0"], p["w"])


def test_tf32_switch_selects_the_tensor_core_path_for_float32():
    p = on(make_problem(n=64, d=256, m=130, c=2), "cuda")
    args = [p[k] for k in ("x", "w0", "w", "a")]
    exact = tn.taylor_net(*args, activation="tanh", order=2)
    errs = {}
    for on_ in (False, True):
        with allow_tf32(on_):
            out = tn.taylor_net(*[t.float() for t in args], activation="tanh", order=2)
        errs[on_] = (out.double() - exact).abs().max().item() / exact.abs().max().item()
    assert errs[False] < 1e-5, f"float32 without TF32: relative error {errs[False]:.2e}"
    assert errs[True] > 4 * errs[False], f"TF32 allowed but the result has float32 accuracy: {errs}"
    assert errs[True] < 1e-2, f"TF32: relative error {errs[True]:.2e}"


def test_float16_gradients_of_a_wide_layer_do_not_underflow():
    # With scale = 1/sqrt(m) = 1/1024 and a cotangent of 1e-4, g = scale * gout a ~ 1e-7 would
    # round to zero in float16; the tensor-core kernels scale each field tile into float16's range.
    n, d, m = 64, 16, 2**20
    p = make_problem(n=n, d=d, m=m, c=0, bias=False)
    cot = [torch.full((n,), 1e-4, dtype=F64)]
    kw = {"activation": "tanh", "order": 2}
    _, r64, _ = outputs_and_grads(ref, "net", on(p, "cuda"), cot, **kw)
    _, g16, _ = outputs_and_grads(tn, "net", on(p, "cuda", torch.float16), cot, **kw)
    for k in ("x", "w0", "w"):
        err = (g16[k].double() - r64[k]).abs().max().item() / r64[k].abs().max().item()
        assert err < 2e-2, f"float16 grad {k}: relative error {err:.2e}"


@pytest.mark.parametrize("dtype", [F32, torch.bfloat16], ids=["f32", "bf16"])
def test_deterministic_algorithms_give_bitwise_identical_gradients(dtype):
    # Few sample tiles and many neuron tiles: without the flag the neuron loop is split over blocks
    # whose float atomics meet in run-dependent order.
    p = on(make_problem(n=64, d=32, m=16384, c=2, bias=True), "cuda", dtype)

    def grads():
        leaves = {k: p[k].clone().requires_grad_(True) for k in ("x", "w0", "w", "a", "b0", "b")}
        out = tn.taylor_net(*(leaves[k] for k in ("x", "w0", "w", "a", "b0", "b")), activation="tanh", order=2)
        out.square().sum().backward()
        return [out.detach()] + [leaves[k].grad for k in leaves]

    old, old_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        first, second = grads(), grads()
    finally:
        torch.use_deterministic_algorithms(old, warn_only=old_warn)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_in_kernel_signs_are_the_cpu_signs():
    # One neuron per sign, z0 = 0 and u = 1 for exp order (1,): h_r = s_r exactly.
    m = 1000
    x = torch.ones(1, 1, dtype=F64)
    w0, w = torch.zeros(m, 1, dtype=F64), torch.ones(m, 1, dtype=F64)
    for seed in [(1, 2), (3, 4, 5000), SIGN_SEED]:
        cpu = tn.taylor_features(x, w0, w, activation="exp", order=(1,), sign_seed=seed)
        gpu = tn.taylor_features(x.cuda(), w0.cuda(), w.cuda(), activation="exp", order=(1,), sign_seed=seed)
        assert torch.equal(gpu.cpu(), cpu)
        assert torch.equal(cpu[0], tn.philox_signs(m, seed, dtype=F64))


def test_module_trains_on_cuda_like_on_cpu():
    torch.manual_seed(0)
    cpu = tn.TaylorNet(8, 256, 3, order=2, sign_randomization=True, dtype=F64)
    gpu = tn.TaylorNet(8, 256, 3, order=2, sign_randomization=True, dtype=F64).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x, y = torch.randn(50, 8, dtype=F64), torch.randn(50, 3, dtype=F64)
    for model, xs, ys in ((cpu, x, y), (gpu, x.cuda(), y.cuda())):
        torch.manual_seed(1)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(3):
            opt.zero_grad()
            ((model(xs) - ys) ** 2).mean().backward()
            opt.step()
    assert_close_verbose(gpu.weight.detach().cpu(), cpu.weight.detach(), atol=1e-10, rtol=1e-9, name="weight")


HOST_OPS = ("philox_signs", "philox")  # CPU ops: the signs and the initialization's words


def _cuda_opcheck_samples():
    def to_cuda(v):
        # the sign seed stays a host tensor, as the functional API passes it
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.detach().cuda().requires_grad_(v.requires_grad)
        return v

    return [(name, op, tuple(to_cuda(v) for v in args)) for name, op, args in _opcheck_samples()
            if name not in HOST_OPS]


OPCHECK_NAMES = [s[0] for s in _opcheck_samples() if s[0] not in HOST_OPS]


@pytest.mark.parametrize("sample", range(len(OPCHECK_NAMES)), ids=OPCHECK_NAMES)
def test_opcheck_on_cuda(sample):
    name, op, args = _cuda_opcheck_samples()[sample]
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), (name, result)


def test_compiled_matches_eager_on_cuda():
    p = on(make_problem(n=40, d=16, m=96, c=2), "cuda", F32)
    f = lambda x, w0, w, a: tn.taylor_net(x, w0, w, a, activation="tanh", order=2)  # noqa: E731
    args = (p["x"], p["w0"], p["w"], p["a"])
    assert_close_verbose(torch.compile(f, fullgraph=True)(*args), f(*args), atol=1e-6, rtol=1e-5, name="compiled")


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_features_of_more_rows_than_one_grid_holds(dtype):
    # grid.y stops at 65535 sample tiles (64 rows, 32 in float64): taller inputs go in slabs.
    n = 65535 * 64 + 77
    g = torch.Generator().manual_seed(3)
    x, w0, w = (torch.randn(*shape, generator=g, dtype=dtype) for shape in ((n, 2), (3, 2), (3, 2)))
    kw = {"activation": "tanh", "order": 2, "sign_seed": SIGN_SEED}
    cpu = tn.taylor_features(x, w0, w, **kw)
    gpu = tn.taylor_features(x.cuda(), w0.cuda(), w.cuda(), **kw).cpu()
    tol = 1e-12 if dtype == F64 else 1e-5
    assert_close_verbose(gpu, cpu, atol=tol, rtol=tol, name="features")


def test_large_width_runs_without_an_n_by_m_buffer():
    n, d, m = 512, 32, 2**20
    torch.manual_seed(0)
    x = torch.randn(n, d, device="cuda")
    w0 = torch.randn(m, d, device="cuda") / d**0.5
    w = torch.zeros(m, d, device="cuda", requires_grad=True)
    a = torch.randint(0, 2, (m,), device="cuda").float() * 2 - 1
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    tn.taylor_net(x, w0, w, a).sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < n * m * 4 / 4, f"peak extra memory {extra / 2**20:.0f} MiB is of the order of an n x m buffer"


# ---- the host path ---------------------------------------------------------------------------


def _model(dtype=F32):
    torch.manual_seed(0)
    model = tn.TaylorNet(16, 300, 3, activation="gelu", order=3, train_readout=True, bias=True, dtype=dtype).cuda()
    with torch.no_grad():  # away from the initialization, where the movement is zero
        model.weight.normal_(0.0, 0.1)
        model.bias.normal_(0.0, 0.1)
    return model


def _loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


@contextlib.contextmanager
def deterministic():
    old, old_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old, warn_only=old_warn)


def test_no_op_synchronizes_with_the_host():
    # Every op, forward and backward, with explicit signs (checked on the device), a sign seed (read
    # on the host) and none, and a module's training step: torch raises on any synchronisation.
    p = on(make_problem(n=40, d=16, m=96, c=2, bias=True), "cuda", F32)
    signs = tn.philox_signs(96, (1, 2), dtype=F32, device="cuda")
    model = _model()
    x, y = torch.randn(40, 16, device="cuda"), torch.randn(40, 3, device="cuda")
    leaves = {k: p[k].detach().requires_grad_(True) for k in ("x", "w0", "w", "a", "b0", "b")}
    args = [leaves[k] for k in ("x", "w0", "w", "a", "b0", "b")]
    feature_args = args[:3] + args[4:]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        outs = [tn.taylor_features(*feature_args, activation="tanh", order=2, signs=signs),
                tn.taylor_features(*feature_args, activation="tanh", order=2, sign_seed=(3, 4)),
                tn.taylor_net(*args, activation="gelu", order=(1, 3), signs=signs),
                tn.taylor_net(*args, activation="gelu", order="exact", sign_seed=(3, 4)),
                *tn.taylor_net_moments(*args, activation="sigmoid", order=2)]
        grads = torch.autograd.grad(outs, args, [torch.ones_like(o) for o in outs])
        loss = _loss(model, x, y)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert all(torch.isfinite(g).all() for g in grads) and torch.isfinite(loss)


def test_invalid_signs_on_cuda_fail_without_a_synchronisation():
    # The +-1 check of explicit signs runs on the device (torch._assert_async); a device-side assert
    # ends the CUDA context, hence a separate process.
    code = ("import torch, taylornet as tn\n"
            "x = torch.randn(3, 2, device='cuda'); w = torch.randn(4, 2, device='cuda')\n"
            "s = torch.tensor([1.0, -1.0, 0.5, 1.0], device='cuda')\n"
            "tn.taylor_features(x, w, w, signs=s)\n"
            "torch.cuda.synchronize()\n")
    run = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0, "invalid signs went through"
    assert "signs: expected every entry to be +1 or -1" in run.stderr or "device-side assert" in run.stderr, \
        run.stderr[-2000:]


@pytest.mark.parametrize("dtype", [F32, torch.bfloat16], ids=["f32", "bf16"])
def test_cuda_graph_replays_forward_and_backward_like_eager(dtype):
    # A TaylorNet forward, loss and backward captured once, replayed on new inputs: outputs and every
    # parameter's gradient as eager computes them. Deterministic mode takes the split reductions'
    # atomics out of the comparison, so both runs are bitwise reproducible.
    with deterministic():
        model = _model(dtype)
        eager = copy.deepcopy(model)
        static_x = torch.randn(70, 16, device="cuda", dtype=dtype)
        static_y = torch.randn(70, 3, device="cuda", dtype=dtype)
        # Warm-up on a side stream, as graph capture asks: the first calls load the kernels.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                model.zero_grad(set_to_none=True)
                _loss(model, static_x, static_y).backward()
        torch.cuda.current_stream().wait_stream(side)
        model.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = model(static_x)
            static_loss = ((static_out - static_y) ** 2).mean()
            static_loss.backward()
        named = [(name, q) for name, q in model.named_parameters() if q.requires_grad]
        assert {name for name, _ in named} == {"weight", "bias", "a"}, named
        for trial in range(3):
            x = torch.randn(70, 16, device="cuda", dtype=dtype)
            y = torch.randn(70, 3, device="cuda", dtype=dtype)
            static_x.copy_(x)
            static_y.copy_(y)
            graph.replay()
            out = eager(x)
            loss = ((out - y) ** 2).mean()
            params = [p for p in eager.parameters() if p.requires_grad]
            grads = torch.autograd.grad(loss, params)
            torch.cuda.synchronize()
            assert torch.equal(static_out, out), f"trial {trial}: output differs from eager"
            assert torch.equal(static_loss, loss), f"trial {trial}: loss differs from eager"
            assert len(params) == len(named)
            for (name, q), g_eager in zip(named, grads):
                assert q.grad is not None and torch.equal(q.grad, g_eager), f"trial {trial}: grad {name} differs"


def test_training_step_under_torch_compile_reduce_overhead():
    # The training step compiled with CUDA graphs (torch.compile's "reduce-overhead"): the same losses
    # and parameters as eager, with no graph skipped.
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = _model()
    eager = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_eager = torch.optim.SGD(eager.parameters(), lr=0.1)
    step = torch.compile(lambda x, y: _loss(model, x, y), mode="reduce-overhead")
    torch.manual_seed(5)
    for k in range(6):
        x, y = torch.randn(64, 16, device="cuda"), torch.randn(64, 3, device="cuda")
        torch.compiler.cudagraph_mark_step_begin()
        loss = step(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_eager = _loss(eager, x, y)
        loss_eager.backward()
        opt_eager.step()
        opt_eager.zero_grad(set_to_none=True)
        assert_close_verbose(loss.detach().clone(), loss_eager.detach(), atol=1e-6, rtol=1e-5, name=f"loss {k}")
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        assert_close_verbose(p.detach(), q.detach(), atol=1e-6, rtol=1e-5, name=name)
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])


@pytest.mark.parametrize("precision", ["bf16", "f16"])
@pytest.mark.parametrize("op", ["features", "net", "moments"])
def test_simt_mainloop_on_request_for_16_bit_types(op, precision, monkeypatch):
    # The SIMT kernels for bfloat16 and float16, which GPUs before sm_80 run on their own.
    monkeypatch.setenv("TAYLORNET_CUDA_MAINLOOP", "simt")
    p = make_problem(n=70, d=33, m=150, c=4, bias=True)
    check_against_same_precision(p, op, precision, activation="tanh", order=2, sign_seed=SIGN_SEED)


@pytest.mark.parametrize("mainloop", TC_MAINLOOPS + ["wgmma"])
def test_mainloop_requests_that_cannot_run_raise(mainloop, monkeypatch):
    p = on(make_problem(n=8, d=4, m=16, c=2), "cuda")
    args = [p[k] for k in ("x", "w0", "w", "a")]
    monkeypatch.setenv("TAYLORNET_CUDA_MAINLOOP", mainloop)
    with pytest.raises(RuntimeError, match=f"TAYLORNET_CUDA_MAINLOOP={mainloop} cannot run here.*float64"):
        tn.taylor_net(*args)
    with allow_tf32(False), pytest.raises(RuntimeError, match="allow_tf32"):
        tn.taylor_net(*[t.float() for t in args])
    monkeypatch.setenv("TAYLORNET_CUDA_MAINLOOP", "fastest")
    with pytest.raises(ValueError, match="TAYLORNET_CUDA_MAINLOOP: expected one of auto, wgmma, mma, wmma, simt"):
        tn.taylor_net(*args)
