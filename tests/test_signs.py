"""Neuron signs: Philox4x32-10 known answers, the documented mapping from (seed, offset, neuron) to a
sign, the signs the kernels draw internally, their statistics, and the sign moments of the network
against many independent draws."""
from __future__ import annotations

import math

import pytest
import torch

import taylornet as tn

from _utils import assert_close_verbose, make_problem, num_threads, slow_except

MASK32 = 0xFFFFFFFF
F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# A pure-Python Philox4x32-10 (Salmon et al., SC'11; Random123), written from the paper.

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def philox4x32_10(ctr, key):
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(10):
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32)
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


# Random123's kat_vectors for philox4x32_10.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK32,) * 4, (MASK32, MASK32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_python_philox_known_answers(ctr, key, expected):
    assert philox4x32_10(ctr, key) == expected


def python_signs(m: int, seed: int, offset: int) -> torch.Tensor:
    """The mapping of csrc/taylornet/philox.h: neuron r takes block r >> 7 as the counter
    (lo32, hi32 of block, lo32, hi32 of offset) under the key (lo32, hi32 of seed), and bit r & 127
    of the 128 output bits (word bit >> 5, bit bit & 31); a set bit means -1."""
    seed, offset = seed % 2**64, offset % 2**64
    key = (seed & MASK32, seed >> 32)
    out = []
    words = None
    for r in range(m):
        block = r >> 7
        if r & 127 == 0:
            words = philox4x32_10((block & MASK32, block >> 32, offset & MASK32, offset >> 32), key)
        bit = r & 127
        out.append(-1.0 if (words[bit >> 5] >> (bit & 31)) & 1 else 1.0)
    return torch.tensor(out, dtype=torch.float32)


def bits_of(signs: torch.Tensor, block: int = 0):
    """The four 32-bit words that produced neurons 128 * block ... 128 * block + 127."""
    s = signs[128 * block: 128 * (block + 1)]
    words = []
    for w in range(4):
        v = 0
        for b in range(32):
            if s[32 * w + b] < 0:
                v |= 1 << b
        words.append(v)
    return tuple(words)


def test_compiled_philox_known_answer():
    """Block 0 of (seed 0, offset 0) is exactly Philox(ctr = 0, key = 0): the first KAT vector."""
    signs = tn.philox_signs(128, (0, 0))
    assert bits_of(signs) == KAT[0][2]


SEEDS = [
    (0, 0), (1, 0), (0, 1), (12345, 0), (-1, 0), (-(2**63), 0), (2**63 - 1, 2**63 - 1),
    (7, 2**32), (7, 2**32 + 1), (2**32, 0), (2**32 + 5, 3), (-987654321987, -5), (3, 2**62 + 11),
    (0x243F6A8885A308D3, 0x13198A2E03707344),
]


@pytest.mark.parametrize("seed,offset", SEEDS)
def test_signs_follow_the_documented_mapping(seed, offset):
    m = 300  # three blocks, the last partial
    want = python_signs(m, seed, offset)
    got = tn.philox_signs(m, (seed, offset))
    assert got.dtype == torch.float32 and got.shape == (m,)
    mismatch = (got != want).nonzero().flatten().tolist()
    assert not mismatch, f"neurons {mismatch[:10]} differ from the documented Philox mapping"
    # a prefix of the neurons does not depend on m
    assert torch.equal(tn.philox_signs(77, (seed, offset)), want[:77])


def test_sign_seed_forms():
    """int seed means (seed, 0); ints reduce mod 2^64 to int64; an int64 tensor works the same."""
    assert torch.equal(tn.philox_signs(200, 5), tn.philox_signs(200, (5, 0)))
    assert torch.equal(tn.philox_signs(200, (2**64 - 1, 2**64 + 3)), tn.philox_signs(200, (-1, 3)))
    assert torch.equal(tn.philox_signs(200, torch.tensor([-1, 3])), tn.philox_signs(200, (-1, 3)))
    assert torch.equal(tn.philox_signs(200, [4, 9]), python_signs(200, 4, 9))
    assert tn.philox_signs(0, 3).shape == (0,)
    s = tn.philox_signs(10, 3, dtype=F64)
    assert s.dtype == F64 and torch.equal(s, python_signs(10, 3, 0).double())


