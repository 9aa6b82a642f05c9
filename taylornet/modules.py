"""nn.Modules: TaylorLinear (a drop-in layer of Taylor features) and TaylorNet (the two-layer
Taylor model with a fused readout).

Both keep the initialization frozen in buffers (``weight0``, ``bias0``) and train the movement
(``weight``, ``bias``), which starts at zero. With ``sign_randomization=True`` each training forward
draws fresh neuron signs inside the kernels from a (seed, offset) pair taken from torch's default
generator, so ``torch.manual_seed`` makes training reproducible. In eval mode the modules predict the
sign expectation (``eval_signs="expectation"``: the even orders, or (sigma(z0+u) + sigma(z0-u)) / 2
for "exact"), or the network without signs (``eval_signs="none"``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import functional as F
from .activations import check_activation, parse_order

__all__ = ["TaylorLinear", "TaylorNet", "draw_init_seed", "draw_sign_seed", "taylor_net_init"]

_EVAL_SIGNS = ("expectation", "none")


def draw_sign_seed() -> torch.Tensor:
    """A fresh (seed, offset) pair from torch's default generator, as the int64 tensor the ops take."""
    return torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64)


def _check_eval_signs(eval_signs: str) -> str:
    if eval_signs not in _EVAL_SIGNS:
        raise ValueError(f"eval_signs: expected one of {', '.join(_EVAL_SIGNS)}, got {eval_signs!r}")
    return eval_signs


def _check_size(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


# ---- initialization: counter-based, so that any slice of neurons is generated on its own ---------
#
# TaylorNet's frozen initialization is a function of one 64-bit "init seed" (drawn from torch's
# default generator, so torch.manual_seed reproduces it) and of the global neuron index: base row j
# of W0 takes the Philox4x32-10 words of counters (call, j_lo, j_hi, stream) under key = init seed,
# turned into N(0, 1) by the inverse normal CDF (torch.special.ndtri, an elementwise scalar kernel:
# the same bits whatever the slicing, on a given device). So a rank holding neurons [lo, hi) of a
# width-sharded model generates exactly those rows, equal to the unsharded model's bit for bit.
# Cost on CPU: about 4x torch.randn (m = 2^20, d = 128: ~2 s on one core); on CUDA, a few passes.

_MASK32 = 0xFFFFFFFF
_STREAM_W0, _STREAM_A, _STREAM_B0 = 0, 1, 2  # counter word 3: what the random words are for


def draw_init_seed() -> int:
    """A fresh 64-bit initialization seed from torch's default generator (one draw)."""
    return int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))


