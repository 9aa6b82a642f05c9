"""The CUDA launch layer and its kernels, SIMT and tensor-core, run on the CPU under the emulator of
tests/emulator, op by op as the CUDA implementation calls them, and checked against float64 sums of
the shared epilogue: problem set-up, the plan's tables, the reductions' terms for every needs-mask,
dA's combination, output casts, tiles and their edges, shared-memory staging, barriers, wmma
fragment use (under a scrambled fragment layout), the mma.sync mainloop's lane arithmetic (ldmatrix
and mma.sync emulated with the PTX ISA's fragment layouts), the sm_90a wgmma mainloop (wgmma.mma_async
from shared-memory descriptors with the 128-byte swizzle, its commit groups and waits, emulated from
the PTX ISA), split reductions, signs, biases, and (built with
AddressSanitizer) that every access stays inside its buffer; plus the kernel choice and the messages
of failed launches. Needs a C++20 compiler and the CUDA headers (cuda_fp16.h, cuda_bf16.h,
cuda_runtime.h); skipped without them. A real GPU run is tests/test_cuda.py."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from _utils import cuda_include

ROOT = Path(__file__).resolve().parents[1]
EMULATOR = ROOT / "tests" / "emulator"
# dtype/mainloop: float32 runs as TF32 on the tensor-core mainloops (mma.sync and wmma); wgmma has
# kernels for float16 and bfloat16 only.
PATHS = ["f64/simt", "f32/simt", "f32/mma", "f16/mma", "bf16/mma", "f32/wmma", "f16/wmma", "bf16/wmma",
         "f16/wgmma", "bf16/wgmma"]
# Built binaries, one per hash of everything that goes into them (TAYLORNET_EMULATOR_CACHE overrides).
CACHE = Path(os.environ.get("TAYLORNET_EMULATOR_CACHE", ROOT / "build" / "emulator"))

# Building the emulator takes a minute and its runs a few: the whole module is a long test.
pytestmark = pytest.mark.emulator


def _sources_key(cmd: list[str], cxx: str) -> str:
    """A hash of the command, the compiler's version and every source the emulator build reads."""
    h = hashlib.sha256("\0".join(cmd).encode())
    h.update(subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.encode())
    sources = [p for d in (EMULATOR, ROOT / "csrc") for p in sorted(d.rglob("*")) if p.is_file()]
    for path in sources:
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:20]


def build(name: str, flags: list[str]) -> Path:
    """The emulator binary for ``flags``: built once per state of its sources, then reused."""
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler ({cxx})")
    inc = cuda_include()
    if inc is None:
        pytest.skip("no CUDA headers (set CUDA_HOME)")
    # -U_FORTIFY_SOURCE: the fibers switch stacks with _longjmp, which the fortified check rejects.
    cmd = [cxx, "-std=c++20", *flags, "-U_FORTIFY_SOURCE", "-Wno-attributes", f"-I{EMULATOR}",
           f"-I{ROOT / 'csrc'}", f"-I{inc}", str(EMULATOR / "run_kernels.cpp"), "-o"]
    exe = CACHE / _sources_key(cmd, cxx) / name
    if exe.exists():
        return exe
    exe.parent.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_name(f"{name}.{os.getpid()}.tmp")
    res = subprocess.run(cmd + [str(tmp)], capture_output=True, text=True)
    if res.returncode != 0 and any(f.startswith("-fsanitize") for f in flags):
        # the plain build is what checks the code; this one needs the sanitizer runtimes
        pytest.skip(f"{cxx} cannot build with sanitizers here: {res.stderr[-300:]}")
    assert res.returncode == 0, f"emulator build failed:\n{' '.join(cmd)}\n{res.stderr[-4000:]}"
    os.replace(tmp, exe)  # atomic: a concurrent run sees the whole binary or none
    return exe


