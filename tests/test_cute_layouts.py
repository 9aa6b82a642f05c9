"""The layouts behind the CUDA kernels, held against CuTe's (CUTLASS) layouts of the same instructions:
the fragment layouts of ldmatrix and mma.sync and the wgmma accumulators as the CPU emulator models
them (tests/emulator), the 128-byte swizzled operand tiles, the wgmma descriptors and the bytes each
one reads (csrc/cuda/sm90/layout.h and the emulator's model), where a tensor copy puts a box, and
the tensor maps' driver arguments (csrc/cuda/sm90/tile_map.h) against those of CuTe's
make_tma_copy. CuTe's layouts are what its kernels run with on the hardware and are written apart
from this project's reading of the PTX ISA, so a misreading that the kernels and the emulator share
shows up here. The checks are the host program tests/cute_layouts.cpp; CuTe's headers come from the
``nvidia-cutlass`` wheel (``make test`` installs it)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from _utils import cuda_include

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ("ldmatrix", "mma_sync", "wgmma_accumulators", "operand_tiles", "descriptors", "descriptor_reads",
          "tma_boxes", "tensor_maps")


def cute_include() -> Path | None:
    """CuTe's and CUTLASS's headers as the nvidia-cutlass wheel ships them (found without importing
    its Python package, whose own dependencies the headers do not need)."""
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        inc = Path(location) / "source" / "include"
        if (inc / "cute" / "tensor.hpp").exists():
            return inc
    return None


@pytest.fixture(scope="module")
def checks(tmp_path_factory) -> dict[str, str]:
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler ({cxx})")
    cute, cuda = cute_include(), cuda_include()
    if cute is None:
        pytest.skip("no CuTe headers: pip install --no-deps nvidia-cutlass")
    if cuda is None:
        pytest.skip("no CUDA headers (set CUDA_HOME)")
    # CUTLASS includes libcu++ (<cuda/std/...>), which CUDA 13 keeps in include/cccl.
    cccl = [f"-I{d}" for d in (Path(cuda) / "cccl",) if (d / "cuda" / "std" / "utility").exists()]
    exe = tmp_path_factory.mktemp("cute") / "cute_layouts"
    # The emulator's folder first: its mma.h stands in for CUDA's. CuTe writes its call of the driver's
    # cuTensorMapEncodeTiled only where it sees nvcc's version macro; the program defines that
    # function itself and records the arguments.
    cmd = [cxx, "-std=c++20", "-O1", "-Wno-attributes", "-D__CUDACC_VER_MAJOR__=13",
           f"-I{ROOT / 'tests' / 'emulator'}", f"-I{cute}", *cccl, f"-I{cuda}", f"-I{ROOT / 'csrc'}",
           str(ROOT / "tests" / "cute_layouts.cpp"), "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, f"{' '.join(cmd)}\n{build.stderr[-4000:]}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    results = {}
    for line in run.stdout.splitlines():  # CuTe's host-side descriptor prints a line of its own too
        if line.startswith("ok "):
            _, name, cases = line.split()
            results[name] = f"ok ({cases} cases)"
        elif line.startswith("FAIL "):
            name, _, what = line[5:].partition(": ")
            results[name] = f"FAIL: {what}"
    assert set(results) == set(CHECKS), f"checks reported: {sorted(results)}\n{run.stdout[-2000:]}{run.stderr[-2000:]}"
    failed = {k: v for k, v in results.items() if not v.startswith("ok")}
    assert (run.returncode != 0) == bool(failed), f"exit {run.returncode} with {results}"
    return results


@pytest.mark.parametrize("check", CHECKS)
def test_layout_matches_cute(checks, check):
    assert checks[check].startswith("ok"), f"{check}: {checks[check]}"