def _philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 on int64 tensors holding 32-bit words (the kernels' generator, csrc/taylornet/
    philox.h). int64 products of two 32-bit words wrap exactly like uint64, so >> 32 and the mask
    give the high and low words. Updates the counter tensors in place and returns them."""
    p0, p1 = torch.empty_like(c0), torch.empty_like(c0)
    for round_ in range(10):
        if round_:
            k0, k1 = (k0 + 0x9E3779B9) & _MASK32, (k1 + 0xBB67AE85) & _MASK32
        torch.mul(c0, 0xD2511F53, out=p0)
        torch.mul(c2, 0xCD9E8D57, out=p1)
        torch.bitwise_right_shift(p1, 32, out=c0).bitwise_and_(_MASK32).bitwise_xor_(c1).bitwise_xor_(k0)
        torch.bitwise_right_shift(p0, 32, out=c2).bitwise_and_(_MASK32).bitwise_xor_(c3).bitwise_xor_(k1)
        torch.bitwise_and(p1, _MASK32, out=c1)
        torch.bitwise_and(p0, _MASK32, out=c3)
    return c0, c1, c2, c3


def _philox_rows(seed: int, stream: int, lo: int, hi: int, n_words: int, device, fill) -> None:
    """For every row j in [lo, hi): the first ``n_words`` 32-bit words of the counters
    (call, j_lo, j_hi, stream), call = 0, 1, ..., as int64 blocks ``fill(row0, row1, words)``."""
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    calls = -(-n_words // 4)
    # CPU: 2^15 words a chunk, small enough to stay in cache and run on one thread (threaded small ops
    # stall under load); CUDA: big chunks.
    per_chunk = (1 << 13) if device.type == "cpu" else (1 << 22)
    step = max(1, per_chunk // calls)
    call = torch.arange(calls, dtype=torch.int64, device=device)
    for r0 in range(lo, hi, step):
        r1 = min(r0 + step, hi)
        rows = torch.arange(r0, r1, dtype=torch.int64, device=device)[:, None]
        shape = (r1 - r0, calls)
        c0 = call.expand(shape).clone()
        c1 = (rows & _MASK32).expand(shape).clone()
        c2 = (rows >> 32).expand(shape).clone()
        c3 = torch.full(shape, stream, dtype=torch.int64, device=device)
        words = torch.stack(_philox4x32_10(c0, c1, c2, c3, k0, k1), dim=-1).reshape(r1 - r0, 4 * calls)
        fill(r0 - lo, r1 - lo, words[:, :n_words])


def _normal_from_words(words: torch.Tensor) -> torch.Tensor:
    """N(0, 1) in float64 from uniform 32-bit words: ndtri((w + 1/2) / 2^32), |z| < 6.3."""
    return torch.special.ndtri(words.to(torch.float64).add_(0.5).mul_(2.0**-32))


def _init_base_rows(seed, lo, hi, in_features, out_features, bias, dtype, device):
    """Rows [lo, hi) of the (unsymmetrized) initialization: w0 (rows, d), a (c, rows), b0 (rows,)."""
    rows = hi - lo
    w0 = torch.empty(rows, in_features, dtype=dtype, device=device)
    a = torch.empty(out_features, rows, dtype=dtype, device=device)
    b0 = torch.empty(rows, dtype=dtype, device=device) if bias else None
    device = w0.device  # None: the default device
    if device.type == "meta" or rows == 0:
        return w0, a, b0
    inv_sqrt_d = 1.0 / math.sqrt(in_features)

    def fill_w0(i, j, words):
        w0[i:j] = _normal_from_words(words).mul_(inv_sqrt_d)

    def fill_a(i, j, words):  # the top bit of word k: readout k of the neuron is -1
        a[:, i:j] = (1 - 2 * (words >> 31)).t()

    def fill_b0(i, j, words):
        b0[i:j] = _normal_from_words(words[:, 0])

    _philox_rows(seed, _STREAM_W0, lo, hi, in_features, device, fill_w0)
    _philox_rows(seed, _STREAM_A, lo, hi, out_features, device, fill_a)
    if bias:
        _philox_rows(seed, _STREAM_B0, lo, hi, 1, device, fill_b0)
    return w0, a, b0


def taylor_net_init(init_seed: int, lo: int, hi: int, *, in_features: int, out_features: int, width: int,
                    symmetric_init: bool = True, bias: bool = False, dtype=None, device=None):
    """Neurons [lo, hi) of TaylorNet's initialization for ``init_seed``: (w0, a, b0) of shapes
    (hi - lo, in), (out, hi - lo), (hi - lo,) or None.

    w0 ~ N(0, 1/in), a ~ +-1, b0 ~ N(0, 1). With ``symmetric_init`` neuron r + width/2 repeats neuron
    r's w0 and b0 with the readout negated. The result depends only on the seed and the global neuron
    indices: concatenating slices gives the whole layer, bit for bit, and only the slice (plus, with
    symmetric_init, its mirror rows when they are not in it) is generated.
    """
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    if not 0 <= lo <= hi <= width:
        raise ValueError(f"neurons [lo, hi): expected 0 <= lo <= hi <= width = {width}, got [{lo}, {hi})")
    if symmetric_init and width % 2:
        raise ValueError(f"width: symmetric_init pairs neurons, so width must be even, got {width}")
    seed = int(init_seed) & (2**64 - 1)
    half = width // 2 if symmetric_init else width
    # (global start, global end, base row start, readout sign): the first half is its own base, the
    # second half mirrors it.
    pieces = [(s, e, s - base, sign) for s, e, base, sign in
              ((lo, min(hi, half), 0, 1), (max(lo, half), hi, half, -1)) if s < e]
    if len(pieces) == 2 and pieces[1][2] < pieces[0][2] + (pieces[0][1] - pieces[0][0]) \
            and pieces[0][2] < pieces[1][2] + (pieces[1][1] - pieces[1][0]):
        # The slice holds overlapping base rows in both halves: generate their union once.
        b_lo = min(p[2] for p in pieces)
        b_hi = max(p[2] + p[1] - p[0] for p in pieces)
        union = _init_base_rows(seed, b_lo, b_hi, in_features, out_features, bias, dtype, device)
        parts = []
        for s, e, b, sign in pieces:
            i, j = b - b_lo, b - b_lo + (e - s)
            parts.append((union[0][i:j], union[1][:, i:j] * sign, None if union[2] is None else union[2][i:j]))
    else:
        parts = []
        for s, e, b, sign in pieces:
            w0, a, b0 = _init_base_rows(seed, b, b + (e - s), in_features, out_features, bias, dtype, device)
            parts.append((w0, a * sign if sign < 0 else a, b0))
    if not parts:
        return _init_base_rows(seed, 0, 0, in_features, out_features, bias, dtype, device)
    if len(parts) == 1:
        w0, a, b0 = parts[0]
        return w0.contiguous(), a.contiguous(), None if b0 is None else b0.contiguous()
    w0 = torch.cat([p[0] for p in parts])
    a = torch.cat([p[1] for p in parts], dim=1)
    b0 = torch.cat([p[2] for p in parts]) if bias else None
    return w0, a, b0


class _TaylorBase(nn.Module):
    def _configure(self, activation, order, sign_randomization, eval_signs):
        self.activation = check_activation(activation)
        parse_order(order, self.activation)  # validate now, not at the first forward
        self.order = order
        self.sign_randomization = bool(sign_randomization)
        self.eval_signs = _check_eval_signs(eval_signs)

    def _configure_net(self, in_features, width, out_features, symmetric_init, scale):
        """Sizes and readout scale of a two-layer model of (global) width ``width``."""
        self.in_features = _check_size("in_features", in_features)
        self.width = _check_size("width", width)
        self.out_features = _check_size("out_features", out_features)
        if symmetric_init and width % 2:
            raise ValueError(f"width: symmetric_init pairs neurons, so width must be even, got {width}")
        self.scale = F._check_scale(scale, width)

    def _sign_seed(self):
        """Fresh signs while training with sign randomization; None otherwise."""
        return draw_sign_seed() if self.sign_randomization and self.training else None

    def _use_expectation(self) -> bool:
        return self.sign_randomization and not self.training and self.eval_signs == "expectation"


class TaylorLinear(_TaylorBase):
    """y = h(x): the order-``order`` Taylor features of sigma((W0 + W) x + b0 + b) around W0, b0.

    Drop-in for ``nn.Sequential(nn.Linear(in, out), activation)``: ``weight0`` / ``bias0`` are
    initialized as nn.Linear does and frozen; ``weight`` / ``bias`` start at zero, so at
    initialization the layer equals sigma(W0 x + b0).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, activation: str = "tanh",
                 order=2, sign_randomization: bool = False, eval_signs: str = "expectation",
                 device=None, dtype=None):
        super().__init__()
        self.in_features = _check_size("in_features", in_features)
        self.out_features = _check_size("out_features", out_features)
        self._configure(activation, order, sign_randomization, eval_signs)
        kw = {"device": device, "dtype": dtype}
        init = nn.Linear(in_features, out_features, bias=bias, **kw)
        self.register_buffer("weight0", init.weight.detach().clone())
        self.register_buffer("bias0", init.bias.detach().clone() if bias else None)
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = (x, self.weight0, self.weight, self.bias0, self.bias)
        if not self._use_expectation():
            return F.taylor_features(*args, activation=self.activation, order=self.order,
                                     sign_seed=self._sign_seed())
        orders, exact = parse_order(self.order, self.activation)
        if exact:
            ones = torch.ones(self.out_features, dtype=x.dtype, device=x.device)
            plus = F.taylor_features(*args, activation=self.activation, order="exact", signs=ones)
            minus = F.taylor_features(*args, activation=self.activation, order="exact", signs=-ones)
            return 0.5 * (plus + minus)
        even = tuple(k for k in orders if k % 2 == 0)
        if not even:  # only odd orders: every feature averages to zero
            return x.new_zeros((*x.shape[:-1], self.out_features)) + 0 * x.sum(-1, keepdim=True)
        return F.taylor_features(*args, activation=self.activation, order=even)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, activation={self.activation!r}, order={self.order!r}, "
                f"sign_randomization={self.sign_randomization}")


