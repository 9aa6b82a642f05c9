"""The one list of supported activations and the parsing of ``activation`` / ``order`` arguments.

The ids here are the enum values of ``csrc/taylornet/activations.h``; a test checks that every name
is accepted by the compiled ops.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

ACTIVATIONS: tuple[str, ...] = (
    "tanh", "sigmoid", "softplus", "gelu", "silu", "sin", "cos", "exp", "erf", "relu", "relu2", "relu3",
)

# Highest Taylor order accepted. Coefficients are normalized (sigma^(k)/k!), so nothing overflows,
# but float32 evaluation of the high-degree polynomials loses digits past this point.
MAX_ORDER = 16

_SMOOTH_ALTERNATIVES = "relu2, relu3 or softplus"


def check_activation(activation: str) -> str:
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(
            f"activation: expected one of {', '.join(ACTIVATIONS)}, got {activation!r}"
        )
    return activation


def parse_order(order, activation: str) -> tuple[tuple[int, ...], bool]:
    """Return (sorted orders, exact) for ``order`` = int K, a sequence of distinct ints, or "exact"."""
    check_activation(activation)
    if isinstance(order, str):
        if order != "exact":
            raise ValueError(f"order: expected an int, a sequence of ints or 'exact', got {order!r}")
        return (), True
    if isinstance(order, bool):
        raise TypeError(f"order: expected an int, a sequence of ints or 'exact', got {order!r}")
    if isinstance(order, numbers.Integral):  # int, numpy integers
        order = int(order)
        if order < 0:
            raise ValueError(f"order: expected a non-negative int, got {order}")
        orders = tuple(range(order + 1))
    elif isinstance(order, Sequence):
        orders = tuple(order)
        if len(orders) == 0:
            raise ValueError("order: expected at least one order, got an empty sequence")
        for k in orders:
            if isinstance(k, bool) or not isinstance(k, numbers.Integral):
                raise TypeError(f"order: every order must be an int, got {k!r} in {order!r}")
            if k < 0:
                raise ValueError(f"order: orders must be non-negative, got {k} in {order!r}")
        if len(set(orders)) != len(orders):
            raise ValueError(f"order: orders must be distinct, got {order!r}")
        orders = tuple(sorted(int(k) for k in orders))
    else:
        raise TypeError(f"order: expected an int, a sequence of ints or 'exact', got {order!r}")
    if orders[-1] > MAX_ORDER:
        raise ValueError(f"order: orders up to {MAX_ORDER} are supported, got {orders[-1]}")
    if activation == "relu" and orders[-1] >= 2:
        raise ValueError(
            "order: relu has no derivatives of order >= 2 (they vanish almost everywhere, so those "
            f"Taylor terms would be zero); use a smooth activation such as {_SMOOTH_ALTERNATIVES}, "
            "or order <= 1 / 'exact' with relu"
        )
    return orders, False