def test_high_blocks_use_the_high_counter_word():
    """Neurons far beyond 2^32 * 128 are out of reach, but block numbers above 2^7 exercise the
    low counter word and the mapping across many blocks."""
    m = 128 * 300 + 5
    got = tn.philox_signs(m, (99, 2**33 + 1))
    for block in (0, 1, 2, 255, 256, 299):
        words = philox4x32_10((block, 0, 1, 2), (99, 0))
        assert bits_of(got, block) == words, f"block {block}"


@pytest.mark.parametrize("first", [0, 1, 127, 128, 129, 1000, 2**40 + 3])
def test_first_neuron_index_selects_a_slice_of_the_layer(first):
    """(seed, offset, first): neurons first ... first + m - 1 of the layer drawn with (seed, offset)."""
    seed, offset, m = -12, 2**35 + 9, 300
    got = tn.philox_signs(m, (seed, offset, first))
    if first < 5000:
        want = python_signs(first + m, seed, offset)[first:]
    else:  # compute only the blocks needed
        want = torch.tensor([_python_sign(seed, offset, first + r) for r in range(m)])
    assert torch.equal(got, want)
    assert torch.equal(tn.philox_signs(m, torch.tensor([seed, offset, first])), want)
    if first == 0:
        assert torch.equal(got, tn.philox_signs(m, (seed, offset)))


def _python_sign(seed, offset, r):
    seed, offset = seed % 2**64, offset % 2**64
    block, bit = r >> 7, r & 127
    words = philox4x32_10((block & MASK32, block >> 32, offset & MASK32, offset >> 32), (seed & MASK32, seed >> 32))
    return -1.0 if (words[bit >> 5] >> (bit & 31)) & 1 else 1.0


@pytest.mark.parametrize("op", ["features", "net"])
@pytest.mark.parametrize("lo,hi", [(0, 300), (100, 700), (513, 1100), (1000, 1100)])
def test_slices_of_neurons_draw_the_layers_signs(op, lo, hi):
    """The kernels with (seed, offset, lo) on neurons [lo, hi) equal the whole layer's neurons [lo, hi)."""
    m = 1100
    p = make_problem(n=7, d=4, m=m, c=2, seed=4)
    seed = (31, 4)
    sl = slice(lo, hi)
    kw = {"activation": "tanh", "order": 3}
    if op == "features":
        whole = tn.taylor_features(p["x"], p["w0"], p["w"], p["b0"], p["b"], sign_seed=seed, **kw)[:, sl]
        part = tn.taylor_features(p["x"], p["w0"][sl], p["w"][sl], p["b0"][sl], p["b"][sl],
                                  sign_seed=(*seed, lo), **kw)
    else:  # the readout restricted to the slice
        whole = tn.taylor_features(p["x"], p["w0"], p["w"], p["b0"], p["b"], sign_seed=seed, **kw)[:, sl]
        whole = whole @ p["a"][:, sl].t()
        part = tn.taylor_net(p["x"], p["w0"][sl], p["w"][sl], p["a"][:, sl], p["b0"][sl], p["b"][sl],
                             sign_seed=(*seed, lo), scale=1.0, **kw)
    assert_close_verbose(part, whole, atol=1e-12, rtol=1e-12, name=f"{op} [{lo}, {hi})")


# ---------------------------------------------------------------------------------------------
# The signs the kernels draw internally are the documented ones.

