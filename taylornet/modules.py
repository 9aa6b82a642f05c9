"""nn.Modules: TaylorLinear (a drop-in layer of Taylor features) and TaylorNet (the two-layer
Taylor model with a fused readout).

Both keep the initialization frozen in buffers (``weight0``, ``bias0``) and train the movement
(``weight``, ``bias``), which starts at zero. With ``sign_randomization=True`` each training forward
draws fresh neuron signs inside the kernels from a (seed, offset) pair taken from torch's default
generator, so ``torch.manual_seed`` makes training reproducible. In eval mode the modules predict the
sign expectation (``eval_signs="expectation"``: the even orders, or (sigma(z0+u) + sigma(z0-u)) / 2
for "exact"), or the network without signs (``eval_signs="none"``).

Both build on the meta device (``device="meta"`` or ``with torch.device("meta")``) and initialize
through ``reset_parameters()`` after ``to_empty``, with the values a direct build takes for the same
seed: the usual flow of large models (and of FSDP2).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import functional as F
from .activations import Order, check_activation

__all__ = ["TaylorLinear", "TaylorNet", "draw_init_seed", "draw_sign_seed", "taylor_net_init"]

_EVAL_SIGNS = ("expectation", "none")


def draw_sign_seed() -> Tensor:
    """A fresh (seed, offset) pair from torch's default CPU generator, as the int64 tensor the ops take."""
    return torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, device="cpu")


def draw_init_seed() -> int:
    """A fresh 64-bit initialization seed from torch's default CPU generator (one draw)."""
    return int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64, device="cpu"))


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
# of W0 takes the Philox4x32-10 words of counters (call, j_lo, j_hi, stream) under key = init seed
# (the kernels' generator, run by the philox op on the host), turned into N(0, 1) by the inverse
# normal CDF in float64 on the host. So a rank holding neurons [lo, hi) of a width-sharded model
# generates exactly those rows, equal to the unsharded model's bit for bit, on every device.

_MASK32 = 0xFFFFFFFF
_STREAM_W0, _STREAM_A, _STREAM_B0 = 0, 1, 2  # counter word 3: what the random words are for
_COUNTERS_PER_CHUNK = 1 << 16