def run_checks(exe: Path, *args: str, env: dict | None = None, sanitized: bool = False) -> None:
    run = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, **(env or {})})
    checks = [ln for ln in run.stdout.splitlines() if ln.startswith(("ok", "FAIL"))]
    if sanitized and not checks and "Sanitizer" in run.stderr and "ERROR: AddressSanitizer" not in run.stderr:
        pytest.skip(f"the sanitizer runtime does not start here: {run.stderr[-300:]}")
    assert checks, f"no checks ran ({' '.join(args)}):\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    failed = [ln for ln in checks if ln.startswith("FAIL")]
    assert run.returncode == 0 and not failed, (
        f"{len(failed)} of {len(checks)} emulated kernel checks failed (exit {run.returncode}):\n"
        + "\n".join(failed[:40]) + f"\n{run.stderr[-4000:]}")


@pytest.fixture(scope="module")
def emulator():
    return build("run_kernels", ["-O2"])


@pytest.mark.parametrize("path", PATHS)
def test_cuda_kernels_under_the_emulator(emulator, path):
    # The fixed matrix (shapes off every tile edge x four configurations), two needs-masks per op
    # and case, and every needs-mask of every op on one small problem.
    run_checks(emulator, path)


def test_kernel_choice_and_launch_failures(emulator):
    # The mainloop decision for every dtype, device and request; the messages of a missing kernel
    # image and a failed launch, raised through the layer; the plan tables' capacity.
    run_checks(emulator, "host/")


def test_wgmma_overlap_kernels(emulator):
    # The wgmma reductions whose next tile's wgmmas run under the previous tile's epilogue and stage
    # 2: tiles of 2, 4 and 1 k chunks, several per block; the readout and every gradient against the
    # reference, the overlap kernels having run (also with the copies landing as they are issued),
    # then with TAYLORNET_CUDA_OVERLAP=0 the plain ones,
    # and as many wgmmas issued either way.
    run_checks(emulator, "overlap/")


def test_wgmma_pingpong_features_kernel(emulator):
    # The warp-specialised features forward (a producer warpgroup on the copy engine, two consumer
    # warpgroups taking the block's sample tiles in turn under named barriers): tiles of 1, 2 and 4
    # k chunks, runs of 1 to 8 tiles, every specialised epilogue and the generic one, against the
    # reference and bit for bit against the plain wgmma kernel, the consumers' wgmmas in turns of
    # whole tiles; without tensor maps, the plain one.
    run_checks(emulator, "pingpong/")


def test_recompute_passes_per_op(emulator):
    # The (sample tile, neuron tile) recomputations that each kernel runs, counted by the emulator
    # per launch, as passes over the n x m tiles, for every path at d = 32, 128, 512, 1024 (and an
    # sm_80 shared memory): the forward 1; the backward's parameter gradients (dW, db, dW0, db0, dA
    # together) 1 while their accumulators fit on chip, else one per column group; dX a pass (or
    # its groups) of its own, only when asked for. Every op's outputs are checked as well.
    run_checks(emulator, "passes/")


@pytest.mark.parametrize("path", PATHS)
def test_cuda_kernels_on_random_cases_under_the_emulator(emulator, path):
    # 40 seeded random cases: sizes around the tile edges, any activation, order set, sign source,
    # moments or not, splits (`run_kernels --random K` runs more).
    run_checks(emulator, path, "--random", "40")


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_device_tanh_sech2_against_long_double(emulator, dtype):
    # The SIMT kernels' tanh/sech^2 (one exp, or a series near 0; no tanh call), swept over
    # [-30, 30], sin/cos (their own reduction and polynomials) out to 1e6, and log1p on (0, 1].
    run_checks(emulator, f"{dtype}/math")


def test_tensor_core_fast_math_error(emulator):
    # The tensor-core epilogue's branch-free tanh/sech^2, sigmoid, exp (ex2.approx, rcp.approx) and
    # sin/cos (a Cody-Waite reduction, then the hardware sine) with the PTX ISA's error bounds
    # injected, against long double: at most 1e-5, a small fraction of the bf16/fp16/TF32 rounding
    # that every field then takes.
    run_checks(emulator, "f32/fastmath")


def test_cuda_kernels_read_and_write_only_in_bounds():
    # AddressSanitizer sees the kernels' global and shared accesses as host accesses: a tile that
    # reads past a row of x or writes past an output fails here. Two small shapes keep it quick.
    exe = build("run_kernels_asan", ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"])
    run_checks(exe, "--small", env={"ASAN_OPTIONS": "detect_stack_use_after_return=0:detect_leaks=0"},
               sanitized=True)
