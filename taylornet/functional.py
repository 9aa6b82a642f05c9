"""User-facing functions: argument parsing, defaults and batch shapes around the compiled ops.

Shapes: ``x`` is (..., d); ``w0`` and ``w`` are (m, d); ``b0`` and ``b`` are (m,) or None; ``a`` is
(m,) for one output or (c, m) for c outputs. ``order`` is an int K (orders 0..K), a sequence of
distinct orders, or "exact" (the full network sigma(z0 + s u)). ``signs`` is None or a (m,) tensor of
+-1; ``sign_seed`` asks the kernels to draw the signs themselves from a Philox stream keyed by
(seed, offset), the same on every device (see ``philox_signs``).

The dtypes, devices and shapes of the tensors are checked once, by the compiled ops (TypeError for a
dtype, ValueError for a shape or a device); the checks here are those only Python can make.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from . import ops as _ops
from .activations import Order, check_activation, parse_order

__all__ = [
    "expected_squared_loss", "ntk_gram", "philox_signs", "taylor_features", "taylor_net",
    "taylor_net_moments",
]

_ops_ns = _ops.ops

#: A ``sign_seed`` argument: seed, (seed, offset), (seed, offset, first neuron) or an int64 tensor.
SignSeed = int | tuple[int, int] | tuple[int, int, int] | Tensor

# (activation, sorted orders, exact): the arguments of the compiled ops that describe the series.
Plan = tuple[str, list[int], bool]


def _plan(activation: str, order: Order) -> Plan:
    """The compiled ops' description of ``order`` for ``activation``, checked."""
    orders, exact = parse_order(order, check_activation(activation))
    return activation, list(orders), exact


def _require_tensor(name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")


def _flatten(x, w0, w, b0, b) -> tuple[Tensor, tuple[int, ...], int]:
    """(x as (n, d), the leading batch shape, m). The ops check dtypes, devices and the other shapes."""
    for name, t in (("x", x), ("w0", w0), ("w", w), ("b0", b0), ("b", b)):
        if t is not None or name in ("x", "w0", "w"):
            _require_tensor(name, t)
    if w.dim() != 2:
        raise ValueError(f"w: expected a 2-D tensor (m, d), got shape {tuple(w.shape)}")
    m, d = w.shape
    if m < 1:
        raise ValueError("w: expected at least one neuron (m >= 1), got m = 0")
    if x.dim() < 1:
        raise ValueError("x: expected at least 1 dimension (..., d), got a scalar")
    if x.shape[-1] != d:
        raise ValueError(f"x: expected last dimension d = {d} (w is {tuple(w.shape)}), got shape {tuple(x.shape)}")
    lead = tuple(x.shape[:-1])
    # A view only where x is not 2-D already: a reshape recorded by autograd costs microseconds.
    return (x if x.dim() == 2 else x.reshape(math.prod(lead), d)), lead, m  # not -1: d may be 0


def _check_signs(signs, x: Tensor, m: int) -> Tensor | None:
    if signs is None:
        return None
    if not isinstance(signs, Tensor):
        raise TypeError(f"signs: expected None or a tensor of +-1, got {type(signs).__name__}")
    if signs.is_complex() or signs.dtype == torch.bool:
        raise TypeError(f"signs: expected a real tensor of +-1, got dtype {signs.dtype}")
    if tuple(signs.shape) != (m,):
        raise ValueError(f"signs: expected shape (m,) = ({m},), got {tuple(signs.shape)}")
    if signs.device != x.device:
        raise ValueError(f"signs: expected device {x.device} (the device of x), got {signs.device}")
    if not torch.compiler.is_compiling():
        valid = ((signs == 1) | (signs == -1)).all()
        if signs.device.type != "cpu":
            # Reading the answer back would wait for the GPU on every call (and break CUDA graph
            # capture): the device asserts instead, and the error surfaces at the next synchronisation.
            torch._assert_async(valid, "signs: expected every entry to be +1 or -1")
        elif not bool(valid):
            raise ValueError("signs: expected every entry to be +1 or -1")
    return signs.to(x.dtype)


def _seed_tensor(sign_seed) -> Tensor | None:
    """(seed, offset[, first neuron]) as the int64 tensor that the ops take.

    The optional third entry is the global index of local neuron 0, so that a slice of the neurons
    (a width-sharded model) draws the same signs as the whole layer.
    """
    if sign_seed is None:
        return None
    if isinstance(sign_seed, Tensor):
        if sign_seed.dtype != torch.int64 or sign_seed.numel() not in (2, 3):
            raise ValueError(
                "sign_seed: expected an int64 tensor (seed, offset[, first neuron]) of 2 or 3 elements, "
                f"got {sign_seed.dtype} of shape {tuple(sign_seed.shape)}"
            )
        return sign_seed.reshape(-1).cpu()
    if isinstance(sign_seed, numbers.Integral) and not isinstance(sign_seed, bool):
        sign_seed = (int(sign_seed), 0)
    if (
        isinstance(sign_seed, (tuple, list))
        and len(sign_seed) in (2, 3)
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in sign_seed)
    ):
        if len(sign_seed) == 3 and sign_seed[2] < 0:
            raise ValueError(f"sign_seed: the first neuron index must be >= 0, got {sign_seed[2]}")
        # Seed and offset are reduced to the 64-bit words the kernels use.
        words = [((int(v) + 2**63) % 2**64) - 2**63 for v in sign_seed]
        return torch.tensor(words, dtype=torch.int64, device="cpu")
    raise TypeError(
        "sign_seed: expected an int, a (seed, offset[, first neuron]) tuple or an int64 tensor, "
        f"got {sign_seed!r}"
    )


