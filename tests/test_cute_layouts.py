"""The layouts behind the CUDA kernels, held against CuTe's (CUTLASS) layouts of the same instructions:
the fragment layouts of ldmatrix and mma.sync and the wgmma accumulators as the CPU emulator models
them (tests/emulator), the 128-byte swizzled operand tiles, the wgmma descriptors and the bytes each
one reads (csrc/cuda/sm90/layout.h and the emulator's model), where a tensor copy puts a box, and
the tensor maps' driver arguments (csrc/cuda/sm90/tile_map.h) against those of CuTe's
make_tma_copy; and the hand-written PTX (wgmma, mma.sync, ldmatrix, cp.async, tensor copies,
mbarriers, fences, named barriers) against CuTe's and CUTLASS's of the same instructions, compiled
by nvcc (skipped without it). CuTe's layouts and atoms are what its kernels run with on the
hardware and are written apart from this project's reading of the PTX ISA, so a misreading that the
kernels and the emulator share shows up here. The checks are the host program
tests/cute_layouts.cpp and the kernel pairs of tests/cute_instructions.cu; CuTe's headers come from
the ``nvidia-cutlass`` wheel (``make test`` installs it)."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from _utils import cuda_include, nvcc

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


# ---- the instructions: tests/cute_instructions.cu through nvcc to PTX ----

INSTRUCTION_CASES = ("wgmma_bf16", "wgmma_f16", "wgmma_sync", "mma_bf16", "mma_f16", "mma_tf32", "ldsm_x1",
                     "ldsm_x2", "ldsm_x4", "ldsm_x1_trans", "ldsm_x2_trans", "ldsm_x4_trans", "cp_async", "tma_2d",
                     "barriers", "mbarrier_wait")
# the instructions compared
TRACED = ("wgmma.", "mma.", "ldmatrix.", "cp.async", "mbarrier.", "fence.", "bar.")


def _operands(text: str) -> list[str]:
    """Top-level comma-separated operands; vectors {..} and addresses [..] stay whole."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch in "{[") - (ch in "}]")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


_SIZES = {"f32": 4, "u32": 4, "b32": 4, "s32": 4, "u64": 8, "b64": 8, "s64": 8}


def _normalized(opcode: str, ops: list[str]) -> tuple[str, list[str]]:
    """Drops what only hints: the L2 modifiers (a prefetch size; a cache policy, with its operand)
    and the copy engine's default load mode, `.tile`."""
    mods = opcode.split(".")
    if "L2::cache_hint" in mods:
        ops = ops[:-1]
    return ".".join(m for m in mods if not m.startswith("L2::") and not (m == "tile" and "bulk" in mods)), ops


def traced_instructions(ptx: str, kernel: str) -> list[tuple]:
    """The kernel's wgmma / mma / ldmatrix instructions, each as (its modifiers as a set, its operands
    with every register replaced by where its value comes from: a kernel parameter's element
    ``param<k>[<byte offset>]``, an instruction of such values, or for a register the instruction
    writes, the element it is stored to). The test kernels write each register once."""
    start = ptx.find(f".entry {kernel}(")
    assert start >= 0, f"no kernel {kernel} in the PTX"
    ends = [i for i in (ptx.find(mark, start + 1) for mark in ("\n.visible", "// .globl", ".entry ")) if i >= 0]
    text = ptx[start:min(ends, default=len(ptx))].split(")", 1)[1]  # after the parameter list
    text = re.sub(r"//[^\n]*", "", text).replace(f"{kernel}_param_", "param_")
    parsed = []
    predicates: set[str] = set()
    for st in text.split(";"):
        # the braces that open and close inline asm blocks and call sequences come before an
        # opcode; those of vector operands after it
        st = " ".join(re.sub(r"\$\w+:", " ", st).split()).lstrip("{} ")
        if st.startswith(".reg .pred ") and "<" not in st:  # an inline asm block's own predicate
            predicates.add(st.split()[-1])
        if not st or st.startswith((".", "ret")):
            continue
        opcode, _, rest = st.partition(" ")
        parsed.append(_normalized(opcode, _operands(rest)))
    defs: dict[str, str] = {}
    stores: dict[str, str] = {}

    def label(tok: str) -> str:
        return defs.get(tok) or stores.get(tok) or ("pred" if tok in predicates else tok)

    def address(op: str) -> tuple[str, int]:
        m = re.fullmatch(r"\[\s*([%\w]+)\s*(?:\+\s*(-?\d+))?\s*\]", op)
        assert m, op
        return label(m.group(1)), int(m.group(2) or 0)

    def elements(op: str) -> list[str]:
        return [t.strip() for t in op.strip("{}").split(",")] if op.startswith("{") else [op]

    for opcode, ops in parsed:
        if opcode.startswith(TRACED):
            continue
        if opcode.startswith("ld.param"):
            defs[ops[0]] = ops[1].strip("[]").replace("param_", "param")
        elif opcode.startswith(("cvta.to.global", "mov")):
            defs[ops[0]] = label(ops[1])
        elif opcode.startswith(("ld.global", "st.global")):
            stored = opcode.startswith("st")
            base, off = address(ops[0] if stored else ops[1])
            size = _SIZES[opcode.split(".")[-1]]
            for i, reg in enumerate(elements(ops[1] if stored else ops[0])):
                (stores if stored else defs)[reg] = f"{base}[{off + i * size}]"
        elif ops:
            defs[ops[0]] = f"{opcode}(" + ", ".join(label(t) for t in ops[1:]) + ")"

    def show(op: str) -> str:
        if re.fullmatch(r"\[\s*[%\w]+\s*(?:\+\s*-?\d+)?\s*\]", op):
            base, off = address(op)
            return f"[{base}+{off}]"
        if op.startswith("["):  # a tensor's address and coordinates: [map, {c0, c1}]
            return re.sub(r"%?\w+", lambda m: label(m.group(0)), op)
        if op.startswith("{"):
            return "{" + ", ".join(label(t) for t in elements(op)) + "}"
        return label(op)

    return [(frozenset(opcode.split(".")), tuple(show(op) for op in ops))
            for opcode, ops in parsed if opcode.startswith(TRACED)]


@pytest.fixture(scope="module")
def instructions_ptx(tmp_path_factory) -> str:
    compiler, cute = nvcc(), cute_include()
    if compiler is None:
        pytest.skip("no nvcc (set CUDA_HOME)")
    if cute is None:
        pytest.skip("no CuTe headers: pip install --no-deps nvidia-cutlass")
    out = tmp_path_factory.mktemp("cute_ptx") / "instructions.ptx"
    # NDEBUG: CuTe's asserts would add branches and calls around the instructions
    cmd = [compiler, "-std=c++20", "-O3", "-DNDEBUG", "-gencode=arch=compute_90a,code=compute_90a", "--ptx",
           f"-I{cute}", f"-I{ROOT / 'csrc'}", str(ROOT / "tests" / "cute_instructions.cu"), "-o", str(out)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, f"{' '.join(cmd)}\n{build.stderr[-4000:]}"
    return out.read_text()


@pytest.mark.parametrize("case", INSTRUCTION_CASES)
def test_instruction_matches_cute(instructions_ptx, case):
    ours = traced_instructions(instructions_ptx, f"ours_{case}")
    theirs = traced_instructions(instructions_ptx, f"cute_{case}")
    assert ours, f"ours_{case} issues none of {TRACED}"
    assert ours == theirs, f"{case}:\nours  {ours}\nCuTe  {theirs}"