def kernel_signs_via_features(m: int, sign_seed) -> torch.Tensor:
    """Read the in-kernel signs out of taylor_features: exp with z0 = 0 and order (1,) gives s u,
    with u = 1."""
    x = torch.ones(1, 1, dtype=F64)
    w0 = torch.zeros(m, 1, dtype=F64)
    w = torch.ones(m, 1, dtype=F64)
    return tn.taylor_features(x, w0, w, activation="exp", order=(1,), sign_seed=sign_seed)[0]


def kernel_signs_via_net(n: int, m: int, sign_seed, dtype) -> torch.Tensor:
    """Read the in-kernel signs out of the fused net: an identity readout (c = m) gives f_j = s_j
    for every sample, through the blocked kernel (tiles of neurons, split over workers)."""
    x = torch.ones(n, 1, dtype=dtype)
    w0 = torch.zeros(m, 1, dtype=dtype)
    w = torch.ones(m, 1, dtype=dtype)
    a = torch.eye(m, dtype=dtype)
    f = tn.taylor_net(x, w0, w, a, activation="exp", order=(1,), scale=1.0, sign_seed=sign_seed)
    assert torch.equal(f, f[:1].expand_as(f)), "all samples must see the same signs"
    return f[0]


@pytest.mark.parametrize("sign_seed", [(0, 0), (-3, 2**40 + 1), 2**62 + 7])
def test_features_kernel_draws_the_documented_signs(sign_seed):
    m = 1000
    got = kernel_signs_via_features(m, sign_seed)
    assert torch.equal(got, tn.philox_signs(m, sign_seed, dtype=F64))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [1, 300])
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
def test_net_kernel_draws_the_documented_signs(dtype, n, threads):
    m = 1100  # several neuron tiles of 512 (float) / 256 (double), the last partial
    with num_threads(threads):
        got = kernel_signs_via_net(n, m, (11, 22), dtype)
    assert torch.equal(got, tn.philox_signs(m, (11, 22), dtype=dtype))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n,m", [(300, 1100), (5, 2000), (1000, 40)])
def test_net_with_sign_seed_equals_net_with_explicit_signs(n, m, threads):
    """Forward and the signs regenerated in backward, on every path of the blocked kernels."""
    p = make_problem(n=n, d=5, m=m, c=3, seed=3)
    seed = (-77, 5)
    signs = tn.philox_signs(m, seed, dtype=F64)
    results = []
    with num_threads(threads):
        for kw in ({"sign_seed": seed}, {"signs": signs}):
            leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
            f = tn.taylor_net(*leaves.values(), activation="tanh", order=3, **kw)
            grads = torch.autograd.grad(f, list(leaves.values()), torch.ones_like(f))
            results.append((f.detach(), grads))
    (f1, g1), (f2, g2) = results
    assert_close_verbose(f1, f2, atol=0, rtol=1e-14, name="f")
    for name, a, b in zip(p, g1, g2):
        assert_close_verbose(a, b, atol=1e-13, rtol=1e-13, name=f"grad {name}")
    # and the signs matter: other seeds give other results
    f3 = tn.taylor_net(*p.values(), activation="tanh", order=3, sign_seed=(-77, 6))
    assert (f3 - f1).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Statistics of the stream (5 sigma bounds; all seeds fixed, so the tests are deterministic)

M_STAT = 100_000
Z = 5.0


@pytest.mark.parametrize("sign_seed", [(0, 0), (1, 0), (-(2**63), 2**63 - 1), (2**40 + 3, 17)])
def test_signs_are_balanced_and_uncorrelated_across_neurons(sign_seed):
    s = kernel_signs_via_features(M_STAT, sign_seed)
    assert torch.equal(s.abs(), torch.ones_like(s))
    sigma = 1 / math.sqrt(M_STAT)
    assert abs(s.mean().item()) < Z * sigma, "signs are not balanced"
    for lag in (1, 2, 31, 32, 33, 127, 128, 129):
        corr = (s[:-lag] * s[lag:]).mean().item()
        assert abs(corr) < Z / math.sqrt(M_STAT - lag), f"lag-{lag} correlation {corr:.4f}"
    # the four 32-bit words of a block, and blocks, are balanced on their own
    words = s[: M_STAT // 128 * 128].reshape(-1, 4, 32)
    for w in range(4):
        col = words[:, w, :]
        assert abs(col.mean().item()) < Z / math.sqrt(col.numel()), f"word {w}"


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a * b).mean().item()


