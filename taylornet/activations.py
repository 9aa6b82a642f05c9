"""The supported activations and the parsing of ``activation`` and ``order`` arguments.

The table is the compiled ops' own (``csrc/taylornet/activations.h``), read once at import: the
names in id order and the highest Taylor order each one accepts. Every ``order`` argument of the
package, of the functions, the modules, ``taylorize`` and the benchmark, goes through
``parse_order``.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

from .ops import ops as _ops

__all__ = ["ACTIVATIONS", "MAX_ORDER", "Order", "check_activation", "parse_order"]

#: The supported activation names, in the order of the kernels' ids.
ACTIVATIONS: tuple[str, ...] = tuple(_ops.activations())

_ORDER_LIMITS: dict[str, int] = {name: int(_ops.max_order(name)) for name in ACTIVATIONS}

#: Highest Taylor order accepted by the compiled ops.
MAX_ORDER: int = max(_ORDER_LIMITS.values())

#: An ``order`` argument: an int K (orders 0..K), a sequence of distinct orders, or "exact".
Order = int | Sequence[int] | str

_SMOOTH_ALTERNATIVES = "relu2, relu3 or softplus"
_ORDER_KINDS = "an int, a sequence of ints or 'exact'"


def check_activation(activation: str) -> str:
    """``activation`` if it is one of ``ACTIVATIONS``; ValueError naming them otherwise."""
    if not isinstance(activation, str) or activation not in _ORDER_LIMITS:
        raise ValueError(f"activation: expected one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    return activation


def parse_order(order: Order, activation: str | None = None, *,
                max_order: int | None = MAX_ORDER) -> tuple[tuple[int, ...], bool]:
    """``(orders, exact)``: the sorted orders of ``order``, and whether it is "exact" (orders empty).

    Args:
        order: an int K (the orders 0, 1, ..., K), a sequence of distinct non-negative ints, or
            ``"exact"``.
        activation: when given, the orders must be ones that activation accepts (relu: up to 1).
        max_order: the highest order accepted; None for no limit.

    Raises TypeError for an argument of the wrong kind and ValueError for a wrong value, each naming
    ``order``.
    """
    if activation is not None:
        check_activation(activation)
    if isinstance(order, str):
        if order != "exact":
            raise ValueError(f"order: expected {_ORDER_KINDS}, got {order!r}")
        return (), True
    if isinstance(order, bool):
        raise TypeError(f"order: expected {_ORDER_KINDS}, got {order!r}")
    if isinstance(order, numbers.Integral):  # int, numpy integers
        if order < 0:
            raise ValueError(f"order: expected a non-negative int, got {order}")
        orders = tuple(range(int(order) + 1))
    elif isinstance(order, Sequence):
        orders = tuple(order)
        if not orders:
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
        raise TypeError(f"order: expected {_ORDER_KINDS}, got {order!r}")
    if max_order is not None and orders[-1] > max_order:
        raise ValueError(f"order: orders up to {max_order} are supported, got {orders[-1]}")
    limit = _ORDER_LIMITS[activation] if activation is not None else None
    if limit is not None and orders[-1] > limit:
        raise ValueError(
            f"order: {activation} has no derivatives of order >= {limit + 1} (they vanish almost "
            f"everywhere, so those Taylor terms would be zero); use a smooth activation such as "
            f"{_SMOOTH_ALTERNATIVES}, or order <= {limit} / 'exact' with {activation}"
        )
    return orders, False