def _philox_rows(seed: int, stream: int, lo: int, hi: int, n_words: int, fill) -> None:
    """For every row j in [lo, hi): the first ``n_words`` 32-bit words of the counters
    (call, j_lo, j_hi, stream), call = 0, 1, ..., as int64 blocks ``fill(row0, row1, words)`` (CPU)."""
    key = ((seed + 2**63) % 2**64) - 2**63  # the same 64 bits, as the op's signed int
    calls = -(-n_words // 4)
    step = max(1, _COUNTERS_PER_CHUNK // calls)
    call = torch.arange(calls, dtype=torch.int64, device="cpu")
    for r0 in range(lo, hi, step):
        r1 = min(r0 + step, hi)
        rows = torch.arange(r0, r1, dtype=torch.int64, device="cpu")[:, None]
        shape = (r1 - r0, calls)
        counters = torch.stack([call.expand(shape), (rows & _MASK32).expand(shape), (rows >> 32).expand(shape),
                                torch.full(shape, stream, dtype=torch.int64, device="cpu")], dim=-1)
        words = F._ops_ns.philox(counters.reshape(-1, 4), key).reshape(r1 - r0, 4 * calls)
        fill(r0 - lo, r1 - lo, words[:, :n_words])


def _normal_from_words(words: Tensor) -> Tensor:
    """N(0, 1) in float64 from uniform 32-bit words: ndtri((w + 1/2) / 2^32), |z| < 6.3."""
    return torch.special.ndtri(words.to(torch.float64).add_(0.5).mul_(2.0**-32))


def _init_base_rows(seed, lo, hi, in_features, out_features, bias, dtype, device):
    """Rows [lo, hi) of the (unsymmetrized) initialization: w0 (rows, d), a (c, rows), b0 (rows,)."""
    rows = hi - lo
    w0 = torch.empty(rows, in_features, dtype=dtype, device=device)
    a = torch.empty(out_features, rows, dtype=dtype, device=device)
    b0 = torch.empty(rows, dtype=dtype, device=device) if bias else None
    if w0.device.type == "meta" or rows == 0:
        return w0, a, b0
    inv_sqrt_d = 1.0 / math.sqrt(in_features)

    def fill_w0(i, j, words):
        w0[i:j] = _normal_from_words(words).mul_(inv_sqrt_d)

    def fill_a(i, j, words):  # the top bit of word k: readout k of the neuron is -1
        a[:, i:j] = (1 - 2 * (words >> 31)).t()

    def fill_b0(i, j, words):
        b0[i:j] = _normal_from_words(words[:, 0])

    _philox_rows(seed, _STREAM_W0, lo, hi, in_features, fill_w0)
    _philox_rows(seed, _STREAM_A, lo, hi, out_features, fill_a)
    if bias:
        _philox_rows(seed, _STREAM_B0, lo, hi, 1, fill_b0)
    return w0, a, b0


def taylor_net_init(init_seed: int, lo: int, hi: int, *, in_features: int, out_features: int, width: int,
                    symmetric_init: bool = True, bias: bool = False, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Neurons [lo, hi) of TaylorNet's initialization for ``init_seed``.

    w0 ~ N(0, 1/in), a ~ +-1, b0 ~ N(0, 1). With ``symmetric_init`` neuron r + width/2 repeats neuron
    r's w0 and b0 with the readout negated. The result depends only on the seed and the global neuron
    indices: concatenating slices gives the whole layer, bit for bit, and only the slice (plus, with
    symmetric_init, its mirror rows when they are not in it) is generated.

    Args:
        init_seed: the 64-bit initialization seed.
        lo, hi: the neurons [lo, hi) to generate.
        in_features, out_features, width, symmetric_init, bias: as in :class:`TaylorNet`.
        dtype, device: of the result (default: torch's default dtype and device).

    Shape:
        - Output: (w0, a, b0) of shapes :math:`(hi - lo, in)`, :math:`(out, hi - lo)`,
          :math:`(hi - lo,)` or None without ``bias``
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
    """Activation, order (parsed once, when set), sign randomization and the evaluation mode."""

    def _configure(self, activation: str, order: Order, sign_randomization: bool, eval_signs: str) -> None:
        self._activation = check_activation(activation)
        self.order = order
        self.sign_randomization = bool(sign_randomization)
        self.eval_signs = _check_eval_signs(eval_signs)

    @property
    def activation(self) -> str:
        """The activation, one of :data:`taylornet.ACTIVATIONS`."""
        return self._activation

    @activation.setter
    def activation(self, value: str) -> None:
        self._plan = F._plan(value, self._order)
        self._activation = value

    @property
    def order(self) -> Order:
        """The Taylor order as given (int, sequence or "exact"); parsed and checked when set."""
        return self._order

    @order.setter
    def order(self, value: Order) -> None:
        self._plan = F._plan(self._activation, value)
        self._order = value

    def _sign_seed(self) -> Tensor | None:
        """Fresh signs while training with sign randomization; None otherwise."""
        return draw_sign_seed() if self.sign_randomization and self.training else None

    def _use_expectation(self) -> bool:
        return self.sign_randomization and not self.training and self.eval_signs == "expectation"


class TaylorLinear(_TaylorBase):
    r"""The order-``order`` Taylor features of :math:`\sigma((W_0 + W) x + b_0 + b)` around :math:`W_0, b_0`.

    A drop-in for ``nn.Sequential(nn.Linear(in_features, out_features), activation)``: the frozen
    ``weight0`` and ``bias0`` are initialized as ``nn.Linear`` initializes its weight and bias; the
    trained ``weight`` and ``bias`` start at zero, so at initialization the layer is
    :math:`\sigma(W_0 x + b_0)`. Each output is one neuron of :func:`taylornet.taylor_features`.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample (neurons).
        bias: if False, the layer has neither ``bias0`` nor ``bias``.
        activation: one of :data:`taylornet.ACTIVATIONS`.
        order: an int K (orders 0..K), a sequence of distinct orders, or ``"exact"``.
        sign_randomization: draw fresh neuron signs at every training forward.
        eval_signs: in eval mode with sign randomization, ``"expectation"`` (the average over signs)
            or ``"none"`` (no signs).
        device, dtype: of the parameters and buffers.

    Shape:
        - Input: :math:`(*, H_{in})`, :math:`H_{in}` = in_features
        - Output: :math:`(*, H_{out})`, :math:`H_{out}` = out_features

    Attributes:
        weight0: the frozen initial weight, :math:`(H_{out}, H_{in})` (a buffer).
        bias0: the frozen initial bias, :math:`(H_{out},)` (a buffer), or None.
        weight: the trained movement of the weight, :math:`(H_{out}, H_{in})`, zero at start.
        bias: the trained movement of the bias, :math:`(H_{out},)`, zero at start, or None.

    Example::

        >>> layer = taylornet.TaylorLinear(20, 30, activation="silu", order=3)
        >>> layer(torch.randn(128, 20)).shape
        torch.Size([128, 30])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, activation: str = "tanh",
                 order: Order = 2, sign_randomization: bool = False, eval_signs: str = "expectation",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features = _check_size("in_features", in_features)
        self.out_features = _check_size("out_features", out_features)
        self._configure(activation, order, sign_randomization, eval_signs)
        kw = {"device": device, "dtype": dtype}
        self.register_buffer("weight0", torch.empty(out_features, in_features, **kw))
        self.register_buffer("bias0", torch.empty(out_features, **kw) if bias else None)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``weight0`` and ``bias0`` drawn as ``nn.Linear.reset_parameters`` draws its weight and bias
        (from torch's default generator); ``weight`` and ``bias`` zero."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.weight0, a=math.sqrt(5))
            if self.bias0 is not None:
                bound = 1.0 / math.sqrt(self.in_features)
                nn.init.uniform_(self.bias0, -bound, bound)
            nn.init.zeros_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        args = (x, self.weight0, self.weight, self.bias0, self.bias)
        if not self._use_expectation():
            return F._features(*args, None, self._sign_seed(), self._plan)
        activation, orders, exact = self._plan
        if exact:
            ones = torch.ones(self.out_features, dtype=x.dtype, device=x.device)
            plus = F._features(*args, ones, None, self._plan)
            minus = F._features(*args, -ones, None, self._plan)
            return 0.5 * (plus + minus)
        even = [k for k in orders if k % 2 == 0]
        if not even:  # only odd orders: every feature averages to zero
            return x.new_zeros((*x.shape[:-1], self.out_features)) + 0 * x.sum(-1, keepdim=True)
        return F._features(*args, None, None, (activation, even, False))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, activation={self.activation!r}, order={self.order!r}, "
                f"sign_randomization={self.sign_randomization}, eval_signs={self.eval_signs!r}")


class TaylorNet(_TaylorBase):
    r""":math:`f(x) = \text{scale}\cdot A\,h(x)`: the two-layer Taylor model around a random initialization.

    :math:`h` are the Taylor features of ``width`` neurons (:func:`taylornet.taylor_net`, fused: no
    :math:`n \times m` tensor). The frozen ``weight0`` :math:`\sim N(0, 1/H_{in})` (and ``bias0``
    :math:`\sim N(0, 1)` with ``bias``) and the readout ``a`` :math:`\sim \pm 1` are drawn from one
    64-bit ``init_seed`` (from torch's default generator) by a counter-based generator of the neuron
    index; with ``symmetric_init`` neurons r and r + width/2 share their initial weights with opposite
    readouts, so :math:`f = 0` at initialization.

    Args:
        in_features: size of each input sample.
        width: number of neurons m.
        out_features: number of outputs c.
        activation: one of :data:`taylornet.ACTIVATIONS`.
        order: an int K (orders 0..K), a sequence of distinct orders, or ``"exact"``.
        sign_randomization: draw fresh neuron signs at every training forward.
        symmetric_init: pair the neurons so that the model is zero at initialization (even width).
        train_readout: make the readout ``a`` a parameter (otherwise a buffer).
        scale: the readout scale; None: :math:`1/\sqrt{\text{width}}`.
        bias: give the neurons biases (``bias0`` frozen, ``bias`` trained).
        eval_signs: in eval mode with sign randomization, ``"expectation"`` (the average over signs:
            :meth:`moments`' mean) or ``"none"`` (no signs).
        device, dtype: of the parameters and buffers.

    Shape:
        - Input: :math:`(*, H_{in})`
        - Output: :math:`(*, c)`

    Attributes:
        weight0: frozen initial weights, :math:`(m, H_{in})` (a buffer).
        bias0: frozen initial biases, :math:`(m,)` (a buffer), or None.
        a: the readout, :math:`(c, m)` (a parameter with ``train_readout``, else a buffer).
        weight: the trained movement, :math:`(m, H_{in})`, zero at start.
        bias: the trained movement of the biases, :math:`(m,)`, or None.
        init_seed: the 64-bit seed of the initialization (:meth:`reset_parameters` regenerates it).

    Example::

        >>> _ = torch.manual_seed(0)
        >>> model = taylornet.TaylorNet(32, width=2**12, order=2, sign_randomization=True)
        >>> x, y = torch.randn(64, 32), torch.randn(64)
        >>> loss = model.expected_loss(x, y)   # exact average over the signs
        >>> loss.backward()
    """

    def __init__(self, in_features: int, width: int, out_features: int = 1, *, activation: str = "tanh",
                 order: Order = 2, sign_randomization: bool = False, symmetric_init: bool = True,
                 train_readout: bool = False, scale: float | None = None, bias: bool = False,
                 eval_signs: str = "expectation", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features = _check_size("in_features", in_features)
        self.width = _check_size("width", width)
        self.out_features = _check_size("out_features", out_features)
        if symmetric_init and width % 2:
            raise ValueError(f"width: symmetric_init pairs neurons, so width must be even, got {width}")
        self.scale = F._check_scale(scale, width)
        self._configure(activation, order, sign_randomization, eval_signs)
        self.symmetric_init = bool(symmetric_init)
        self.train_readout = bool(train_readout)
        self.lo, self.hi = self._neuron_range()
        # One draw from the default generator keys the whole initialization; any slice of neurons
        # can be regenerated from it alone (ShardedTaylorNet does).
        self.init_seed = self._agree(draw_init_seed())
        kw = {"device": device, "dtype": dtype if dtype is not None else torch.get_default_dtype()}
        local = self.hi - self.lo
        self.register_buffer("weight0", torch.empty(local, in_features, **kw))
        self.register_buffer("bias0", torch.empty(local, **kw) if bias else None)
        a = torch.empty(out_features, local, **kw)
        if self.train_readout:
            self.a = nn.Parameter(a)
        else:
            self.register_buffer("a", a)
        self.weight = nn.Parameter(torch.empty(local, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(local, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Regenerates the initialization keyed by ``init_seed`` (``weight0``, ``bias0``, ``a``) and
        zeroes the movement (``weight``, ``bias``). Does not touch torch's generators."""
        w0, a, b0 = taylor_net_init(
            self.init_seed, self.lo, self.hi, in_features=self.in_features, out_features=self.out_features,
            width=self.width, symmetric_init=self.symmetric_init, bias=self.bias0 is not None,
            dtype=self.weight0.dtype, device=self.weight0.device,
        )
        with torch.no_grad():
            self.weight0.copy_(w0)
            self.a.copy_(a)
            if b0 is not None:
                self.bias0.copy_(b0)
            self.weight.zero_()
            if self.bias is not None:
                self.bias.zero_()

    # Hooks of a width-sharded model (ShardedTaylorNet): which neurons this process holds, the
    # seeds all processes share, and the sum of the partial readouts over the processes.

    def _neuron_range(self) -> tuple[int, int]:
        return 0, self.width

    def _agree(self, value):
        return value

    def _reduce(self, partial: Tensor) -> Tensor:
        return partial

    def _reduce_pair(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        return mean, var

    def _args(self, x: Tensor) -> tuple:
        return (x, self.weight0, self.weight, self.a, self.bias0, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self._use_expectation():
            return self.moments(x)[0]
        return self._reduce(F._net(*self._args(x), None, self._sign_seed(), self._plan, self.scale))

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(E_S f, Var_S f): mean and variance of the output over uniformly random neuron signs.

        Shape:
            - Input: :math:`(*, H_{in})`
            - Output: two tensors of shape :math:`(*, c)`
        """
        return self._reduce_pair(*F._moments(*self._args(x), self._plan, self.scale))

    def expected_loss(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Mean over samples and outputs of :math:`E_S (f - y)^2`, exact (no sign sampling).

        Args:
            x: inputs.
            y: targets, of the output's shape :math:`(*, c)`, or :math:`(*)` when c = 1; any other
               shape is a ValueError.

        Shape:
            - x: :math:`(*, H_{in})`; y: :math:`(*, c)` or :math:`(*)` for c = 1
            - Output: :math:`()`
        """
        mean, var = self.moments(x)
        return F.expected_squared_loss(mean, var, y).mean()

    def ntk(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        """The model's neural tangent kernel in its movement (``weight``, and ``bias`` with biases) at
        zero movement: :func:`taylornet.ntk_gram` of this model's initialization.

        Shape:
            - x1: :math:`(n_1, H_{in})`; x2: :math:`(n_2, H_{in})` (default: x1)
            - Output: :math:`(n_1, n_2)` for one output, :math:`(n_1, n_2, c, c)` for c outputs
        """
        a = self.a[0] if self.out_features == 1 else self.a
        gram = F.ntk_gram(x1, x2, self.weight0, a, self.bias0, activation=self.activation, scale=self.scale,
                          bias=self.bias is not None)
        return self._reduce(gram)

    def _config(self) -> dict:
        """The keyword arguments that rebuild this model (with in_features, width, out_features)."""
        return dict(activation=self.activation, order=self.order, sign_randomization=self.sign_randomization,
                    symmetric_init=self.symmetric_init, train_readout=self.train_readout, scale=self.scale,
                    bias=self.bias is not None, eval_signs=self.eval_signs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, width={self.width}, out_features={self.out_features}, "
                + ", ".join(f"{k}={v:.4g}" if k == "scale" else f"{k}={v!r}" for k, v in self._config().items()))