def register_net_state(module: nn.Module, w0, a, b0, *, train_readout: bool) -> None:
    """The state of a (slice of a) two-layer Taylor model: frozen ``weight0`` / ``bias0``, the readout
    ``a`` (a parameter only when trained) and the movement ``weight`` / ``bias``, zero at start."""
    module.register_buffer("weight0", w0)
    module.register_buffer("bias0", b0)
    if train_readout:
        module.a = nn.Parameter(a)
    else:
        module.register_buffer("a", a)
    module.weight = nn.Parameter(torch.zeros_like(w0))
    module.bias = nn.Parameter(torch.zeros_like(b0)) if b0 is not None else None


class TaylorNet(_TaylorBase):
    """f(x) = scale * A h(x): the two-layer Taylor model of Bai & Lee around a random initialization.

    ``weight0`` (width, in) ~ N(0, 1/in) and the readout ``a`` (out, width) ~ +-1 are drawn once; with
    ``symmetric_init`` neurons r and r + width/2 share their initial weights with opposite readouts,
    so f = 0 at initialization. The readout is fixed unless ``train_readout``. ``scale`` defaults to
    1/sqrt(width). The output has shape (..., out_features).
    """

    def __init__(self, in_features: int, width: int, out_features: int = 1, *, activation: str = "tanh",
                 order=2, sign_randomization: bool = False, symmetric_init: bool = True,
                 train_readout: bool = False, scale: float | None = None, bias: bool = False,
                 eval_signs: str = "expectation", device=None, dtype=None):
        super().__init__()
        self._configure_net(in_features, width, out_features, symmetric_init, scale)
        self._configure(activation, order, sign_randomization, eval_signs)
        self.symmetric_init = bool(symmetric_init)
        kw = {"device": device, "dtype": dtype if dtype is not None else torch.get_default_dtype()}
        # One draw from the default generator keys the whole initialization; any slice of neurons
        # can be regenerated from it alone (taylornet.distributed.ShardedTaylorNet does).
        w0, a, b0 = taylor_net_init(
            draw_init_seed(), 0, width, in_features=in_features, out_features=out_features,
            width=width, symmetric_init=symmetric_init, bias=bias, **kw,
        )
        register_net_state(self, w0, a, b0, train_readout=train_readout)

    def _args(self, x):
        return (x, self.weight0, self.weight, self.a, self.bias0, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_expectation():
            return self.moments(x)[0]
        return F.taylor_net(*self._args(x), activation=self.activation, order=self.order,
                            scale=self.scale, sign_seed=self._sign_seed())

    def moments(self, x: torch.Tensor):
        """(E_S f, Var_S f) over uniformly random signs, each of shape (..., out_features)."""
        return F.taylor_net_moments(*self._args(x), activation=self.activation, order=self.order,
                                    scale=self.scale)

    def expected_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean over samples and outputs of E_S (f - y)^2, exact (no sign sampling)."""
        mean, var = self.moments(x)
        return F.expected_squared_loss(mean, var, y).mean()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, width={self.width}, out_features={self.out_features}, "
                f"activation={self.activation!r}, order={self.order!r}, "
                f"sign_randomization={self.sign_randomization}, scale={self.scale:.4g}")
