// The arithmetic of the sm_90a wgmma mainloop, as pure functions of plain integers (no CUDA
// headers): the 128-byte swizzle in which the operand tiles are stored, the wgmma shared-memory
// matrix descriptor that reads them, the (row, column) of every accumulator register, and the rows
// of the dual product's B operand.
// tests/test_sm90_layout.py checks them on the CPU against formulas taken from the PTX ISA.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define TN_SM90_HD __host__ __device__ __forceinline__
#else
#define TN_SM90_HD inline
#endif

namespace tn::cuda::sm90 {

// ---- the 128-byte swizzle ----
//
// Every operand tile is K-major with rows of exactly 128 bytes (64 bf16/fp16 elements of K), as
// wgmma's swizzle mode 1 reads it: within each 1024-byte atom of 8 rows, the 16-byte chunk j of row
// r sits at chunk j ^ (r % 8). As an address function (CuTe's Swizzle<3, 4, 3>): bits 4-6 of the
// byte address are XORed with bits 7-9. Tiles start on 1024-byte boundaries, so the pattern is a
// function of the offset from the tile.
constexpr uint32_t kRowBytes = 128;
constexpr uint32_t kAtomBytes = 1024;

TN_SM90_HD constexpr uint32_t swizzle128(uint32_t offset) { return offset ^ (((offset >> 7) & 7u) << 4); }

// Byte offset of byte `kbyte` (< 128) of row `row` in a swizzled tile.
TN_SM90_HD constexpr uint32_t tile_offset(uint32_t row, uint32_t kbyte) { return swizzle128(row * kRowBytes + kbyte); }

// ---- the wgmma shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format") ----
//
//   bits  0-13  start address        matrix-descriptor-encode(x) = (x & 0x3FFFF) >> 4
//   bits 16-29  leading dimension byte offset (LBO), encoded likewise
//   bits 32-45  stride dimension byte offset (SBO), encoded likewise
//   bits 49-51  matrix base offset (0: the swizzle pattern starts on its own boundary)
//   bits 62-63  swizzle mode: 0 none, 1 128-byte, 2 64-byte, 3 32-byte
enum class Swizzle : uint32_t { kNone = 0, k128B = 1, k64B = 2, k32B = 3 };

TN_SM90_HD constexpr uint64_t desc_encode(uint32_t bytes) { return (bytes & 0x3FFFFu) >> 4; }

TN_SM90_HD constexpr uint64_t smem_desc(uint32_t start, uint32_t lbo, uint32_t sbo, Swizzle mode) {
  return desc_encode(start) | desc_encode(lbo) << 16 | desc_encode(sbo) << 32 |
         static_cast<uint64_t>(mode) << 62;
}

// A K-major operand in the swizzled tiles above: 8-row groups 1024 bytes apart (SBO); the LBO is
// unused by swizzled K-major layouts whose K extent per instruction (32 bytes) lies inside the
// 128-byte swizzle ("assumed 1" by the ISA) and is set to 16 bytes, encoded 1.
constexpr uint32_t kKMajorSbo = 8 * kRowBytes;
constexpr uint32_t kKMajorLbo = 16;

// One wgmma reads 32 bytes of K per row (k16 for 16-bit types); its k-th step inside a 128-byte
// row starts 32 k bytes after the tile, the swizzle still taken from the absolute address bits
// (hence the 1024-byte aligned tiles and a base offset of 0).
TN_SM90_HD constexpr uint64_t kmajor_desc(uint32_t start) {
  return smem_desc(start, kKMajorLbo, kKMajorSbo, Swizzle::k128B);
}

// The shared-memory byte address at which wgmma finds byte `kbyte` (< 32) of row `row` of an
// operand read through a K-major, 128-byte-swizzled descriptor: the canonical layout (rows of 128
// bytes in groups of 8, groups SBO apart), then the swizzle applied to the address bits. The CPU
// test holds the tiles' placement (tile_offset) against this model.
TN_SM90_HD constexpr uint32_t kmajor_desc_address(uint64_t desc, uint32_t row, uint32_t kbyte) {
  const uint32_t start = static_cast<uint32_t>(desc & 0x3FFFu) << 4;
  const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFFu) << 4;
  return swizzle128(start + (row / 8) * sbo + (row % 8) * kRowBytes + kbyte);
}

// ---- the accumulator of wgmma.m64nNk16 with f32 results ----
//
// Thread t (0..127) of the warpgroup holds N/2 floats; register i holds element
//   row = 16 (t / 32) + (t % 32) / 4 + 8 ((i / 2) % 2),   col = 8 (i / 4) + 2 (t % 4) + i % 2,
// that is warp t / 32 owns rows 16 (t / 32) .. + 15, and each 8-column slice is mma.sync's m16n8
// accumulator (registers 4 s .. 4 s + 3 of slice s).
TN_SM90_HD constexpr int acc_row(int thread, int i) { return 16 * (thread / 32) + (thread % 32) / 4 + 8 * ((i / 2) % 2); }
TN_SM90_HD constexpr int acc_col(int thread, int i) { return 8 * (i / 4) + 2 * (thread % 4) + i % 2; }

// ---- the dual product's B operand ----
//
// One k chunk of the weights holds 128 rows: [w0 of neurons 0-31; w of them; w0 of neurons 32-63;
// w of them], so that warpgroup q's B (rows 64 q .. 64 q + 63) gives accumulator columns 0-31 the
// z0 and columns 32-63 the u of its neurons 32 q .. 32 q + 31.
TN_SM90_HD constexpr int dual_b_neuron(int row) { return 32 * (row / 64) + row % 32; }
TN_SM90_HD constexpr bool dual_b_is_u(int row) { return row % 64 >= 32; }

}  // namespace tn::cuda::sm90
