"""User-facing functions: argument checks, defaults and batch shapes around the compiled ops.

Shapes: ``x`` is (..., d); ``w0`` and ``w`` are (m, d); ``b0`` and ``b`` are (m,) or None; ``a`` is
(m,) for one output or (c, m) for c outputs. ``order`` is an int K (orders 0..K), a sequence of
distinct orders, or "exact" (the full network sigma(z0 + s u)). ``signs`` is None or a (m,) tensor of
+-1; ``sign_seed`` asks the kernels to draw the signs themselves from a Philox stream keyed by
(seed, offset), the same on every device (see ``philox_signs``).
"""
from __future__ import annotations

import math
import numbers

import torch

from . import ops as _ops
from .activations import check_activation, parse_order

__all__ = [
    "taylor_features", "taylor_net", "taylor_net_moments", "philox_signs", "expected_squared_loss",
]

_ops_ns = _ops.ops

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _check_tensor(name: str, t, *, like: torch.Tensor | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.is_complex() or not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    if like is not None:
        if t.dtype != like.dtype:
            raise TypeError(f"{name}: expected dtype {like.dtype} (the dtype of x), got {t.dtype}")
        if t.device != like.device:
            raise ValueError(f"{name}: expected device {like.device} (the device of x), got {t.device}")


def _check_shape(name: str, t: torch.Tensor, shape: tuple, what: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {what}, got {tuple(t.shape)}")


def _check_inputs(x, w0, w, b0, b):
    """Validates x, w0, w, b0, b; returns (x as (n, d), leading batch shape, m)."""
    _check_tensor("x", x)
    allowed = _CUDA_DTYPES if x.device.type == "cuda" else _CPU_DTYPES
    if x.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"x: expected dtype {names} on {x.device.type}, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("x: expected at least 1 dimension (..., d), got a scalar")
    for name, t in (("w0", w0), ("w", w)):
        _check_tensor(name, t, like=x)
    if w.dim() != 2:
        raise ValueError(f"w: expected a 2-D tensor (m, d), got shape {tuple(w.shape)}")
    m, d = w.shape
    if m < 1:
        raise ValueError("w: expected at least one neuron (m >= 1), got m = 0")
    if x.shape[-1] != d:
        raise ValueError(f"x: expected last dimension d = {d} (w is {tuple(w.shape)}), got shape {tuple(x.shape)}")
    _check_shape("w0", w0, (m, d), f"(m, d) = {(m, d)} like w")
    for name, t in (("b0", b0), ("b", b)):
        if t is not None:
            _check_tensor(name, t, like=x)
            _check_shape(name, t, (m,), f"(m,) = ({m},)")
    lead = tuple(x.shape[:-1])
    return x.reshape(math.prod(lead), d), lead, m  # not -1: d may be 0


def _check_signs(signs, x: torch.Tensor, m: int):
    if signs is None:
        return None
    if not isinstance(signs, torch.Tensor):
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


def _seed_tensor(sign_seed):
    """(seed, offset[, first neuron]) as the int64 tensor that the ops take.

    The optional third entry is the global index of local neuron 0, so that a slice of the neurons
    (a width-sharded model) draws the same signs as the whole layer.
    """
    if sign_seed is None:
        return None
    if isinstance(sign_seed, torch.Tensor):
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
        return torch.tensor(words, dtype=torch.int64)
    raise TypeError(
        "sign_seed: expected an int, a (seed, offset[, first neuron]) tuple or an int64 tensor, "
        f"got {sign_seed!r}"
    )


def _check_readout(a, x: torch.Tensor, m: int):
    _check_tensor("a", a, like=x)
    if a.dim() == 1:
        _check_shape("a", a, (m,), f"(m,) = ({m},) or (c, m)")
        return a.reshape(1, m), False
    if a.dim() == 2 and a.shape[1] == m:
        return a, True
    raise ValueError(f"a: expected shape (m,) = ({m},) or (c, {m}), got {tuple(a.shape)}")


def _check_scale(scale, m: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(m)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale: expected a positive real number or None, got {scale!r}")
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale: expected a finite positive number, got {scale}")
    return scale


def _check_order(order, activation):
    activation = check_activation(activation)
    orders, exact = parse_order(order, activation)
    return activation, list(orders), exact


def taylor_features(x, w0, w, b0=None, b=None, *, activation="tanh", order=2, signs=None, sign_seed=None):
    """Taylor features h_r(x) = sum_{k in O} c_k(z0_r) (s_r u_r)^k, shape (..., m).

    z0 = x w0^T + b0 (frozen initialization), u = x w^T + b (movement), c_k = sigma^(k) / k!.
    """
    activation, orders, exact = _check_order(order, activation)
    x2, lead, m = _check_inputs(x, w0, w, b0, b)
    signs = _check_signs(signs, x, m)
    seed = _seed_tensor(sign_seed)
    if signs is not None and seed is not None:
        raise ValueError("signs / sign_seed: pass at most one of them")
    if _keeps_derivatives(x2, w0, w, b0, b):
        need_dz = x.requires_grad or w0.requires_grad or (b0 is not None and b0.requires_grad)
        out = _ops_ns.features_saving(x2, w0, w, b0, b, signs, seed, activation, orders, exact, need_dz)[0]
    else:
        out = _ops_ns.features(x2, w0, w, b0, b, signs, seed, activation, orders, exact)
    return out.reshape(*lead, m)


# From this input dimension on, a CPU forward that will be differentiated keeps dh/du (and dh/dz0
# when x, w0 or b0 need gradients): one or two n x m tensors, the size of the output, in exchange for
# not recomputing x w0^T and x w^T (4nmd FLOPs) in the backward. Below it the fused kernels
# recompute them faster than the extra n x m traffic would cost (measured: docs/benchmarks.md).
KEEP_DERIVATIVES_MIN_DIM = 128


def _keeps_derivatives(x2, w0, w, b0, b) -> bool:
    if x2.device.type != "cpu" or x2.shape[1] < KEEP_DERIVATIVES_MIN_DIM or not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in (x2, w0, w, b0, b))


def taylor_net(x, w0, w, a, b0=None, b=None, *, activation="tanh", order=2, signs=None, scale=None,
               sign_seed=None):
    """Two-layer Taylor network f_j(x) = scale * sum_r A_jr h_r(x).

    Returns shape (...) when ``a`` is (m,), (..., c) when ``a`` is (c, m). Never materializes an
    n x m tensor, forward or backward.
    """
    activation, orders, exact = _check_order(order, activation)
    x2, lead, m = _check_inputs(x, w0, w, b0, b)
    a2, multi = _check_readout(a, x, m)
    scale = _check_scale(scale, m)
    signs = _check_signs(signs, x, m)
    seed = _seed_tensor(sign_seed)
    if signs is not None and seed is not None:
        raise ValueError("signs / sign_seed: pass at most one of them")
    out = _ops_ns.net(x2, w0, w, a2, b0, b, signs, seed, activation, orders, exact, scale)
    return out.reshape(*lead, a2.shape[0]) if multi else out.reshape(lead)


def taylor_net_moments(x, w0, w, a, b0=None, b=None, *, activation="tanh", order=2, signs=None, scale=None):
    """(E_S f, Var_S f): mean and variance of ``taylor_net`` over independent uniform signs.

    E_S f keeps the even orders, Var_S f = scale^2 sum_r A_jr^2 (odd part of h_r)^2; for "exact"
    the even and odd parts are (sigma(z0 + u) +- sigma(z0 - u)) / 2. Shapes as ``taylor_net``.
    ``signs`` is accepted for a signature shared with ``taylor_net`` and must be None: the moments
    average over all signs.
    """
    _check_no_signs(signs)
    activation, orders, exact = _check_order(order, activation)
    x2, lead, m = _check_inputs(x, w0, w, b0, b)
    a2, multi = _check_readout(a, x, m)
    scale = _check_scale(scale, m)
    mean, var = _ops_ns.moments(x2, w0, w, a2, b0, b, activation, orders, exact, scale)
    shape = (*lead, a2.shape[0]) if multi else lead
    return mean.reshape(shape), var.reshape(shape)


def _check_no_signs(signs) -> None:
    if signs is not None:
        raise ValueError("signs: the moments average over uniformly random signs; pass signs=None "
                         "(use taylor_net for one sign pattern)")


def expected_squared_loss(mean, var, y):
    """E_S (f - y)^2 = (E_S f - y)^2 + Var_S f, elementwise: the sign-averaged loss, without sampling."""
    return (mean - y) ** 2 + var


def philox_signs(m: int, sign_seed, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """The (m,) tensor of +-1 that the kernels draw for ``sign_seed`` = seed or (seed, offset[, first])."""
    if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 0:
        raise ValueError(f"m: expected a non-negative int, got {m!r}")
    seed = _seed_tensor(sign_seed)
    if seed is None:
        raise ValueError("sign_seed: expected an int, a (seed, offset) pair or an int64 tensor, got None")
    return _ops_ns.philox_signs(seed, int(m)).to(dtype=dtype, device=device)