def _sign_source(signs, sign_seed, x: Tensor, m: int) -> tuple[Tensor | None, Tensor | None]:
    signs = _check_signs(signs, x, m)
    seed = _seed_tensor(sign_seed)
    if signs is not None and seed is not None:
        raise ValueError("signs / sign_seed: pass at most one of them")
    return signs, seed


def _readout(a, m: int) -> tuple[Tensor, bool]:
    """``a`` as the (c, m) readout of the ops, and whether the output keeps its c dimension."""
    _require_tensor("a", a)
    if a.dim() == 1:  # the one-output form of the Python API; the ops check the (c, m) form
        if a.shape[0] != m:
            raise ValueError(f"a: expected shape (m,) = ({m},) or (c, {m}), got {tuple(a.shape)}")
        return a.reshape(1, m), False
    if a.dim() == 2:
        return a, True
    raise ValueError(f"a: expected shape (m,) or (c, m), got {tuple(a.shape)}")


def _check_scale(scale, m: int) -> float:
    """The readout scale: ``scale``, or 1/sqrt(m) when None."""
    if scale is None:
        return 1.0 / math.sqrt(m)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale: expected a positive real number or None, got {scale!r}")
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale: expected a finite positive number, got {scale}")
    return scale


# ---- the ops, on parsed arguments (the modules call these with the plan they parsed once) -------

def _features(x, w0, w, b0, b, signs, sign_seed, p: Plan) -> Tensor:
    x2, lead, m = _flatten(x, w0, w, b0, b)
    signs, seed = _sign_source(signs, sign_seed, x, m)
    if _keeps_derivatives(x2, w0, w, b0, b):
        need_dz = x.requires_grad or w0.requires_grad or (b0 is not None and b0.requires_grad)
        out = _ops_ns.features_saving(x2, w0, w, b0, b, signs, seed, *p, need_dz)[0]
    else:
        out = _ops_ns.features(x2, w0, w, b0, b, signs, seed, *p)
    return out if len(lead) == 1 else out.reshape(*lead, m)


# From this input dimension on, a CPU forward that will be differentiated keeps dh/du (and dh/dz0
# when x, w0 or b0 need gradients): one or two n x m tensors, the size of the output, in exchange for
# not recomputing x w0^T and x w^T (4nmd FLOPs) in the backward. The kept buffers are recycled
# (taylornet.ops.saved_cache), so keeping costs writing them, not faulting in fresh pages; below
# d = 16 recomputing the products costs about as much as writing and reading the kept n x m tensor
# (measured: docs/benchmarks.md).
KEEP_DERIVATIVES_MIN_DIM = 16


def _keeps_derivatives(x2, w0, w, b0, b) -> bool:
    if x2.device.type != "cpu" or x2.shape[1] < KEEP_DERIVATIVES_MIN_DIM or not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in (x2, w0, w, b0, b))


def _net(x, w0, w, a, b0, b, signs, sign_seed, p: Plan, scale) -> Tensor:
    x2, lead, m = _flatten(x, w0, w, b0, b)
    a2, multi = _readout(a, m)
    signs, seed = _sign_source(signs, sign_seed, x, m)
    out = _ops_ns.net(x2, w0, w, a2, b0, b, signs, seed, *p, _check_scale(scale, m))
    if multi:
        return out if len(lead) == 1 else out.reshape(*lead, a2.shape[0])
    return out.reshape(lead)


