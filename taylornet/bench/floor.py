"""The compute floor: a case's matrix FLOPs (flops.py) at the rate of a compute-bound matmul,
2048 x 2048 x 2048 by torch.mm on the same device and dtype, measured in the same run.

No implementation of a case can beat its floor by much: the floor is the products alone at the
BLAS's best rate, with no epilogue and no memory traffic beyond the operands. ``×floor`` in the
table is t / t_floor (1.0 is the floor itself; the fused ops aim at 1.5 or less).
"""
from __future__ import annotations

import torch

from ..utils import timing

SIZE = 2048


class FloorRate:
    """A callable running one SIZE^3 product into a preallocated output; ``rate(seconds)`` turns its
    time into FLOP/s."""

    def __init__(self, device: str, dtype: str, seed: int = 0):
        dt = getattr(torch, dtype)
        g = torch.Generator(device=device).manual_seed(seed)
        self.a = torch.randn(SIZE, SIZE, generator=g, device=device, dtype=dt)
        self.b = torch.randn(SIZE, SIZE, generator=g, device=device, dtype=dt)
        self.c = torch.empty(SIZE, SIZE, device=device, dtype=dt)
        self.flops = 2 * SIZE**3

    def __call__(self):
        torch.mm(self.a, self.b, out=self.c)

    def rate(self, seconds: float) -> float:
        return self.flops / seconds


def measure_rate(device: str, dtype: str, repeats: int = 5) -> float:
    """FLOP/s of the SIZE^3 product: the median of ``repeats`` calls after one warm-up."""
    f = FloorRate(device, dtype)
    f()
    samples = [timing.time_calls(f, 1) for _ in range(repeats)]
    return f.rate(timing.summarize(samples)["median_s"])
