"""Shared helpers of the taylornet tests: verbose comparisons, random problems, thread control.

Imported by the test modules as ``from _utils import ...`` (pytest puts tests/ on sys.path).
"""
from __future__ import annotations

import contextlib
import glob
import math
import os
import shutil
import sysconfig

import pytest
import torch


def _worst(actual: torch.Tensor, expected: torch.Tensor, allowed: torch.Tensor, k: int = 5) -> str:
    diff = (actual - expected).abs()
    excess = diff - allowed
    excess = torch.where(torch.isnan(excess), torch.full_like(excess, math.inf), excess)
    flat = excess.reshape(-1)
    k = min(k, flat.numel())
    idx = torch.topk(flat, k).indices
    lines = []
    for i in idx.tolist():
        pos = tuple(torch.unravel_index(torch.tensor(i), actual.shape)) if actual.dim() else ()
        pos = tuple(int(p) for p in pos)
        a, e = actual.reshape(-1)[i].item(), expected.reshape(-1)[i].item()
        lines.append(
            f"    at {pos}: actual {a:+.10e}  expected {e:+.10e}"
            f"  |diff| {diff.reshape(-1)[i].item():.3e}  allowed {allowed.reshape(-1)[i].item():.3e}"
        )
    return "\n".join(lines)


def assert_close_verbose(actual, expected, atol: float = 0.0, rtol: float = 0.0, name: str = "") -> None:
    """|actual - expected| <= atol + rtol |expected| elementwise (NaN only where expected is NaN).

    Shapes must match exactly; dtypes are compared in float64. On failure the message lists the
    worst elements with their indices.
    """
    __tracebackhide__ = True
    assert isinstance(actual, torch.Tensor), f"{name}: expected a tensor, got {type(actual).__name__}"
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    )
    if actual.numel() == 0:
        return
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    allowed = atol + rtol * e.abs()
    diff = (a - e).abs()
    ok = (diff <= allowed) | (torch.isnan(a) & torch.isnan(e)) | ((a == e) & torch.isinf(e))
    if not bool(ok.all()):
        bad = int((~ok).sum())
        raise AssertionError(
            f"{name}: {bad} of {a.numel()} elements differ beyond atol={atol:.3g}, rtol={rtol:.3g} "
            f"(max |diff| {torch.nan_to_num(diff, nan=math.inf).max().item():.3e}); worst:\n"
            + _worst(a, e, allowed)
        )


def max_abs_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if actual.numel() == 0:
        return 0.0
    return (actual.detach().double() - expected.detach().double()).abs().max().item()


def assert_error_bounded(kernel, ref_same, ref64, name: str = "", factor: float = 2.0,
                         rel_atol: float = 1e-6) -> None:
    """FlashAttention-style precision check of a low-precision result against the float64 reference.

    The kernel's error must be at most ``factor`` times the error of the reference evaluated in the
    same precision, plus a small absolute slack of ``rel_atol`` times the largest reference entry
    (about 8 float32 ulps of it): max|kernel - ref64| <= factor * max|ref_same - ref64| + slack.
    """
    __tracebackhide__ = True
    assert tuple(kernel.shape) == tuple(ref64.shape), f"{name}: shape {tuple(kernel.shape)} != {tuple(ref64.shape)}"
    assert kernel.dtype == ref_same.dtype, f"{name}: dtype {kernel.dtype} != {ref_same.dtype}"
    if ref64.numel() == 0:
        return
    assert bool(torch.isfinite(kernel).all()), f"{name}: non-finite values in the kernel result"
    err_kernel = max_abs_err(kernel, ref64)
    err_ref = max_abs_err(ref_same, ref64)
    slack = rel_atol * ref64.abs().max().item() + 1e-30
    bound = factor * err_ref + slack
    if not err_kernel <= bound:
        raise AssertionError(
            f"{name}: kernel error {err_kernel:.3e} > {factor} x same-precision reference error "
            f"{err_ref:.3e} + slack {slack:.3e} (ratio kernel/ref = {err_kernel / max(err_ref, 1e-300):.1f});"
            f" worst elements vs the float64 reference:\n"
            + _worst(kernel.detach().double(), ref64.detach().double(),
                     torch.full_like(ref64, bound, dtype=torch.float64))
        )