@pytest.mark.parametrize("pair", [
    ((5, 0), (5, 1)),               # consecutive steps
    ((5, 0), (5, 2**32)),           # offsets differing only in the high word
    ((5, 7), (6, 7)),               # consecutive seeds
    ((5, 7), (5 + 2**32, 7)),       # seeds differing only in the high word
    ((0, 0), (-1, -1)),
])
def test_signs_are_independent_across_offsets_and_seeds(pair):
    s1 = tn.philox_signs(M_STAT, pair[0], dtype=F64)
    s2 = tn.philox_signs(M_STAT, pair[1], dtype=F64)
    assert abs(_corr(s1, s2)) < Z / math.sqrt(M_STAT)
    # also shifted by a block: a counter/offset mix-up would line blocks up
    assert abs(_corr(s1[128:], s2[:-128])) < Z / math.sqrt(M_STAT - 128)


def test_many_steps_are_independent():
    """Across 2000 offsets, each neuron's signs are balanced, and neighbouring steps uncorrelated."""
    steps, m = 2000, 64
    s = torch.stack([tn.philox_signs(m, (42, t), dtype=F64) for t in range(steps)])  # (steps, m)
    per_neuron = s.mean(0)
    assert per_neuron.abs().max() < Z / math.sqrt(steps)
    lag = (s[1:] * s[:-1]).mean().item()
    assert abs(lag) < Z / math.sqrt((steps - 1) * m)
    assert abs(s.mean().item()) < Z / math.sqrt(steps * m)


# ---------------------------------------------------------------------------------------------
# The network over many sign draws matches the closed-form moments

SIGN_DRAW_CASES = [("tanh", 2, "offsets"), ("gelu", 3, "seeds"), ("sin", "exact", "seeds"), ("silu", (1, 2), "offsets")]


@pytest.mark.parametrize("activation,order,stream", slow_except(SIGN_DRAW_CASES, SIGN_DRAW_CASES[1:3]))
def test_net_over_sign_draws_matches_moments(activation, order, stream):
    m, draws = 8, 4000
    p = make_problem(n=4, d=3, m=m, c=2, seed=21, movement=0.8)
    args = (p["x"], p["w0"], p["w"], p["a"], p["b0"], p["b"])
    kw = {"activation": activation, "order": order}
    g = torch.Generator().manual_seed(5)
    seeds = torch.randint(-(2**62), 2**62, (draws,), generator=g).tolist()
    fs = []
    for t in range(draws):
        sign_seed = (1234, t) if stream == "offsets" else (seeds[t], 0)
        fs.append(tn.taylor_net(*args, sign_seed=sign_seed, **kw))
    fs = torch.stack(fs)  # (draws, n, c)
    mean, var = tn.taylor_net_moments(*args, **kw)
    assert var.min() > 1e-4, "the test needs visible variance"
    sample_mean = fs.mean(0)
    z_mean = (sample_mean - mean) / torch.sqrt(var / draws)
    assert z_mean.abs().max() < Z, f"sample mean off by {z_mean.abs().max():.2f} sigma"
    centred = fs - mean
    sample_var = (centred**2).mean(0)  # the true mean is known
    mu4 = (centred**4).mean(0)
    se_var = torch.sqrt((mu4 - sample_var**2).clamp_min(1e-30) / draws)
    z_var = (sample_var - var) / se_var
    assert z_var.abs().max() < Z, f"sample variance off by {z_var.abs().max():.2f} sigma"
