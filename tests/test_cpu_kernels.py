"""The CPU kernels under each instruction-set build (DEFAULT, AVX2, AVX512 where the CPU has it),
forced through taylornet.ops.cpu_capability: the fused dual-product register kernels at the edges
of their tiles (n, m, d not multiples of the register tile of kRows samples x one SIMD vector of
neurons, nor of the sample and neuron blocks; d = 0 and 1; c = 1 and c > 1), and the BLAS tile
path they hand over to (large d, many outputs), all against the float64 reference.

The full matrix of activations and orders runs in test_ops.py on the default pick; this file runs
a representative subset per build."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

import taylornet as tn
from taylornet.ops import cpu_capability, fused_max_dim

from _utils import make_problem, non_contiguous, num_threads
from test_ops import check_float32, check_float64

BUILDS = ("DEFAULT", "AVX2", "AVX512")


@pytest.fixture(params=BUILDS)
def build(request):
    best = cpu_capability()
    try:
        cpu_capability(request.param)
    except ValueError as exc:
        pytest.skip(f"{request.param} not available here: {exc}")
    try:
        yield request.param
    finally:
        cpu_capability(best)


def test_capability_switch_names_the_supported_builds():
    best = cpu_capability()
    assert best in BUILDS
    with pytest.raises(ValueError, match="expected one of"):
        cpu_capability("SSE9")
    assert cpu_capability() == best
    assert cpu_capability("DEFAULT") == "DEFAULT"
    assert cpu_capability("") == best


# (n, d, m, c): register-tile, block and panel edges of the fused kernels (kRows = 6 or 8 samples,
# 8 or 16 neurons per vector; 48-row sample blocks, 128-neuron blocks, 96-row panels).
EDGE_SHAPES = [
    (1, 0, 5, 1),       # d = 0: z0 = b0, u = b
    (7, 1, 9, 3),       # d = 1, one row past a 6-row tile, one neuron past a vector
    (13, 5, 17, 1),
    (53, 7, 131, 2),    # past a 48-row block, 131 neurons = 16 vectors + 3 on AVX2
    (101, 33, 300, 1),  # past a 96-row panel and two 128-neuron blocks
]


@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=[f"n{n}-d{d}-m{m}-c{c}" for n, d, m, c in EDGE_SHAPES])
@pytest.mark.parametrize("act,order", [("tanh", 2), ("silu", (0, 2)), ("gelu", "exact")])
def test_tile_edges(build, shape, act, order):
    n, d, m, c = shape
    p = make_problem(n=n, d=d, m=m, c=c if c > 1 else 0, seed=n + m)
    for op in ("features", "net"):
        check_float64(op, p, name=f"{build} {op}", activation=act, order=order)


@pytest.mark.parametrize("op", ["features", "net", "moments"])
def test_float32_and_threads(build, op):
    p = make_problem(n=67, d=19, m=203, c=3, seed=5)
    for threads in (1, 2):
        with num_threads(threads):
            check_float32(op, p, name=f"{build} {op} {threads} threads", activation="tanh", order=2,
                          **({} if op == "moments" else {}))


@pytest.fixture
def fused_limit():
    """Sets taylornet.ops.fused_max_dim for one test and restores each build's default after it."""
    try:
        yield fused_max_dim
    finally:
        fused_max_dim("auto")


@pytest.mark.parametrize("shape", [(9, 520, 37, 1), (11, 6, 29, 20)], ids=["large-d", "many-outputs"])
def test_blas_path(build, fused_limit, shape):
    """Where the fused kernels hand over to BLAS tiles: d above their limit, more outputs than
    they contract in registers."""
    n, d, m, c = shape
    fused_limit(512)
    p = make_problem(n=n, d=d, m=m, c=c if c > 1 else 0, seed=3)
    for op in ("features", "net"):
        check_float64(op, p, name=f"{build} {op}", activation="silu", order=2)


def test_fused_max_dim_chooses_the_path(build, fused_limit):
    """The limit moves d = 520 between the BLAS tile path and the fused kernels: both against the
    float64 reference, and (float32, builds with fused kernels) their sums rounded differently."""
    p = make_problem(n=9, d=520, m=37, c=0, seed=4)
    got = {}
    for limit in (0, 520):
        assert fused_limit(limit) == (0 if build == "DEFAULT" else limit)
        check_float64("features", p, name=f"{build} limit {limit}", activation="tanh", order=2)
        x, w0, w = (p[k].float() for k in ("x", "w0", "w"))
        got[limit] = tn.taylor_features(x, w0, w, order=2)
    if build == "DEFAULT":
        assert torch.equal(got[0], got[520])
    else:
        assert not torch.equal(got[0], got[520])


