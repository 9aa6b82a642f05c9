"""The arithmetic of the sm_90a wgmma mainloop (csrc/cuda/sm90/layout.h) on the CPU, against the PTX
ISA's definitions written out here independently: the shared-memory matrix descriptor's bit fields,
the 128-byte swizzle, where the descriptor of each k step finds the elements the tiles were stored
at, the wgmma accumulator layout, and that the accumulator registers land where the tensor-core
epilogue expects z0 and u of each (sample, neuron). No GPU: the kernel itself runs on the CPU
emulator's model of wgmma (tests/test_cuda_emulated.py, paths */wgmma) and on an sm_90 device in
tests/test_cuda.py."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")

PROGRAM = r"""
#include <cstdio>
#include <initializer_list>
#include "cuda/sm90/layout.h"
using namespace tn::cuda::sm90;
int main() {
  for (uint32_t start : {0u, 1024u, 0x2400u, 0x1C000u, 0x3FC00u})
    for (uint32_t k = 0; k < 4; ++k)
      std::printf("desc %u %u %llu\n", start, k, (unsigned long long)kmajor_desc(start + 32 * k));
  for (uint32_t row = 0; row < 128; ++row)
    for (uint32_t b = 0; b < 128; ++b) std::printf("tile %u %u %u\n", row, b, tile_offset(row, b));
  for (uint32_t k = 0; k < 4; ++k)
    for (uint32_t row = 0; row < 64; ++row)
      for (uint32_t b = 0; b < 32; ++b)
        std::printf("read %u %u %u %u\n", k, row, b, kmajor_desc_address(kmajor_desc(0x6000 + 32 * k), row, b));
  for (int t = 0; t < 128; ++t)
    for (int i = 0; i < 32; ++i) std::printf("acc %d %d %d %d\n", t, i, acc_row(t, i), acc_col(t, i));
  for (int r = 0; r < 128; ++r) std::printf("brow %d %d %d\n", r, dual_b_neuron(r), dual_b_is_u(r) ? 1 : 0);
}
"""


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    if CXX is None:
        pytest.skip("needs a C++ compiler")
    d = tmp_path_factory.mktemp("sm90")
    (d / "layout.cpp").write_text(PROGRAM)
    exe = d / "layout"
    build = subprocess.run([CXX, "-std=c++20", "-O1", f"-I{ROOT / 'csrc'}", str(d / "layout.cpp"), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    rows: dict[str, list[list[int]]] = {}
    for line in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines():
        kind, *vals = line.split()
        rows.setdefault(kind, []).append([int(v) for v in vals])
    return rows


def test_descriptor_bit_fields(layout):
    # PTX ISA, matrix descriptor of wgmma: start address, LBO, SBO each encoded (x & 0x3FFFF) >> 4
    # at bits 0-13, 16-29, 32-45; base offset 0 at 49-51; swizzle mode 1 (128-byte) at 62-63. K-major
    # with the 128-byte swizzle: SBO = 1024 bytes (8 rows of 128 bytes), LBO unused (encoded 1).
    for start, k, desc in layout["desc"]:
        addr = start + 32 * k
        assert desc & 0x3FFF == (addr & 0x3FFFF) >> 4
        assert (desc >> 14) & 0x3 == 0
        assert (desc >> 16) & 0x3FFF == 1
        assert (desc >> 32) & 0x3FFF == 1024 >> 4
        assert (desc >> 49) & 0x7 == 0
        assert desc >> 62 == 1
        assert desc & ~((0x3FFF) | (0x3FFF << 16) | (0x3FFF << 32) | (0x3 << 62)) == 0
    assert [r for r in layout["desc"] if r[:2] == [1024, 0]][0][2] == 0x4000004000010040


def test_swizzle_moves_16_byte_chunks_within_8_row_atoms(layout):
    # The 128-byte swizzle: in each 1024-byte atom of eight 128-byte rows, the 16-byte chunk j of
    # row r is stored at chunk j XOR (r mod 8); bytes inside a chunk keep their order.
    seen = set()
    for row, b, off in layout["tile"]:
        assert off == row * 128 + ((b // 16) ^ (row % 8)) * 16 + b % 16
        seen.add(off)
    assert len(seen) == 128 * 128  # a permutation of the tile


def test_each_k_step_reads_what_the_tiles_hold(layout):
    # The descriptor of k step k starts 32 k bytes into a 1024-byte aligned tile; wgmma reads row
    # `row`, byte b of the step at the canonical address (rows 128 bytes apart, 8-row groups SBO
    # apart) with the swizzle applied to the address bits. That must be where the staging stored
    # byte 32 k + b of the row: tile start + swizzled offset.
    base = 0x6000
    for k, row, b, addr in layout["read"]:
        kb = 32 * k + b
        assert addr == base + row * 128 + ((kb // 16) ^ (row % 8)) * 16 + kb % 16


def test_accumulator_layout_and_the_epilogue_positions(layout):
    # PTX ISA, wgmma D fragment (m64nN, f32): warp w of the warpgroup holds rows 16 w .. 16 w + 15;
    # lane l, register i: row 16 w + l / 4 + 8 ((i mod 4) >= 2), column 8 (i / 4) + 2 (l mod 4) + i mod 2.
    for t, i, row, col in layout["acc"]:
        w, lane = divmod(t, 32)
        assert row == 16 * w + lane // 4 + (8 if i % 4 >= 2 else 0)
        assert col == 8 * (i // 4) + 2 * (lane % 4) + i % 2
    brow = {r: (neuron, is_u) for r, neuron, is_u in layout["brow"]}
    acc = {(t, i): (row, col) for t, i, row, col in layout["acc"]}
    # Block thread T is thread T mod 128 of warpgroup q = T / 128, whose B rows are 64 q .. 64 q + 63.
    # The epilogue (tensor_cores.cuh, mma_sync.cuh) takes register 8 j + e as z0's element e of its
    # 16-column block j and register 16 + 8 j + e as u's, at tile row 16 (w mod 4) + g + 8 [e & 2]
    # and column 16 (2 (w / 4) + j) + 2 (l mod 4) + 8 [e >= 4] + (e & 1) (w = T / 32, g = l / 4).
    for T in range(256):
        q, t = divmod(T, 128)
        w, lane = divmod(T, 32)
        for i in range(32):
            row, col = acc[(t, i)]
            neuron, is_u = brow[64 * q + col]
            product, rest = divmod(i, 16)
            j, e = divmod(rest, 8)
            assert is_u == product
            assert row == 16 * (w % 4) + lane // 4 + (8 if e & 2 else 0)
            assert neuron == 16 * (2 * (w // 4) + j) + 2 * (lane % 4) + (8 if e >= 4 else 0) + (e & 1)
