"""pytest-benchmark suite: ``pytest bench/ --benchmark-only``.

Each case is one benchmark group, so taylornet, the eager and the compiled reference and the
matmul ceiling of the same shapes sit side by side in pytest-benchmark's table. Not part of the unit
tests (``pytest`` collects ``tests/`` only).

    --bench-grid quick|core|full   (or TAYLORNET_BENCH_GRID)   default quick: every op at one width
    --bench-device cpu|cuda        (or TAYLORNET_BENCH_DEVICE) default cpu
    --bench-impls LIST             (or TAYLORNET_BENCH_IMPLS)  default taylornet,eager,compiled,matmul

The grids are those of ``taylornet bench`` (taylornet/bench/cases.py); "full" is the full grid
(every op x d in 16, 64, 256 x widths from 2^10 x orders 1, 2, 4, exact x tanh, gelu) and takes hours
on a CPU.
"""
import os

import pytest

pytest.importorskip("pytest_benchmark")

IMPLS_ALL = ("taylornet", "eager", "compiled", "matmul")


def pytest_addoption(parser):
    group = parser.getgroup("taylornet-bench")
    group.addoption("--bench-grid", default=os.environ.get("TAYLORNET_BENCH_GRID", "quick"),
                    choices=["quick", "core", "full"], help="case grid (default quick)")
    group.addoption("--bench-device", default=os.environ.get("TAYLORNET_BENCH_DEVICE", "cpu"),
                    choices=["cpu", "cuda"], help="device (default cpu)")
    group.addoption("--bench-impls", default=os.environ.get("TAYLORNET_BENCH_IMPLS", ",".join(IMPLS_ALL)),
                    help="comma-separated implementations (default: all and the matmul ceiling)")


def pytest_configure(config):
    # torch.compile's tracing of the reference warns about its lru_cache and torch.jit deprecations.
    config.addinivalue_line("filterwarnings", "ignore:Dynamo detected a call to a `functools.lru_cache`")
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:torch.jit")


def bench_cases(config):
    from taylornet.bench.cases import base_settings, grid, normalize

    name = config.getoption("--bench-grid")
    device = config.getoption("--bench-device")
    if name == "quick":
        s = base_settings(device, quick=True)
        s["widths"] = [4096]  # one width per op: the CLI's --quick draws the width dependence
    elif name == "core":
        s = base_settings(device, preset="core" if device == "cpu" else "cuda-target")
    else:
        s = base_settings(device)
    return grid(normalize(s))


def pytest_generate_tests(metafunc):
    if {"case", "impl"} <= set(metafunc.fixturenames):
        cases = bench_cases(metafunc.config)
        impls = [i for i in metafunc.config.getoption("--bench-impls").split(",") if i]
        bad = [i for i in impls if i not in IMPLS_ALL]
        if bad:
            raise pytest.UsageError(f"--bench-impls: unknown {', '.join(bad)} (expected {', '.join(IMPLS_ALL)})")
        params = [pytest.param(c, i, id=f"{c.slug()}-{i}") for c in cases for i in impls]
        metafunc.parametrize(("case", "impl"), params)