# (n, d, m): the fused ops pack the weights a chunk of neurons (about 2 MiB of them) at a time:
# several chunks, the last one partial, with few samples (neurons split among the threads) and with
# many (samples split), and at d < 16, where the features' backward recomputes the products.
CHUNK_SHAPES = [(9, 520, 2100), (300, 300, 4500), (7, 9, 40000)]


@pytest.mark.parametrize("shape", CHUNK_SHAPES, ids=[f"n{n}-d{d}-m{m}" for n, d, m in CHUNK_SHAPES])
def test_fused_ops_over_several_weight_chunks(build, fused_limit, shape):
    """Every d on the fused kernels; the features and the net, and all their gradients (for the
    features through the training forward that keeps dh/du and dh/dz0 from d = 16), against the
    float64 reference, in float64 and float32."""
    n, d, m = shape
    fused_limit(1 << 20)
    p = make_problem(n=n, d=d, m=m, c=3, seed=m)
    for op in ("features", "net"):
        check_float64(op, p, name=f"{build} {op} chunks", activation="silu", order=(0, 2))
        check_float32(op, p, name=f"{build} {op} chunks", activation="tanh", order=2)
    # The forward without gradients, and the one keeping dh/du alone (W trained), with signs.
    x, w0, w, b0, b = (p[k] for k in ("x", "w0", "w", "b0", "b"))
    kw = dict(activation="tanh", order=2)
    signs = tn.philox_signs(m, (7, 1), dtype=torch.float64)
    w_ref = w.detach().requires_grad_()
    want = tn.reference.taylor_features(x, w0, w_ref, b0, b, signs=signs, **kw)
    cot = torch.randn_like(want)
    (want_dw,) = torch.autograd.grad(want, w_ref, cot)
    with torch.no_grad():
        got = tn.taylor_features(x, w0, w, b0, b, sign_seed=(7, 1), **kw)
    torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-12)
    w_tn = w.detach().requires_grad_()
    got = tn.taylor_features(x, w0, w_tn, b0, b, sign_seed=(7, 1), **kw)
    (got_dw,) = torch.autograd.grad(got, w_tn, cot)
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_dw, want_dw, rtol=1e-9, atol=1e-10)


def test_fused_max_dim_setting(fused_limit):
    best = cpu_capability()
    default = fused_limit()
    assert default == {"AVX512": default, "AVX2": 512, "DEFAULT": 0}[best]
    if best == "AVX512":
        assert default in (512, sys.maxsize)
    assert fused_limit(100) == (0 if best == "DEFAULT" else 100)
    assert fused_limit() == (0 if best == "DEFAULT" else 100)
    assert fused_limit("auto") == default
    with pytest.raises(ValueError, match="limit: expected a dimension"):
        fused_limit(-1)
    for bad in (True, 1.5, "512"):
        with pytest.raises(TypeError, match="limit: expected an int"):
            fused_limit(bad)
    assert fused_limit() == default


