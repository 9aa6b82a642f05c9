"""Inputs and callables: one call of a case under an implementation.

    taylornet   tn.taylor_features / tn.taylor_net / tn.taylor_net_moments   (the fused ops)
    eager       taylornet.reference.*  under eager autograd
    compiled    taylornet.reference.*  wrapped in torch.compile(fullgraph=True, dynamic=False)

Forward ops run under ``torch.no_grad()`` with no input requiring grad (inference). Forward+backward
ops make the inputs in ``case.grad_wrt`` require grad (by default only ``w``, the trainable movement:
the training setting), run the forward and ``torch.autograd.grad`` with a fixed random cotangent,
so nothing accumulates into ``.grad`` between calls.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from .cases import Case

# Dynamo warns once per process that it traces through the lru_cache of the reference's
# coefficient polynomials; harmless here (the cached values are pure functions of the order).
warnings.filterwarnings("ignore", message=r".*functools\.lru_cache.*", category=UserWarning)


@dataclass
class Inputs:
    tensors: dict                       # x, w0, w, a, b0, b, signs (None where unused)
    cotangents: tuple = ()              # backward ops: one per output
    wrt: tuple = ()                     # names of the inputs differentiated
    nbytes: int = 0                     # all of the above, bytes


def input_bytes(case: Case) -> int:
    """Bytes of ``make_inputs(case)``, without allocating them."""
    n, d, m, c = case.n, case.d, case.m, case.outputs
    numel = n * d + 2 * m * d
    if case.family != "features":
        numel += c * m
    if case.bias:
        numel += 2 * m
    if case.signs and case.family != "moments":
        numel += m
    if case.backward:
        out = n * m if case.family == "features" else n * c
        numel += out * (2 if case.family == "moments" else 1)
    return numel * torch.empty((), dtype=getattr(torch, case.dtype)).element_size()


def make_inputs(case: Case, seed: int = 0) -> Inputs:
    """Deterministic inputs for ``case`` (the same in the timing process and the memory worker)."""
    dtype = getattr(torch, case.dtype)
    dev = torch.device(case.device)
    g = torch.Generator(device=dev).manual_seed(seed)
    n, d, m, c = case.n, case.d, case.m, case.outputs

    def normal(*shape, std=1.0):
        return torch.randn(shape, generator=g, device=dev, dtype=dtype).mul_(std)

    t = {
        "x": normal(n, d),
        "w0": normal(m, d, std=1 / math.sqrt(d)),           # frozen initialization
        "w": normal(m, d, std=0.1 / math.sqrt(d)),          # the movement, away from zero
        "a": None, "b0": None, "b": None, "signs": None,
    }
    if case.family != "features":
        shape = (m,) if c == 1 else (c, m)
        t["a"] = (torch.randint(0, 2, shape, generator=g, device=dev) * 2 - 1).to(dtype)
    if case.bias:
        t["b0"] = normal(m, std=0.5)
        t["b"] = normal(m, std=0.05)
    if case.signs and case.family != "moments":
        t["signs"] = (torch.randint(0, 2, (m,), generator=g, device=dev) * 2 - 1).to(dtype)
    wrt = ()
    cot = ()
    if case.backward:
        wrt = tuple(k for k in ("x", "w0", "w", "a") if k in case.grad_wrt and t.get(k) is not None)
        if case.bias:  # a bias trains with its weight
            wrt += tuple(b for b, w in (("b0", "w0"), ("b", "w")) if w in case.grad_wrt)
        for k in wrt:
            t[k].requires_grad_(True)
        out_shape = (n, m) if case.family == "features" else ((n,) if c == 1 else (n, c))
        n_out = 2 if case.family == "moments" else 1
        cot = tuple(normal(*out_shape) for _ in range(n_out))
    nbytes = sum(v.numel() * v.element_size() for v in t.values() if v is not None)
    nbytes += sum(v.numel() * v.element_size() for v in cot)
    return Inputs(tensors=t, cotangents=cot, wrt=wrt, nbytes=nbytes)


def _function(case: Case, impl: str):
    """f(x, w0, w, a, b0, b, signs) -> output(s) for the case's family and implementation."""
    import taylornet as tn
    from taylornet import reference

    lib = tn if impl == "taylornet" else reference
    kw = dict(activation=case.activation, order=case.order)
    if case.family == "features":
        def f(x, w0, w, a, b0, b, signs):
            return lib.taylor_features(x, w0, w, b0, b, signs=signs, **kw)
    elif case.family == "net":
        def f(x, w0, w, a, b0, b, signs):
            return lib.taylor_net(x, w0, w, a, b0, b, signs=signs, **kw)
    else:
        def f(x, w0, w, a, b0, b, signs):
            return lib.taylor_net_moments(x, w0, w, a, b0, b, **kw)
    return f


