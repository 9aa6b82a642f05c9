"""Fused ops vs the autograd reference (eager, torch.compile) and the matmul ceiling, per case."""
import gc

import pytest
import torch

from taylornet.bench.flops import MatmulCeiling, model_flops
from taylornet.bench.workloads import prepared_call


def _runner(case, impl):
    if case.device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if impl == "matmul":
        mm = MatmulCeiling(case, max_bytes=float("inf"))
        if case.device == "cuda":
            def call():
                mm()
                torch.cuda.synchronize()
            return call
        return mm
    try:
        call, _inputs = prepared_call(case, impl)
    except NotImplementedError as exc:  # e.g. a device the fused kernels do not cover yet
        pytest.skip(f"{impl} unavailable: {str(exc).splitlines()[0]}")
    return call


def test_op(benchmark, case, impl):
    benchmark.group = case.label()
    benchmark.extra_info.update(impl=impl, flops=model_flops(case), **case.to_dict())
    call = _runner(case, impl)
    gc.collect()
    benchmark(call)
    median = benchmark.stats.stats.median
    benchmark.extra_info["gflops_per_s"] = model_flops(case) / median / 1e9 if median else None