@contextlib.contextmanager
def num_threads(k: int):
    """torch.set_num_threads(k) inside the block, restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(k)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def random_signs(m: int, *, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.where(torch.rand(m, generator=g) < 0.5, -1.0, 1.0).to(dtype)
    assert (s == 1).any() and (s == -1).any()
    return s


def make_problem(n=37, d=13, m=131, c=3, *, dtype=torch.float64, bias=True, seed=0,
                 movement=0.3):
    """A random problem {x, w0, w, a, b0, b} with z0 ~ N(0, 1) and a movement u of size ~movement.

    ``c = 0`` gives a 1-D readout ``a`` of shape (m,). ``bias=False`` gives b0 = b = None.
    """
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    p = {
        "x": r(n, d),
        "w0": r(m, d) / math.sqrt(d),
        "w": movement * r(m, d) / math.sqrt(d),
        "a": r(c, m) if c else r(m),
        "b0": 0.5 * r(m) if bias else None,
        "b": movement * r(m) if bias else None,
    }
    return {k: (v.to(dtype) if v is not None else None) for k, v in p.items()}


def non_contiguous(t: torch.Tensor, kind: str = "transpose") -> torch.Tensor:
    """A non-contiguous view with the same values as ``t`` (2-D: transposed storage or a strided slice)."""
    if kind == "transpose" and t.dim() == 2:
        v = t.t().contiguous().t()
    else:
        big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        big[..., ::2] = t
        v = big[..., ::2]
    assert not v.is_contiguous() and torch.equal(v, t)
    return v


def cast(p: dict, dtype) -> dict:
    return {k: (v.detach().to(dtype) if v is not None else None) for k, v in p.items()}


def slow_except(values, quick, ids=None) -> list:
    """``values`` as pytest params, all but those in ``quick`` marked slow: ``make test-quick`` runs a
    representative few, ``make test`` (and CI) every one."""
    out = []
    for i, v in enumerate(values):
        marks = () if v in quick else (pytest.mark.slow,)
        args = v if isinstance(v, tuple) else (v,)
        out.append(pytest.param(*args, marks=marks, id=None if ids is None else ids[i]))
    return out


FEATURE_INPUTS = ("x", "w0", "w", "b0", "b")
NET_INPUTS = ("x", "w0", "w", "a", "b0", "b")


def cuda_include() -> str | None:
    """The CUDA toolkit's include folder (cuda_fp16.h, cuda_bf16.h, cuda_runtime.h), or None:
    $CUDA_HOME, $CUDA_PATH, /usr/local/cuda*, then the pip wheels' nvidia/cu*/include."""
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "include"))
    candidates += ["/usr/local/cuda/include"] + sorted(glob.glob("/usr/local/cuda-*/include"), reverse=True)
    purelib = sysconfig.get_paths()["purelib"]
    candidates += sorted(glob.glob(os.path.join(purelib, "nvidia", "cu*", "include")), reverse=True)
    for inc in candidates:
        if all(os.path.exists(os.path.join(inc, h)) for h in ("cuda_fp16.h", "cuda_bf16.h", "cuda_runtime.h")):
            return inc
    return None


def nvcc() -> str | None:
    """nvcc of $CUDA_HOME, of /usr/local/cuda*, or on PATH; None without one."""
    home = os.environ.get("CUDA_HOME")
    for candidate in ([os.path.join(home, "bin", "nvcc")] if home else []) + \
            sorted(glob.glob("/usr/local/cuda*/bin/nvcc"), reverse=True) + [shutil.which("nvcc") or ""]:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None