def compile_options(case: Case, mode: str | None) -> dict:
    """torch.compile settings: default mode on CPU, max-autotune without CUDA graphs on CUDA."""
    if mode is None:
        mode = "max-autotune-no-cudagraphs" if case.device == "cuda" else "default"
    return dict(fullgraph=True, dynamic=False, mode=None if mode == "default" else mode)


def compiled_function(case: Case, mode: str | None = None, dynamic: bool = False):
    """The reference function of ``case`` under torch.compile. With ``dynamic`` one compilation
    serves every width of the case's series (the width sweep); the timed cases use static shapes."""
    options = compile_options(case, mode)
    options["dynamic"] = dynamic
    return torch.compile(_function(case, "reference"), **options)


def make_call(case: Case, impl: str, inputs: Inputs, compile_mode: str | None = None, fn=None):
    """A zero-argument callable doing one call of ``case`` with ``impl``; returns (outputs, grads).

    For "compiled" the first call compiles (callers run it outside the timing); ``fn`` replaces the
    function called (an already compiled one).
    """
    if impl not in ("taylornet", "eager", "compiled"):
        raise ValueError(f"impl: expected taylornet, eager or compiled, got {impl!r}")
    f = fn
    if f is None:
        f = compiled_function(case, compile_mode) if impl == "compiled" else _function(case, impl)
    t = inputs.tensors
    args = (t["x"], t["w0"], t["w"], t["a"], t["b0"], t["b"], t["signs"])
    if not case.backward:
        def call():
            with torch.no_grad():
                return f(*args), ()
        return call
    wrt = [t[k] for k in inputs.wrt]
    cot = inputs.cotangents

    def call_backward():
        out = f(*args)
        outs = out if isinstance(out, tuple) else (out,)
        return outs, torch.autograd.grad(outs, wrt, cot)
    return call_backward


def snapshot(result, rows: int = 64) -> list[torch.Tensor]:
    """A small float64 copy of a call's outputs and gradients, for the agreement check."""
    outs, grads = result
    outs = outs if isinstance(outs, tuple) else (outs,)
    return [o.detach()[:rows].double().cpu() for o in outs] + [gr.detach().double().cpu() for gr in grads]


def max_rel_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """max over tensors of max|got - want| / max|want| (0 where want is all zero)."""
    worst = 0.0
    for a, b in zip(got, want):
        scale = b.abs().max().item()
        err = (a - b).abs().max().item()
        worst = max(worst, err / scale if scale > 0 else err)
    return worst


def tolerance(case: Case) -> float:
    """Loose agreement bound for the sanity check (a benchmark of wrong results is flagged)."""
    if case.dtype == "float32" and case.device == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return 1e-2  # TF32 products: 10-bit mantissas
    return {"float64": 1e-8, "float32": 1e-3, "bfloat16": 5e-2, "float16": 1e-2}.get(case.dtype, 1e-3)


def prepared_call(case: Case, impl: str, *, compile_mode: str | None = None, warmup: int = 1, seed: int = 0):
    """(call, inputs) with compilation and ``warmup`` calls done; on CUDA the call synchronizes, so
    wall-clock timers (pytest-benchmark) measure the GPU work."""
    if impl == "compiled":
        torch._dynamo.reset()
    inputs = make_inputs(case, seed=seed)
    call = make_call(case, impl, inputs, compile_mode)
    for _ in range(max(1, warmup)):
        call()
    if case.device != "cuda":
        return call, inputs

    def synced():
        out = call()
        torch.cuda.synchronize()
        return out
    return synced, inputs