def _moments(x, w0, w, a, b0, b, p: Plan, scale) -> tuple[Tensor, Tensor]:
    x2, lead, m = _flatten(x, w0, w, b0, b)
    a2, multi = _readout(a, m)
    mean, var = _ops_ns.moments(x2, w0, w, a2, b0, b, *p, _check_scale(scale, m))
    shape = (*lead, a2.shape[0]) if multi else lead
    return mean.reshape(shape), var.reshape(shape)


# ---- public functions ---------------------------------------------------------------------------

def taylor_features(x: Tensor, w0: Tensor, w: Tensor, b0: Tensor | None = None, b: Tensor | None = None, *,
                    activation: str = "tanh", order: Order = 2, signs: Tensor | None = None,
                    sign_seed: SignSeed | None = None) -> Tensor:
    r"""Taylor features :math:`h_r(x) = \sum_{k \in O} c_k(z^0_r)\,(s_r u_r)^k`.

    With :math:`z^0 = x w_0^T + b_0` (the frozen initialization), :math:`u = x w^T + b` (the
    movement) and :math:`c_k = \sigma^{(k)} / k!`; ``order="exact"`` gives
    :math:`\sigma(z^0_r + s_r u_r)` itself.

    Args:
        x: inputs.
        w0: initial weights (frozen).
        w: movement of the weights.
        b0: initial biases, or None.
        b: movement of the biases, or None.
        activation: one of :data:`taylornet.ACTIVATIONS`.
        order: an int K (orders 0..K), a sequence of distinct orders, or ``"exact"``.
        signs: a tensor of +-1, one sign per neuron; None: all +1.
        sign_seed: ``seed``, ``(seed, offset)`` or ``(seed, offset, first_neuron)``: the kernels draw
            the signs themselves (see :func:`philox_signs`). At most one of ``signs``, ``sign_seed``.

    Shape:
        - x: :math:`(*, d)`; w0, w: :math:`(m, d)`; b0, b, signs: :math:`(m,)`
        - Output: :math:`(*, m)`

    Example::

        >>> x, w0, w = torch.randn(8, 4), torch.randn(16, 4), torch.zeros(16, 4)
        >>> taylornet.taylor_features(x, w0, w, activation="gelu", order=(0, 2)).shape
        torch.Size([8, 16])
    """
    return _features(x, w0, w, b0, b, signs, sign_seed, _plan(activation, order))


def taylor_net(x: Tensor, w0: Tensor, w: Tensor, a: Tensor, b0: Tensor | None = None, b: Tensor | None = None, *,
               activation: str = "tanh", order: Order = 2, signs: Tensor | None = None,
               scale: float | None = None, sign_seed: SignSeed | None = None) -> Tensor:
    r"""Two-layer Taylor network :math:`f_j(x) = \text{scale} \sum_r A_{jr} h_r(x)`.

    :math:`h` are the :func:`taylor_features`; no :math:`n \times m` tensor is ever formed, forward or
    backward.

    Args:
        x, w0, w, b0, b, activation, order, signs, sign_seed: as in :func:`taylor_features`.
        a: the readout.
        scale: the readout scale; None: :math:`1/\sqrt{m}`.

    Shape:
        - x: :math:`(*, d)`; w0, w: :math:`(m, d)`; b0, b, signs: :math:`(m,)`; a: :math:`(m,)` or
          :math:`(c, m)`
        - Output: :math:`(*)` when a is :math:`(m,)`, :math:`(*, c)` when a is :math:`(c, m)`

    Example::

        >>> x, w0, w = torch.randn(8, 4), torch.randn(16, 4), torch.zeros(16, 4, requires_grad=True)
        >>> a = torch.randn(16)
        >>> taylornet.taylor_net(x, w0, w, a, order=2, sign_seed=(0, 1)).shape
        torch.Size([8])
    """
    return _net(x, w0, w, a, b0, b, signs, sign_seed, _plan(activation, order), scale)