def test_fused_max_dim_from_the_environment():
    code = "from taylornet.ops import fused_max_dim, cpu_capability; print(cpu_capability(), fused_max_dim())"
    env = {**os.environ, "TAYLORNET_FUSED_MAX_DIM": "77"}
    out = subprocess.run([sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True, check=True)
    build, limit = out.stdout.split()
    assert int(limit) == (0 if build == "DEFAULT" else 77)
    env["TAYLORNET_FUSED_MAX_DIM"] = "many"
    code = ("import torch, taylornet as tn\n"
            "try:\n    tn.taylor_features(torch.randn(2, 3), torch.randn(4, 3), torch.randn(4, 3))\n"
            "except ValueError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "TAYLORNET_FUSED_MAX_DIM: expected 'auto' or an integer d >= 0, got 'many'" in out.stdout


def test_sign_seed_under_each_build(build):
    p = make_problem(n=23, d=4, m=45, c=0, seed=9)
    seed = (12345, 678)
    got = tn.taylor_features(p["x"], p["w0"], p["w"], p["b0"], p["b"], order=3, sign_seed=seed)
    want = tn.reference.taylor_features(p["x"], p["w0"], p["w"], p["b0"], p["b"], order=3,
                                        signs=tn.philox_signs(45, seed, dtype=torch.float64))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


# ---- the forward that keeps dh/du and dh/dz0 for the backward (CPU training at d >= 16) -----------

SAVE_D = 130  # >= functional.KEEP_DERIVATIVES_MIN_DIM, not a multiple of any tile


def test_keeping_derivatives_is_taken_for_large_d():
    from taylornet.functional import KEEP_DERIVATIVES_MIN_DIM, _keeps_derivatives

    assert SAVE_D >= KEEP_DERIVATIVES_MIN_DIM
    p = make_problem(n=3, d=SAVE_D, m=5, c=0)
    w = p["w"].clone().requires_grad_()
    assert _keeps_derivatives(p["x"], p["w0"], w, None, None)
    assert not _keeps_derivatives(p["x"], p["w0"], p["w"], None, None)  # nothing requires grad
    with torch.no_grad():
        assert not _keeps_derivatives(p["x"], p["w0"], w, None, None)


@pytest.mark.parametrize("wrt", ["w", "w,b", "x,w0,w,b0,b"])
@pytest.mark.parametrize("act,order", [("silu", 2), ("tanh", (1, 3)), ("gelu", "exact")])
def test_kept_derivatives_match_the_reference(build, wrt, act, order):
    p = make_problem(n=41, d=SAVE_D, m=37, c=0, seed=2)
    names = wrt.split(",")
    leaves = {k: (v.clone().requires_grad_(k in names) if v is not None else None) for k, v in p.items()}
    signs = torch.where(torch.arange(37) % 3 == 0, -1.0, 1.0).double()
    args = [leaves[k] for k in ("x", "w0", "w", "b0", "b")]
    h = tn.taylor_features(*args, activation=act, order=order, signs=signs)
    r = tn.reference.taylor_features(*args, activation=act, order=order, signs=signs)
    torch.testing.assert_close(h, r, rtol=1e-9, atol=1e-10)
    cot = torch.randn(h.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    inputs = [leaves[k] for k in names]
    got = torch.autograd.grad(h, inputs, cot)
    want = torch.autograd.grad(r, inputs, cot)
    for k, g1, g2 in zip(names, got, want):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-10, msg=f"grad {k}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("d", [1, 23, 37, 64, 200, 257])
@pytest.mark.parametrize("bias", [False, True])
def test_kept_derivatives_weight_gradient_alone(build, d, bias, dtype):
    """dW (and db) alone from the kept dh/du, what training a layer on fixed inputs asks for: the
    fused kernel up to d = 256 (lanes along d, so d = 23, 37, 200 and 257 leave partial vectors),
    BLAS above. Its register tiles are 12 / NV neurons x NV vectors of d: d = 1 ... 64 take NV = 1 ... 4
    on AVX-512 and AVX2 between them, d = 37 on AVX2 splits into 4 + 1 vectors. n = 300 and m = 200
    leave partial blocks of samples, of neurons and of the tiles; with two threads the workers' shares
    are 144 neurons (blocks of 96 and 48) and 56 (one partial block)."""
    n, m = 300, 200
    g = torch.Generator().manual_seed(d)
    x = torch.randn(d, n, generator=g, dtype=torch.float64).t()  # not contiguous
    w0 = torch.randn(m, d, generator=g, dtype=torch.float64) / d**0.5
    w = (0.3 * torch.randn(m, d, generator=g, dtype=torch.float64)).requires_grad_()
    b = (0.1 * torch.randn(m, generator=g, dtype=torch.float64)).requires_grad_() if bias else None
    cot = torch.randn(n, m, generator=g, dtype=torch.float64)
    inputs = [w] + ([b] if bias else [])
    ops = torch.ops.taylornet
    want = torch.autograd.grad(tn.reference.taylor_features(x, w0, w, None, b, activation="silu", order=2), inputs,
                               cot)
    xc, w0c, wc, bc = (t.detach().to(dtype) if t is not None else None for t in (x, w0, w, b))
    h, du, dz = ops.features_saving(xc, w0c, wc, None, bc, None, None, "silu", [0, 1, 2], False, False)
    needs = [False, False, True, False, bias]
    got = ops.features_backward_saved(cot.to(dtype), du, dz, xc, w0c, wc, False, bias, needs)
    assert got[0].numel() == 0 and got[1].numel() == 0 and got[3].numel() == 0
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)
    torch.testing.assert_close(got[2].double(), want[0], **tol, msg="dW")
    if bias:
        torch.testing.assert_close(got[4].double(), want[1], **tol, msg="db")
    else:
        assert got[4].numel() == 0


def test_saved_backward_switch(monkeypatch):
    """TAYLORNET_SAVED_BACKWARD=blas (read at each call) computes dW alone with BLAS products instead
    of the register kernel: the same gradient; another value raises, naming the variable."""
    p = make_problem(n=50, d=40, m=70, c=0, seed=5, dtype=torch.float32)
    ops = torch.ops.taylornet
    h, du, dz = ops.features_saving(p["x"], p["w0"], p["w"], None, None, None, None, "silu", [0, 1, 2], False, False)
    cot = torch.randn(h.shape, generator=torch.Generator().manual_seed(6))
    needs = [False, False, True, False, False]
    got = {}
    for path in ("auto", "blas"):
        monkeypatch.setenv("TAYLORNET_SAVED_BACKWARD", path)
        got[path] = ops.features_backward_saved(cot, du, dz, p["x"], p["w0"], p["w"], False, False, needs)[2]
    torch.testing.assert_close(got["auto"], got["blas"], rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("TAYLORNET_SAVED_BACKWARD", "fast")
    with pytest.raises(ValueError, match="TAYLORNET_SAVED_BACKWARD"):
        ops.features_backward_saved(cot, du, dz, p["x"], p["w0"], p["w"], False, False, needs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [64, 72, 203])
def test_saved_stores_switch(build, monkeypatch, dtype, m):
    """The training forward streams the kept dh/du and dh/dz0 past the caches (auto, the default, or
    streamed; read at each call) in whole aligned cache lines, on AVX2 the two groups of a line
    together, or with TAYLORNET_SAVED_STORES=cached writes them like h: the same numbers every way.
    m = 72 ends the rows with a lone group and m = 203 leaves them unaligned and a partial group, both
    written the ordinary way. Another value raises, naming the variable."""
    p = make_problem(n=37, d=24, m=m, c=0, seed=7, dtype=dtype)
    ops = torch.ops.taylornet
    got = {}
    for mode in ("auto", "cached", "streamed"):
        monkeypatch.setenv("TAYLORNET_SAVED_STORES", mode)
        got[mode] = ops.features_saving(p["x"], p["w0"], p["w"], None, None, None, None, "silu", [0, 1, 2], False, True)
    for mode in ("cached", "streamed"):
        for a, b in zip(got["auto"], got[mode]):
            assert torch.equal(a, b)
    want = ops.features(p["x"], p["w0"], p["w"], None, None, None, None, "silu", [0, 1, 2], False)
    torch.testing.assert_close(got["auto"][0], want, rtol=0, atol=0)
    monkeypatch.setenv("TAYLORNET_SAVED_STORES", "nt")
    with pytest.raises(ValueError, match="TAYLORNET_SAVED_STORES"):
        ops.features_saving(p["x"], p["w0"], p["w"], None, None, None, None, "silu", [0, 1, 2], False, True)


def _features_step(p, w):
    h = tn.taylor_features(p["x"], p["w0"], w, p["b0"], p["b"], activation="tanh", order=2)
    return h, torch.autograd.grad(h, w, torch.ones_like(h))[0]


def test_kept_derivatives_reuse_released_buffers():
    from taylornet.ops import saved_cache

    held, limit = saved_cache()
    try:
        saved_cache(0)
        saved_cache(1 << 30)
        n, m = 53, 47
        size = n * m * 8
        first = make_problem(n=n, d=SAVE_D, m=m, c=0, seed=21)
        _features_step(first, first["w"].clone().requires_grad_())
        # dh/du, released by the backward, and h, released by the caller, are held
        assert saved_cache()[0] == 2 * size
        # The next forward of the same size takes both buffers (and writes all of them: the
        # gradients of a different problem are exact).
        second = make_problem(n=n, d=SAVE_D, m=m, c=0, seed=22)
        w = second["w"].clone().requires_grad_()
        h = tn.taylor_features(second["x"], second["w0"], w, second["b0"], second["b"], activation="tanh", order=2)
        assert saved_cache()[0] == 0
        (got,) = torch.autograd.grad(h, w, torch.ones_like(h))
        wr = second["w"].clone().requires_grad_()
        r = tn.reference.taylor_features(second["x"], second["w0"], wr, second["b0"], second["b"],
                                         activation="tanh", order=2)
        (want,) = torch.autograd.grad(r, wr, torch.ones_like(r))
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        assert saved_cache()[0] == size
        del h
        assert saved_cache()[0] == 2 * size
        # A limit of 0 frees what is held and keeps nothing; the results do not change.
        assert saved_cache(0) == (0, 0)
        _, again = _features_step(second, second["w"].clone().requires_grad_())
        torch.testing.assert_close(again, want, rtol=1e-10, atol=1e-12)
        assert saved_cache()[0] == 0
        # Room for one buffer: a newly released one of another size replaces the one held.
        saved_cache(size)
        _features_step(first, first["w"].clone().requires_grad_())
        assert saved_cache()[0] == size
        small = make_problem(n=n - 10, d=SAVE_D, m=m, c=0, seed=23)
        _features_step(small, small["w"].clone().requires_grad_())
        assert saved_cache()[0] == (n - 10) * m * 8
    finally:
        saved_cache(0)
        saved_cache(limit)


@pytest.mark.parametrize("d", [3, SAVE_D], ids=["recomputing", "keeping"])
def test_features_output_buffers_are_recycled_safely(d):
    """The forward's output comes from the recycled buffers: a released one is taken again and fully
    overwritten, one still alive never is, and the tensor behaves like any other (resizing,
    shared memory)."""
    from taylornet.ops import saved_cache

    _, limit = saved_cache()
    n, m = 29, 61
    a, b = (make_problem(n=n, d=d, m=m, c=0, seed=s) for s in (31, 32))

    def forward(p, grad):
        with torch.set_grad_enabled(grad):
            w = p["w"].clone().requires_grad_(grad)
            return tn.taylor_features(p["x"], p["w0"], w, p["b0"], p["b"], activation="silu", order=2)

    def want(p):
        return tn.reference.taylor_features(p["x"], p["w0"], p["w"], p["b0"], p["b"], activation="silu", order=2)

    try:
        saved_cache(0)
        saved_cache(1 << 30)
        for grad in (False, True):
            h = forward(a, grad)
            address = h.data_ptr()
            del h  # with grad, its kept dh/du too
            held_before = saved_cache()[0]
            again = forward(b, grad)  # in released buffers (a's output's without grad)
            assert saved_cache()[0] == held_before - (1 + (grad and d == SAVE_D)) * n * m * 8
            if not grad:
                assert again.data_ptr() == address
            torch.testing.assert_close(again, want(b), rtol=1e-12, atol=1e-12)
            alive = forward(a, grad)  # `again` is alive: another buffer
            assert alive.data_ptr() != again.data_ptr()
            torch.testing.assert_close(alive, want(a), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(again, want(b), rtol=1e-12, atol=1e-12)
            del again, alive
        # Growing the output moves it to ordinary memory with its values, and hands the buffer back.
        h = forward(a, False).detach()
        before = saved_cache()[0]
        h.resize_(n + 5, m)
        assert saved_cache()[0] == before + n * m * 8
        torch.testing.assert_close(h[:n], want(a), rtol=1e-12, atol=1e-12)
        del h
        shared = forward(b, False).share_memory_()
        assert shared.is_shared()
        torch.testing.assert_close(shared, want(b), rtol=1e-12, atol=1e-12)
    finally:
        saved_cache(0)
        saved_cache(limit)


def test_saved_cache_rejects_bad_limits():
    from taylornet.ops import saved_cache

    with pytest.raises(ValueError, match="limit_bytes"):
        saved_cache(-1)
    with pytest.raises(TypeError, match="limit_bytes"):
        saved_cache(True)
    with pytest.raises(TypeError, match="limit_bytes"):
        saved_cache(1.5)


@pytest.mark.parametrize("value,ok", [("3", True), ("lots", False), ("-1", False)])
def test_saved_cache_limit_from_the_environment(value, ok):
    import os
    import subprocess
    import sys

    code = ("import taylornet as tn, torch\n"
            "print(tn.ops.saved_cache()[1])\n")
    run = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TAYLORNET_SAVED_CACHE_MB": value})
    if ok:
        assert run.returncode == 0, run.stderr
        assert int(run.stdout.split()[-1]) == 3 << 20
    else:
        assert run.returncode != 0
        assert "TAYLORNET_SAVED_CACHE_MB: expected a number of MiB" in run.stderr


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("d,m", [(64, 1300), (23, 3000)])
def test_kept_derivatives_weight_gradient_over_several_chunks(build, dtype, d, m):
    """The dW-alone kernel sweeps each worker's share of neurons in chunks whose dW rows fill
    128 KiB (blocks of 96 neurons, all samples of a chunk before the next chunk): d = 64 makes
    chunks of 480 neurons in float32 and 192 in float64; d = 23, its rows padded to whole vectors,
    1344 and 672 on AVX2, 960 and 672 on AVX-512. Shares of about 650 or 1500 neurons (two
    workers) or all of m (one) then take several chunks, the last a partial one, mostly ending in
    a partial block; n = 300 leaves a partial block of samples. dW and db against the float64
    reference, and bitwise equal to themselves over repeated calls."""
    n = 300
    g = torch.Generator().manual_seed(m + d)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w0 = torch.randn(m, d, generator=g, dtype=torch.float64) / d**0.5
    w = (0.3 * torch.randn(m, d, generator=g, dtype=torch.float64) / d**0.5).requires_grad_()
    b = (0.1 * torch.randn(m, generator=g, dtype=torch.float64)).requires_grad_()
    cot = torch.randn(n, m, generator=g, dtype=torch.float64)
    want = torch.autograd.grad(tn.reference.taylor_features(x, w0, w, None, b, activation="silu", order=2),
                               [w, b], cot)
    xc, w0c, wc, bc = (t.detach().to(dtype) for t in (x, w0, w, b))
    ops = torch.ops.taylornet
    h, du, dz = ops.features_saving(xc, w0c, wc, None, bc, None, None, "silu", [0, 1, 2], False, False)
    needs = [False, False, True, False, True]
    got = ops.features_backward_saved(cot.to(dtype), du, dz, xc, w0c, wc, False, True, needs)
    again = ops.features_backward_saved(cot.to(dtype), du, dz, xc, w0c, wc, False, True, needs)
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)
    torch.testing.assert_close(got[2].double(), want[0], **tol, msg="dW")
    torch.testing.assert_close(got[4].double(), want[1], **tol, msg="db")
    assert torch.equal(got[2], again[2]) and torch.equal(got[4], again[4])


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("n,m,wrt", [(1031, 290, "x,w0,w,b0,b"), (300, 1031, "x,w0,w,b0,b"), (1031, 290, "w,b")])
def test_kept_derivatives_over_several_blocks(build, n, m, wrt, layout):
    """The saved backward walks G in blocks of at most a quarter of the samples or of the neurons.
    Blocks of samples where dx costs more to accumulate
    than the weight gradients (n = 1031, m = 290, every gradient: 3 x 258 + 257 rows); blocks of
    neurons otherwise, with dx accumulated over them (n = 300, m = 1031: 3 x 258 + 257 neurons) or
    without dx. "strided": x, w0 and w in transposed storage, b0 and b strided slices."""
    p = make_problem(n=n, d=SAVE_D, m=m, c=0, seed=5)
    if layout == "strided":
        p = {k: non_contiguous(v, "transpose" if v.dim() == 2 else "slice") if v is not None else None
             for k, v in p.items()}
    names = wrt.split(",")
    leaves = {k: p[k].detach().requires_grad_(k in names) for k in ("x", "w0", "w", "b0", "b")}  # views kept
    args = [leaves[k] for k in ("x", "w0", "w", "b0", "b")]
    assert all(not a.is_contiguous() for a in args) or layout == "contiguous"
    h = tn.taylor_features(*args, activation="silu", order=2)
    r = tn.reference.taylor_features(*args, activation="silu", order=2)
    cot = torch.randn(h.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    inputs = [leaves[k] for k in names]
    got = torch.autograd.grad(h, inputs, cot)
    want = torch.autograd.grad(r, inputs, cot)
    for k, g1, g2 in zip(names, got, want):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-9, msg=f"grad {k}")


def test_kept_derivatives_of_an_empty_batch_are_zero(build):
    p = make_problem(n=1, d=SAVE_D, m=7, c=0, seed=3)
    names = ("x", "w0", "w", "b0", "b")
    leaves = {k: (torch.zeros(0, SAVE_D, dtype=torch.float64) if k == "x" else p[k]).clone().requires_grad_()
              for k in names}
    h = tn.taylor_features(*(leaves[k] for k in names), activation="silu", order=2)
    assert h.shape == (0, 7)
    h.sum().backward()
    for k in names:
        assert leaves[k].grad.shape == leaves[k].shape and bool((leaves[k].grad == 0).all()), k


def test_kept_derivatives_gradcheck_and_opcheck():
    p = make_problem(n=4, d=SAVE_D, m=6, c=0, seed=7)
    leaves = [p[k].clone().requires_grad_() for k in ("x", "w0", "w", "b0", "b")]
    assert torch.autograd.gradcheck(lambda *a: tn.taylor_features(*a, activation="silu", order=2), leaves)
    ops = torch.ops.taylornet
    x, w0, w, b0, b = (p[k] for k in ("x", "w0", "w", "b0", "b"))
    for need_dz in (False, True):
        torch.library.opcheck(ops.features_saving, (x, w0, w, b0, b, None, None, "silu", [0, 1, 2], False, need_dz))
    h, du, dz = ops.features_saving(x, w0, w, b0, b, None, None, "silu", [0, 1, 2], False, True)
    grad = torch.randn_like(h)
    torch.library.opcheck(ops.features_backward_saved, (grad, du, dz, x, w0, w, True, True, [True] * 5))
    with pytest.raises(ValueError, match="dz"):
        ops.features_backward_saved(grad, du, torch.empty(0, dtype=du.dtype), x, w0, w, True, True, [True] * 5)


def test_kept_derivatives_under_compile():
    p = make_problem(n=9, d=SAVE_D, m=11, c=0, seed=8, dtype=torch.float32)
    w = p["w"].clone().requires_grad_()
    f = torch.compile(lambda x, w0, w: tn.taylor_features(x, w0, w, activation="silu", order=2), fullgraph=True)
    got = torch.autograd.grad(f(p["x"], p["w0"], w).sum(), w)[0]
    want = torch.autograd.grad(tn.reference.taylor_features(p["x"], p["w0"], w, activation="silu", order=2).sum(), w)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# ---- the epilogue specialised per series (float32 in the fused kernels) against the plan-driven one ----

# The series of specialised.h's kSpecialised; a series outside it (tanh order 3) takes the plan's
# tables under either setting, and checks the setting changes nothing there.
SPECIALISED = [("tanh", 1), ("tanh", (0, 1)), ("tanh", 2), ("tanh", (2,)), ("tanh", (0, 2)), ("tanh", "exact"),
               ("gelu", 2), ("relu", 1), ("silu", 2), ("tanh", 3)]


@pytest.mark.parametrize("act,order", SPECIALISED, ids=[f"{a}-{o}" for a, o in SPECIALISED])
def test_specialised_epilogue_matches_generic(build, monkeypatch, act, order):
    """Every fused kernel with the series' specialised epilogue against the plan-driven one: the
    features (also the forward that keeps dh/du, alone or with dh/dz0, taken here at d = 7) and the net."""
    import taylornet.functional

    p = make_problem(n=53, d=7, m=131, c=2, seed=11)
    names = ("x", "w0", "w", "b0", "b")
    for op in ("features", "features kept", "net"):
        monkeypatch.setattr(taylornet.functional, "KEEP_DERIVATIVES_MIN_DIM", 1 if op == "features kept" else 10**9)
        got = {}
        for setting in ("auto", "generic"):
            monkeypatch.setenv("TAYLORNET_CPU_EPILOGUE", setting)
            check_float32(op.split()[0], p, name=f"{build} {op} {setting}", activation=act, order=order,
                          sign_mode="tensor")
            p32 = {k: (v.float().clone().requires_grad_(k != "a") if v is not None else None) for k, v in p.items()}
            signs = torch.where(torch.arange(131) % 3 == 0, -1.0, 1.0)
            args = [p32[k] for k in ("x", "w0", "w")]
            if op == "net":
                out = tn.taylor_net(*args, p32["a"], p32["b0"], p32["b"], activation=act, order=order, signs=signs)
            else:
                out = tn.taylor_features(*args, p32["b0"], p32["b"], activation=act, order=order, signs=signs)
            cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
            grads = torch.autograd.grad(out, [p32[k] for k in names], cot)
            got[setting] = (out.detach(), *grads)
            if op == "features kept":  # dW alone: the forward keeps dh/du only
                w = p32["w"].detach().requires_grad_()
                out = tn.taylor_features(p32["x"].detach(), p32["w0"].detach(), w, p32["b0"].detach(),
                                         p32["b"].detach(), activation=act, order=order, signs=signs)
                got[setting] += torch.autograd.grad(out, [w], cot)
        for k, (a, g) in enumerate(zip(got["auto"], got["generic"])):
            torch.testing.assert_close(a, g, rtol=2e-5, atol=2e-5 * float(g.abs().max()),
                                       msg=f"{build} {op} {act} {order}: specialised vs generic, output {k}")


def test_cpu_epilogue_setting_is_checked(monkeypatch):
    p = make_problem(n=3, d=2, m=4, c=0)
    monkeypatch.setenv("TAYLORNET_CPU_EPILOGUE", "fastest")
    with pytest.raises(ValueError, match="TAYLORNET_CPU_EPILOGUE: expected auto or generic, got 'fastest'"):
        tn.taylor_features(p["x"].float(), p["w0"].float(), p["w"].float(), order=2)


# ---- the float32 transcendental functions of the epilogue (tanh and sech^2, the sigmoid pair) ----

def _unit_features(z, activation, order):
    """h = c_order(z) for each z: one input dimension, z0 = z, u = 1 through the bias b."""
    x = z[:, None].contiguous()
    return tn.taylor_features(x, torch.ones(1, 1), torch.zeros(1, 1), None, torch.ones(1), activation=activation,
                              order=(order,))[:, 0].double()


def test_float32_transcendentals_are_accurate_to_a_few_ulp(build):
    """tanh, sech^2, silu, silu', gelu and gelu' of the float32 kernels over (-20, 20) and |z| up to
    80 on a log scale, against float64: within 8 ulp of the result (silu', gelu': of the sum of
    their terms' magnitudes, as they cross zero; gelu besides z^2 ulp, what rounding -z / sqrt(2)
    (and 1 / sqrt(2)) to float32 costs Phi(z) = erfc(-z / sqrt(2)) / 2 in its lower tail, where
    d log Phi / dz is about -z), and exactly saturated far out."""
    grid = torch.cat([torch.linspace(-20, 20, 100001, dtype=torch.float64),
                      torch.logspace(-30, 1.9, 50001, dtype=torch.float64)])
    z = torch.cat([grid, -grid]).float()
    zd = z.double()
    p, q = torch.sigmoid(zd), torch.sigmoid(-zd)
    sech2 = torch.cosh(zd) ** -2
    Phi, phi = torch.special.erfc(-zd / math.sqrt(2)) / 2, torch.exp(-zd**2 / 2) / math.sqrt(2 * math.pi)
    cases = [("tanh", 0, torch.tanh(zd), torch.tanh(zd).abs()), ("tanh", 1, sech2, sech2),
             ("silu", 0, zd * p, (zd * p).abs()), ("silu", 1, p * (1 + zd * q), p + (zd * p * q).abs()),
             ("gelu", 0, zd * Phi, (zd * Phi).abs()), ("gelu", 1, Phi + zd * phi, Phi + (zd * phi).abs())]
    ulp = torch.finfo(torch.float32).eps
    for activation, order, want, scale in cases:
        got = _unit_features(z, activation, order)
        keep = scale > 1e-30  # below, float32's subnormals
        slack = zd**2 if activation == "gelu" else torch.zeros_like(zd)
        err = ((got - want).abs() / (scale * ulp) - slack)[keep]
        worst = int(torch.argmax(err))
        assert float(err.max()) <= 8, (f"{build} {activation} order {order}: {float(err.max()):.1f} ulp beyond the "
                                       f"allowance at z = {float(z[keep][worst])}")
    far = torch.tensor([60.0, 100.0, 1e10, 1e30])  # sech^2 = 4 e^{-2|z|} below float32's range
    z = torch.cat([far, -far])
    assert _unit_features(z, "tanh", 0).tolist() == [1.0] * 4 + [-1.0] * 4  # (x = inf would make u = inf * 0)
    assert _unit_features(z, "tanh", 1).tolist() == [0.0] * 8
    assert _unit_features(far[:3], "silu", 1).tolist() == [1.0] * 3  # sigmoid(z) exactly 1
    assert _unit_features(z, "gelu", 0).tolist() == far.tolist() + [0.0] * 4  # Phi(z) exactly 1 and 0
    nan = _unit_features(torch.tensor([float("nan")]), "tanh", 0)
    assert torch.isnan(nan).all()
