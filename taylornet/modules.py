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

__all__ = ["TaylorLinear", "TaylorNet", "draw_sign_seed"]

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


class _TaylorBase(nn.Module):
    def _configure(self, activation, order, sign_randomization, eval_signs):
        self.activation = check_activation(activation)
        parse_order(order, self.activation)  # validate now, not at the first forward
        self.order = order
        self.sign_randomization = bool(sign_randomization)
        self.eval_signs = _check_eval_signs(eval_signs)

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
        self.in_features = _check_size("in_features", in_features)
        self.width = _check_size("width", width)
        self.out_features = _check_size("out_features", out_features)
        if symmetric_init and width % 2:
            raise ValueError(f"width: symmetric_init pairs neurons, so width must be even, got {width}")
        self._configure(activation, order, sign_randomization, eval_signs)
        self.scale = F._check_scale(scale, width)
        self.symmetric_init = bool(symmetric_init)
        kw = {"device": device, "dtype": dtype if dtype is not None else torch.get_default_dtype()}
        half = width // 2 if symmetric_init else width
        w0 = torch.randn(half, in_features, **kw) / math.sqrt(in_features)
        a = torch.randint(0, 2, (out_features, half), device=device).to(kw["dtype"]) * 2 - 1
        b0 = torch.randn(half, **kw) if bias else None
        if symmetric_init:
            w0 = torch.cat([w0, w0])
            a = torch.cat([a, -a], dim=1)
            b0 = torch.cat([b0, b0]) if bias else None
        self.register_buffer("weight0", w0)
        self.register_buffer("bias0", b0)
        if train_readout:
            self.a = nn.Parameter(a)
        else:
            self.register_buffer("a", a)
        self.weight = nn.Parameter(torch.zeros(width, in_features, **kw))
        self.bias = nn.Parameter(torch.zeros(width, **kw)) if bias else None

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