def taylor_net_moments(x: Tensor, w0: Tensor, w: Tensor, a: Tensor, b0: Tensor | None = None,
                       b: Tensor | None = None, *, activation: str = "tanh", order: Order = 2,
                       scale: float | None = None) -> tuple[Tensor, Tensor]:
    r"""Mean and variance of :func:`taylor_net` over independent, uniformly random neuron signs.

    :math:`E_S f` keeps the even orders; :math:`\mathrm{Var}_S f_j = \text{scale}^2 \sum_r A_{jr}^2
    o_r^2` with :math:`o_r` the odd part of :math:`h_r`. For ``"exact"`` the even and odd parts are
    :math:`(\sigma(z^0 + u) \pm \sigma(z^0 - u)) / 2`. There is no ``signs`` argument: the moments
    average over every sign pattern (:func:`taylor_net` takes one pattern).

    Args:
        x, w0, w, a, b0, b, activation, order, scale: as in :func:`taylor_net`.

    Shape:
        - Inputs: as in :func:`taylor_net`
        - Output: two tensors (mean, var), each of :func:`taylor_net`'s output shape

    Example::

        >>> x, w0, w, a = torch.randn(8, 4), torch.randn(16, 4), 0.1 * torch.randn(16, 4), torch.randn(16)
        >>> mean, var = taylornet.taylor_net_moments(x, w0, w, a, order=3)
        >>> loss = taylornet.expected_squared_loss(mean, var, torch.randn(8)).mean()
    """
    return _moments(x, w0, w, a, b0, b, _plan(activation, order), scale)


def expected_squared_loss(mean: Tensor, var: Tensor, y: Tensor) -> Tensor:
    r""":math:`E_S (f - y)^2 = (E_S f - y)^2 + \mathrm{Var}_S f`, elementwise: the sign-averaged loss.

    Args:
        mean, var: the output of :func:`taylor_net_moments`.
        y: targets, of the prediction's shape, or of shape :math:`(*)` when the prediction is
           :math:`(*, 1)` (one output). Any other shape is a ValueError: broadcasting it would
           silently compute a different loss.

    Shape:
        - mean, var: :math:`(*)` or :math:`(*, c)`
        - Output: the shape of mean

    Example::

        >>> mean, var = torch.zeros(8, 1), torch.ones(8, 1)
        >>> taylornet.expected_squared_loss(mean, var, torch.ones(8)).shape
        torch.Size([8, 1])
    """
    return (mean - _targets_like(y, mean)) ** 2 + var


def _targets_like(y: Tensor, prediction: Tensor) -> Tensor:
    """``y`` with the prediction's shape, or a ValueError naming both shapes."""
    _require_tensor("y", y)
    if y.shape == prediction.shape:
        return y
    if prediction.dim() >= 1 and prediction.shape[-1] == 1 and y.shape == prediction.shape[:-1]:
        return y.unsqueeze(-1)
    raise ValueError(
        f"y: expected shape {tuple(prediction.shape)} (the prediction's)"
        + (f" or {tuple(prediction.shape[:-1])}" if prediction.dim() >= 1 and prediction.shape[-1] == 1 else "")
        + f", got {tuple(y.shape)}"
    )


