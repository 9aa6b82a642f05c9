"""The FLOP model of the matrix products and the matrix-multiply ceiling on the same shapes.

Per call, with n samples, width m, input dimension d and c readout rows:

    forward     X [W0; W]^T                      4nmd     (the two products z0 and u)
                readout H A^T                    2nmc     (net; moments: mean and variance, 4nmc)
    backward    X [W0; W]^T, recomputed          4nmd
                g = dF A                         2nmc     (net and moments; features get g)
                dW = G^T X                       2nmd     (+2nmd for dW0 when w0 requires grad)
                dX = G W + G0 W0                 4nmd     (only when x requires grad)
                dA = dF^T H                      2nmc     (only when a requires grad)

The epilogue (the Taylor series, O(nmK)) and bias reductions are not counted: the FLOP/s column is
the rate of the model's matrix products, as FlashAttention counts attention FLOPs. The ceiling is
the time the BLAS of this torch build (MKL / cuBLAS) takes for exactly these products on the same
shapes and dtype, with preallocated outputs, measured in the same run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .cases import Case


@dataclass(frozen=True)
class Gemm:
    name: str
    M: int
    K: int
    N: int
    trans_a: bool = False  # A is stored (K, M) and used transposed, as autograd / the kernels see it
    trans_b: bool = False  # B is stored (N, K) and used transposed

    @property
    def flops(self) -> int:
        return 2 * self.M * self.K * self.N


def gemms(case: Case) -> list[Gemm]:
    """The matrix products of one call of ``case`` (the model above)."""
    n, d, m, c = case.n, case.d, case.m, case.outputs
    out = [Gemm("X [W0;W]^T", n, d, 2 * m, trans_b=True)]
    readouts = {"features": 0, "net": 1, "moments": 2}[case.family]
    for i in range(readouts):
        out.append(Gemm("H A^T" if i == 0 else "O^2 (A^2)^T", n, m, c, trans_b=True))
    if not case.backward:
        return out
    wrt = set(case.grad_wrt)
    out.append(Gemm("X [W0;W]^T (recompute)", n, d, 2 * m, trans_b=True))
    for i in range(readouts):
        out.append(Gemm("g = dF A" if i == 0 else "g_var = dV A^2", n, c, m))
    rows = (m if "w" in wrt else 0) + (m if "w0" in wrt else 0)
    if rows:
        out.append(Gemm("[dW;dW0] = [G;G0]^T X", rows, n, d, trans_a=True))
    if "x" in wrt:
        out.append(Gemm("dX = [G G0] [W;W0]", n, 2 * m, d))
    if "a" in wrt and readouts:
        out.append(Gemm("dA = dF^T H", c, n, m, trans_a=True))
    return out


def model_flops(case: Case) -> int:
    return sum(g.flops for g in gemms(case))


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def ceiling_bytes(case: Case, chunk: int = 1) -> int:
    """Memory of the ceiling's operands when m is split into ``chunk`` equal parts."""
    sub = case.with_width(max(1, case.m // chunk))
    numel = sum(math.prod(shape) for shape in _buffer_shapes(gemms(sub)).values())
    return numel * _itemsize(getattr(torch, case.dtype))


def _buffer_shapes(gs: list[Gemm]) -> dict[tuple, tuple]:
    """Distinct operand/output buffers (same shape and role share one buffer)."""
    shapes = {}
    for g in gs:
        a = (g.K, g.M) if g.trans_a else (g.M, g.K)
        b = (g.N, g.K) if g.trans_b else (g.K, g.N)
        for key in (("A",) + a, ("B",) + b, ("C", g.M, g.N)):
            shapes[key] = key[1:]
    return shapes


class MatmulCeiling:
    """A callable running the model's GEMMs for ``case`` with torch.mm into preallocated outputs.

    When the operands of the full width would not fit in ``max_bytes``, m is split into ``chunks``
    equal parts, one part is run, and ``scale`` (= chunks) converts its time to the full width; a
    GEMM of thousands of columns runs at the same rate as its multiple.
    """

    def __init__(self, case: Case, max_bytes: float, seed: int = 0):
        self.case = case
        self.chunks = 1
        while ceiling_bytes(case, self.chunks) > max_bytes and case.m // (self.chunks * 2) >= 1024:
            self.chunks *= 2
        sub = case.with_width(case.m // self.chunks)
        self.gemms = gemms(sub)
        self.flops = model_flops(case)
        dtype = getattr(torch, case.dtype)
        g = torch.Generator(device=case.device).manual_seed(seed)
        buffers = {}
        for key, shape in _buffer_shapes(self.gemms).items():
            t = torch.empty(shape, dtype=dtype, device=case.device)
            if key[0] == "C":
                t.zero_()
            else:
                t.normal_(generator=g)
            buffers[key] = t
        self._calls = []
        for gm in self.gemms:
            a = buffers[("A",) + ((gm.K, gm.M) if gm.trans_a else (gm.M, gm.K))]
            b = buffers[("B",) + ((gm.N, gm.K) if gm.trans_b else (gm.K, gm.N))]
            self._calls.append((a.t() if gm.trans_a else a, b.t() if gm.trans_b else b, buffers[("C", gm.M, gm.N)]))
        self.nbytes = sum(t.numel() * t.element_size() for t in buffers.values())

    @property
    def scale(self) -> int:
        return self.chunks

    def __call__(self):
        for a, b, c in self._calls:
            torch.mm(a, b, out=c)