def philox_signs(m: int, sign_seed: SignSeed, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> Tensor:
    """The tensor of +-1 that the kernels draw for ``sign_seed``, one sign per neuron.

    Neuron r takes bit ``r % 128`` of Philox4x32-10 (key: the 64-bit seed; counter: the block
    ``r // 128`` and the 64-bit offset); a set bit is -1. With ``(seed, offset, first)`` the neurons are
    ``first, ..., first + m - 1``: a slice of a wider layer draws that layer's signs.

    Args:
        m: number of neurons.
        sign_seed: ``seed``, ``(seed, offset)``, ``(seed, offset, first_neuron)`` or an int64 tensor of
            2 or 3 elements.
        dtype, device: of the result.

    Shape:
        - Output: :math:`(m,)`

    Example::

        >>> taylornet.philox_signs(4, (7, 0))
        tensor([-1.,  1., -1., -1.])
    """
    if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 0:
        raise ValueError(f"m: expected a non-negative int, got {m!r}")
    seed = _seed_tensor(sign_seed)
    if seed is None:
        raise ValueError("sign_seed: expected an int, a (seed, offset) pair or an int64 tensor, got None")
    return _ops_ns.philox_signs(seed, int(m)).to(dtype=dtype, device=device)


# Elements of the per-chunk activation derivatives that ntk_gram holds at once.
_NTK_CHUNK_ELEMENTS = 2**22


def ntk_gram(x1: Tensor, x2: Tensor | None, w0: Tensor, a: Tensor, b0: Tensor | None = None, *,
             activation: str = "tanh", scale: float | None = None, bias: bool = False,
             chunk: int | None = None) -> Tensor:
    r"""The neural tangent kernel of the two-layer model in its movement, at zero movement.

    For :math:`f_j(x) = \text{scale} \sum_r A_{jr}\,\sigma(w^0_r \cdot x + b^0_r + w_r \cdot x + b_r)`
    the Jacobian in :math:`w_r` at :math:`w = 0` is :math:`\text{scale}\,A_{jr}\,\sigma'(z^0_r(x))\,x`,
    the same for the full network and its Taylor models of every order :math:`\geq 1`, so

    .. math::
        K_{jk}(x, x') = (x \cdot x' + [\text{bias}])\;\text{scale}^2
        \sum_r A_{jr} A_{kr}\, \sigma'(z^0_r(x))\, \sigma'(z^0_r(x')).

    The sum over neurons runs in chunks through the fused features op: no :math:`n \times m`
    Jacobian, memory :math:`O(n_1 n_2 c^2 + (n_1 + n_2) \cdot \text{chunk})`.

    Args:
        x1: first inputs.
        x2: second inputs; None: ``x1``.
        w0, b0: the initialization (``b0`` may be None).
        a: the readout.
        activation: one of :data:`taylornet.ACTIVATIONS`.
        scale: the readout scale; None: :math:`1/\sqrt{m}`.
        bias: whether the movement has a bias ``b`` (trained with ``w``): adds 1 to :math:`x \cdot x'`.
        chunk: neurons per chunk (default: about 4M elements of derivatives per chunk).

    Shape:
        - x1: :math:`(n_1, d)`; x2: :math:`(n_2, d)`; w0: :math:`(m, d)`; b0: :math:`(m,)`
        - a: :math:`(m,)` or :math:`(c, m)`
        - Output: :math:`(n_1, n_2)` when a is :math:`(m,)`, :math:`(n_1, n_2, c, c)` when a is
          :math:`(c, m)`

    Example::

        >>> net = taylornet.TaylorNet(4, width=64, activation="softplus")
        >>> x = torch.randn(10, 4)
        >>> taylornet.ntk_gram(x, None, net.weight0, net.a[0], activation="softplus").shape
        torch.Size([10, 10])
    """
    if x2 is None:
        x2 = x1
    for name, t in (("x1", x1), ("x2", x2), ("w0", w0)):
        _require_tensor(name, t)
        if t.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D tensor, got shape {tuple(t.shape)}")
    m = w0.shape[0]
    a2, multi = _readout(a, m)
    if a2.shape[1] != m:
        raise ValueError(f"a: expected shape (m,) = ({m},) or (c, {m}), got {tuple(a.shape)}")
    p = _plan(activation, (1,))
    scale = _check_scale(scale, m)
    if chunk is None:
        chunk = max(1, _NTK_CHUNK_ELEMENTS // max(x1.shape[0], x2.shape[0], 1))
    if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1:
        raise ValueError(f"chunk: expected a positive int, got {chunk!r}")
    n1, n2, c = x1.shape[0], x2.shape[0], a2.shape[0]
    weights = scale * a2  # (c, m)
    acc = x1.new_zeros((n1 * c, n2 * c))
    for lo in range(0, m, chunk):
        rows = slice(lo, lo + chunk)
        # The order-1 feature with movement w = 0, b = 1 is c_1(z0) * 1 = sigma'(z0).
        ones = torch.ones(w0[rows].shape[0], dtype=w0.dtype, device=w0.device)
        zeros = torch.zeros_like(w0[rows])
        b0_rows = None if b0 is None else b0[rows]
        d1 = _features(x1, w0[rows], zeros, b0_rows, ones, None, None, p)
        d2 = d1 if x2 is x1 else _features(x2, w0[rows], zeros, b0_rows, ones, None, None, p)
        j1 = (d1[:, None, :] * weights[None, :, rows]).reshape(n1 * c, -1)
        j2 = j1 if x2 is x1 else (d2[:, None, :] * weights[None, :, rows]).reshape(n2 * c, -1)
        acc += j1 @ j2.T
    gram = acc.reshape(n1, c, n2, c).permute(0, 2, 1, 3)
    inner = x1 @ x2.T
    if bias:
        inner = inner + 1
    gram = inner[:, :, None, None] * gram
    return gram if multi else gram[:, :, 0, 0]
